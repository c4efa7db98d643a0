"""``resender invoke``: the real handler on event files, and what the outcomes table says it did.

The function's wiring is built for the environment the command was given (its own, an ``--env-vars`` file,
the options) and handed to the handler as its container, as Lambda would build it from that environment.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from resender.cli.errors import OperatorError
from resender.cli.rendering import cell, iso, render_table
from resender.cli.status import int_or_none
from resender.cli.target import AwsTarget
from resender.events import MessageIdParser, Notice, parse_event
from resender.store import OutcomeStore

#: What a record that this invocation did not act on is shown as: never the status it merely found.
DUPLICATE: Final = "DUPLICATE"


@dataclass(frozen=True, slots=True)
class RecordOutcome:
    """What the outcomes table says about one record of an event file after the handler ran."""

    record_id: str
    message_id: int | None
    status: str | None
    resent_message_id: int | None = None
    detail: str | None = None
    #: For a DUPLICATE row: the status this invocation found, which an earlier record or run produced.
    found_status: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "recordId": self.record_id,
            "messageId": self.message_id,
            "status": self.status,
            "foundStatus": self.found_status,
            "resentMessageId": self.resent_message_id,
            "detail": self.detail,
        }


def record_outcomes(
    event: Mapping[str, Any],
    store: OutcomeStore,
    message_id_path: str = "messageId",
    *,
    invoked_at: str | None = None,
) -> list[RecordOutcome]:
    """One row per record of ``event``: what this invocation did with it.

    The stored outcome of its id when this invocation wrote it (``updatedAt`` at or after ``invoked_at``);
    ``DUPLICATE`` with the status found when the id came twice in the batch or was settled before, so a
    replay never looks like a second resend.
    """
    try:
        _, deliveries = parse_event(event)
    except ValueError as error:
        return [RecordOutcome("-", None, None, detail=str(error))]
    parser = MessageIdParser(message_id_path)
    rows: list[RecordOutcome] = []
    first_record: dict[int, str] = {}
    for delivery in deliveries:
        parsed = parser.parse(delivery)
        if not isinstance(parsed, Notice):
            rows.append(RecordOutcome(delivery.record_id, None, "POISON", detail=parsed.reason))
            continue
        item = store.get(parsed.message_id) or {}
        status = item.get("status")
        resent = int_or_none(item.get("resentMessageId"))
        earlier = first_record.setdefault(parsed.message_id, delivery.record_id)
        if earlier != delivery.record_id:
            detail: str | None = f"duplicate of record {earlier} in this batch: handled once"
        elif invoked_at is not None and status and str(item.get("updatedAt", "")) < invoked_at:
            detail = f"already {status} before this invocation: acknowledged, not resent again"
        else:
            rows.append(
                RecordOutcome(delivery.record_id, parsed.message_id, status, resent, item.get("errorMessage"))
            )
            continue
        rows.append(RecordOutcome(delivery.record_id, parsed.message_id, DUPLICATE, resent, detail, status))
    return rows


def load_env_vars(path: str) -> dict[str, str]:
    """``sam local invoke --env-vars`` files: ``{"Parameters": {...}}`` or ``{"<FunctionId>": {...}}``."""
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise OperatorError(f"cannot read --env-vars {path}: {error}") from None
    if not isinstance(document, dict):
        raise OperatorError(f"--env-vars {path}: expected a JSON object")
    # "Parameters" applies to every function; a function's own section wins over it.
    values: dict[str, Any] = dict(document.get("Parameters") or {})
    for name, section in document.items():
        if name != "Parameters" and isinstance(section, dict):
            values.update(section)
    return {name: str(value) for name, value in values.items() if value is not None}


def confirm_real_resends(target: AwsTarget, environ: Mapping[str, str], *, assume_yes: bool) -> None:
    """Invoking against real AWS or a real Capillary sends real messages to customers: ask first."""
    from resender.settings import LOOPBACK_HOSTS

    capillary = environ.get("CAPILLARY_BASE_URL") or ""
    remote = [
        f"{what} {url or 'the real AWS'}"
        for what, url in (("AWS", target.endpoint_url or ""), ("Capillary", capillary))
        if (urlsplit(url).hostname or "").lower() not in LOOPBACK_HOSTS
    ]
    if not remote or assume_yes:
        return
    question = f"This invocation talks to {' and '.join(remote)} and may resend real messages."
    if not sys.stdin.isatty():
        raise OperatorError(f"{question} Pass --yes to go ahead without a terminal to confirm on.")
    answer = input(f"{question} Continue? [y/N] ")
    if answer.strip().lower() not in ("y", "yes"):
        raise OperatorError("not confirmed; nothing was invoked")


def invoke_files(
    events: Sequence[tuple[str, dict[str, Any]]], environ: Mapping[str, str], target: AwsTarget
) -> tuple[list[dict[str, Any]], bool]:
    """Each event through the handler, on a container wired for ``environ``; the documents and whether
    any invocation raised."""
    from resender.app import reset_container
    from resender.local.runner import invoke
    from resender.settings import Settings

    settings = Settings.from_env(environ)  # a configuration error is the command's, not each invocation's
    store = OutcomeStore(target.dynamodb(), settings.outcomes_table)
    reset_container(target.container(settings))
    results = []
    try:
        for name, event in events:
            # Outcomes written from now on are this invocation's; older ones were found, not made.
            invoked_at = iso(datetime.now(UTC) - timedelta(milliseconds=1))
            results.append((invoke(event, name), event, invoked_at))
    finally:
        reset_container()
    documents: list[dict[str, Any]] = [
        {
            "eventFile": invocation.event_file,
            "response": invocation.response,
            "error": invocation.error,
            # A failed invocation produced no outcome: whatever the table holds came from elsewhere.
            "outcomes": []
            if invocation.error
            else [
                row.to_json()
                for row in record_outcomes(event, store, settings.message_id_path, invoked_at=invoked_at)
            ],
        }
        for invocation, event, invoked_at in results
    ]
    return documents, any(invocation.error for invocation, _, _ in results)


def invocation_lines(documents: Sequence[Mapping[str, Any]]) -> list[str]:
    """Each file's batch response (or error), then one table row per record."""
    lines = []
    for document in documents:
        shown = json.dumps(document["response"]) if document["error"] is None else document["error"]
        lines.append(f"{document['eventFile']}: {shown}")
    lines.append("")
    header = ("event file", "messageId", "status", "resentMessageId", "detail")
    rows = [
        (
            document["eventFile"],
            cell(row["messageId"]),
            cell(f"{row['status']} ({row['foundStatus']})" if row["foundStatus"] else row["status"]),
            cell(row["resentMessageId"]),
            cell(row["detail"]),
        )
        for document in documents
        for row in document["outcomes"]
    ]
    lines.append(render_table(rows, header))
    return lines
