"""``resender status``: the outcome of one messageId, and the resend chain it sits in."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from resender.cli.errors import NotFoundError
from resender.cli.rendering import cell, epoch_to_iso, error_cell, public
from resender.models import Status
from resender.store import OutcomeStore

#: How many hops of a resend chain ``status`` follows each way; the loop guard keeps real chains shorter.
MAX_CHAIN_HOPS: Final = 10


def int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass(frozen=True, slots=True)
class ChainLink:
    message_id: int
    status: str | None  # None: no outcome recorded (the message has not failed, or its item expired)
    resend_of: int | None
    resent_message_id: int | None

    @classmethod
    def of(cls, message_id: int, item: Mapping[str, Any] | None) -> ChainLink:
        item = item or {}
        return cls(
            message_id,
            item.get("status"),
            int_or_none(item.get("resendOf")),
            int_or_none(item.get("resentMessageId")),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "messageId": self.message_id,
            "status": self.status,
            "resendOf": self.resend_of,
            "resentMessageId": self.resent_message_id,
        }


@dataclass(frozen=True, slots=True)
class StatusReport:
    message_id: int
    item: dict[str, Any]
    ancestors: list[ChainLink]  # oldest first: what this message was a resend of, and so on up
    descendants: list[ChainLink]  # what its resend became, and so on down

    def to_json(self) -> dict[str, Any]:
        document = public(self.item)
        document["messageId"] = self.message_id
        document["leaseExpiresAtIso"] = epoch_to_iso(self.item.get("leaseExpiresAt"))
        document["expiresAtIso"] = epoch_to_iso(self.item.get("expiresAt"))
        document["chain"] = {
            "resendOf": self.item.get("resendOf"),
            "rootMessageId": self.item.get("rootMessageId", self.message_id),
            "depth": self.item.get("resendDepth", 0),
            "ancestors": [link.to_json() for link in self.ancestors],
            "descendants": [link.to_json() for link in self.descendants],
        }
        return document


def read_status(store: OutcomeStore, message_id: int) -> StatusReport:
    """The outcome of ``message_id`` with its resend chain; NotFoundError if it has no outcome."""
    item = store.get(message_id)
    if item is None or "status" not in item:
        resend_of = item.get("resendOf") if item else None
        message = f"no outcome recorded for messageId {message_id}"
        if resend_of is not None:
            # A link item: this message is a resend that has not failed (or not been reported) itself.
            message += f", but it is a resend of {resend_of}"
        details = {"messageId": message_id, "status": None, "resendOf": resend_of}
        raise NotFoundError(message, details)
    ancestors = _follow(store, int_or_none(item.get("resendOf")), lambda link: link.resend_of)
    descendants = _follow(
        store, int_or_none(item.get("resentMessageId")), lambda link: link.resent_message_id
    )
    return StatusReport(message_id, item, list(reversed(ancestors)), descendants)


def _follow(
    store: OutcomeStore, first: int | None, step: Callable[[ChainLink], int | None]
) -> list[ChainLink]:
    """The links from ``first`` on, each found from the one before by ``step``, without going round."""
    links: list[ChainLink] = []
    seen: set[int] = set()
    current = first
    while current is not None and current not in seen and len(links) < MAX_CHAIN_HOPS:
        seen.add(current)
        link = ChainLink.of(current, store.get(current))
        links.append(link)
        current = step(link)
    return links


def status_lines(report: StatusReport, now: float | None = None) -> list[str]:
    """The outcome as ``name  value`` lines, aligned."""
    document = report.to_json()
    rows = [
        ("messageId", str(report.message_id)),
        ("status", document["status"]),
        ("attempts", cell(document.get("attempts"))),
        ("resentMessageId", cell(document.get("resentMessageId"))),
        ("orgId", cell(document.get("orgId"))),
        ("requestId", cell(document.get("requestId"))),
        ("error", error_cell(document)),
        ("httpStatus", cell(document.get("httpStatus"))),
        ("createdAt", cell(document.get("createdAt"))),
        ("updatedAt", cell(document.get("updatedAt"))),
        ("expiresAt", cell(document.get("expiresAtIso"))),
    ]
    if document.get("answeredOrgId") is not None:
        rows.insert(5, ("answeredOrgId", f"{document['answeredOrgId']} (Capillary answered for this org)"))
    if document.get("policy"):
        rows.insert(3, ("policy", str(document["policy"])))
    if document.get("deferrals"):
        rows.append(("deferrals", f"{document['deferrals']} (held back by pacing; no delivery spent)"))
    if document.get("nextAttemptAt") and document["status"] == Status.RETRYING:
        rows.append(("nextAttemptAt", str(document["nextAttemptAt"])))
    if document["status"] == Status.IN_PROGRESS:
        live = float(document.get("leaseExpiresAt", 0)) > (time.time() if now is None else now)
        state = "live: being resent now" if live else "expired: the next delivery records UNCERTAIN"
        rows.append(("leaseExpiresAt", f"{cell(document.get('leaseExpiresAtIso'))} ({state})"))
    if document.get("forced"):
        forced = (
            f"from {document.get('forcedFrom')} by {document.get('forcedBy')} at {document.get('forcedAt')}"
        )
        if document.get("forceReason"):
            forced += f" ({document['forceReason']})"
        rows.append(("forced", forced))
    if document.get("previousResentMessageId") is not None:
        rows.append(("previously resent as", str(document["previousResentMessageId"])))
    rows.append(("resendOf", cell(document["chain"]["resendOf"])))
    rows.append(("chain", chain_line(report)))
    width = max(len(name) for name, _ in rows)
    return [f"{name.ljust(width)}  {value}" for name, value in rows]


def chain_line(report: StatusReport) -> str:
    def shown(link: ChainLink) -> str:
        return f"{link.message_id} ({link.status or 'no outcome'})"

    parts = [shown(link) for link in report.ancestors]
    parts.append(f"[{report.message_id} ({report.item['status']})]")
    parts.extend(shown(link) for link in report.descendants)
    return " -> ".join(parts)
