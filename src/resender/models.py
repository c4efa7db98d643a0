"""Values that cross module boundaries: statuses, notices read from events, and Capillary's answers."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


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


@dataclass(frozen=True, slots=True)
class ResendResult:
    verdict: Verdict
    resent_message_id: int | None = None
    org_id: int | None = None
    request_id: str | None = None
    error_code: int | None = None
    error_message: str | None = None
    http_status: int | None = None
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
