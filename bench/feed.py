"""What the resend policy, the org routing and ``resender submit`` cost: figures, printed.

    python -m bench.feed [--records 1000] [--submit 2000]

- AWS requests and Capillary calls per record for a batch the policy skips (hard bounces) and for one it
  resends, on the local stack (moto server and Capillary stubs over real HTTP);
- the time one policy evaluation takes (every rule on, in process);
- ``resender submit``'s publishing rate to an SQS queue on the moto server, and requests per notification.

Wall times depend on the machine; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import Counter
from typing import Any

import boto3

from bench import counting
from bench.workload import Context, IdAllocator
from resender.cli.submit import Notification, QueuePublisher, publish
from resender.events import Delivery, Notice
from resender.local.runner import LocalStack, local_stack
from resender.policy import ResendPolicy
from resender.settings import DEFAULT_SKIP_REASONS

BATCH = 10


def record(body: dict[str, Any]) -> dict[str, Any]:
    return {
        "messageId": f"bench-{body['messageId']}",
        "receiptHandle": f"handle-{body['messageId']}",
        "body": json.dumps(body),
        "attributes": {"ApproximateReceiveCount": "1", "SentTimestamp": str(int(time.time() * 1000))},
        "messageAttributes": {},
        "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:communication-failures",
        "awsRegion": "us-east-1",
    }


def per_record(
    stack: LocalStack, records: int, reason: str, org_id: int | None, ids: IdAllocator
) -> dict[str, Any]:
    from resender.app import lambda_handler

    lambda_handler({"Records": [record({"messageId": ids.take(1)[0]})]}, Context())  # warm the container
    before = counting.COUNTER.snapshot()
    calls_before = stack.stub.resends_performed() + stack.second_org.resends_performed()
    started = time.perf_counter()
    for _ in range(records // BATCH):
        bodies = [
            {"messageId": message_id, "reason": reason, **({"orgId": org_id} if org_id else {})}
            for message_id in ids.take(BATCH)
        ]
        lambda_handler({"Records": [record(body) for body in bodies]}, Context())
    elapsed = time.perf_counter() - started
    delta = counting.COUNTER.snapshot() - before
    calls = stack.stub.resends_performed() + stack.second_org.resends_performed() - calls_before
    done = records // BATCH * BATCH
    return {
        "records": done,
        "awsRequestsPerRecord": {
            name: round(value, 2) for name, value in counting.per_message(delta, done).items()
        },
        "capillaryCallsPerRecord": round(calls / done, 2),
        "recordsPerSecond": round(done / elapsed),
    }


def policy_evaluation_microseconds(rounds: int = 20_000) -> dict[str, float]:
    policy = ResendPolicy(
        skip_reasons=DEFAULT_SKIP_REASONS,
        resend_channels=("SMS", "WHATSAPP"),
        max_age_seconds=86_400,
        skip_when="contains(tags || `[]`, 'no-resend')",
    )
    payload = {"messageId": 1, "reason": "soft bounced", "channel": "sms", "failedAt": "2026-12-01T10:00:00Z"}
    notice = Notice(Delivery("r", "{}"), 1, payload, time.time())
    samples = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(rounds):
            policy.evaluate(notice)
        samples.append((time.perf_counter() - started) / rounds * 1e6)
    return {"median": round(statistics.median(samples), 2), "min": round(min(samples), 2)}


def submit_rate(stack: LocalStack, count: int, ids: IdAllocator) -> dict[str, Any]:
    sqs = boto3.client("sqs", endpoint_url=stack.resources.endpoint_url)
    publisher = QueuePublisher(sqs, stack.resources.queue_url)
    notifications = [
        Notification(message_id, {"messageId": message_id, "channel": "SMS"}, f"bench:{n}")
        for n, message_id in enumerate(ids.take(count))
    ]
    before: Counter[str] = counting.COUNTER.snapshot()
    started = time.perf_counter()
    result = publish(notifications, publisher)
    elapsed = time.perf_counter() - started
    delta = counting.COUNTER.snapshot() - before
    return {
        "published": result.published,
        "notificationsPerSecond": round(result.published / elapsed),
        "requestsPerNotification": counting.per_message(delta, result.published),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.feed", description=__doc__)
    parser.add_argument("--records", type=int, default=200, help="records per batch figure (200)")
    parser.add_argument("--submit", type=int, default=2000, help="notifications published (2000)")
    args = parser.parse_args(argv)
    counting.install()
    ids = IdAllocator()
    # moto keeps its state per process: one local stack serves every figure.
    with local_stack() as stack:
        figures = {
            "skippedByPolicy (HARD_BOUNCED)": per_record(stack, args.records, "HARD_BOUNCED", None, ids),
            "resent, first org": per_record(stack, args.records, "NOT_DELIVERED", None, ids),
            "resent, second org (own cluster, OAuth)": per_record(
                stack, args.records, "NOT_DELIVERED", 200002, ids
            ),
            "policy evaluation, microseconds": policy_evaluation_microseconds(),
            "submit to SQS": submit_rate(stack, args.submit, ids),
        }
    for name, value in figures.items():
        print(f"{name}: {json.dumps(value)}")


if __name__ == "__main__":
    main()
