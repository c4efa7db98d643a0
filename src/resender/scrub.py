"""Removes the credentials in use from text that came from outside (Capillary's error messages and headers).

A server, or a proxy in front of it, may echo the request back inside an error: the ``Authorization`` header,
the OAuth token, the body of a token request. Such text is cleaned once, where it enters the function (the
classifier and the token client call :func:`scrub`), so nothing downstream (the outcomes table, log lines,
metrics, exception messages, the dead-letter queue) ever has to think about it.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from typing import Final

REDACTED: Final = "[redacted]"


def scrub(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every secret replaced, ignoring case (an echoed md5 may be in upper case)."""
    pattern = _pattern(frozenset(secret for secret in secrets if secret))
    if pattern is None:
        return text
    return pattern.sub(REDACTED, text)


@functools.lru_cache(maxsize=64)
def _pattern(secrets: frozenset[str]) -> re.Pattern[str] | None:
    if not secrets:
        return None
    # Longest first, so that "Basic <b64>" is replaced whole rather than leaving "Basic " before a redaction.
    ordered = sorted(secrets, key=len, reverse=True)
    return re.compile("|".join(re.escape(secret) for secret in ordered), re.IGNORECASE)
