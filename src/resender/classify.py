"""How one answer of Capillary's resend API is read: a pure function of (status, headers, body).

No I/O, no clock, no state: the same answer always reads the same way, so every rule can be tested from a
table (``tests/unit/test_classify.py``) and reasoned about without HTTP. The HTTP client
(:mod:`resender.capillary`) sends the request, reads the body within its cap and deadline, and hands the
three parts here. The rules, first match wins (docs/guarantees.md, "How an answer is read"):

1. The body names a resend (``resentMessageId`` present and not null): Capillary may have resent, whatever
   else the answer says. ``RESENT`` for a clean success (2xx, no errors, a positive int64 id), otherwise
   ``UNCERTAIN``. Never retried, never followed by a second attempt after an "auth failure".
2. A 2xx whose body cannot be read as a JSON object (over the read cap, cut short, empty, ``null``, not
   JSON, an HTML page, JSON that is not an object): a server accepted the request, so ``UNCERTAIN``.
3. A gateway that gave up waiting for Capillary (504, and 524/598/599, the same meaning elsewhere), or a
   502 without Capillary's own error envelope: the request may have been forwarded, so ``UNCERTAIN``.
4. Capillary's error codes in the body, whatever the HTTP status (4223 arrives with HTTP 200):
   4223 ``NOT_FOUND``; 401/403/498/4000 ``AUTH_FAILED``; 429/461/521/503/4001 and 5xx ``TRANSIENT``;
   400 ``REJECTED``; any other error or non-2xx status ``TRANSIENT`` (it says the resend was not done).
5. A 2xx JSON object without errors and without ``resentMessageId``: ``UNCERTAIN``.

Text taken from the answer (error messages, the request id header) is cleaned of the credentials in use
(:func:`resender.scrub.scrub`) and clipped before it leaves this module.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, Final

from resender.models import ResendResult, Verdict
from resender.scrub import scrub

REQUEST_ID_HEADER: Final = "X-Cap-Requestid"
NOT_FOUND_CODE: Final = 4223
REJECTED_CODE: Final = 400
AUTH_STATUSES: Final = frozenset({401, 403, 498})
AUTH_CODES: Final = frozenset({401, 403, 498, 4000})
TRANSIENT_CODES: Final = frozenset({429, 461, 500, 502, 503, 504, 521, 4001})
#: A gateway that forwarded the request and gave up waiting for the answer: nothing says what Capillary did.
GATEWAY_TIMEOUT_STATUSES: Final = frozenset({504, 524, 598, 599})
BAD_GATEWAY: Final = 502
MAX_REQUEST_ID_CHARS: Final = 128
INT64_LIMIT: Final = 2**63


@dataclass(frozen=True, slots=True)
class Unreadable:
    """The body could not be read in full; ``reason`` says why, never what it held."""

    reason: str


#: The answer was longer than the client's read cap.
OVER_THE_CAP: Final = Unreadable("longer than the read cap")


def classify(
    status: int,
    headers: Mapping[str, str],
    body: bytes | Unreadable,
    *,
    secrets: Collection[str] = (),
    max_text_chars: int = 512,
) -> ResendResult:
    """Read one answer to ``POST /v2/communications/resend``; ``latency_ms`` is left to the caller."""
    request_id = clean_text(_header(headers, REQUEST_ID_HEADER), secrets, MAX_REQUEST_ID_CHARS)
    retry_after = _retry_after(_header(headers, "Retry-After"))
    success = 200 <= status < 300

    def result(verdict: Verdict, message: str | None = None, code: int | None = None) -> ResendResult:
        return ResendResult(
            verdict,
            request_id=request_id,
            error_code=code,
            error_message=clean_text(message, secrets, max_text_chars),
            http_status=status,
            retry_after_seconds=retry_after,
        )

    document, unreadable = read_document(body)
    errors = error_entries(document)
    message = _first_message(errors)
    code = first_code(errors)

    # 1. An answer that names a resend is a resend.
    if isinstance(document, dict) and document.get("resentMessageId") is not None:
        resent = _positive_int64(document["resentMessageId"])
        if success and resent is not None and not document.get("errors"):
            return ResendResult(
                Verdict.RESENT,
                resent_message_id=resent,
                org_id=_positive_int64(document.get("orgId")),
                request_id=request_id,
                http_status=status,
            )
        detail = message or f"HTTP {status}"
        if resent is None:
            named = json.dumps(document["resentMessageId"])[:40]
            detail = f"{detail}; resentMessageId {named} is not a valid message id"
        return result(
            Verdict.UNCERTAIN,
            f"the answer names a resend beside an error ({detail}): Capillary may have resent it",
            code,
        )

    # 2. A success status whose body cannot be read: a server accepted the request.
    if success and not isinstance(document, dict):
        return result(
            Verdict.UNCERTAIN,
            f"HTTP {status} with a body that cannot be read ({unreadable}): Capillary may have resent it",
        )

    # 3. A gateway that may have forwarded the request and lost the answer.
    capillary_error = bool(errors)
    if status in GATEWAY_TIMEOUT_STATUSES or (status == BAD_GATEWAY and not capillary_error):
        detail = message or (f"a body that is {unreadable}" if unreadable else "no Capillary error")
        return result(
            Verdict.UNCERTAIN,
            f"HTTP {status} from a gateway that may have forwarded the request ({detail}): "
            "Capillary may have resent it",
            code or status,
        )

    if not isinstance(document, dict):
        if status in AUTH_STATUSES:
            return result(Verdict.AUTH_FAILED, f"HTTP {status} with a body that is not JSON", status)
        return result(Verdict.TRANSIENT, f"HTTP {status} with a body that is not JSON ({unreadable})", status)

    # 4. Capillary's error codes, read on every answer.
    codes = {_int64(error.get("code")) for error in errors}
    if NOT_FOUND_CODE in codes:
        return result(Verdict.NOT_FOUND, message, NOT_FOUND_CODE)
    if status in AUTH_STATUSES or codes & AUTH_CODES:
        return result(Verdict.AUTH_FAILED, message or f"HTTP {status}", code or status)
    if status >= 500 or status in TRANSIENT_CODES or codes & TRANSIENT_CODES:
        return result(Verdict.TRANSIENT, message or f"HTTP {status}", code or status)
    if status == 400 or REJECTED_CODE in codes:
        return result(Verdict.REJECTED, message or "HTTP 400", REJECTED_CODE)
    if errors or not success:
        # An error Capillary did not document: it says the resend was not done, so a retry is safe.
        return result(Verdict.TRANSIENT, message or f"HTTP {status}", code or status)

    # 5. A success without the id of the new message.
    return result(Verdict.UNCERTAIN, "success answer without a resentMessageId")


def read_document(body: bytes | Unreadable) -> tuple[Any, str]:
    """The parsed body (None when it is not JSON) and, for a body that is not an object, why."""
    if isinstance(body, Unreadable):
        return None, body.reason
    if not body.strip():
        return None, "empty"
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return None, "not JSON"
    if document is None:
        return None, "null"
    if not isinstance(document, dict):
        return document, f"JSON {type(document).__name__}, not an object"
    return document, ""


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is not None:
        return value
    lowered = name.lower()
    return next((v for k, v in headers.items() if k.lower() == lowered), None)


def error_entries(document: Any) -> list[dict[str, Any]]:
    errors = document.get("errors") if isinstance(document, dict) else None
    if not isinstance(errors, list):
        return []
    return [error for error in errors if isinstance(error, dict)]


def first_code(errors: list[dict[str, Any]]) -> int | None:
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
    if isinstance(value, int) and 0 <= value < INT64_LIMIT:
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 19:
        return _int64(int(value))
    return None


def _positive_int64(value: object) -> int | None:
    number = _int64(value)
    return number if number else None


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None  # HTTP-date form: rare for APIs, and the backoff floor still applies
    if math.isnan(seconds):
        return None
    return min(max(seconds, 0.0), 43_200.0)


def clean_text(text: str | None, secrets: Collection[str], limit: int) -> str | None:
    """``text`` as valid Unicode, without ``secrets``, and at most ``limit`` characters long."""
    if text is None:
        return None
    # JSON can spell a lone surrogate (\ud800) that no UTF-8 store or log accepts: replace it before use.
    text = scrub(text.encode("utf-8", errors="replace").decode("utf-8"), secrets)
    return text if len(text) <= limit else text[: limit - 3] + "..."
