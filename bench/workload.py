"""SQS events as Lambda delivers them, with communication ids that are never reused in one run.

The resender refuses to resend an id twice (that is its job), so every measured record carries a fresh id.
Ids start far above the ids the stub gives to resent messages, so a measured id never lands on the link item
the resender writes for a resent one.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
import uuid
from typing import Any, Final

QUEUE_ARN: Final = "arn:aws:sqs:us-east-1:123456789012:communication-failures"
# The stub issues resent ids from about 1.75e12 upward; measured ids live in their own range.
FIRST_ID: Final = 5_000_000_000_000_000


class IdAllocator:
    """Hands out ids that are unique across the run, including the child processes it gives blocks to."""

    def __init__(self, start: int = FIRST_ID) -> None:
        self._lock = threading.Lock()
        self._next = itertools.count(start)

    def take(self, count: int) -> list[int]:
        with self._lock:
            return [next(self._next) for _ in range(count)]

    def block(self, count: int) -> int:
        """Reserve ``count`` ids for someone else; returns the first one."""
        return self.take(count)[0]


def sqs_record(message_id: int) -> dict[str, Any]:
    record_id = str(uuid.uuid4())
    return {
        "messageId": record_id,
        "receiptHandle": f"handle-{record_id}",
        "body": json.dumps({"messageId": message_id, "channel": "SMS", "reason": "undelivered"}),
        "attributes": {
            "ApproximateReceiveCount": "1",
            "SentTimestamp": "1746061700000",
            "SenderId": "AIDAIENQZJOLO23YVJ4VO",
            "ApproximateFirstReceiveTimestamp": "1746061700011",
        },
        "messageAttributes": {},
        "md5OfBody": "0" * 32,
        "eventSource": "aws:sqs",
        "eventSourceARN": QUEUE_ARN,
        "awsRegion": "us-east-1",
    }


def sqs_event(message_ids: list[int]) -> dict[str, Any]:
    return {"Records": [sqs_record(message_id) for message_id in message_ids]}


class Context:
    """The parts of Lambda's context object that the two handlers and Powertools read.

    Defined here rather than taken from ``resender.local`` so that a peak-RSS child imports nothing the
    Lambda runtime would not.
    """

    function_name = "resender-bench"
    function_version = "$LATEST"
    memory_limit_in_mb = 256
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:resender-bench"
    log_group_name = "/aws/lambda/resender-bench"
    log_stream_name = "bench"

    # The template's default FunctionTimeout: the resender refuses a timeout too short for one resend.
    def __init__(self, timeout_seconds: float = 180.0) -> None:
        self.aws_request_id = str(uuid.uuid4())
        self._deadline = time.monotonic() + timeout_seconds

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def failed_records(response: object) -> int:
    """How many records a handler handed back for retry (0 on the happy path)."""
    if not isinstance(response, dict):
        return 0
    failures = response.get("batchItemFailures")
    return len(failures) if isinstance(failures, list) else 0
