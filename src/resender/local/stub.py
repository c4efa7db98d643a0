"""An HTTP server that emulates Capillary's resend API, for integration tests and the local demo.

It answers ``POST /v2/communications/resend`` and ``POST /v3/oauth/token/generate`` the way
Capillary's documentation describes, and can be told to misbehave in the ways the real service
and the proxies in front of it do: errors inside HTTP 200, throttling, HTML pages, dropped
connections and answers that never come back in time.

Run ``python -m resender.local.stub --port 8080`` to serve it in the foreground.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import hmac
import json
import secrets
import signal
import socket
import socketserver
import sys
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType, TracebackType
from typing import Any, Final, cast
from urllib.parse import urlsplit

__all__ = [
    "ORG_ID",
    "RESEND_PATH",
    "TOKEN_PATH",
    "Behaviour",
    "CapillaryStub",
    "ResendCall",
    "basic_auth_header",
    "main",
]

ORG_ID: Final = 100737
RESEND_PATH: Final = "/v2/communications/resend"
TOKEN_PATH: Final = "/v3/oauth/token/generate"  # noqa: S105 - a URL path, not a secret

# Capillary's own example resentMessageId; issued ids start just above it so they look realistic.
_FIRST_RESENT_ID: Final = 1_748_743_190_124
# Bodies are a few dozen bytes; the cap stops a confused client from making the stub buffer megabytes.
_MAX_BODY_BYTES: Final = 64 * 1024
# How long stop() waits for handler threads after releasing them; they are daemons, so a stuck one
# cannot keep the process alive anyway.
_JOIN_SECONDS: Final = 2.0
_INVALID_INPUT: Final = "Input is invalid, Please check request parameters or input xml/json"


class Behaviour(StrEnum):
    """What the stub does for one resend call."""

    OK = "ok"
    NOT_FOUND = "not_found"
    REJECTED = "rejected"
    UNAUTHORIZED = "unauthorized"
    TOKEN_EXPIRED = "token_expired"  # noqa: S105 - a behaviour name, not a secret
    FORBIDDEN = "forbidden"
    SERVER_ERROR = "server_error"
    BAD_GATEWAY = "bad_gateway"
    GATEWAY_TIMEOUT = "gateway_timeout"
    THROTTLED = "throttled"
    SEARCH_BUSY = "search_busy"
    CUSTOMER_BUSY = "customer_busy"
    AUTH_UNAVAILABLE = "auth_unavailable"
    HTML_ERROR = "html_error"
    HTML_OK = "html_ok"
    NO_RESENT_ID = "no_resent_id"
    DROP_AFTER_RESEND = "drop_after_resend"
    HANG_AFTER_RESEND = "hang_after_resend"
    # The resend is done, then the answer drips: headers at once, the body a byte per drip_interval_seconds.
    DRIP_AFTER_RESEND = "drip_after_resend"
    # The resend is done, and something on the way mangles the success answer.
    EMPTY_OK = "empty_ok"
    NULL_OK = "null_ok"
    LIST_OK = "list_ok"
    OVERSIZED_OK = "oversized_ok"
    # An error beside the id of a resend that was made.
    RESENT_BUT_UNAUTHORIZED = "resent_but_unauthorized"
    RESENT_BUT_BUSY = "resent_but_busy"
    # HTTP 500 whose error message echoes the request: its headers, its body, the decoded Basic credentials
    # (the md5 of the password, also in upper case).
    ECHO_REQUEST = "echo_request"


#: Behaviours after which Capillary has resent the message, whatever the client ends up seeing.
_PERFORMED: Final = frozenset(
    {
        Behaviour.OK,
        Behaviour.DROP_AFTER_RESEND,
        Behaviour.HANG_AFTER_RESEND,
        Behaviour.DRIP_AFTER_RESEND,
        Behaviour.EMPTY_OK,
        Behaviour.NULL_OK,
        Behaviour.LIST_OK,
        Behaviour.OVERSIZED_OK,
        Behaviour.RESENT_BUT_UNAUTHORIZED,
        Behaviour.RESENT_BUT_BUSY,
    }
)

#: How a malformed OAuth token is spoiled (``token_flaw``): each is a value an HTTP header cannot carry.
TOKEN_FLAWS: Final = {
    "newline": lambda token: f"{token}\r\nX-Injected: 1",
    "leading_space": lambda token: f" {token}",
    "non_latin1": lambda token: f"{token}\u20ac",
}

#: Behaviours answered with Capillary's error envelope: (HTTP status, error code, message).
_JSON_ERRORS: Final[dict[Behaviour, tuple[int, int, str]]] = {
    Behaviour.REJECTED: (400, 400, _INVALID_INPUT),
    Behaviour.UNAUTHORIZED: (401, 401, "Unauthorized"),
    Behaviour.FORBIDDEN: (403, 4000, "Client doesn't have access to the resource"),
    Behaviour.SERVER_ERROR: (500, 500, "Internal server error"),
    Behaviour.BAD_GATEWAY: (502, 502, "Bad gateway"),
    Behaviour.GATEWAY_TIMEOUT: (504, 504, "Gateway timeout"),
    Behaviour.THROTTLED: (429, 429, "Too many requests, try after some time"),
    Behaviour.SEARCH_BUSY: (461, 461, "search engine busy, try after some time"),
    Behaviour.CUSTOMER_BUSY: (
        521,
        521,
        "multiple actions running for the same customer, try after some time",
    ),
    Behaviour.AUTH_UNAVAILABLE: (503, 4001, "authorization status unavailable, try again after some time"),
}

# http.server writes an empty reason phrase for statuses it does not know; some clients log it.
_REASONS: Final = {461: "Search Engine Busy", 498: "Token Expired", 521: "Customer Busy"}

_HTML_BAD_GATEWAY: Final = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)
_HTML_CAPTIVE: Final = (
    b"<!DOCTYPE html>\n<html><head><title>Sign in to continue</title></head>\n"
    b"<body><h1>Network access requires sign-in</h1><form method='post'>"
    b"<input name='user'><input name='password' type='password'></form></body></html>\n"
)


@dataclass(frozen=True)
class ResendCall:
    """One request the stub received on the resend path."""

    message_id: int | None
    behaviour: Behaviour
    performed: bool
    resent_message_id: int | None
    auth: str
    at: float = 0.0  # time.time() when the call arrived, to count calls per window


@dataclass(frozen=True)
class _Reply:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()
    # Proxy pages come from something other than Capillary, so they carry no Capillary request id.
    request_id: bool = True
    drop: bool = False
    hang: bool = False
    drip: bool = False


@dataclass(frozen=True)
class _Token:
    expires_monotonic: float
    expires_at: datetime


def basic_auth_header(username: str, password: str) -> str:
    """The ``Authorization`` value Capillary expects: base64 of ``username:md5_hex(password)``."""
    digest = hashlib.md5(password.encode(), usedforsecurity=False).hexdigest()
    return "Basic " + base64.b64encode(f"{username}:{digest}".encode()).decode("ascii")


def _json(status: int, payload: object, headers: tuple[tuple[str, str], ...] = ()) -> _Reply:
    return _Reply(status, json.dumps(payload).encode(), headers=headers)


def _errors(status: int, code: int, message: str, headers: tuple[tuple[str, str], ...] = ()) -> _Reply:
    payload = {"warnings": [], "errors": [{"status": False, "code": code, "message": message}]}
    return _json(status, payload, headers)


def _expired(at: datetime) -> _Reply:
    return _errors(498, 498, f"Token expired at {at.strftime('%Y-%m-%dT%H:%M:%SZ')}")


def _parse_message_id(body: bytes) -> int | None:
    try:
        payload = json.loads(body)
    except ValueError:
        return None
    if not isinstance(payload, dict):
        return None
    value = payload.get("messageId")
    # bool is an int subclass, and JSON true must not pass as message id 1.
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        return None
    return value


class CapillaryStub:
    """Emulates Capillary's resend and OAuth endpoints on a local port.

    State is shared between handler threads and the test thread, so every read and write of it
    happens under one lock.
    """

    def __init__(
        self,
        *,
        username: str = "store.server",
        password: str = "server123",  # noqa: S107 - Capillary's published demo credentials
        client_key: str = "demo-client-key",
        client_secret: str = "demo-client-secret",  # noqa: S107 - demo credentials, printed on purpose
        token_ttl_seconds: int = 300,
        latency_seconds: float = 0.0,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.latency_seconds = latency_seconds
        self.retry_after_seconds: float = 7
        # A fixed-window limit as Capillary enforces per API key: (calls, window seconds); None for none.
        self.window_limit: tuple[int, float] | None = None
        self._window_start = 0.0
        self._window_calls = 0
        self._throttled = 0
        self.hang_seconds = 30.0
        self.drip_interval_seconds = 0.2
        # A key of TOKEN_FLAWS: every token handed out from now on is spoiled that way.
        self.token_flaw: str | None = None
        # (bytes written, bytes in the body) of every dripped answer, once it ended.
        self._drips: list[tuple[int, int]] = []
        self.not_found_ids: set[int] = set()
        self.rejected_ids: set[int] = set()
        self.token_ttl_seconds = token_ttl_seconds
        self._username = username
        self._password = password
        self._client_key = client_key
        self._client_secret = client_secret
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._calls: list[ResendCall] = []
        self._scripts: dict[int, deque[Behaviour]] = {}
        self._fail_next: deque[Behaviour] = deque()
        self._tokens: dict[str, _Token] = {}
        self._token_requests = 0
        self._last_resent_id = _FIRST_RESENT_ID
        self._host = host
        # Binding here rather than in start() makes base_url usable before the server runs.
        self._server: _Server | None = _Server((host, port), self)
        self._port = int(self._server.server_address[1])
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://{self._host}:{self._port}"

    def start(self) -> CapillaryStub:
        """Serve in a background thread; after stop() it serves again on the same port."""
        if self._thread is not None:
            return self
        if self._server is None:
            self._server = _Server((self._host, self._port), self)
        server = self._server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"capillary-stub-{self._port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, release hanging requests and close every connection."""
        server, thread = self._server, self._thread
        self._server, self._thread = None, None
        if server is None:
            return
        server.stopping.set()
        if thread is not None:
            server.shutdown()
            thread.join(_JOIN_SECONDS)
        server.server_close()
        server.release_connections(time.monotonic() + _JOIN_SECONDS)

    def __enter__(self) -> CapillaryStub:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- configuration -------------------------------------------------------------------------

    def script(self, message_id: int, *behaviours: Behaviour) -> None:
        """The next resend calls for ``message_id`` get ``behaviours`` in order, then the default."""
        with self._lock:
            self._scripts.setdefault(message_id, deque()).extend(behaviours)

    def fail_next(self, *behaviours: Behaviour) -> None:
        """The next resend calls for any id get ``behaviours`` in order; wins over script()."""
        with self._lock:
            self._fail_next.extend(behaviours)

    def set_basic_password(self, password: str) -> None:
        with self._lock:
            self._password = password

    def set_oauth_secret(self, client_secret: str) -> None:
        """Rotate the client secret; tokens already issued stay valid until they expire."""
        with self._lock:
            self._client_secret = client_secret

    def expire_tokens(self) -> None:
        """Every token issued so far is answered with 498 from now on."""
        now_monotonic, now = time.monotonic(), datetime.now(UTC)
        with self._lock:
            for token in self._tokens:
                self._tokens[token] = _Token(now_monotonic, now)

    def reset(self) -> None:
        """Forget scripts, calls, counters and tokens; credentials and settings stay."""
        with self._lock:
            self._scripts.clear()
            self._fail_next.clear()
            self._calls.clear()
            self._tokens.clear()
            self._throttled = 0
            self._token_requests = 0
            # The resent-id counter keeps going: ids must stay unique across resets.

    # -- observation ---------------------------------------------------------------------------

    @property
    def resend_calls(self) -> list[ResendCall]:
        with self._lock:
            return list(self._calls)

    @property
    def throttled(self) -> int:
        """Calls refused by the window limit."""
        with self._lock:
            return self._throttled

    def calls_per_window(self, seconds: float) -> dict[int, int]:
        """Authenticated resend calls, counted per fixed window of ``seconds`` since the epoch."""
        with self._lock:
            counts: dict[int, int] = {}
            for call in self._calls:
                if call.auth != "none" and call.behaviour is not Behaviour.UNAUTHORIZED:
                    window = int(call.at // seconds)
                    counts[window] = counts.get(window, 0) + 1
            return counts

    def resends_performed(self, message_id: int | None = None) -> int:
        with self._lock:
            return sum(
                1 for c in self._calls if c.performed and (message_id is None or c.message_id == message_id)
            )

    @property
    def token_requests(self) -> int:
        with self._lock:
            return self._token_requests

    @property
    def issued_tokens(self) -> list[str]:
        """Every OAuth token handed out, so tests can prove none of them is ever logged."""
        with self._lock:
            return list(self._tokens)

    @property
    def drips(self) -> list[tuple[int, int]]:
        """(bytes written, body length) of each dripped answer that has ended (finished or hung up on)."""
        with self._lock:
            return list(self._drips)

    def wait_for_drips(self, count: int, timeout: float = 10.0) -> bool:
        """Block until ``count`` dripped answers have ended; False if ``timeout`` passed first."""
        with self._changed:
            return self._changed.wait_for(lambda: len(self._drips) >= count, timeout)

    def _drip_ended(self, written: int, total: int) -> None:
        with self._changed:
            self._drips.append((written, total))
            self._changed.notify_all()

    def wait_for_resend_calls(self, count: int, timeout: float = 5.0) -> bool:
        """Block until at least ``count`` resend calls were recorded; False if ``timeout`` passed first.

        A call is recorded before its response is written, so this is how a test learns that a
        request which will hang or drop has reached the stub.
        """
        with self._changed:
            return self._changed.wait_for(lambda: len(self._calls) >= count, timeout)

    # -- request handling (called from handler threads) ----------------------------------------

    def _handle_resend(
        self, oauth_token: str | None, authorization: str | None, body: bytes, request_headers: str = ""
    ) -> _Reply:
        message_id = _parse_message_id(body)
        with self._lock:
            auth, failure = self._authenticate(oauth_token, authorization)
            if failure is not None:
                behaviour = Behaviour.TOKEN_EXPIRED if failure.status == 498 else Behaviour.UNAUTHORIZED
                self._record(ResendCall(message_id, behaviour, False, None, auth, time.time()))
                return failure
            if message_id is None:
                self._record(ResendCall(None, Behaviour.REJECTED, False, None, auth, time.time()))
                return self._reply_for(Behaviour.REJECTED, 0, None)
            now = time.time()
            limited = self._over_window_limit(now)
            if limited is not None:
                self._record(ResendCall(message_id, Behaviour.THROTTLED, False, None, auth, now))
                status, code, message = _JSON_ERRORS[Behaviour.THROTTLED]
                return _errors(status, code, message, (("Retry-After", f"{limited:.3f}"),))
            behaviour = self._next_behaviour(message_id)
            resent_id: int | None = None
            if behaviour in _PERFORMED:
                self._last_resent_id += 1
                resent_id = self._last_resent_id
            self._record(ResendCall(message_id, behaviour, behaviour in _PERFORMED, resent_id, auth, now))
            if behaviour is Behaviour.ECHO_REQUEST:
                return self._echo(authorization, body, request_headers)
            return self._reply_for(behaviour, message_id, resent_id)

    def _over_window_limit(self, now: float) -> float | None:
        """Seconds until the current window ends if this call exceeds the limit, else None (and count it)."""
        if self.window_limit is None:
            return None
        calls, seconds = self.window_limit
        start = now - now % seconds
        if start != self._window_start:
            self._window_start, self._window_calls = start, 0
        self._window_calls += 1
        if self._window_calls <= calls:
            return None
        self._throttled += 1
        return start + seconds - now

    def _handle_token(self, body: bytes) -> _Reply:
        try:
            payload = json.loads(body)
        except ValueError:
            payload = None
        key = payload.get("key") if isinstance(payload, dict) else None
        secret = payload.get("secret") if isinstance(payload, dict) else None
        with self._lock:
            self._token_requests += 1
            valid = (
                isinstance(key, str)
                and isinstance(secret, str)
                and hmac.compare_digest(key.encode(), self._client_key.encode())
                and hmac.compare_digest(secret.encode(), self._client_secret.encode())
            )
            if not valid:
                return _json(
                    401,
                    {"data": None, "errors": [{"code": 320001, "message": "Invalid client key and secret"}]},
                )
            token = secrets.token_urlsafe(32)
            if self.token_flaw is not None:
                token = TOKEN_FLAWS[self.token_flaw](token)
            ttl = self.token_ttl_seconds
            self._tokens[token] = _Token(
                time.monotonic() + ttl, datetime.fromtimestamp(time.time() + ttl, UTC)
            )
        return _json(200, {"data": {"accessToken": token, "ttlSeconds": ttl}, "errors": None})

    def _authenticate(self, oauth_token: str | None, authorization: str | None) -> tuple[str, _Reply | None]:
        unauthorized = _errors(*_JSON_ERRORS[Behaviour.UNAUTHORIZED])
        if oauth_token is not None:
            token = self._tokens.get(oauth_token.strip())
            if token is None:
                return "oauth", unauthorized
            if time.monotonic() >= token.expires_monotonic:
                return "oauth", _expired(token.expires_at)
            return "oauth", None
        if authorization is not None and authorization[:6].lower() == "basic ":
            expected = basic_auth_header(self._username, self._password)[6:]
            if hmac.compare_digest(authorization[6:].strip().encode(), expected.encode()):
                return "basic", None
            return "basic", unauthorized
        return "none", unauthorized

    def _echo(self, authorization: str | None, body: bytes, request_headers: str) -> _Reply:
        """A server that quotes the request back in its error: what a scrubber must catch."""
        decoded = ""
        if authorization is not None and authorization[:6].lower() == "basic ":
            with contextlib.suppress(ValueError):
                decoded = base64.b64decode(authorization[6:].strip()).decode("utf-8", errors="replace")
        echoed = (
            f"cannot process request; headers: {request_headers!r}; body: {body.decode(errors='replace')}; "
            f"credentials: {decoded}; password digest: {decoded.partition(':')[2].upper()}"
        )
        return _errors(500, 500, echoed)

    def _next_behaviour(self, message_id: int) -> Behaviour:
        if self._fail_next:
            return self._fail_next.popleft()
        scripted = self._scripts.get(message_id)
        if scripted:
            behaviour = scripted.popleft()
            if not scripted:
                del self._scripts[message_id]
            return behaviour
        if message_id in self.not_found_ids:
            return Behaviour.NOT_FOUND
        if message_id in self.rejected_ids:
            return Behaviour.REJECTED
        return Behaviour.OK

    def _reply_for(self, behaviour: Behaviour, message_id: int, resent_id: int | None) -> _Reply:
        if behaviour in _JSON_ERRORS:
            status, code, message = _JSON_ERRORS[behaviour]
            headers: tuple[tuple[str, str], ...] = ()
            if behaviour is Behaviour.THROTTLED:
                headers = (("Retry-After", str(self.retry_after_seconds)),)
            return _errors(status, code, message, headers)
        if behaviour is Behaviour.NOT_FOUND:
            # Capillary's published example puts this error under HTTP 200.
            message = f"Message not found for orgId: {ORG_ID} and messageId: {message_id}"
            return _errors(200, 4223, f"Failed to resend message : {message}")
        if behaviour is Behaviour.TOKEN_EXPIRED:
            return _expired(datetime.now(UTC))
        if behaviour is Behaviour.HTML_ERROR:
            return _Reply(502, _HTML_BAD_GATEWAY, "text/html", request_id=False)
        if behaviour is Behaviour.HTML_OK:
            return _Reply(200, _HTML_CAPTIVE, "text/html; charset=utf-8", request_id=False)
        if behaviour is Behaviour.NO_RESENT_ID:
            return _json(200, {"warnings": []})
        if behaviour is Behaviour.EMPTY_OK:
            return _Reply(200)
        if behaviour is Behaviour.NULL_OK:
            return _Reply(200, b"null")
        if behaviour is Behaviour.LIST_OK:
            return _json(200, [{"resentMessageId": resent_id}])
        if behaviour is Behaviour.OVERSIZED_OK:
            padding = "x" * (_MAX_BODY_BYTES + 1024)
            return _json(200, {"orgId": ORG_ID, "warnings": [padding], "resentMessageId": resent_id})
        if behaviour is Behaviour.RESENT_BUT_UNAUTHORIZED:
            payload = {"resentMessageId": resent_id, "errors": [{"code": 401, "message": "Unauthorized"}]}
            return _json(401, payload)
        if behaviour is Behaviour.RESENT_BUT_BUSY:
            status, code, text = _JSON_ERRORS[Behaviour.AUTH_UNAVAILABLE]
            return _json(status, {"resentMessageId": resent_id, "errors": [{"code": code, "message": text}]})
        ok = _json(
            200,
            {
                "orgId": ORG_ID,
                "undeliveredMessageId": message_id,
                "resentMessageId": resent_id,
                "warnings": [],
            },
        )
        if behaviour is Behaviour.DROP_AFTER_RESEND:
            return _Reply(ok.status, drop=True)
        if behaviour is Behaviour.HANG_AFTER_RESEND:
            return _Reply(ok.status, ok.body, hang=True)
        if behaviour is Behaviour.DRIP_AFTER_RESEND:
            return _Reply(ok.status, ok.body, drip=True)
        return ok

    def _record(self, call: ResendCall) -> None:
        self._calls.append(call)
        self._changed.notify_all()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # stop() joins handler threads itself, with a deadline: the stdlib join has none.
    block_on_close = False

    def __init__(self, address: tuple[str, int], stub: CapillaryStub) -> None:
        self.stub = stub
        # Set by stop(): ends every latency and hang wait so shutdown never waits on them.
        self.stopping = threading.Event()
        self._open_lock = threading.Lock()
        self._open: dict[socket.socket, threading.Thread] = {}
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN, which can stall for seconds on machines
        # with slow DNS; the name is never used here.
        socketserver.TCPServer.server_bind(self)
        self.server_name = str(self.server_address[0])
        self.server_port = int(self.server_address[1])

    def process_request(
        self, request: socket.socket | tuple[bytes, socket.socket], client_address: Any
    ) -> None:
        thread = threading.Thread(
            target=self.process_request_thread,
            args=(request, client_address),
            name="capillary-stub-handler",
            daemon=True,
        )
        if isinstance(request, socket.socket):
            with self._open_lock:
                self._open[request] = thread
        thread.start()

    def shutdown_request(self, request: socket.socket | tuple[bytes, socket.socket]) -> None:
        if isinstance(request, socket.socket):
            with self._open_lock:
                self._open.pop(request, None)
        super().shutdown_request(request)

    def handle_error(self, request: socket.socket | tuple[bytes, socket.socket], client_address: Any) -> None:
        # Clients that time out and hang up are part of the job; only genuine faults are worth a trace.
        if isinstance(sys.exception(), OSError):
            return
        super().handle_error(request, client_address)

    def release_connections(self, deadline: float) -> None:
        """Wake handlers blocked on idle keep-alive reads, then wait for them until ``deadline``."""
        with self._open_lock:
            open_now = list(self._open.items())
        for sock, _ in open_now:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for _, thread in open_now:
            thread.join(max(0.0, deadline - time.monotonic()))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "CapillaryStub/1.0"
    sys_version = ""
    # Idle keep-alive connections left by clients that never close them eventually go away.
    timeout = 60
    # Headers and body go out in two writes; with Nagle on, the body waits for the client's delayed
    # ACK (about 40 ms) on every keep-alive request.
    disable_nagle_algorithm = True

    @property
    def _server(self) -> _Server:
        return cast(_Server, self.server)

    def log_message(self, format: str, *args: Any) -> None:
        # Request lines and errors would land on stderr next to credentials-bearing headers; stay quiet.
        return

    def do_POST(self) -> None:
        body = self._read_body()
        if body is None:
            return
        path = urlsplit(self.path).path
        stub = self._server.stub
        if path == RESEND_PATH:
            reply = stub._handle_resend(
                self.headers.get("X-CAP-API-OAUTH-TOKEN"),
                self.headers.get("Authorization"),
                body,
                str(self.headers),
            )
        elif path == TOKEN_PATH:
            reply = stub._handle_token(body)
        else:
            reply = _errors(404, 404, f"Resource not found: {path}")
        self._answer(reply)

    def do_GET(self) -> None:
        self._not_allowed()

    def do_HEAD(self) -> None:
        self._not_allowed()

    def do_PUT(self) -> None:
        self._not_allowed()

    def do_PATCH(self) -> None:
        self._not_allowed()

    def do_DELETE(self) -> None:
        self._not_allowed()

    def do_OPTIONS(self) -> None:
        self._not_allowed()

    def _not_allowed(self) -> None:
        if self._read_body() is None:
            return
        path = urlsplit(self.path).path
        if path not in (RESEND_PATH, TOKEN_PATH):
            self._answer(_errors(404, 404, f"Resource not found: {path}"))
            return
        self._answer(_errors(405, 405, f"Method {self.command} not allowed", (("Allow", "POST"),)))

    def _read_body(self) -> bytes | None:
        """The request body, or None after answering a request whose body cannot be framed."""
        if self.headers.get("Transfer-Encoding"):
            # Without a length the next request on this connection cannot be found, so close it.
            self.close_connection = True
            self._send(_errors(411, 411, "Content-Length required"))
            return None
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if not 0 <= length <= _MAX_BODY_BYTES:
            self.close_connection = True
            self._send(_errors(400, 400, _INVALID_INPUT))
            return None
        return self.rfile.read(length) if length else b""

    def _answer(self, reply: _Reply) -> None:
        stopping = self._server.stopping
        latency = self._server.stub.latency_seconds
        if latency > 0 and stopping.wait(latency):
            reply = _Reply(reply.status, drop=True)
        if reply.hang and stopping.wait(self._server.stub.hang_seconds):
            reply = _Reply(reply.status, drop=True)
        self._send(reply)

    def _send(self, reply: _Reply) -> None:
        if reply.drop:
            # Closing without a byte written is what a client sees when a proxy or the network dies
            # after the request went through.
            self.close_connection = True
            return
        self.send_response(reply.status, _REASONS.get(reply.status) or HTTPStatus(reply.status).phrase)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        if reply.request_id:
            self.send_header("X-Cap-Requestid", str(uuid.uuid4()))
        for name, value in reply.headers:
            self.send_header(name, value)
        self.end_headers()
        if self.command == "HEAD":
            return
        if reply.drip:
            self._drip(reply.body)
            return
        self.wfile.write(reply.body)

    def _drip(self, body: bytes) -> None:
        stub, stopping = self._server.stub, self._server.stopping
        written = 0
        try:
            self.wfile.flush()
            for offset in range(len(body)):
                if stopping.wait(stub.drip_interval_seconds):
                    break
                self.wfile.write(body[offset : offset + 1])
                self.wfile.flush()
                written += 1
        except OSError:
            pass  # the client hung up: what it was meant to do
        finally:
            self.close_connection = written < len(body)
            stub._drip_ended(written, len(body))


def main(argv: list[str] | None = None) -> None:
    """Serve the stub in the foreground until interrupted."""
    parser = argparse.ArgumentParser(
        prog="python -m resender.local.stub",
        description="Serve an emulation of Capillary's resend API for local runs.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port to bind; 0 picks a free one")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="delay before every answer")
    args = parser.parse_args(argv)

    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    stub = CapillaryStub(host=args.host, port=args.port, latency_seconds=args.latency_ms / 1000)
    with stub:
        print(
            f"Capillary stub serving at {stub.base_url} "
            f"(basic auth: {stub._username} / {stub._password}; "
            f"oauth: key {stub._client_key} / secret {stub._client_secret})",
            flush=True,
        )
        stop.wait()


if __name__ == "__main__":
    main()
