"""The second part of ``make demo``: each operator subcommand once, against a fresh emulated stack.

The command line is passed in (``run_command``) rather than imported: the local stack serves the operator
tool, never the other way round.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

import boto3
import requests

from resender.local.aws import MotoServer
from resender.local.demo import event_files
from resender.local.runner import invoke, load_event, local_stack, sqs_event
from resender.local.stub import ORG_ID
from resender.models import Status
from resender.store import OutcomeStore

#: Failures that exhausted their retries in the demo's dead-letter queue, as SQS would have moved them there.
DEMO_DLQ_IDS: Final = (1746061653700, 1746061653701)
#: Failed messages of the second org that the tour feeds in with ``resender submit``.
DEMO_SUBMIT_IDS: Final = (1746061653800, 1746061653801, 1746061653802)
# The command's exit codes the tour expects (the operator tool documents them).
_OK, _NOT_FOUND, _USAGE = 0, 1, 2

RunCommand = Callable[[Sequence[str]], int]


def operator_tour(events_dir: Path, run_command: RunCommand) -> int:
    """Each operator subcommand once with the exit code it is expected to give; 1 if any gave another."""
    reset_emulator()
    with local_stack() as stack:
        for path in event_files(events_dir):
            invoke(load_event(path), path.name)
        endpoint = stack.resources.endpoint_url
        sqs = boto3.client("sqs", endpoint_url=endpoint)
        for message_id in DEMO_DLQ_IDS:
            body = json.dumps({"messageId": message_id, "channel": "SMS", "reason": "undelivered"})
            sqs.send_message(QueueUrl=stack.resources.dead_letter_queue_url, MessageBody=body)
        store = OutcomeStore(boto3.client("dynamodb", endpoint_url=endpoint), stack.resources.table_name)
        (newest_resent, *_), _ = store.list_recent(Status.RESENT, limit=1)
        resent = newest_resent["messageId"]
        steps: list[tuple[list[str], int]] = [
            (["list", "--limit", "5"], _OK),
            (["status", str(resent)], _OK),
            (["status", "42"], _NOT_FOUND),
            (["resend", str(resent)], _USAGE),  # refused: already RESENT, and --force exists
            (["redrive", "--dry-run"], _OK),
            (["redrive", "--max", "1"], _OK),
            # The local secret holds two orgs, and a bare id names none: --org says whose it is.
            (["resend", str(DEMO_DLQ_IDS[1]), "--org", str(ORG_ID)], _OK),
            (["list", "--status", "NOT_FOUND", "--json"], _OK),
        ]
        unexpected = run_steps(steps, run_command)
        # Feeding failures in: a list with a duplicate and a bad line, for the second org, then the
        # function consumes what landed in the queue, and the second org's outcomes are listed.
        queue = stack.resources.queue_url
        submitted = [str(message_id) for message_id in DEMO_SUBMIT_IDS]
        submit = ["submit", "--ids", *submitted, submitted[0]]
        target = ["--org", str(stack.second_org.org_id), "--queue-url", queue]
        unexpected += run_steps(
            [([*submit, *target, "--dry-run"], _OK), ([*submit, "12ab", *target], _NOT_FOUND)], run_command
        )
        consumed = consume_queue(sqs, queue, stack.resources.queue_arn)
        print(f"\n(the function consumed {consumed} notification(s) from the queue)", flush=True)
        unexpected += run_steps([(["list", "--org", str(stack.second_org.org_id)], _OK)], run_command)
    if unexpected:
        print(f"{unexpected} operator command(s) gave an unexpected exit code")
        return 1
    return 0


def run_steps(steps: Sequence[tuple[list[str], int]], run_command: RunCommand) -> int:
    """Run each command as an operator would type it; how many gave an unexpected exit code."""
    unexpected = 0
    for argv, expected in steps:
        print(f"\n$ resender {' '.join(argv)}", flush=True)
        code = run_command(argv)
        sys.stderr.flush()
        print(f"(exit {code})", flush=True)
        unexpected += code != expected
    return unexpected


def consume_queue(sqs: Any, queue_url: str, queue_arn: str) -> int:
    """Hand what the queue holds to the function, as the SQS event source would; how many records."""
    consumed = 0
    while messages := sqs.receive_message(
        QueueUrl=queue_url, MaxNumberOfMessages=10, AttributeNames=["All"], VisibilityTimeout=60
    ).get("Messages", []):
        response = invoke(sqs_event(messages, queue_arn), "submitted")
        failed = {item["itemIdentifier"] for item in (response.response or {}).get("batchItemFailures", [])}
        for message in messages:
            if message["MessageId"] not in failed:
                sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
        consumed += len(messages)
    return consumed


def reset_emulator() -> None:
    # moto keeps its state per process, not per server: the stack of the first part is still there.
    with MotoServer() as moto:
        requests.post(f"{moto.endpoint_url}/moto-api/reset", timeout=10).raise_for_status()
