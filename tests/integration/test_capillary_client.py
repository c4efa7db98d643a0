"""CapillaryClient over real HTTP: against the Capillary stub, small servers of our own, and moto.

Every request here crosses a real socket. The stub tells what Capillary did (``resend_calls``,
``resends_performed``, ``token_requests``); the client's ``ResendResult`` tells what it concluded. The
two are compared, above all for the one rule the project exists for: a request that may have reached
Capillary is never sent a second time.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import boto3
import pytest
import requests

from resender.capillary import (
    MAX_RESPONSE_BYTES,
    OAUTH_HEADER,
    REQUEST_ID_HEADER,
    RESEND_PATH,
    TOKEN_PATH,
    TOKEN_RENEWAL_MARGIN_SECONDS,
    CapillaryClient,
    build_session,
)
from resender.credentials import (
    BasicCredentials,
    CachedCredentials,
    Credentials,
    CredentialsProvider,
    OAuthCredentials,
    SecretError,
)
from resender.local.aws import LocalResources
from resender.local.stub import ORG_ID, Behaviour, CapillaryStub
from resender.models import ResendResult, Status, Verdict
from resender.settings import ConfigurationError
from tests.clock import FakeClock
from tests.tls import Tls, self_signed_tls

pytestmark = pytest.mark.integration

MESSAGE_ID = 1746061653596
# Capillary's worked example (docs: "authorisation"): store.server / server123.
DOC_USERNAME = "store.server"
DOC_PASSWORD = "server123"
DOC_MD5 = "8a16a6b70505eb1f1ff7cdc0cd5559a7"
DOC_BASIC_HEADER = "Basic c3RvcmUuc2VydmVyOjhhMTZhNmI3MDUwNWViMWYxZmY3Y2RjMGNkNTU1OWE3"
CLIENT_KEY = "demo-client-key"
CLIENT_SECRET = "demo-client-secret"
TIMEOUT = 1.0
SHORT_TIMEOUT = 0.3

BASIC = BasicCredentials(DOC_USERNAME, DOC_PASSWORD)
OAUTH = OAuthCredentials(CLIENT_KEY, CLIENT_SECRET)


# -- helpers -----------------------------------------------------------------------------------------


class FakeCredentials:
    """What CapillaryClient needs of a CredentialsProvider, with counters; optionally failing."""

    def __init__(self, credentials: Credentials | None = None, *, error: SecretError | None = None) -> None:
        self.credentials = credentials
        self.error = error
        self.generation = 1
        self.gets = 0
        self.invalidated: list[int] = []
        self._lock = threading.Lock()

    def get(self) -> CachedCredentials:
        with self._lock:
            self.gets += 1
            if self.error is not None:
                raise self.error
            assert self.credentials is not None
            return CachedCredentials(self.credentials, self.generation)

    def invalidate(self, generation: int) -> None:
        with self._lock:
            self.invalidated.append(generation)


@dataclass
class Exchange:
    """One answer the client received, as seen on the wire through a session hook."""

    url: str
    status: int
    request_headers: dict[str, str]
    request_body: bytes | None
    response_headers: dict[str, str]


@dataclass
class Wire:
    """A session built by build_session, with a hook that records every exchange."""

    session: requests.Session
    exchanges: list[Exchange] = field(default_factory=list)

    def record(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        body = response.request.body
        self.exchanges.append(
            Exchange(
                url=response.url,
                status=response.status_code,
                request_headers=dict(response.request.headers),
                request_body=body.encode() if isinstance(body, str) else body,
                response_headers=dict(response.headers),
            )
        )

    def on(self, path: str) -> list[Exchange]:
        return [exchange for exchange in self.exchanges if exchange.url.endswith(path)]


def wire() -> Wire:
    recorded = Wire(build_session(10))
    recorded.session.hooks["response"].append(recorded.record)
    return recorded


def make_client(
    base_url: str,
    credentials: Any,
    *,
    timeout_seconds: float = TIMEOUT,
    **kwargs: Any,
) -> CapillaryClient:
    return CapillaryClient(base_url, credentials, timeout_seconds=timeout_seconds, **kwargs)


def closed_port() -> int:
    """A loopback port nobody listens on: bound to learn a free number, then closed."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def md5_hex(text: str) -> str:
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


def success_body(message_id: int = MESSAGE_ID) -> bytes:
    return json.dumps(
        {
            "orgId": ORG_ID,
            "undeliveredMessageId": message_id,
            "resentMessageId": 1748743190124,
            "warnings": [],
        }
    ).encode()


# -- a small HTTP server of our own, for answers the stub does not give ---------------------------------


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


Reply = Callable[["_OwnHandler", Seen], None]


class OwnServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, reply: Reply, tls: ssl.SSLContext | None = None) -> None:
        self.reply = reply
        self.seen: list[Seen] = []
        self.connections = 0
        self.hung_up = threading.Event()
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _OwnHandler)
        if tls is not None:
            self.socket = tls.wrap_socket(self.socket, server_side=True)
        self.scheme = "https" if tls is not None else "http"
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.server_address[1]}"

    def handle_error(self, request: Any, client_address: Any) -> None:
        return  # clients hanging up early are part of these tests

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class _OwnHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 5
    disable_nagle_algorithm = True

    @property
    def own(self) -> OwnServer:
        assert isinstance(self.server, OwnServer)
        return self.server

    def setup(self) -> None:
        super().setup()
        with self.own.lock:
            self.own.connections += 1

    def log_message(self, format: str, *args: Any) -> None:
        return

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        seen = Seen("POST", self.path, dict(self.headers), self.rfile.read(length))
        with self.own.lock:
            self.own.seen.append(seen)
        self.own.reply(self, seen)

    def answer(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def own_server() -> Iterator[Callable[..., OwnServer]]:
    started: list[OwnServer] = []

    def start(reply: Reply, tls: ssl.SSLContext | None = None) -> OwnServer:
        server = OwnServer(reply, tls)
        server.thread.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    """A server TLS context with a self-signed certificate for 127.0.0.1."""
    return self_signed_tls(tmp_path_factory.mktemp("tls"))


# -- a resend that works ----------------------------------------------------------------------------


def test_resent_answer_is_read_in_full(stub: CapillaryStub) -> None:
    stub.latency_seconds = 0.05
    recorded = wire()
    client = make_client(stub.base_url, FakeCredentials(BASIC), session=recorded.session)

    result = client.resend(MESSAGE_ID)

    [call] = stub.resend_calls
    [exchange] = recorded.on(RESEND_PATH)
    assert result.verdict is Verdict.RESENT
    assert result.status is Status.RESENT
    assert result.resent_message_id == call.resent_message_id
    assert result.resent_message_id is not None
    assert result.org_id == ORG_ID == 100737
    assert result.http_status == 200
    assert result.request_id is not None
    assert result.request_id == exchange.response_headers[REQUEST_ID_HEADER]
    assert result.latency_ms is not None
    # Real time over real sockets: only a lower bound holds (the stub's answer takes at least 50 ms).
    assert result.latency_ms >= 50
    assert (result.error_code, result.error_message, result.retry_after_seconds) == (None, None, None)
    assert call.message_id == MESSAGE_ID
    assert call.performed
    assert stub.resends_performed(MESSAGE_ID) == 1


def test_request_is_exactly_the_documented_one(own_server: Callable[..., OwnServer]) -> None:
    server = own_server(lambda handler, seen: handler.answer(200, success_body()))
    client = make_client(server.base_url, FakeCredentials(BASIC))

    result = client.resend(MESSAGE_ID)

    assert result.verdict is Verdict.RESENT
    [seen] = server.seen
    assert (seen.method, seen.path) == ("POST", RESEND_PATH)
    assert json.loads(seen.body) == {"messageId": MESSAGE_ID}
    assert isinstance(json.loads(seen.body)["messageId"], int)  # a JSON number, not a string
    headers = {name.lower(): value for name, value in seen.headers.items()}
    assert headers["content-type"] == "application/json"
    assert headers["accept"] == "application/json"
    assert headers["authorization"] == DOC_BASIC_HEADER
    assert OAUTH_HEADER.lower() not in headers


def test_basic_auth_sends_capillary_worked_example(stub: CapillaryStub) -> None:
    recorded = wire()
    client = make_client(stub.base_url, FakeCredentials(BASIC), session=recorded.session)

    result = client.resend(MESSAGE_ID)

    assert result.verdict is Verdict.RESENT
    [exchange] = recorded.on(RESEND_PATH)
    assert exchange.request_headers["Authorization"] == DOC_BASIC_HEADER
    assert [call.auth for call in stub.resend_calls] == ["basic"]
    assert stub.token_requests == 0


def test_keep_alive_one_connection_for_many_resends(own_server: Callable[..., OwnServer]) -> None:
    server = own_server(lambda handler, seen: handler.answer(200, success_body()))
    client = make_client(server.base_url, FakeCredentials(BASIC))

    results = [client.resend(MESSAGE_ID + offset) for offset in range(5)]

    assert {result.verdict for result in results} == {Verdict.RESENT}
    assert len(server.seen) == 5
    assert server.connections == 1


# -- permanent answers ----------------------------------------------------------------------------------


FINAL_ANSWERS = [
    pytest.param(
        Behaviour.NOT_FOUND,
        (Verdict.NOT_FOUND, Status.NOT_FOUND),
        (200, 4223),
        f"Message not found for orgId: {ORG_ID} and messageId: {MESSAGE_ID}",
        id="not-found-inside-http-200",
    ),
    pytest.param(
        Behaviour.REJECTED,
        (Verdict.REJECTED, Status.REJECTED),
        (400, 400),
        "Input is invalid",
        id="rejected-input",
    ),
    # Not retried either: the message may have been resent, the answer cannot say which.
    pytest.param(
        Behaviour.NO_RESENT_ID,
        (Verdict.UNCERTAIN, Status.UNCERTAIN),
        (200, None),
        "without a resentMessageId",
        id="success-without-resent-id-is-uncertain",
    ),
]


@pytest.mark.parametrize(("behaviour", "read", "codes", "message"), FINAL_ANSWERS)
def test_final_answers_keep_their_codes_and_message_and_name_no_resent_id(
    stub: CapillaryStub,
    behaviour: Behaviour,
    read: tuple[Verdict, Status],
    codes: tuple[int, int | None],
    message: str,
) -> None:
    stub.script(MESSAGE_ID, behaviour)
    client = make_client(stub.base_url, FakeCredentials(BASIC))

    result = client.resend(MESSAGE_ID)

    assert (result.verdict, result.status) == read
    assert (result.http_status, result.error_code) == codes
    assert result.error_message is not None
    assert message in result.error_message
    assert result.request_id is not None
    assert result.resent_message_id is None
    assert len(stub.resend_calls) == 1
    assert stub.resends_performed() == 0


# -- transient answers: nothing was resent, the queue may try again ---------------------------------------

TRANSIENT_ANSWERS = [
    pytest.param(Behaviour.SERVER_ERROR, 500, 500, id="500"),
    pytest.param(Behaviour.BAD_GATEWAY, 502, 502, id="502-with-capillary-error"),
    pytest.param(Behaviour.THROTTLED, 429, 429, id="429"),
    pytest.param(Behaviour.SEARCH_BUSY, 461, 461, id="461-search-busy"),
    pytest.param(Behaviour.CUSTOMER_BUSY, 521, 521, id="521-customer-busy"),
    pytest.param(Behaviour.AUTH_UNAVAILABLE, 503, 4001, id="503-4001"),
]


@pytest.mark.parametrize(("behaviour", "http_status", "error_code"), TRANSIENT_ANSWERS)
def test_answers_that_say_not_done_are_transient(
    stub: CapillaryStub, behaviour: Behaviour, http_status: int, error_code: int | None
) -> None:
    stub.script(MESSAGE_ID, behaviour)
    client = make_client(stub.base_url, FakeCredentials(BASIC))

    result = client.resend(MESSAGE_ID)

    assert result.verdict is Verdict.TRANSIENT
    assert result.status is Status.RETRYING
    assert result.retryable
    assert result.http_status == http_status
    if error_code is not None:
        assert result.error_code == error_code
    assert result.error_message
    assert result.resent_message_id is None
    # One call: retrying is the queue's job, with backoff, not the client's.
    assert [call.behaviour for call in stub.resend_calls] == [behaviour]
    assert stub.resends_performed() == 0


@pytest.mark.parametrize("http_status", [200, 400])
@pytest.mark.parametrize("code", [461, 521, 4001])
def test_transient_code_in_the_body_wins_over_the_http_status(
    own_server: Callable[..., OwnServer], http_status: int, code: int
) -> None:
    body = json.dumps(
        {"warnings": [], "errors": [{"status": False, "code": code, "message": "busy"}]}
    ).encode()
    server = own_server(lambda handler, seen: handler.answer(http_status, body))
    client = make_client(server.base_url, FakeCredentials(BASIC))

    result = client.resend(MESSAGE_ID)

    assert result.verdict is Verdict.TRANSIENT  # not REJECTED (400), not RESENT (200)
    assert (result.http_status, result.error_code, result.error_message) == (http_status, code, "busy")


# -- answers that may follow a resend: a gateway that lost the answer, a success that cannot be read ---------

MAY_HAVE_RESENT = [
    pytest.param(Behaviour.GATEWAY_TIMEOUT, 504, id="504-gateway-gave-up-waiting"),
    pytest.param(Behaviour.HTML_ERROR, 502, id="502-proxy-page"),
    pytest.param(Behaviour.HTML_OK, 200, id="200-proxy-page"),
    pytest.param(Behaviour.EMPTY_OK, 200, id="200-empty"),
    pytest.param(Behaviour.NULL_OK, 200, id="200-null"),
    pytest.param(Behaviour.LIST_OK, 200, id="200-json-not-an-object"),
    pytest.param(Behaviour.OVERSIZED_OK, 200, id="200-over-the-read-cap"),
    pytest.param(Behaviour.RESENT_BUT_UNAUTHORIZED, 401, id="401-naming-a-resend"),
    pytest.param(Behaviour.RESENT_BUT_BUSY, 503, id="503/4001-naming-a-resend"),
]


@pytest.mark.parametrize("credentials", [BASIC, OAUTH], ids=["basic", "oauth"])
@pytest.mark.parametrize(("behaviour", "http_status"), MAY_HAVE_RESENT)
def test_answers_that_may_follow_a_resend_are_uncertain_and_never_repeated(
    stub: CapillaryStub, behaviour: Behaviour, http_status: int, credentials: Credentials
) -> None:
    stub.script(MESSAGE_ID, behaviour)
    client = make_client(stub.base_url, FakeCredentials(credentials))

    result = client.resend(MESSAGE_ID)

    assert result.verdict is Verdict.UNCERTAIN
    assert result.http_status == http_status
    assert result.error_message is not None
    assert "may have resent" in result.error_message
    # Not even the second attempt an auth failure would earn: the answer named a resend.
    assert [call.behaviour for call in stub.resend_calls] == [behaviour]


def test_a_truncated_success_is_uncertain(own_server: Callable[..., OwnServer]) -> None:
    def truncated(handler: _OwnHandler, seen: Seen) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", "400")
        handler.end_headers()
        handler.wfile.write(success_body()[:40])
        handler.close_connection = True

    server = own_server(truncated)

    result = make_client(server.base_url, FakeCredentials(BASIC)).resend(MESSAGE_ID)

    assert result.verdict is Verdict.UNCERTAIN
    assert len(server.seen) == 1


@pytest.mark.parametrize("behaviour", [Behaviour.HTML_ERROR, Behaviour.HTML_OK])
def test_proxy_pages_carry_no_capillary_request_id(stub: CapillaryStub, behaviour: Behaviour) -> None:
    stub.script(MESSAGE_ID, behaviour)
    client = make_client(stub.base_url, FakeCredentials(BASIC))

    result = client.resend(MESSAGE_ID)

    assert result.request_id is None
    assert result.error_message is not None
    assert "not JSON" in result.error_message


def test_throttled_answer_keeps_retry_after(stub: CapillaryStub) -> None:
    stub.retry_after_seconds = 42
    stub.script(MESSAGE_ID, Behaviour.THROTTLED)
    client = make_client(stub.base_url, FakeCredentials(BASIC))

    result = client.resend(MESSAGE_ID)

    assert result.verdict is Verdict.TRANSIENT
    assert result.retry_after_seconds == stub.retry_after_seconds == 42
    assert stub.resends_performed() == 0


def test_connection_refused_is_transient() -> None:
    client = make_client(f"http://127.0.0.1:{closed_port()}", FakeCredentials(BASIC))

    result = client.resend(MESSAGE_ID)

    assert result.verdict is Verdict.TRANSIENT
    assert result.status is Status.RETRYING
    assert result.http_status is None
    assert result.error_message is not None
    assert "not sent" in result.error_message


def test_oauth_token_server_refusing_connections_is_transient() -> None:
    credentials = FakeCredentials(OAUTH)
    client = make_client(f"http://127.0.0.1:{closed_port()}", credentials)

    result = client.resend(MESSAGE_ID)

    assert result.verdict is Verdict.TRANSIENT
    assert credentials.invalidated == []  # nothing says the credentials are wrong


# -- uncertain: the request may have reached Capillary --------------------------------------------------


def test_read_timeout_after_resend_is_uncertain_and_not_retried(stub: CapillaryStub) -> None:
    stub.hang_seconds = 5.0
    stub.script(MESSAGE_ID, Behaviour.HANG_AFTER_RESEND)
    client = make_client(stub.base_url, FakeCredentials(BASIC), timeout_seconds=SHORT_TIMEOUT)

    started = time.monotonic()
    result = client.resend(MESSAGE_ID)
    elapsed = time.monotonic() - started

    assert result.verdict is Verdict.UNCERTAIN
    assert result.status is Status.UNCERTAIN
    assert not result.retryable
    assert result.error_message is not None
    assert "may have resent" in result.error_message
    assert result.latency_ms is not None
    # Real time: the read timeout ended the wait (when, the scheduler decides), before the stub's hang did.
    assert result.latency_ms >= SHORT_TIMEOUT * 1000 * 0.9
    assert elapsed < stub.hang_seconds
    assert len(stub.resend_calls) == 1
    assert stub.resends_performed(MESSAGE_ID) == 1


def test_connection_dropped_after_resend_is_uncertain_and_not_retried(stub: CapillaryStub) -> None:
    stub.script(MESSAGE_ID, Behaviour.DROP_AFTER_RESEND)
    client = make_client(stub.base_url, FakeCredentials(BASIC))

    result = client.resend(MESSAGE_ID)

    assert result.verdict is Verdict.UNCERTAIN
    assert result.error_message is not None
    assert "dropped" in result.error_message
    assert len(stub.resend_calls) == 1
    assert stub.resends_performed(MESSAGE_ID) == 1


@pytest.mark.parametrize("credentials", [BASIC, OAUTH], ids=["basic", "oauth"])
@pytest.mark.parametrize(
    "behaviour",
    [Behaviour.HANG_AFTER_RESEND, Behaviour.DROP_AFTER_RESEND, Behaviour.NO_RESENT_ID],
)
def test_request_that_may_have_reached_capillary_is_never_repeated(
    stub: CapillaryStub, behaviour: Behaviour, credentials: Credentials
) -> None:
    stub.hang_seconds = 5.0
    stub.script(MESSAGE_ID, behaviour)
    client = make_client(stub.base_url, FakeCredentials(credentials), timeout_seconds=SHORT_TIMEOUT)

    result = client.resend(MESSAGE_ID)

    assert result.verdict is Verdict.UNCERTAIN
    assert len(stub.resend_calls) == 1
    assert stub.resend_calls[0].behaviour is behaviour
    # The client is still usable afterwards, on a fresh connection, and sends exactly what it is asked.
    assert client.resend(MESSAGE_ID + 1).verdict is Verdict.RESENT
    assert [call.message_id for call in stub.resend_calls] == [MESSAGE_ID, MESSAGE_ID + 1]


# -- OAuth ----------------------------------------------------------------------------------------------


def test_oauth_token_generated_once_and_reused(stub: CapillaryStub) -> None:
    recorded = wire()
    client = make_client(stub.base_url, FakeCredentials(OAUTH), session=recorded.session)

    results = [client.resend(MESSAGE_ID + offset) for offset in range(5)]

    assert [result.verdict for result in results] == [Verdict.RESENT] * 5
    assert stub.token_requests == 1
    assert stub.resends_performed() == 5
    assert {call.auth for call in stub.resend_calls} == {"oauth"}
    sent = recorded.on(RESEND_PATH)
    assert len({exchange.request_headers[OAUTH_HEADER] for exchange in sent}) == 1
    assert all("Authorization" not in exchange.request_headers for exchange in sent)
    [token_request] = recorded.on(TOKEN_PATH)
    assert token_request.request_body is not None
    assert json.loads(token_request.request_body) == {"key": CLIENT_KEY, "secret": CLIENT_SECRET}


def test_oauth_token_renewed_before_it_expires(stub: CapillaryStub) -> None:
    clock = FakeClock()
    client = make_client(stub.base_url, FakeCredentials(OAUTH), clock=clock)
    ttl = stub.token_ttl_seconds
    renew_after = ttl - min(TOKEN_RENEWAL_MARGIN_SECONDS, ttl / 10)

    assert client.resend(MESSAGE_ID).verdict is Verdict.RESENT
    clock.advance(renew_after - 1)
    assert client.resend(MESSAGE_ID + 1).verdict is Verdict.RESENT
    assert stub.token_requests == 1

    clock.advance(2)  # now past ttl - margin
    assert client.resend(MESSAGE_ID + 2).verdict is Verdict.RESENT
    assert stub.token_requests == 2
    assert stub.resends_performed() == 3


def test_oauth_token_regenerated_once_on_498(stub: CapillaryStub) -> None:
    credentials = FakeCredentials(OAUTH)
    client = make_client(stub.base_url, credentials)
    assert client.resend(MESSAGE_ID).verdict is Verdict.RESENT
    stub.expire_tokens()

    result = client.resend(MESSAGE_ID + 1)

    assert result.verdict is Verdict.RESENT
    assert stub.token_requests == 2
    assert [call.behaviour for call in stub.resend_calls] == [
        Behaviour.OK,
        Behaviour.TOKEN_EXPIRED,
        Behaviour.OK,
    ]
    assert stub.resends_performed(MESSAGE_ID + 1) == 1


def test_oauth_498_twice_gives_up_after_one_regeneration(stub: CapillaryStub) -> None:
    stub.fail_next(Behaviour.TOKEN_EXPIRED, Behaviour.TOKEN_EXPIRED)
    client = make_client(stub.base_url, FakeCredentials(OAUTH))

    result = client.resend(MESSAGE_ID)

    assert result.verdict is Verdict.AUTH_FAILED
    assert result.status is Status.RETRYING
    assert result.http_status == 498
    assert stub.token_requests == 2
    assert len(stub.resend_calls) == 2
    assert stub.resends_performed() == 0


def test_ten_threads_on_a_cold_container_share_one_token(stub: CapillaryStub) -> None:
    client = make_client(stub.base_url, FakeCredentials(OAUTH), pool_size=10)
    start = threading.Barrier(10)
    results: dict[int, ResendResult] = {}

    def resend(message_id: int) -> None:
        start.wait(timeout=5)
        results[message_id] = client.resend(message_id)

    threads = [threading.Thread(target=resend, args=(MESSAGE_ID + n,)) for n in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)

    assert len(results) == 10
    assert {result.verdict for result in results.values()} == {Verdict.RESENT}
    assert stub.token_requests == 1
    assert stub.resends_performed() == 10
    assert len({result.resent_message_id for result in results.values()}) == 10


# -- authentication failures and credentials from Secrets Manager ----------------------------------------


@pytest.mark.parametrize(
    ("credentials", "codes", "refused_resends", "token_requests"),
    [
        # The refused token request is made once more after a fresh read; no resend is ever attempted.
        pytest.param(
            OAuthCredentials(CLIENT_KEY, "not-the-secret"), (None, 320001), 0, 2, id="oauth-bad-secret"
        ),
        pytest.param(
            BasicCredentials(DOC_USERNAME, "wrong-password"), (401, 401), 2, 0, id="basic-wrong-password"
        ),
    ],
)
def test_credentials_wrong_for_good_are_auth_failed_after_one_fresh_read(
    stub: CapillaryStub,
    credentials: Credentials,
    codes: tuple[int | None, int],
    refused_resends: int,
    token_requests: int,
) -> None:
    provider = FakeCredentials(credentials)
    client = make_client(stub.base_url, provider)

    result = client.resend(MESSAGE_ID)

    assert (result.verdict, result.status) == (Verdict.AUTH_FAILED, Status.RETRYING)
    assert (result.http_status, result.error_code) == codes
    assert [call.behaviour for call in stub.resend_calls] == [Behaviour.UNAUTHORIZED] * refused_resends
    assert stub.resends_performed() == 0
    assert stub.token_requests == token_requests
    # Every refused request drops the cached credentials once.
    assert provider.invalidated == [provider.generation] * (token_requests + refused_resends)


def test_forbidden_is_auth_failed(stub: CapillaryStub) -> None:
    stub.script(MESSAGE_ID, Behaviour.FORBIDDEN, Behaviour.FORBIDDEN)
    client = make_client(stub.base_url, FakeCredentials(BASIC))

    result = client.resend(MESSAGE_ID)

    assert result.verdict is Verdict.AUTH_FAILED
    assert result.status is Status.RETRYING
    assert (result.http_status, result.error_code) == (403, 4000)
    assert len(stub.resend_calls) == 2
    assert stub.resends_performed() == 0


def _secrets_client(local_aws: LocalResources) -> tuple[Any, list[str]]:
    """A real Secrets Manager client on moto, counting GetSecretValue calls."""
    client = boto3.client("secretsmanager", endpoint_url=local_aws.endpoint_url)
    reads: list[str] = []
    client.meta.events.register(
        "before-call.secrets-manager.GetSecretValue", lambda **kwargs: reads.append("read")
    )
    return client, reads


def test_basic_password_rotation_rereads_the_secret_once(
    stub: CapillaryStub, local_aws: LocalResources
) -> None:
    secrets, reads = _secrets_client(local_aws)
    client = make_client(stub.base_url, CredentialsProvider(secrets, local_aws.secret_id))
    assert client.resend(MESSAGE_ID).verdict is Verdict.RESENT
    assert len(reads) == 1

    stub.set_basic_password("new")
    secrets.put_secret_value(
        SecretId=local_aws.secret_id,
        SecretString=json.dumps({"authType": "basic", "username": DOC_USERNAME, "password": "new"}),
    )
    result = client.resend(MESSAGE_ID + 1)

    assert result.verdict is Verdict.RESENT
    assert len(reads) == 2
    assert [call.behaviour for call in stub.resend_calls] == [
        Behaviour.OK,
        Behaviour.UNAUTHORIZED,
        Behaviour.OK,
    ]
    assert stub.resends_performed(MESSAGE_ID + 1) == 1


def test_oauth_secret_rotation_rereads_the_secret_once(
    stub: CapillaryStub, local_aws: LocalResources
) -> None:
    secrets, reads = _secrets_client(local_aws)
    secrets.put_secret_value(
        SecretId=local_aws.secret_id,
        SecretString=json.dumps(
            {"authType": "oauth", "clientKey": CLIENT_KEY, "clientSecret": CLIENT_SECRET}
        ),
    )
    client = make_client(stub.base_url, CredentialsProvider(secrets, local_aws.secret_id))
    assert client.resend(MESSAGE_ID).verdict is Verdict.RESENT

    stub.set_oauth_secret("rotated")
    secrets.put_secret_value(
        SecretId=local_aws.secret_id,
        SecretString=json.dumps({"authType": "oauth", "clientKey": CLIENT_KEY, "clientSecret": "rotated"}),
    )
    stub.expire_tokens()
    result = client.resend(MESSAGE_ID + 1)

    assert result.verdict is Verdict.RESENT
    assert len(reads) == 2
    assert stub.token_requests == 2
    assert stub.resends_performed(MESSAGE_ID + 1) == 1


def test_secret_wrong_for_good_in_secrets_manager(stub: CapillaryStub, local_aws: LocalResources) -> None:
    secrets, reads = _secrets_client(local_aws)
    stub.set_basic_password("rotated-but-the-secret-was-not")
    client = make_client(stub.base_url, CredentialsProvider(secrets, local_aws.secret_id))

    result = client.resend(MESSAGE_ID)

    assert result.verdict is Verdict.AUTH_FAILED
    assert result.status is Status.RETRYING
    assert len(stub.resend_calls) == 2
    assert stub.resends_performed() == 0
    assert len(reads) == len(stub.resend_calls)  # one re-read per auth failure, no loop


def test_secret_error_is_transient_without_any_http_call(stub: CapillaryStub) -> None:
    credentials = FakeCredentials(
        error=SecretError("cannot read the Capillary secret (AccessDeniedException)")
    )
    client = make_client(stub.base_url, credentials)

    result = client.resend(MESSAGE_ID)

    assert result.verdict is Verdict.TRANSIENT
    assert result.status is Status.RETRYING
    assert result.error_message == "cannot read the Capillary secret (AccessDeniedException)"
    assert credentials.gets == 1
    assert stub.resend_calls == []
    assert stub.token_requests == 0


def test_missing_secret_in_secrets_manager_is_transient(
    stub: CapillaryStub, local_aws: LocalResources
) -> None:
    secrets, _ = _secrets_client(local_aws)
    client = make_client(stub.base_url, CredentialsProvider(secrets, "no/such/secret"))

    result = client.resend(MESSAGE_ID)

    assert result.verdict is Verdict.TRANSIENT
    assert result.error_message is not None
    assert "ResourceNotFoundException" in result.error_message
    assert stub.resend_calls == []
    assert stub.token_requests == 0


# -- where requests may go ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://eu.api.capillarytech.com",
        "http://10.0.0.7:8080",
        "http://127.0.0.1.example.com",
        "ftp://127.0.0.1",
        "https://user:password@eu.api.capillarytech.com",
        "https://eu.api.capillarytech.com?next=http://evil.example",
        "eu.api.capillarytech.com",
    ],
)
def test_refuses_a_base_url_that_could_leak_credentials(url: str) -> None:
    with pytest.raises(ConfigurationError):
        CapillaryClient(url, FakeCredentials(BASIC))


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080",
        "http://localhost:8080",
        "http://[::1]:8080",
        "https://eu.api.capillarytech.com/",
    ],
)
def test_accepts_https_and_loopback_http(url: str) -> None:
    CapillaryClient(url, FakeCredentials(BASIC))


def test_session_ignores_the_environment_and_always_verifies() -> None:
    session = build_session(10)

    assert session.trust_env is False
    assert session.verify is True


def test_proxy_variables_never_receive_the_request(
    stub: CapillaryStub, own_server: Callable[..., OwnServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = own_server(lambda handler, seen: handler.answer(200, success_body()))
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, proxy.base_url)
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    client = make_client(stub.base_url, FakeCredentials(BASIC))

    result = client.resend(MESSAGE_ID)

    assert result.verdict is Verdict.RESENT
    assert proxy.seen == []
    assert stub.resends_performed() == 1


def test_untrusted_tls_certificate_is_refused_before_sending(
    own_server: Callable[..., OwnServer], self_signed: Tls
) -> None:
    server = own_server(lambda handler, seen: handler.answer(200, success_body()), tls=self_signed.context)
    client = make_client(server.base_url, FakeCredentials(BASIC))

    result = client.resend(MESSAGE_ID)

    assert result.verdict is Verdict.TRANSIENT
    assert result.error_message is not None
    assert "TLS" in result.error_message
    assert server.seen == []


def test_trusted_tls_works(own_server: Callable[..., OwnServer], self_signed: Tls) -> None:
    server = own_server(lambda handler, seen: handler.answer(200, success_body()), tls=self_signed.context)
    session = build_session(10)
    session.verify = str(self_signed.cert_file)  # a private CA, still verified
    client = make_client(server.base_url, FakeCredentials(BASIC), session=session)

    assert client.resend(MESSAGE_ID).verdict is Verdict.RESENT
    assert len(server.seen) == 1


def test_tls_handshake_failure_other_than_the_certificate_is_transient(
    own_server: Callable[..., OwnServer],
) -> None:
    plain = own_server(lambda handler, seen: handler.answer(200, success_body()))
    client = make_client(plain.base_url.replace("http://", "https://"), FakeCredentials(BASIC))

    result = client.resend(MESSAGE_ID)

    assert result.verdict is Verdict.TRANSIENT  # WRONG_VERSION_NUMBER, raised by the handshake
    assert plain.seen == []


def test_tls_failure_after_the_request_was_sent_is_uncertain(
    own_server: Callable[..., OwnServer], self_signed: Tls
) -> None:
    def corrupt_record(handler: _OwnHandler, seen: Seen) -> None:
        # An application-data record that cannot be decrypted, written under the TLS layer: the client
        # fails while reading the answer to a request the server has received in full.
        os.write(handler.connection.fileno(), b"\x17\x03\x03\x00\x20" + os.urandom(32))

    server = own_server(corrupt_record, tls=self_signed.context)
    session = build_session(10)
    session.verify = str(self_signed.cert_file)
    client = make_client(server.base_url, FakeCredentials(BASIC), session=session)

    result = client.resend(MESSAGE_ID)

    assert result.verdict is Verdict.UNCERTAIN
    assert result.error_message is not None
    assert "may have resent" in result.error_message
    assert [seen.path for seen in server.seen] == [RESEND_PATH]


@pytest.mark.parametrize(("path", "credentials"), [(RESEND_PATH, BASIC), (TOKEN_PATH, OAUTH)])
def test_redirects_are_not_followed(
    own_server: Callable[..., OwnServer], path: str, credentials: Credentials
) -> None:
    elsewhere = own_server(lambda handler, seen: handler.answer(200, success_body()))

    def redirect(handler: _OwnHandler, seen: Seen) -> None:
        handler.answer(307, b"", {"Location": elsewhere.base_url + seen.path})

    server = own_server(redirect)
    client = make_client(server.base_url, FakeCredentials(credentials))

    result = client.resend(MESSAGE_ID)

    assert result.verdict is Verdict.TRANSIENT
    assert [seen.path for seen in server.seen] == [path]
    assert elsewhere.seen == []


# -- bounded answers -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code", "verdict"), [(500, 500, Verdict.TRANSIENT), (200, 4223, Verdict.NOT_FOUND)]
)
def test_huge_error_message_is_capped(
    own_server: Callable[..., OwnServer], status: int, code: int, verdict: Verdict
) -> None:
    message = "Failed to resend message : " + "x" * 40_000
    body = json.dumps(
        {"warnings": [], "errors": [{"status": False, "code": code, "message": message}]}
    ).encode()
    assert len(body) < MAX_RESPONSE_BYTES  # parsed in full: the cap under test is the text cap
    server = own_server(lambda handler, seen: handler.answer(status, body, {REQUEST_ID_HEADER: "r" * 4_000}))
    client = make_client(server.base_url, FakeCredentials(BASIC), max_text_chars=100)

    result = client.resend(MESSAGE_ID)

    assert result.verdict is verdict
    assert result.error_code == code
    assert result.error_message is not None
    assert result.error_message == message[:97] + "..."
    assert result.request_id is not None
    assert result.request_id == "r" * 125 + "..."


def test_five_megabyte_answer_is_not_read_in_full(own_server: Callable[..., OwnServer]) -> None:
    total = 5 * 1024 * 1024
    head = b'{"errors": [{"code": 500, "message": "' + b"x" * (4 * MAX_RESPONSE_BYTES)

    def enormous(handler: _OwnHandler, seen: Seen) -> None:
        handler.send_response(500)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(total))
        handler.end_headers()
        handler.wfile.write(head)
        handler.wfile.flush()
        # The other 4.7 MB never come: a client that reads to the end waits for its read timeout.
        handler.connection.settimeout(5)
        try:
            if handler.connection.recv(1) == b"":
                handler.own.hung_up.set()
        except OSError:
            handler.own.hung_up.set()

    server = own_server(enormous)
    client = make_client(server.base_url, FakeCredentials(BASIC), timeout_seconds=TIMEOUT)

    started = time.monotonic()
    result = client.resend(MESSAGE_ID)
    elapsed = time.monotonic() - started

    assert (
        result.verdict is Verdict.TRANSIENT
    )  # a truncated body is not JSON; a read timeout would be UNCERTAIN
    assert result.http_status == 500
    assert elapsed < TIMEOUT  # real time: the client gave up before its read timeout, not after
    assert server.hung_up.wait(timeout=5)  # the client closed the connection without reading the rest
    assert result.error_message is not None
    assert result.error_message == "HTTP 500 with a body that is not JSON (longer than the read cap)"


# -- no secret in what is recorded ---------------------------------------------------------------------


def test_results_never_carry_secret_material(stub: CapillaryStub) -> None:
    recorded = wire()
    results: list[ResendResult] = []

    basic = make_client(stub.base_url, FakeCredentials(BASIC), session=recorded.session)
    results.append(basic.resend(MESSAGE_ID))
    stub.script(MESSAGE_ID + 1, Behaviour.UNAUTHORIZED, Behaviour.UNAUTHORIZED)
    results.append(basic.resend(MESSAGE_ID + 1))
    stub.script(MESSAGE_ID + 2, Behaviour.FORBIDDEN, Behaviour.FORBIDDEN)
    results.append(basic.resend(MESSAGE_ID + 2))
    stub.script(MESSAGE_ID + 3, Behaviour.DROP_AFTER_RESEND)
    results.append(basic.resend(MESSAGE_ID + 3))

    oauth = make_client(stub.base_url, FakeCredentials(OAUTH), session=recorded.session)
    results.append(oauth.resend(MESSAGE_ID + 4))
    stub.fail_next(Behaviour.TOKEN_EXPIRED, Behaviour.TOKEN_EXPIRED)
    results.append(oauth.resend(MESSAGE_ID + 5))
    results.append(oauth.resend(MESSAGE_ID + 6))
    stub.set_oauth_secret("something-else")
    stub.expire_tokens()
    results.append(oauth.resend(MESSAGE_ID + 7))

    tokens = {
        exchange.request_headers[OAUTH_HEADER]
        for exchange in recorded.on(RESEND_PATH)
        if OAUTH_HEADER in exchange.request_headers
    }
    assert len(tokens) == 3
    secrets = {
        DOC_PASSWORD,
        DOC_MD5,
        md5_hex(DOC_PASSWORD),
        DOC_BASIC_HEADER.split()[1],
        CLIENT_SECRET,
        *tokens,
    }
    assert [result.verdict for result in results] == [
        Verdict.RESENT,
        Verdict.AUTH_FAILED,
        Verdict.AUTH_FAILED,
        Verdict.UNCERTAIN,
        Verdict.RESENT,
        Verdict.AUTH_FAILED,
        Verdict.RESENT,
        Verdict.AUTH_FAILED,
    ]
    for result in results:
        for text in (repr(result), str(result), result.error_message or ""):
            for secret in secrets:
                assert secret not in text


def test_token_refused_inside_http_200_is_an_auth_failure(own_server: Callable[..., OwnServer]) -> None:
    refusal = json.dumps(
        {"data": None, "errors": [{"code": 320001, "message": "Invalid client key and secret"}]}
    )
    server = own_server(lambda handler, seen: handler.answer(200, refusal.encode()))
    credentials = FakeCredentials(OAuthCredentials(CLIENT_KEY, "not-the-secret"))

    result = make_client(server.base_url, credentials).resend(MESSAGE_ID)

    assert result.verdict is Verdict.AUTH_FAILED
    assert result.error_code == 320001
    assert credentials.invalidated  # the secret is read again, in case it was rotated
    assert all(seen.path.endswith("/token/generate") for seen in server.seen)


def test_an_error_beside_a_new_message_id_is_uncertain_not_retried(
    own_server: Callable[..., OwnServer],
) -> None:
    body = json.dumps(
        {"resentMessageId": 1748743190124, "errors": [{"code": 9999, "message": "undocumented"}]}
    ).encode()
    server = own_server(lambda handler, seen: handler.answer(200, body))

    result = make_client(server.base_url, FakeCredentials(BASIC)).resend(MESSAGE_ID)

    assert result.verdict is Verdict.UNCERTAIN
    assert len(server.seen) == 1
