"""Values that cross module boundaries: statuses, notices read from events, and Capillary's answers."""

from __future__ import annotations

from dataclasses import dataclass, fields
from enum import StrEnum
from typing import Any


class Status(StrEnum):
    """The ``status`` attribute of an outcome item (contract)."""

    IN_PROGRESS = "IN_PROGRESS"
    RESENT = "RESENT"
    NOT_FOUND = "NOT_FOUND"
    REJECTED = "REJECTED"
    RETRYING = "RETRYING"
    UNCERTAIN = "UNCERTAIN"
    SKIPPED = "SKIPPED"


#: Statuses that end the story of a messageId: a later delivery is acknowledged without calling Capillary.
FINAL_STATUSES = frozenset(
    {Status.RESENT, Status.NOT_FOUND, Status.REJECTED, Status.UNCERTAIN, Status.SKIPPED}
)


class Verdict(StrEnum):
    """How Capillary's answer to one resend request is read."""

    RESENT = "RESENT"
    NOT_FOUND = "NOT_FOUND"
    REJECTED = "REJECTED"
    AUTH_FAILED = "AUTH_FAILED"
    TRANSIENT = "TRANSIENT"
    UNCERTAIN = "UNCERTAIN"


@dataclass(frozen=True, slots=True, kw_only=True)
class Answer:
    """What Capillary said about one message: read by the client, then stored on its outcome as it was."""

    resent_message_id: int | None = None
    org_id: int | None = None
    request_id: str | None = None
    error_code: int | None = None
    error_message: str | None = None
    http_status: int | None = None

    def answer(self) -> dict[str, Any]:
        """These fields alone, to carry them from one kind of answer to another unchanged."""
        return {field.name: getattr(self, field.name) for field in fields(Answer)}


@dataclass(frozen=True, slots=True)
class ResendResult(Answer):
    verdict: Verdict
    retry_after_seconds: float | None = None
    latency_ms: float | None = None

    @property
    def status(self) -> Status:
        """The outcome status this answer leads to."""
        return _STATUS_BY_VERDICT[self.verdict]

    @property
    def retryable(self) -> bool:
        return self.status is Status.RETRYING


_STATUS_BY_VERDICT = {
    Verdict.RESENT: Status.RESENT,
    Verdict.NOT_FOUND: Status.NOT_FOUND,
    Verdict.REJECTED: Status.REJECTED,
    Verdict.AUTH_FAILED: Status.RETRYING,
    Verdict.TRANSIENT: Status.RETRYING,
    Verdict.UNCERTAIN: Status.UNCERTAIN,
}
