"""Capillary's resend API: one request per call, and an honest reading of the answer.

Capillary's resend is not idempotent, so this client never repeats a request that may have reached the
server. urllib3 may retry only while *connecting* (nothing was sent yet); a read timeout, or a connection
that drops after the request was written, is reported as ``UNCERTAIN``. The body's ``errors`` is read on
every answer because Capillary reports "not found" (4223) with HTTP 200.
"""

from __future__ import annotations

import json
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import ConnectTimeoutError, HTTPError, MaxRetryError, NewConnectionError
from urllib3.exceptions import SSLError as Urllib3SSLError
from urllib3.util.retry import Retry

from resender.credentials import (
    BasicCredentials,
    CachedCredentials,
    CredentialsProvider,
    OAuthCredentials,
    SecretError,
)
from resender.errors import ResenderError
from resender.models import ResendResult, Verdict
from resender.settings import validate_base_url

RESEND_PATH: Final = "/v2/communications/resend"
TOKEN_PATH: Final = "/v3/oauth/token/generate"  # noqa: S105 - a URL path, not a secret
REQUEST_ID_HEADER: Final = "X-Cap-Requestid"
OAUTH_HEADER: Final = "X-CAP-API-OAUTH-TOKEN"

NOT_FOUND_CODE: Final = 4223
REJECTED_CODE: Final = 400
AUTH_STATUSES: Final = frozenset({401, 403, 498})
AUTH_CODES: Final = frozenset({401, 403, 498, 4000})
TRANSIENT_CODES: Final = frozenset({429, 461, 500, 502, 503, 504, 521, 4001})
# A hostile or broken upstream must not fill memory, logs or the outcomes table.
MAX_RESPONSE_BYTES: Final = 64 * 1024
# Tokens are renewed a little before Capillary says they expire, so a request never races the expiry.
TOKEN_RENEWAL_MARGIN_SECONDS: Final = 30.0


class TokenError(ResenderError):
    """No OAuth token could be obtained; ``auth_failed`` tells bad credentials from an unreachable server."""

    def __init__(self, message: str, *, auth_failed: bool, error_code: int | None = None) -> None:
        super().__init__(message)
        self.auth_failed = auth_failed
        self.error_code = error_code


@dataclass(frozen=True, slots=True)
class _Token:
    value: str
    renew_at: float
    generation: int


def build_session(pool_size: int) -> requests.Session:
    """One keep-alive session per container; retries only for connections that never carried a request."""
    retry = Retry(
        total=2,
        connect=2,
        read=0,
        redirect=0,
        status=0,
        other=0,
        # POST is deliberately absent: a read error on a resend must surface, never be retried.
        allowed_methods=frozenset({"GET"}),
        backoff_factor=0.1,
        raise_on_status=False,
    )
    adapter = HTTPAdapter(pool_connections=1, pool_maxsize=pool_size, max_retries=retry)
    session = requests.Session()
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    session.trust_env = False  # a stray HTTPS_PROXY or netrc must not receive the credentials
    return session


class CapillaryClient:
    def __init__(
        self,
        base_url: str,
        credentials: CredentialsProvider,
        *,
        timeout_seconds: float = 10.0,
        session: requests.Session | None = None,
        pool_size: int = 10,
        max_text_chars: int = 512,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._base_url = validate_base_url(base_url)
        self._credentials = credentials
        self._timeout = (timeout_seconds, timeout_seconds)
        self._session = session or build_session(pool_size)
        self._max_text = max_text_chars
        self._clock = clock
        self._token_lock = threading.Lock()
        self._token: _Token | None = None

    def resend(self, message_id: int) -> ResendResult:
        """Ask Capillary to resend ``message_id`` once; an auth failure is followed by one fresh attempt."""
        result = self._attempt(message_id)
        if result.verdict is Verdict.AUTH_FAILED:
            result = self._attempt(message_id)
        return result

    def _attempt(self, message_id: int) -> ResendResult:
        try:
            cached = self._credentials.get()
        except SecretError as error:
            return ResendResult(Verdict.TRANSIENT, error_message=str(error))
        try:
            headers, token = self._auth_headers(cached)
        except TokenError as error:
            if error.auth_failed:
                self._credentials.invalidate(cached.generation)
                return ResendResult(
                    Verdict.AUTH_FAILED, error_code=error.error_code, error_message=str(error)
                )
            return ResendResult(Verdict.TRANSIENT, error_message=str(error))
        result = self._post_resend(message_id, headers)
        if result.verdict is Verdict.AUTH_FAILED:
            self._forget_token(token)
            self._credentials.invalidate(cached.generation)
        return result

    def _auth_headers(self, cached: CachedCredentials) -> tuple[dict[str, str], _Token | None]:
        credentials = cached.credentials
        if isinstance(credentials, BasicCredentials):
            return credentials.headers(), None
        token = self._oauth_token(credentials, cached.generation)
        return {OAUTH_HEADER: token.value}, token

    def _oauth_token(self, credentials: OAuthCredentials, generation: int) -> _Token:
        # One lock so that ten threads on a cold container make one token request, not ten.
        with self._token_lock:
            token = self._token
            if token is None or token.generation != generation or self._clock() >= token.renew_at:
                token = self._generate_token(credentials, generation)
                self._token = token
            return token

    def _forget_token(self, token: _Token | None) -> None:
        with self._token_lock:
            if token is not None and self._token is token:
                self._token = None

    def _generate_token(self, credentials: OAuthCredentials, generation: int) -> _Token:
        try:
            response = self._session.post(
                self._base_url + TOKEN_PATH,
                json={"key": credentials.client_key, "secret": credentials.client_secret},
                headers={"Accept": "application/json"},
                timeout=self._timeout,
                stream=True,  # read through _read_capped, like every answer
                allow_redirects=False,
            )
            body = _json_or_none(_read_capped(response))
        except (requests.RequestException, HTTPError, OSError) as error:
            raise TokenError(
                f"OAuth token request failed: {type(error).__name__}", auth_failed=False
            ) from None
        errors = _errors(body)
        data = body.get("data") if isinstance(body, dict) else None
        access_token = data.get("accessToken") if isinstance(data, dict) else None
        if isinstance(access_token, str) and access_token and not errors:
            ttl = data.get("ttlSeconds") if isinstance(data, dict) else None
            lifetime = float(ttl) if isinstance(ttl, int | float) and not isinstance(ttl, bool) else 300.0
            margin = min(TOKEN_RENEWAL_MARGIN_SECONDS, lifetime / 10)
            return _Token(access_token, self._clock() + lifetime - margin, generation)
        code = _first_code(errors)
        # Capillary reports bad client credentials in ``errors`` (320001); with a 2xx or 4xx status that is a
        # refusal of these credentials, worth one re-read of the secret, not a passing failure.
        if response.status_code in AUTH_STATUSES or (response.status_code < 500 and errors):
            raise TokenError(
                f"OAuth token refused (HTTP {response.status_code}, code {code})",
                auth_failed=True,
                error_code=code,
            )
        raise TokenError(f"OAuth token request answered HTTP {response.status_code}", auth_failed=False)

    def _post_resend(self, message_id: int, headers: Mapping[str, str]) -> ResendResult:
        started = self._clock()
        try:
            response = self._session.post(
                self._base_url + RESEND_PATH,
                json={"messageId": message_id},
                headers={"Accept": "application/json", **headers},
                timeout=self._timeout,
                stream=True,
                allow_redirects=False,
            )
            content = _read_capped(response)
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
        except (requests.RequestException, HTTPError, OSError) as error:
            return self._uncertain(f"the answer was lost ({type(error).__name__})", started)
        latency = (self._clock() - started) * 1000
        return self._classify(response, content, latency)

    def _uncertain(self, reason: str, started: float) -> ResendResult:
        return ResendResult(
            Verdict.UNCERTAIN,
            error_message=f"{reason}: Capillary may have resent it",
            latency_ms=(self._clock() - started) * 1000,
        )

    def _classify(self, response: requests.Response, content: bytes, latency_ms: float) -> ResendResult:
        status = response.status_code
        request_id = _clip(response.headers.get(REQUEST_ID_HEADER), 128)
        retry_after = _retry_after(response.headers.get("Retry-After"))
        body = _json_or_none(content)

        def result(verdict: Verdict, message: str | None = None, code: int | None = None) -> ResendResult:
            return ResendResult(
                verdict,
                request_id=request_id,
                error_code=code,
                error_message=_clip(message, self._max_text),
                http_status=status,
                retry_after_seconds=retry_after,
                latency_ms=latency_ms,
            )

        if body is None:
            if status in AUTH_STATUSES:
                return result(Verdict.AUTH_FAILED, f"HTTP {status} without a JSON body", status)
            return result(Verdict.TRANSIENT, f"HTTP {status} with a body that is not JSON", status)
        errors = _errors(body)
        codes = {_int64(error.get("code")) for error in errors}
        message = _first_message(errors)
        if NOT_FOUND_CODE in codes:
            return result(Verdict.NOT_FOUND, message, NOT_FOUND_CODE)
        if status in AUTH_STATUSES or codes & AUTH_CODES:
            return result(Verdict.AUTH_FAILED, message or f"HTTP {status}", _first_code(errors) or status)
        if status == 429 or status >= 500 or status in TRANSIENT_CODES or codes & TRANSIENT_CODES:
            return result(Verdict.TRANSIENT, message or f"HTTP {status}", _first_code(errors) or status)
        if status == 400 or REJECTED_CODE in codes:
            return result(Verdict.REJECTED, message or "HTTP 400", REJECTED_CODE)
        if errors or not 200 <= status < 300:
            if isinstance(body, dict) and body.get("resentMessageId") is not None:
                # An error beside a new message id: the resend may have happened, so it must not be retried.
                return result(Verdict.UNCERTAIN, message or f"HTTP {status} with a resentMessageId")
            # An error Capillary did not document: it says the resend was not done, so a retry is safe.
            return result(Verdict.TRANSIENT, message or f"HTTP {status}", _first_code(errors) or status)
        resent = _int64(body.get("resentMessageId")) if isinstance(body, dict) else None
        if resent is None:
            return result(Verdict.UNCERTAIN, "success answer without a resentMessageId")
        org_id = _int64(body.get("orgId")) if isinstance(body, dict) else None
        return ResendResult(
            Verdict.RESENT,
            resent_message_id=resent,
            org_id=org_id,
            request_id=request_id,
            http_status=status,
            latency_ms=latency_ms,
        )


def _read_capped(response: requests.Response) -> bytes:
    try:
        if response.raw is None:
            return response.content[:MAX_RESPONSE_BYTES]
        return bytes(response.raw.read(MAX_RESPONSE_BYTES, decode_content=True))
    finally:
        response.close()


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


def _json_or_none(content: bytes) -> Any:
    try:
        return json.loads(content)
    except (ValueError, RecursionError):
        return None


def _errors(body: Any) -> list[dict[str, Any]]:
    errors = body.get("errors") if isinstance(body, dict) else None
    if not isinstance(errors, list):
        return []
    return [error for error in errors if isinstance(error, dict)]


def _first_code(errors: list[dict[str, Any]]) -> int | None:
    for error in errors:
        code = _int64(error.get("code"))
        if code is not None:
            return code
    return None


def _first_message(errors: list[dict[str, Any]]) -> str | None:
    for error in errors:
        message = error.get("message")
        if isinstance(message, str):
            return message
    return None


def _int64(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and 0 <= value < 2**63:
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 19:
        return _int64(int(value))
    return None


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None  # HTTP-date form: rare for APIs, and the backoff floor still applies
    return min(max(seconds, 0.0), 43_200.0)


def _clip(text: str | None, limit: int) -> str | None:
    if text is None:
        return None
    # JSON can spell a lone surrogate (\ud800) that no UTF-8 store or log accepts: replace it before use.
    text = text.encode("utf-8", errors="replace").decode("utf-8")
    return text if len(text) <= limit else text[: limit - 3] + "..."
