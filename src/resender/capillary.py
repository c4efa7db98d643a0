"""Capillary's resend API: one request per call, inside a time budget; the answer is read by :mod:`classify`.

Capillary's resend is not idempotent, so this client never repeats a request that may have reached the
server. urllib3 may retry only while *connecting* (nothing was sent yet); a read timeout, a connection that
drops after the request was written, or an answer still arriving when the call's time runs out is reported
as ``UNCERTAIN``. A request that failed while it was being built (a header value the HTTP library refuses)
never left: ``TRANSIENT``. How an answer reads (status, headers, body) is the pure function
:func:`resender.classify.classify`; this module owns the HTTP around it and hands it the credentials in
use, so that Capillary's text is scrubbed of them where it enters.
"""

from __future__ import annotations

import math
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import PurePath
from typing import Any, Final

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import (
    ConnectTimeoutError,
    LocationParseError,
    MaxRetryError,
    NewConnectionError,
)
from urllib3.exceptions import SSLError as Urllib3SSLError
from urllib3.util.retry import Retry

from resender.classify import (
    AUTH_STATUSES,
    OVER_THE_CAP,
    REQUEST_ID_HEADER,
    Unreadable,
    classify,
    clean_text,
    error_entries,
    first_code,
    read_document,
)
from resender.credentials import (
    BasicCredentials,
    CachedCredentials,
    CredentialSource,
    OAuthCredentials,
    SecretError,
)
from resender.errors import ResenderError
from resender.models import ResendResult, Verdict
from resender.settings import validate_base_url

__all__ = [
    "MAX_RESPONSE_BYTES",
    "OAUTH_HEADER",
    "REQUEST_ID_HEADER",
    "RESEND_PATH",
    "TOKEN_PATH",
    "TOKEN_RENEWAL_MARGIN_SECONDS",
    "CapillaryClient",
    "TokenError",
    "build_session",
    "connect_budget_seconds",
    "resend_budget_seconds",
]

RESEND_PATH: Final = "/v2/communications/resend"
TOKEN_PATH: Final = "/v3/oauth/token/generate"  # noqa: S105 - a URL path, not a secret
OAUTH_HEADER: Final = "X-CAP-API-OAUTH-TOKEN"

# A hostile or broken upstream must not fill memory, logs or the outcomes table.
MAX_RESPONSE_BYTES: Final = 64 * 1024
READ_CHUNK_BYTES: Final = 8 * 1024
# Tokens are renewed a little before Capillary says they expire, so a request never races the expiry.
TOKEN_RENEWAL_MARGIN_SECONDS: Final = 30.0
# A TCP and TLS handshake with Capillary's regional hosts takes well under a second from AWS; a connect that
# fails is retried (nothing was sent), so three short attempts beat one long one, and they keep the budget
# of a call small enough for the shipped function timeout (see ``worst_case_seconds``).
CONNECT_TIMEOUT_SECONDS: Final = 1.0
CONNECT_RETRIES: Final = 2
CONNECT_BACKOFF_FACTOR: Final = 0.1
# A token request is started only if it can wait this long for its answer (or half the read timeout).
MIN_TOKEN_READ_SECONDS: Final = 0.5
MIN_SOCKET_TIMEOUT_SECONDS: Final = 0.01
MAX_TOKEN_CHARS: Final = 8 * 1024


class TokenError(ResenderError):
    """No OAuth token could be obtained; ``auth_failed`` tells bad credentials from an unreachable server."""

    def __init__(self, message: str, *, auth_failed: bool, error_code: int | None = None) -> None:
        super().__init__(message)
        self.auth_failed = auth_failed
        self.error_code = error_code


class _NotSentError(ResenderError):
    """The request could not be built: not a byte of it was written."""


class _NoTimeError(ResenderError):
    """Not enough time left to start a request: nothing was sent."""


class _OutOfTimeError(ResenderError):
    """The call's deadline came while the answer was still arriving."""


@dataclass(frozen=True, slots=True)
class _Token:
    value: str
    renew_at: float
    generation: int


def build_session(pool_size: int) -> requests.Session:
    """One keep-alive session per container; retries only for connections that never carried a request."""
    retry = Retry(
        total=CONNECT_RETRIES,
        connect=CONNECT_RETRIES,
        read=0,
        redirect=0,
        status=0,
        other=0,
        # POST is deliberately absent: a read error on a resend must surface, never be retried.
        allowed_methods=frozenset({"GET"}),
        backoff_factor=CONNECT_BACKOFF_FACTOR,
        raise_on_status=False,
    )
    adapter = HTTPAdapter(pool_connections=1, pool_maxsize=pool_size, max_retries=retry)
    session = requests.Session()
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    session.trust_env = False  # a stray HTTPS_PROXY or netrc must not receive the credentials
    return session


def connect_budget_seconds(timeout_seconds: float) -> float:
    """Every connect attempt of one request and urllib3's backoff between them (none before the first)."""
    per_attempt = min(timeout_seconds, CONNECT_TIMEOUT_SECONDS)
    backoff = sum(CONNECT_BACKOFF_FACTOR * 2.0 ** (n - 1) for n in range(2, CONNECT_RETRIES + 1))
    return float((CONNECT_RETRIES + 1) * per_attempt + backoff)


def resend_budget_seconds(timeout_seconds: float) -> float:
    """``CapillaryClient.worst_case_seconds`` for a read timeout: what a configuration must leave room for."""
    return 2 * (connect_budget_seconds(timeout_seconds) + timeout_seconds)


class CapillaryClient:
    """One resend per call, inside a time budget, with an honest reading of the answer.

    Every wait is bounded by the time left before the call's deadline: each connect attempt, the read of the
    whole answer (not only each socket read), the token request, and the second attempt after an auth
    failure, which is not started when it would not fit. A call cut off after its request was sent is
    ``UNCERTAIN``; one cut off before is ``TRANSIENT``.
    """

    def __init__(
        self,
        base_url: str,
        credentials: CredentialSource,
        *,
        timeout_seconds: float = 10.0,
        session: requests.Session | None = None,
        pool_size: int = 10,
        max_text_chars: int = 512,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._base_url = validate_base_url(base_url)
        self._credentials = credentials
        self._read_timeout = timeout_seconds
        self._connect_timeout = min(timeout_seconds, CONNECT_TIMEOUT_SECONDS)
        self._connect_budget = connect_budget_seconds(timeout_seconds)
        self._session = session or build_session(pool_size)
        self._max_text = max_text_chars
        self._clock = clock
        self._token_lock = threading.Lock()
        self._token: _Token | None = None

    @property
    def request_seconds(self) -> float:
        """The longest one request can take: every connect attempt, the backoff between them, a full read."""
        return self._connect_budget + self._read_timeout

    @property
    def worst_case_seconds(self) -> float:
        """The whole budget of one :meth:`resend`; the call never takes longer, whatever Capillary does.

        Two requests' worth: the resend and a token request (an OAuth token is needed only when none is
        cached), or the resend and its second attempt after an auth failure (which arrives as an answer, in
        milliseconds). The token request is given only what the resend after it does not need, and a second
        attempt is made only when it still fits in full.
        """
        return resend_budget_seconds(self._read_timeout)

    def resend(self, message_id: int, *, deadline: float | None = None) -> ResendResult:
        """Ask Capillary to resend ``message_id`` once; an auth failure is followed by one fresh attempt.

        ``deadline`` is a reading of this client's clock (``time.monotonic`` unless told otherwise) by which
        the call returns; it is also never later than :attr:`worst_case_seconds` from now.
        """
        budget_end = self._clock() + self.worst_case_seconds
        deadline = budget_end if deadline is None else min(deadline, budget_end)
        try:
            result = self._attempt(message_id, deadline)
        except _NoTimeError as no_time:
            return ResendResult(Verdict.TRANSIENT, error_message=str(no_time))
        if result.verdict is not Verdict.AUTH_FAILED:
            return result
        try:
            return self._attempt(message_id, deadline)
        except _NoTimeError:
            note = "; no second attempt: it would not fit in the time left"
            return replace(
                result, error_message=clean_text(f"{result.error_message}{note}", (), self._max_text)
            )

    # -- one attempt --------------------------------------------------------------------------------------

    def _attempt(self, message_id: int, deadline: float) -> ResendResult:
        self._require(deadline, self.request_seconds, "to send the resend and wait for its answer")
        try:
            cached = self._credentials.get()
        except SecretError as error:
            return ResendResult(Verdict.TRANSIENT, error_message=str(error))
        try:
            headers, token = self._auth_headers(cached, deadline)
        except TokenError as error:
            if error.auth_failed:
                self._credentials.invalidate(cached.generation)
                return ResendResult(
                    Verdict.AUTH_FAILED, error_code=error.error_code, error_message=str(error)
                )
            return ResendResult(Verdict.TRANSIENT, error_message=str(error))
        # Reading the secret, or waiting while another thread fetches the token, may have used that time.
        self._require(deadline, self.request_seconds, "to send the resend and wait for its answer")
        try:
            result = self._post_resend(message_id, headers, deadline, _secrets_of(cached, token))
        except _NotSentError as not_sent:
            if token is None:
                return ResendResult(Verdict.TRANSIENT, error_message=f"{not_sent}: the request was not sent")
            # Only the token can carry a character a header refuses: never reuse it.
            self._forget_token(token)
            return ResendResult(
                Verdict.TRANSIENT,
                error_message=f"{not_sent}: the OAuth token has an invalid character and was discarded; "
                "the request was not sent",
            )
        if result.verdict is Verdict.AUTH_FAILED:
            self._forget_token(token)
            self._credentials.invalidate(cached.generation)
        return result

    def _require(self, deadline: float, seconds: float, purpose: str) -> None:
        left = deadline - self._clock()
        if left < seconds:
            raise _NoTimeError(
                f"not enough time left {purpose} ({max(left, 0.0):.1f} s of {seconds:.1f} s): "
                "the request was not sent"
            )

    # -- OAuth --------------------------------------------------------------------------------------------

    def _auth_headers(
        self, cached: CachedCredentials, deadline: float
    ) -> tuple[dict[str, str], _Token | None]:
        credentials = cached.credentials
        if isinstance(credentials, BasicCredentials):
            return credentials.headers(), None
        token = self._oauth_token(credentials, cached.generation, deadline)
        return {OAUTH_HEADER: token.value}, token

    def _oauth_token(self, credentials: OAuthCredentials, generation: int, deadline: float) -> _Token:
        # One lock so that ten threads on a cold container make one token request, not ten.
        with self._token_lock:
            token = self._token
            if token is None or token.generation != generation or self._clock() >= token.renew_at:
                # The token request gets only what the resend after it does not need.
                token_deadline = deadline - self.request_seconds
                minimum = self._connect_budget + min(self._read_timeout / 2, MIN_TOKEN_READ_SECONDS)
                self._require(token_deadline, minimum, "to request an OAuth token")
                token = self._generate_token(credentials, generation, token_deadline)
                self._token = token
            return token

    def _forget_token(self, token: _Token | None) -> None:
        with self._token_lock:
            if token is not None and self._token is token:
                self._token = None

    def _generate_token(self, credentials: OAuthCredentials, generation: int, deadline: float) -> _Token:
        payload = {"key": credentials.client_key, "secret": credentials.client_secret}
        try:
            response, content = self._exchange(TOKEN_PATH, payload, {}, deadline)
        except _NotSentError as not_sent:
            raise TokenError(f"OAuth token request not sent: {not_sent}", auth_failed=False) from None
        except _OutOfTimeError:
            raise TokenError("OAuth token request cut off: no time left", auth_failed=False) from None
        except Exception as error:  # a token request never resends: any failure is transient
            raise TokenError(
                f"OAuth token request failed: {type(error).__name__}", auth_failed=False
            ) from None
        body, _ = read_document(content)
        errors = error_entries(body)
        data = body.get("data") if isinstance(body, dict) else None
        access_token = data.get("accessToken") if isinstance(data, dict) else None
        if isinstance(access_token, str) and access_token and not errors:
            if not _valid_header_text(access_token):
                # A header cannot carry it: sending it would fail (or split the request). Never cached.
                raise TokenError(
                    "the OAuth token Capillary issued has an invalid character (a header cannot carry it); "
                    "it was discarded",
                    auth_failed=False,
                )
            ttl = data.get("ttlSeconds") if isinstance(data, dict) else None
            lifetime = float(ttl) if isinstance(ttl, int | float) and not isinstance(ttl, bool) else 300.0
            lifetime = min(max(lifetime, 0.0), 86_400.0) if math.isfinite(lifetime) else 300.0
            margin = min(TOKEN_RENEWAL_MARGIN_SECONDS, lifetime / 10)
            return _Token(access_token, self._clock() + lifetime - margin, generation)
        code = first_code(errors)
        # Capillary reports bad client credentials in ``errors`` (320001); with a 2xx or 4xx status that is a
        # refusal of these credentials, worth one re-read of the secret, not a passing failure.
        if response.status_code in AUTH_STATUSES or (response.status_code < 500 and errors):
            raise TokenError(
                f"OAuth token refused (HTTP {response.status_code}, code {code})",
                auth_failed=True,
                error_code=code,
            )
        raise TokenError(f"OAuth token request answered HTTP {response.status_code}", auth_failed=False)

    # -- the resend ---------------------------------------------------------------------------------------

    def _post_resend(
        self, message_id: int, headers: Mapping[str, str], deadline: float, secrets: tuple[str, ...]
    ) -> ResendResult:
        started = self._clock()
        try:
            response, content = self._exchange(RESEND_PATH, {"messageId": message_id}, headers, deadline)
        except _NotSentError:
            raise
        except requests.ConnectTimeout:
            return ResendResult(Verdict.TRANSIENT, error_message="connect timeout: the request was not sent")
        except requests.exceptions.SSLError as error:
            # requests raises SSLError for a refused handshake and for a TLS record that breaks while the
            # answer is read, i.e. after the request went out: only the first is safe to retry.
            if _tls_failed_before_sending(error):
                return ResendResult(
                    Verdict.TRANSIENT, error_message="TLS handshake failed: the request was not sent"
                )
            return self._uncertain("the TLS connection failed after the request was sent", started)
        except requests.ConnectionError as error:
            if _failed_before_sending(error):
                return ResendResult(
                    Verdict.TRANSIENT, error_message="connection failed: the request was not sent"
                )
            return self._uncertain("the connection dropped after the request was sent", started)
        except requests.ReadTimeout:
            return self._uncertain("no answer within the read timeout", started)
        except _OutOfTimeError:
            return self._uncertain("the answer was still arriving when the time for it ran out", started)
        except Exception as error:  # whatever broke after sending, the request may have gone
            return self._uncertain(f"the answer was lost ({type(error).__name__})", started)
        result = classify(
            response.status_code,
            response.headers,
            content,
            secrets=secrets,
            max_text_chars=self._max_text,
        )
        return replace(result, latency_ms=(self._clock() - started) * 1000)

    def _uncertain(self, reason: str, started: float) -> ResendResult:
        return ResendResult(
            Verdict.UNCERTAIN,
            error_message=f"{reason}: Capillary may have resent it",
            latency_ms=(self._clock() - started) * 1000,
        )

    # -- HTTP ---------------------------------------------------------------------------------------------

    def _exchange(
        self, path: str, payload: dict[str, Any], headers: Mapping[str, str], deadline: float
    ) -> tuple[requests.Response, bytes | Unreadable]:
        """POST ``payload`` and read the answer by ``deadline``.

        Raises ``_NotSentError`` when the request could not even be built (nothing went out), and lets any
        other error through for the caller to judge.
        """
        # One request never waits longer than its connect attempts and read timeout, nor past the call's end.
        deadline = min(deadline, self._clock() + self.request_seconds)
        request = requests.Request(
            "POST", self._base_url + path, json=payload, headers={"Accept": "application/json", **headers}
        )
        try:
            prepared = self._session.prepare_request(request)
        except Exception as error:  # a request that cannot be prepared never left
            raise _NotSentError(f"the request could not be built ({type(error).__name__})") from None
        left = deadline - self._clock()
        # The answer's first bytes are awaited only as long as the connect attempts leave room for.
        read_timeout = max(min(self._read_timeout, left - self._connect_budget), MIN_SOCKET_TIMEOUT_SECONDS)
        connect_timeout = max(min(self._connect_timeout, left), MIN_SOCKET_TIMEOUT_SECONDS)
        try:
            response = self._session.send(
                prepared,
                timeout=(connect_timeout, read_timeout),
                stream=True,  # read through _read_capped, within the cap and the deadline
                allow_redirects=False,
            )
        except Exception as error:
            if _failed_while_building(error):
                raise _NotSentError(f"the request could not be built ({type(error).__name__})") from None
            raise
        return response, _read_capped(response, deadline, self._clock)


def _read_capped(
    response: requests.Response, deadline: float, clock: Callable[[], float]
) -> bytes | Unreadable:
    """The body, or ``OVER_THE_CAP``; raises ``_OutOfTimeError`` if it is still arriving at ``deadline``.

    urllib3's read timeout bounds each socket read, not the answer: a server that drips a byte a second
    would hold a plain ``read()`` for ever. So the body is read a chunk at a time, the clock is checked
    between chunks, and the socket never waits longer than the time left.
    """
    released = False
    try:
        raw = response.raw
        sock = getattr(getattr(raw, "_connection", None), "sock", None)
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_RESPONSE_BYTES:
            left = deadline - clock()
            if left <= 0:
                raise _OutOfTimeError
            if sock is not None:
                sock.settimeout(left)
            try:
                chunk = raw.read1(min(READ_CHUNK_BYTES, MAX_RESPONSE_BYTES + 1 - size), decode_content=True)
            except Exception:
                if clock() >= deadline:
                    raise _OutOfTimeError from None
                raise
            if not chunk:
                # The whole answer was read: the connection can carry the next request.
                raw.release_conn()
                released = True
                return b"".join(chunks)
            chunks.append(chunk)
            size += len(chunk)
        return OVER_THE_CAP
    finally:
        if not released:
            response.close()


def _secrets_of(cached: CachedCredentials, token: _Token | None) -> tuple[str, ...]:
    """What an answer may echo of its request: the credentials, and the token that request carried."""
    sent = () if token is None else (token.value,)
    return (*cached.credentials.secret_values(), *sent)


def _valid_header_text(value: str) -> bool:
    """Visible ASCII only: what an HTTP header carries without question (a JWT always is)."""
    return 0 < len(value) <= MAX_TOKEN_CHARS and all("!" <= c <= "~" for c in value)


def _failed_while_building(error: BaseException) -> bool:
    """True only for an error raised before any byte of the request was written to the socket.

    requests refuses some header values and URLs before connecting; http.client refuses others (a character
    that is not Latin-1, a control character) in ``putrequest``/``putheader``, which only buffer: nothing is
    written until ``endheaders``. Anything raised elsewhere, i.e. after the request line and headers may have
    gone out, does not count (UNCERTAIN): the safe side.
    """
    if isinstance(
        error,
        requests.exceptions.InvalidHeader
        | requests.exceptions.InvalidURL
        | requests.exceptions.MissingSchema
        | requests.exceptions.InvalidSchema
        | LocationParseError,
    ):
        return True
    if not isinstance(error, ValueError):
        return False
    frame = error.__traceback__
    while frame is not None:
        code = frame.tb_frame.f_code
        if code.co_name in _BUFFERING_FUNCTIONS and code.co_filename.endswith(_BUFFERING_MODULES):
            return True
        frame = frame.tb_next
    return False


_BUFFERING_FUNCTIONS: Final = frozenset({"putrequest", "putheader"})
_BUFFERING_MODULES: Final = (
    str(PurePath("http", "client.py")),
    str(PurePath("urllib3", "connection.py")),
)


def _failed_before_sending(error: requests.ConnectionError) -> bool:
    cause = error.args[0] if error.args else None
    if isinstance(cause, MaxRetryError):
        cause = cause.reason
    return isinstance(cause, NewConnectionError | ConnectTimeoutError)


def _tls_failed_before_sending(error: requests.exceptions.SSLError) -> bool:
    """True only for a TLS error raised by the handshake, which ends before any byte of the request is sent.

    urllib3 wraps a refused certificate and an undecryptable record in the answer alike; only the original
    ``ssl`` error tells them apart. Anything not recognised counts as sent (UNCERTAIN): the safe side.
    """
    cause: object = error.args[0] if error.args else None
    if isinstance(cause, MaxRetryError):
        cause = cause.reason
    if isinstance(cause, Urllib3SSLError) and cause.args:
        cause = cause.args[0]
    if isinstance(cause, ssl.SSLCertVerificationError):
        return True
    if not isinstance(cause, ssl.SSLError):
        return False
    frame = cause.__traceback__
    while frame is not None:
        if frame.tb_frame.f_code.co_name == "do_handshake":  # ssl.SSLSocket.do_handshake
            return True
        frame = frame.tb_next
    return False
