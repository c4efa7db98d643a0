"""``make demo``: every sample event through the real handler, against emulated AWS and a Capillary stub."""

from __future__ import annotations

import textwrap
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import boto3

from resender.events import MessageIdParser, Notice, parse_event
from resender.local.runner import Invocation, LocalStack, invoke, load_event, local_stack
from resender.queues import POISON_REASON_ATTRIBUTE
from resender.store import OutcomeStore, timestamp

COLUMNS = ("event file", "messageId", "orgId", "status", "resentMessageId", "reason")


def default_events_dir() -> Path:
    return Path.cwd() / "events"


def event_files(directory: Path) -> list[Path]:
    return sorted(path for path in directory.glob("*.json") if path.name != "env.json")


#: The demo's output fits a terminal of this many columns.
TERMINAL_COLUMNS = 100


def outcome_rows(
    stack: LocalStack, invocation: Invocation, event: dict[str, Any], invoked_at: str = ""
) -> list[tuple[str, ...]]:
    """One row per record: what this invocation did with it, or why it was set aside.

    An id that came twice in the batch, or was settled before this invocation (``updatedAt`` before
    ``invoked_at``), is shown as ``DUPLICATE`` with the status found, never as a second ``RESENT``.
    """
    store = OutcomeStore(
        boto3.client("dynamodb", endpoint_url=stack.resources.endpoint_url), stack.resources.table_name
    )
    parser = MessageIdParser()
    rows: list[tuple[str, ...]] = []
    seen: set[int] = set()
    _, deliveries = parse_event(event)
    for delivery in deliveries:
        parsed = parser.parse(delivery)
        if not isinstance(parsed, Notice):
            rows.append((invocation.event_file, "-", "-", "POISON -> DLQ", "-", parsed.reason))
            continue
        item = store.get(parsed.message_id) or {}
        status = str(item.get("status", "-"))
        if parsed.message_id in seen or (status != "-" and str(item.get("updatedAt", "")) < invoked_at):
            status = f"DUPLICATE ({status})"
        seen.add(parsed.message_id)
        resent = str(item.get("resentMessageId", "-"))
        org = str(item.get("orgId", "-"))
        reason = str(item.get("errorMessage", ""))
        if invocation.error:
            reason = f"invocation failed: {invocation.error}"
        rows.append((invocation.event_file, str(parsed.message_id), org, status, resent, reason))
    return rows


def render_table(
    rows: Sequence[tuple[str, ...]], header: Sequence[str] = COLUMNS, columns: int = TERMINAL_COLUMNS
) -> str:
    """A table whose last column is clipped so that every line fits ``columns``."""
    fixed = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=False)][:-1]
    width = max(12, columns - sum(fixed) - 2 * len(fixed))
    clipped = [
        (*row[:-1], row[-1] if len(row[-1]) <= width else row[-1][: width - 3] + "...") for row in rows
    ]
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *clipped, strict=False)]
    lines = ["  ".join(cell.ljust(size) for cell, size in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * size for size in widths))
    lines.extend(
        "  ".join(cell.ljust(size) for cell, size in zip(row, widths, strict=True)) for row in clipped
    )
    return "\n".join(line.rstrip() for line in lines)


def run_demo(events_dir: Path | None = None, out: TextIO | None = None) -> int:
    import sys

    out = out or sys.stdout
    files = event_files(events_dir or default_events_dir())
    if not files:
        print(f"no event files found in {events_dir or default_events_dir()}", file=out)
        return 2
    with local_stack() as stack:
        print(describe_stack(stack, len(files)), file=out)
        rows: list[tuple[str, ...]] = []
        for path in files:
            event = load_event(path)
            invoked_at = _now_iso()
            rows.extend(outcome_rows(stack, invoke(event, path.name), event, invoked_at))
        # A replay of every file: the outcomes table must turn all of them into acknowledged duplicates.
        stubs = (stack.stub, stack.second_org)
        performed_before = sum(stub.resends_performed() for stub in stubs)
        dlq_count = _dead_letter_count(stack)
        replays = [invoke(load_event(path), path.name) for path in files]
        replay_failures = [invocation for invocation in replays if invocation.error]
        replayed_resends = sum(stub.resends_performed() for stub in stubs) - performed_before
        print(render_table(rows), file=out)
        print(file=out)
        print(first_request(stack), file=out)
        ids = {call.message_id for stub in stubs for call in stub.resend_calls if call.performed}
        print(
            textwrap.fill(
                f"Capillary performed {performed_before} resend(s) for {len(ids)} distinct messageId(s); "
                f"replaying every file caused {replayed_resends} more.",
                TERMINAL_COLUMNS,
            ),
            file=out,
        )
        print(
            textwrap.fill(
                f"Org {stack.second_org.org_id} was served by its own cluster at {stack.second_org.base_url} "
                f"with its own OAuth client: {stack.second_org.resends_performed()} resend(s); org "
                f"{stack.stub.org_id}: {stack.stub.resends_performed()}. Skipped by the resend policy: "
                f"{sum(row[3] == 'SKIPPED' and row[5].startswith('policy:') for row in rows)}.",
                TERMINAL_COLUMNS,
            ),
            file=out,
        )
        print(
            textwrap.fill(
                f"Dead-letter queue holds {dlq_count} poison record(s), "
                f"each with a '{POISON_REASON_ATTRIBUTE}'.",
                TERMINAL_COLUMNS,
            ),
            file=out,
        )
        if replay_failures:
            print(f"{len(replay_failures)} replay invocation(s) failed", file=out)
            return 1
    return 0


def describe_stack(stack: LocalStack, files: int) -> str:
    """What the demo started and what it put in, before anything runs."""
    resources = stack.resources
    return "\n".join(
        [
            "Started, on this machine only (dummy AWS credentials, nothing reaches an account):",
            f"  emulated AWS (moto)        {resources.endpoint_url}",
            f"  Capillary stub, org {stack.stub.org_id}   {stack.stub.base_url}  (basic auth)",
            f"  Capillary stub, org {stack.second_org.org_id}   {stack.second_org.base_url}  (OAuth)",
            f"Created: table {resources.table_name}, queue and DLQ {resources.queue_url.rsplit('/', 1)[-1]},",
            f"  secret {resources.secret_id} (both orgs' credentials). Feeding {files} sample event file(s).",
            "",
        ]
    )


def first_request(stack: LocalStack) -> str:
    """One resend request as the stub received it, with the credentials left out."""
    calls = [call for stub in (stack.stub, stack.second_org) for call in stub.resend_calls]
    if not calls:
        return "Capillary received no resend request."
    call = calls[0]
    auth = "Authorization: Basic <redacted>" if call.auth == "basic" else "X-CAP-API-OAUTH-TOKEN: <redacted>"
    return (
        "One request as Capillary received it:\n"
        f"  POST /v2/communications/resend  {auth}\n"
        f'  {{"messageId": {call.message_id}}}  ->  resentMessageId {call.resent_message_id}\n'
    )


def _now_iso() -> str:
    # A millisecond early, so that this run's writes are later.
    return timestamp(time.time() - 0.001)


def _dead_letter_count(stack: LocalStack) -> int:
    sqs = boto3.client("sqs", endpoint_url=stack.resources.endpoint_url)
    attributes = sqs.get_queue_attributes(
        QueueUrl=stack.resources.dead_letter_queue_url, AttributeNames=["ApproximateNumberOfMessages"]
    )["Attributes"]
    return int(attributes.get("ApproximateNumberOfMessages", "0"))
