"""CapillaryClient over real HTTP: requests that never left, answers that drip, deadlines, echoed credentials.

The stub and small servers of the test's own answer; the stub says what Capillary did, the result says what
the client concluded. Time is never asserted from the wall clock: a test that needs a call to "have taken
long" moves the client's clock forward from a response hook.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest
import requests

from resender import app
from resender.capillary import (
    OAUTH_HEADER,
    RESEND_PATH,
    CapillaryClient,
    build_session,
    resend_budget_seconds,
)
from resender.credentials import BasicCredentials, CachedCredentials, Credentials
from resender.local.stub import TOKEN_FLAWS, Behaviour, CapillaryStub
from resender.models import Status, Verdict
from resender.processor import DEADLINE_SAFETY_SECONDS
from resender.scrub import REDACTED
from resender.settings import Settings, minimum_resend_seconds
from tests.builders import failure, sns_event
from tests.clock import FakeClock
from tests.integration import test_capillary_client as client_tests
from tests.integration.test_capillary_client import (
    BASIC,
    CLIENT_KEY,
    CLIENT_SECRET,
    DOC_BASIC_HEADER,
    DOC_MD5,
    DOC_PASSWORD,
    MESSAGE_ID,
    OAUTH,
    FakeCredentials,
    OwnServer,
    Seen,
    _OwnHandler,
    make_client,
    success_body,
    wire,
)

pytestmark = pytest.mark.integration
own_server = client_tests.own_server  # the servers of test_capillary_client, as a fixture here too


class HeaderCredentials(BasicCredentials):
    """Basic credentials whose header value is whatever the test says: a value no header can carry."""

    def __init__(self, value: str) -> None:
        super().__init__("store.server", "server123")
        object.__setattr__(self, "_value", value)

    __slots__ = ("_value",)
    _value: str

    def headers(self) -> dict[str, str]:
        return {"Authorization": self._value}


# -- a request that failed while it was being built never left ------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("Basic abc\r\nX-Injected: 1", id="newline"),
        pytest.param(" Basic abc", id="leading-space"),
        pytest.param("Basic abc\u20ac", id="not-latin-1"),
        pytest.param("Basic abc\n", id="trailing-newline"),
    ],
)
def test_a_header_value_the_http_library_refuses_means_nothing_was_sent(
    own_server: Callable[..., OwnServer], value: str
) -> None:
    server = own_server(lambda handler, seen: handler.answer(200, success_body()))
    client = make_client(server.base_url, FakeCredentials(HeaderCredentials(value)))

    result = client.resend(MESSAGE_ID)

    assert result.verdict is Verdict.TRANSIENT
    assert result.status is Status.RETRYING
    assert result.error_message is not None
    assert "not sent" in result.error_message
    assert "abc" not in result.error_message  # the refused value is never quoted
    assert server.seen == []
    # The client is still usable: the half-built request left nothing behind on a pooled connection.
    assert make_client(server.base_url, FakeCredentials(BASIC)).resend(MESSAGE_ID).verdict is Verdict.RESENT


def test_an_error_after_the_request_was_written_stays_uncertain(
    own_server: Callable[..., OwnServer],
) -> None:
    server = own_server(lambda handler, seen: handler.answer(200, success_body()))
    session = build_session(2)

    def broken_hook(response: requests.Response, *args: Any, **kwargs: Any) -> None:
        raise ValueError("a ValueError raised after the request went out")

    session.hooks["response"].append(broken_hook)
    client = make_client(server.base_url, FakeCredentials(BASIC), session=session)

    result = client.resend(MESSAGE_ID)

    assert result.verdict is Verdict.UNCERTAIN  # a ValueError, but not from building the request
    assert len(server.seen) == 1


@pytest.mark.parametrize("flaw", sorted(TOKEN_FLAWS))
def test_a_malformed_oauth_token_is_dropped_and_reported_without_its_value(
    stub: CapillaryStub, flaw: str
) -> None:
    stub.token_flaw = flaw
    client = make_client(stub.base_url, FakeCredentials(OAUTH))

    result = client.resend(MESSAGE_ID)

    assert result.verdict is Verdict.TRANSIENT
    assert result.error_message is not None
    assert "invalid character" in result.error_message
    [issued] = stub.issued_tokens
    assert issued.strip()[:20] not in result.error_message
    assert stub.resend_calls == []  # the token never went into a header

    stub.token_flaw = None
    assert client.resend(MESSAGE_ID).verdict is Verdict.RESENT
    assert stub.token_requests == 2  # the malformed token was not kept


def test_a_cached_token_that_a_header_refuses_is_discarded(stub: CapillaryStub) -> None:
    recorded = wire()
    client = make_client(stub.base_url, FakeCredentials(OAUTH), session=recorded.session)
    assert client.resend(MESSAGE_ID).verdict is Verdict.RESENT
    # The token in the cache is spoiled (as if Capillary's had carried a character only http.client refuses).
    token = client._token
    assert token is not None
    client._token = type(token)(token.value + "\u20ac", token.renew_at, token.generation)

    result = client.resend(MESSAGE_ID + 1)

    assert result.verdict is Verdict.TRANSIENT
    assert result.error_message is not None
    assert "discarded" in result.error_message
    assert client._token is None
    assert len(stub.resend_calls) == 1
    assert client.resend(MESSAGE_ID + 1).verdict is Verdict.RESENT
    assert stub.token_requests == 2


# -- every wait is bounded ---------------------------------------------------------------------------------


@pytest.mark.parametrize("credentials", [BASIC, OAUTH], ids=["basic", "oauth"])
def test_a_dripping_answer_is_cut_off_and_uncertain(stub: CapillaryStub, credentials: Credentials) -> None:
    # Each byte arrives well inside the read timeout, so only a deadline on the whole answer stops it.
    stub.drip_interval_seconds = 0.05
    stub.script(MESSAGE_ID, Behaviour.DRIP_AFTER_RESEND)
    client = make_client(stub.base_url, FakeCredentials(credentials), timeout_seconds=0.3)

    result = client.resend(MESSAGE_ID)

    assert result.verdict is Verdict.UNCERTAIN
    assert result.error_message is not None
    assert "still arriving" in result.error_message
    assert stub.wait_for_drips(1)
    [(written, total)] = stub.drips
    assert written < total  # the client hung up before the answer was complete
    assert stub.resends_performed(MESSAGE_ID) == 1
    assert len(stub.resend_calls) == 1


def test_a_call_that_cannot_wait_for_its_answer_is_not_sent(stub: CapillaryStub) -> None:
    client = make_client(stub.base_url, FakeCredentials(BASIC), timeout_seconds=1.0)

    result = client.resend(MESSAGE_ID, deadline=time.monotonic() + client.request_seconds / 2)

    assert result.verdict is Verdict.TRANSIENT
    assert result.error_message is not None
    assert "not enough time left" in result.error_message
    assert stub.resend_calls == []


def test_a_token_request_that_would_not_leave_room_for_the_resend_is_not_made(stub: CapillaryStub) -> None:
    client = make_client(stub.base_url, FakeCredentials(OAUTH), timeout_seconds=1.0)

    result = client.resend(MESSAGE_ID, deadline=time.monotonic() + client.request_seconds * 1.1)

    assert result.verdict is Verdict.TRANSIENT
    assert stub.token_requests == 0
    assert stub.resend_calls == []


class SlowCredentials(FakeCredentials):
    """A secret whose read takes ``read_seconds`` of the client's clock, as a slow Secrets Manager would."""

    def __init__(self, credentials: Credentials, clock: FakeClock) -> None:
        super().__init__(credentials)
        self.clock = clock
        self.read_seconds = 0.0

    def get(self) -> CachedCredentials:
        self.clock.advance(self.read_seconds)
        return super().get()


@pytest.mark.parametrize("credentials", [BASIC, OAUTH], ids=["basic", "oauth"])
@pytest.mark.parametrize("read_share", [0.5, 2.0], ids=["most-of-the-time", "past-the-deadline"])
def test_a_slow_secret_read_that_leaves_no_time_for_the_answer_means_nothing_is_sent(
    stub: CapillaryStub, credentials: Credentials, read_share: float
) -> None:
    clock = FakeClock()
    slow = SlowCredentials(credentials, clock)
    client = make_client(stub.base_url, slow, clock=clock)
    assert client.resend(MESSAGE_ID + 1).verdict is Verdict.RESENT  # a warm client: any token is cached
    calls_before = len(stub.resend_calls)
    slow.read_seconds = client.request_seconds * read_share

    # Room for one and a third requests at the start: the secret read takes half of it, or more than all.
    result = client.resend(MESSAGE_ID, deadline=clock() + client.request_seconds * 4 / 3)

    assert result.verdict is Verdict.TRANSIENT
    assert result.error_message is not None
    assert "not sent" in result.error_message
    assert len(stub.resend_calls) == calls_before


@pytest.mark.parametrize("credentials", [BASIC, OAUTH], ids=["basic", "oauth"])
def test_the_second_attempt_after_an_auth_failure_is_not_made_when_it_does_not_fit(
    stub: CapillaryStub, credentials: Credentials
) -> None:
    clock = FakeClock()
    session = build_session(2)
    client = make_client(stub.base_url, FakeCredentials(credentials), session=session, clock=clock)
    assert client.resend(MESSAGE_ID + 1).verdict is Verdict.RESENT  # a warm client: any token is cached
    slow = client.request_seconds * 0.6

    def slow_answer(response: requests.Response, *args: Any, **kwargs: Any) -> None:
        if response.url.endswith(RESEND_PATH):
            clock.advance(slow)  # the 401 "took" most of a request's time

    session.hooks["response"].append(slow_answer)
    stub.script(MESSAGE_ID, Behaviour.UNAUTHORIZED)

    # Room for one and a half requests: the first fits, a second would not after a slow first.
    result = client.resend(MESSAGE_ID, deadline=clock() + client.request_seconds * 1.5)

    assert result.verdict is Verdict.AUTH_FAILED
    assert result.status is Status.RETRYING
    assert result.error_message is not None
    assert "no second attempt" in result.error_message
    assert [call.behaviour for call in stub.resend_calls] == [Behaviour.OK, Behaviour.UNAUTHORIZED]


def test_the_second_attempt_after_an_auth_failure_is_made_when_it_fits(stub: CapillaryStub) -> None:
    stub.script(MESSAGE_ID, Behaviour.UNAUTHORIZED)

    result = make_client(stub.base_url, FakeCredentials(OAUTH)).resend(MESSAGE_ID)

    assert result.verdict is Verdict.RESENT
    assert [call.behaviour for call in stub.resend_calls] == [Behaviour.UNAUTHORIZED, Behaviour.OK]


def test_worst_case_counts_every_connect_attempt_and_a_full_read_twice() -> None:
    client = CapillaryClient("https://eu.api.capillarytech.com", FakeCredentials(BASIC), timeout_seconds=10)

    assert client.request_seconds == pytest.approx(3 * 1.0 + 0.2 + 10)
    assert client.worst_case_seconds == pytest.approx(2 * client.request_seconds)
    assert resend_budget_seconds(10) == client.worst_case_seconds
    assert resend_budget_seconds(0.5) == pytest.approx(2 * (3 * 0.5 + 0.2 + 0.5))


@pytest.mark.parametrize("timeout", [0.1, 0.5, 1, 2, 3, 5, 10, 15, 20, 30, 45, 60])
def test_a_configuration_that_passes_the_start_up_check_can_claim_at_the_start_of_an_invocation(
    timeout: float,
) -> None:
    settings = Settings("t", "s", "https://eu.api.capillarytech.com", capillary_timeout_seconds=timeout)
    client = CapillaryClient(settings.capillary_base_url, FakeCredentials(BASIC), timeout_seconds=timeout)

    assert client.worst_case_seconds + DEADLINE_SAFETY_SECONDS <= minimum_resend_seconds(settings)


# -- echoed credentials ----------------------------------------------------------------------------------


@pytest.mark.parametrize("credentials", [BASIC, OAUTH], ids=["basic", "oauth"])
def test_credentials_echoed_by_capillary_never_reach_the_result(
    stub: CapillaryStub, credentials: Credentials
) -> None:
    recorded = wire()
    stub.script(MESSAGE_ID, Behaviour.ECHO_REQUEST)
    client = make_client(
        stub.base_url, FakeCredentials(credentials), session=recorded.session, max_text_chars=8000
    )

    result = client.resend(MESSAGE_ID)

    assert result.verdict is Verdict.TRANSIENT
    text = json.dumps([result.error_message, result.request_id, repr(result)])
    secrets = [DOC_PASSWORD, DOC_MD5, DOC_BASIC_HEADER, DOC_BASIC_HEADER.split()[1], CLIENT_SECRET]
    if credentials is OAUTH:
        secrets += [CLIENT_KEY, *stub.issued_tokens]
        assert stub.issued_tokens
    else:
        [exchange] = recorded.on(RESEND_PATH)
        assert OAUTH_HEADER not in exchange.request_headers
    for secret in secrets:
        assert secret.lower() not in text.lower(), secret
    assert REDACTED in text
    assert "cannot process request" in text  # the rest of Capillary's message is kept


def test_a_truncated_token_answer_is_transient(own_server: Callable[..., OwnServer]) -> None:
    def truncated(handler: _OwnHandler, seen: Seen) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", "400")
        handler.end_headers()
        handler.wfile.write(b'{"data": {"accessToken": "abc')
        handler.close_connection = True

    server = own_server(truncated)

    result = make_client(server.base_url, FakeCredentials(OAUTH)).resend(MESSAGE_ID)

    assert result.verdict is Verdict.TRANSIENT
    assert [seen.path for seen in server.seen] == ["/v3/oauth/token/generate"]


def test_an_echo_never_reaches_the_exception_raised_for_a_direct_sns_invocation(
    stub: CapillaryStub, invoke: Callable[..., dict[str, Any]], log_lines: list[str]
) -> None:
    stub.script(MESSAGE_ID, Behaviour.ECHO_REQUEST)

    with pytest.raises(app.RetryableFailureError) as raised:
        invoke(sns_event(failure(MESSAGE_ID)))

    text = str(raised.value)
    assert "cannot process request" in text  # Capillary's message is there, scrubbed
    for secret in (DOC_MD5, DOC_BASIC_HEADER.split()[1]):
        assert secret.lower() not in text.lower()
        assert all(secret.lower() not in line.lower() for line in log_lines)
