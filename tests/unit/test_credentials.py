"""The Capillary secret: both shapes, errors that never carry a value, and a cache that reads it once."""

from __future__ import annotations

import base64
import json
import re
import threading
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import boto3
import pytest
from botocore.exceptions import EndpointConnectionError
from hypothesis import given
from hypothesis import strategies as st
from moto import mock_aws

from resender.credentials import (
    BasicCredentials,
    CachedCredentials,
    CredentialsProvider,
    OAuthCredentials,
    OrgDirectory,
    OrgEntry,
    SecretError,
    parse_secret,
    parse_secret_document,
)
from tests.clock import FakeClock

# The worked example from Capillary's authentication docs: store.server / server123.
DOC_USER = "store.server"
DOC_PASSWORD = "server123"
DOC_AUTHORIZATION = "Basic c3RvcmUuc2VydmVyOjhhMTZhNmI3MDUwNWViMWYxZmY3Y2RjMGNkNTU1OWE3"

# Distinctive values: if one shows up in an error message, it leaked.
PASSWORD = "pw-Zq81-VALUE-MUST-NOT-LEAK"
CLIENT_KEY = "ck-4471-client-key-value"
CLIENT_SECRET = "cs-9f0e-VALUE-MUST-NOT-LEAK"
USERNAME = "user-5be2-username-value"
SECRET_VALUES = (PASSWORD, CLIENT_KEY, CLIENT_SECRET)

BASIC = {"authType": "basic", "username": USERNAME, "password": PASSWORD}
OAUTH = {"authType": "oauth", "clientKey": CLIENT_KEY, "clientSecret": CLIENT_SECRET}
SECRET_ID = "capillary/credentials"
MAX_AGE = 300.0


def assert_no_secret_in(error: BaseException, *values: str) -> None:
    rendered = [str(error), repr(error), "".join(traceback.format_exception(error))]
    for value in values or SECRET_VALUES:
        for text in rendered:
            assert value not in text


def secret_error(text: str) -> SecretError:
    with pytest.raises(SecretError) as caught:
        parse_secret(text)
    return caught.value


# --- parse_secret ------------------------------------------------------------------------------------------


def test_basic_secret() -> None:
    credentials = parse_secret(json.dumps(BASIC))

    assert credentials == BasicCredentials(username=USERNAME, password=PASSWORD)


def test_oauth_secret() -> None:
    credentials = parse_secret(json.dumps(OAUTH))

    assert credentials == OAuthCredentials(client_key=CLIENT_KEY, client_secret=CLIENT_SECRET)


def test_extra_fields_are_ignored() -> None:
    credentials = parse_secret(json.dumps({**BASIC, "comment": "rotated 2026-11", "orgId": 50672}))

    assert credentials == BasicCredentials(username=USERNAME, password=PASSWORD)


@pytest.mark.parametrize(
    ("document", "missing"),
    [
        ({"authType": "basic", "username": USERNAME}, "password"),
        ({"authType": "basic", "password": PASSWORD}, "username"),
        ({"authType": "basic", "username": USERNAME, "password": None}, "password"),
        ({"authType": "oauth", "clientKey": CLIENT_KEY}, "clientSecret"),
        ({"authType": "oauth", "clientSecret": CLIENT_SECRET}, "clientKey"),
        ({"username": USERNAME, "password": PASSWORD}, "authType"),
        ({"clientKey": CLIENT_KEY, "clientSecret": CLIENT_SECRET}, "authType"),
        ({"authType": None, "clientKey": CLIENT_KEY, "clientSecret": CLIENT_SECRET}, "authType"),
    ],
)
def test_missing_field_is_named_and_no_value_leaks(document: dict[str, Any], missing: str) -> None:
    error = secret_error(json.dumps(document))

    assert missing in str(error)
    assert_no_secret_in(error, *SECRET_VALUES, USERNAME)


@pytest.mark.parametrize(
    ("document", "field_name"),
    [
        ({**BASIC, "password": ""}, "password"),
        ({**BASIC, "password": 123456}, "password"),
        ({**BASIC, "password": [PASSWORD]}, "password"),
        ({**BASIC, "username": ""}, "username"),
        ({**OAUTH, "clientSecret": {"value": CLIENT_SECRET}}, "clientSecret"),
        ({**OAUTH, "clientKey": True}, "clientKey"),
    ],
)
def test_wrong_field_type_is_named_and_no_value_leaks(document: dict[str, Any], field_name: str) -> None:
    error = secret_error(json.dumps(document))

    assert field_name in str(error)
    assert_no_secret_in(error, *SECRET_VALUES, USERNAME)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not json",
        PASSWORD,
        json.dumps(BASIC)[:-1],  # truncated: the decoder error would quote the document
        "{'authType': 'basic', 'username': 'u', 'password': '" + PASSWORD + "'}",
    ],
    ids=["empty", "words", "bare-password", "truncated", "python-repr"],
)
def test_not_json_is_rejected_without_quoting_it(text: str) -> None:
    error = secret_error(text)

    assert "JSON" in str(error)
    assert_no_secret_in(error)


@pytest.mark.parametrize(
    "text",
    ["null", "42", json.dumps(PASSWORD), json.dumps([BASIC]), "true"],
    ids=["null", "number", "string", "array", "bool"],
)
def test_not_an_object_is_rejected(text: str) -> None:
    error = secret_error(text)

    assert "object" in str(error)
    assert_no_secret_in(error)


@pytest.mark.parametrize("auth_type", ["bearer", "BASIC", "Basic", "", 1, ["basic"]])
def test_unknown_auth_type_is_rejected(auth_type: object) -> None:
    error = secret_error(json.dumps({**BASIC, **OAUTH, "authType": auth_type}))

    assert "authType" in str(error)
    assert_no_secret_in(error)


def test_deeply_nested_secret_is_a_secret_error() -> None:
    secret_error("[" * 100_000)


def test_basic_header_matches_capillarys_worked_example() -> None:
    credentials = BasicCredentials(username=DOC_USER, password=DOC_PASSWORD)

    assert credentials.headers() == {"Authorization": DOC_AUTHORIZATION}


def test_basic_header_never_carries_the_plain_password() -> None:
    header = BasicCredentials(username=USERNAME, password=PASSWORD).headers()["Authorization"]
    decoded = base64.b64decode(header.removeprefix("Basic ")).decode()

    assert PASSWORD not in header
    assert PASSWORD not in decoded
    assert decoded.startswith(f"{USERNAME}:")
    assert len(decoded.split(":", 1)[1]) == 32  # an md5 hex digest


def test_reprs_hide_the_password_and_the_client_secret() -> None:
    basic = BasicCredentials(username=USERNAME, password=PASSWORD)
    oauth = OAuthCredentials(client_key=CLIENT_KEY, client_secret=CLIENT_SECRET)

    for shown in (repr(basic), str(basic), repr(CachedCredentials(basic, 1))):
        assert PASSWORD not in shown
        assert USERNAME in shown
    for shown in (repr(oauth), str(oauth), repr(CachedCredentials(oauth, 1))):
        assert CLIENT_SECRET not in shown
        assert CLIENT_KEY in shown


# --- CredentialsProvider against moto's Secrets Manager -----------------------------------------------------


@dataclass
class CallCounter:
    """Counts GetSecretValue calls, seen by botocore before they are sent."""

    calls: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, **_: Any) -> None:
        with self.lock:
            self.calls += 1


@dataclass
class Secrets:
    client: Any
    counter: CallCounter
    clock: FakeClock

    def create(self, value: dict[str, Any] | str, secret_id: str = SECRET_ID) -> None:
        text = value if isinstance(value, str) else json.dumps(value)
        self.client.create_secret(Name=secret_id, SecretString=text)

    def put(self, value: dict[str, Any], secret_id: str = SECRET_ID) -> None:
        self.client.put_secret_value(SecretId=secret_id, SecretString=json.dumps(value))

    def provider(self, secret_id: str = SECRET_ID, max_age: float = MAX_AGE) -> CredentialsProvider:
        return CredentialsProvider(self.client, secret_id, max_age_seconds=max_age, clock=self.clock)


@pytest.fixture(scope="module")
def moto_secretsmanager() -> Iterator[tuple[Any, Any]]:
    """One mocked account and one client for the module: building a client costs more than a test."""
    with mock_aws() as mock:
        yield mock, boto3.client("secretsmanager", region_name="us-east-1")


@pytest.fixture
def secrets(moto_secretsmanager: tuple[Any, Any]) -> Iterator[Secrets]:
    mock, client = moto_secretsmanager
    mock.reset()  # no secret survives from one test to the next
    counter = CallCounter()
    event = "before-call.secrets-manager.GetSecretValue"
    client.meta.events.register(event, counter, unique_id="test-counter")
    yield Secrets(client, counter, FakeClock())
    client.meta.events.unregister(event, unique_id="test-counter")


@pytest.fixture
def provider(secrets: Secrets) -> CredentialsProvider:
    """A provider of the basic secret that has read nothing yet."""
    secrets.create(BASIC)
    return secrets.provider()


def test_first_get_reads_the_secret(secrets: Secrets) -> None:
    secrets.create(BASIC)

    cached = secrets.provider().get()

    assert cached.credentials == BasicCredentials(username=USERNAME, password=PASSWORD)
    assert secrets.counter.calls == 1


def test_oauth_secret_through_the_provider(secrets: Secrets) -> None:
    secrets.create(OAUTH)

    assert secrets.provider().get().credentials == OAuthCredentials(CLIENT_KEY, CLIENT_SECRET)


def test_creating_a_provider_reads_nothing(secrets: Secrets, provider: CredentialsProvider) -> None:
    assert secrets.counter.calls == 0


def test_cached_within_max_age(secrets: Secrets, provider: CredentialsProvider) -> None:
    first = provider.get()
    for _ in range(5):
        secrets.clock.advance((MAX_AGE - 1) / 5)
        assert provider.get() is first

    assert secrets.counter.calls == 1


def test_refreshed_after_max_age(secrets: Secrets, provider: CredentialsProvider) -> None:
    first = provider.get()

    secrets.clock.advance(MAX_AGE + 0.001)
    second = provider.get()

    assert secrets.counter.calls == 2
    assert second.generation == first.generation + 1
    # The new read starts a new max-age period.
    secrets.clock.advance(MAX_AGE - 1)
    assert provider.get() is second
    assert secrets.counter.calls == 2


def test_refresh_after_max_age_picks_up_rotation(secrets: Secrets, provider: CredentialsProvider) -> None:
    provider.get()

    secrets.put({**BASIC, "password": "rotated-password"})
    assert provider.get().credentials == BasicCredentials(USERNAME, PASSWORD)  # still cached
    secrets.clock.advance(MAX_AGE + 0.001)

    assert provider.get().credentials == BasicCredentials(USERNAME, "rotated-password")


def test_zero_max_age_reads_every_time(secrets: Secrets) -> None:
    secrets.create(BASIC)
    provider = secrets.provider(max_age=0)

    for _ in range(3):
        provider.get()

    assert secrets.counter.calls == 3


def test_invalidate_forces_exactly_one_reread(secrets: Secrets, provider: CredentialsProvider) -> None:
    first = provider.get()

    provider.invalidate(first.generation)
    second = provider.get()
    third = provider.get()

    assert secrets.counter.calls == 2
    assert second.generation == first.generation + 1
    assert third is second


def test_stale_generation_does_not_invalidate_a_newer_one(
    secrets: Secrets, provider: CredentialsProvider
) -> None:
    old = provider.get()
    provider.invalidate(old.generation)
    new = provider.get()
    assert secrets.counter.calls == 2

    provider.invalidate(old.generation)  # a late failure with the credentials of before

    assert provider.get() is new
    assert secrets.counter.calls == 2


def test_invalidate_on_a_cold_provider_is_harmless(secrets: Secrets, provider: CredentialsProvider) -> None:
    provider.invalidate(0)
    provider.invalidate(1)

    assert secrets.counter.calls == 0
    assert provider.get().credentials == BasicCredentials(USERNAME, PASSWORD)
    assert secrets.counter.calls == 1


def test_rotation_then_invalidate_returns_the_new_credentials(secrets: Secrets) -> None:
    secrets.create(OAUTH)
    provider = secrets.provider()
    before = provider.get()

    secrets.put({**OAUTH, "clientSecret": "cs-rotated"})
    provider.invalidate(before.generation)
    after = provider.get()

    assert after.credentials == OAuthCredentials(CLIENT_KEY, "cs-rotated")
    assert after.generation == before.generation + 1
    assert secrets.counter.calls == 2


def test_missing_secret_is_a_secret_error(secrets: Secrets) -> None:
    secrets.create(BASIC, secret_id="some/other/secret")
    provider = secrets.provider(secret_id="capillary/does-not-exist")

    with pytest.raises(SecretError) as caught:
        provider.get()

    assert "Secrets Manager" in str(caught.value)
    assert_no_secret_in(caught.value, PASSWORD, USERNAME)


def test_failed_read_is_not_cached(secrets: Secrets) -> None:
    provider = secrets.provider()
    with pytest.raises(SecretError):
        provider.get()

    secrets.create(BASIC)

    assert provider.get().credentials == BasicCredentials(USERNAME, PASSWORD)
    assert secrets.counter.calls == 2


@pytest.mark.parametrize(
    ("document", "field_name"),
    [
        ({"authType": "basic", "username": USERNAME, "clientSecret": CLIENT_SECRET}, "password"),
        ({"authType": "oauth", "clientKey": CLIENT_KEY, "password": PASSWORD}, "clientSecret"),
        ({"username": USERNAME, "password": PASSWORD, "clientSecret": CLIENT_SECRET}, "authType"),
    ],
)
def test_malformed_secret_names_the_field(
    secrets: Secrets, document: dict[str, Any], field_name: str
) -> None:
    secrets.create(document)

    with pytest.raises(SecretError) as caught:
        secrets.provider().get()

    assert field_name in str(caught.value)
    assert_no_secret_in(caught.value)


def test_secret_that_is_not_json_leaks_nothing(secrets: Secrets) -> None:
    secrets.create(f"password={PASSWORD}")

    with pytest.raises(SecretError) as caught:
        secrets.provider().get()

    assert "JSON" in str(caught.value)
    assert_no_secret_in(caught.value)


def test_binary_secret_is_a_secret_error(secrets: Secrets) -> None:
    secrets.client.create_secret(Name=SECRET_ID, SecretBinary=json.dumps(BASIC).encode())

    with pytest.raises(SecretError, match="SecretString"):
        secrets.provider().get()
    assert secrets.counter.calls == 1


def test_unreachable_secrets_manager_is_a_secret_error(secrets: Secrets) -> None:
    secrets.create(BASIC)

    def unreachable(**_: Any) -> None:
        raise EndpointConnectionError(endpoint_url="https://secretsmanager.us-east-1.amazonaws.com")

    event = "before-call.secrets-manager.GetSecretValue"
    secrets.client.meta.events.register(event, unreachable, unique_id="test-unreachable")
    try:
        with pytest.raises(SecretError, match="EndpointConnectionError"):
            secrets.provider().get()
    finally:
        secrets.client.meta.events.unregister(event, unique_id="test-unreachable")


def test_malformed_rotation_keeps_failing_until_fixed(
    secrets: Secrets, provider: CredentialsProvider
) -> None:
    good = provider.get()

    secrets.put({"authType": "basic", "username": USERNAME})
    provider.invalidate(good.generation)
    with pytest.raises(SecretError, match="password"):
        provider.get()

    secrets.put({**BASIC, "password": "fixed-password"})
    assert provider.get().credentials == BasicCredentials(USERNAME, "fixed-password")


# --- threads -----------------------------------------------------------------------------------------------

THREADS = 16


class Crowd:
    """THREADS threads released at the same instant by a barrier, each running ``target`` once."""

    def __init__(self, target: Callable[[], Any]) -> None:
        self._barrier = threading.Barrier(THREADS)
        self._target = target
        self.results: list[Any] = [None] * THREADS
        self.errors: list[BaseException] = []
        self.threads = [threading.Thread(target=self._work, args=(i,)) for i in range(THREADS)]

    def _work(self, index: int) -> None:
        try:
            self._barrier.wait(timeout=10)
            self.results[index] = self._target()
        except BaseException as error:
            self.errors.append(error)

    def run(self) -> list[Any]:
        for thread in self.threads:
            thread.start()
        for thread in self.threads:
            thread.join(timeout=30)
        assert not any(thread.is_alive() for thread in self.threads)
        if self.errors:
            raise self.errors[0]
        return self.results


class ObservedLock:
    """A lock that counts the threads that found it held and had to wait for it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._changed = threading.Condition()
        self._waiters = 0

    def __enter__(self) -> ObservedLock:
        if not self._lock.acquire(blocking=False):
            with self._changed:
                self._waiters += 1
                self._changed.notify_all()
            self._lock.acquire()
        return self

    def __exit__(self, *_: object) -> None:
        self._lock.release()

    def wait_for_waiters(self, count: int, timeout: float) -> None:
        with self._changed:
            arrived = self._changed.wait_for(lambda: self._waiters >= count, timeout)
        assert arrived, f"only {self._waiters} of {count} threads waited for the cache's lock"


def test_cold_provider_reads_once_for_many_threads(
    secrets: Secrets, provider: CredentialsProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    lock = ObservedLock()
    monkeypatch.setattr(provider, "_lock", lock)
    crowd = Crowd(provider.get)

    def hold_the_read_open(**_: Any) -> None:
        # The read stays open until every other thread is queued behind it: a cache that let them past
        # would have them all reading too, and this wait would fail in each of them.
        lock.wait_for_waiters(THREADS - 1, timeout=10)

    event = "before-call.secrets-manager.GetSecretValue"
    secrets.client.meta.events.register(event, hold_the_read_open, unique_id="test-hold")
    try:
        results = crowd.run()
    finally:
        secrets.client.meta.events.unregister(event, unique_id="test-hold")

    assert secrets.counter.calls == 1
    assert all(result is results[0] for result in results)


def test_many_threads_invalidating_the_same_generation_cause_one_reread(
    secrets: Secrets, provider: CredentialsProvider
) -> None:
    first = provider.get()
    secrets.put({**BASIC, "password": "rotated-password"})

    def fail_then_retry() -> CachedCredentials:
        provider.invalidate(first.generation)
        return provider.get()

    results = Crowd(fail_then_retry).run()

    assert secrets.counter.calls == 2
    assert {result.generation for result in results} == {first.generation + 1}
    assert results[0].credentials == BasicCredentials(USERNAME, "rotated-password")


def test_credentials_name_every_value_that_must_never_be_echoed() -> None:
    basic = BasicCredentials("store.server", "server123")
    header = basic.headers()["Authorization"]

    assert set(basic.secret_values()) == {
        "server123",
        "8a16a6b70505eb1f1ff7cdc0cd5559a7",
        header,
        header.removeprefix("Basic "),
    }
    assert OAuthCredentials("key", "secret").secret_values() == ("key", "secret")


# -- several orgs --------------------------------------------------------------------------------------


def test_an_org_map_gives_each_org_its_credentials_and_base_url() -> None:
    document = parse_secret_document(
        json.dumps(
            {
                "orgs": {
                    "100737": {"authType": "basic", "username": "till", "password": "pw"},
                    "0200002": {
                        "authType": "oauth",
                        "clientKey": "k",
                        "clientSecret": "s",
                        "baseUrl": "https://apac.api.capillarytech.com/",
                    },
                }
            }
        )
    )

    assert document == OrgDirectory(
        {
            "100737": OrgEntry(BasicCredentials("till", "pw")),
            "200002": OrgEntry(OAuthCredentials("k", "s"), "https://apac.api.capillarytech.com"),
        }
    )


@pytest.mark.parametrize(
    ("orgs", "fragment"),
    [
        ([], "non-empty object"),
        ({}, "non-empty object"),
        ({"acme": {"authType": "basic", "username": "u", "password": "p"}}, "org id (digits)"),
        ({"0": {"authType": "basic", "username": "u", "password": "p"}}, "org id (digits)"),
        ({"1": "basic"}, "org 1 is not a JSON object"),
        ({"1": {"authType": "basic", "username": "u"}}, "org 1 has no 'password' field"),
        ({"1": {"authType": "token"}}, "org 1's 'authType' must be"),
        ({"1": {"authType": "basic", "username": "u", "password": "p", "baseUrl": 7}}, "not a string"),
        (
            {"1": {"authType": "basic", "username": "u", "password": "p", "baseUrl": "http://eu.example"}},
            "baseUrl must use https",
        ),
        (
            {
                "1": {
                    "authType": "basic",
                    "username": "u",
                    "password": "p",
                    "baseUrl": "https://u:pw@eu.example",
                }
            },
            "must not carry credentials",
        ),
    ],
)
def test_a_malformed_org_map_names_the_org_and_field(orgs: object, fragment: str) -> None:
    with pytest.raises(SecretError, match=re.escape(fragment)):
        parse_secret_document(json.dumps({"orgs": orgs}))


def test_the_single_org_parser_refuses_an_org_map() -> None:
    with pytest.raises(SecretError, match="several orgs"):
        parse_secret(json.dumps({"orgs": {"1": {"authType": "basic", "username": "u", "password": "p"}}}))


# Each value carries a marker no message of ours contains, so that a value made of the message's own words
# ("the Capi") cannot pass for a quoted credential.
@given(st.text(min_size=8, max_size=30).map(lambda text: f"\u00a7{text}\u00a7"))
def test_org_map_errors_never_quote_a_credential(secret_value: str) -> None:
    broken = {"orgs": {"1": {"authType": "basic", "username": secret_value}, "2": {"password": secret_value}}}

    with pytest.raises(SecretError) as raised:
        parse_secret_document(json.dumps(broken))

    assert secret_value not in str(raised.value)
    assert "\u00a7" not in str(raised.value)  # nor the start or the end of one
