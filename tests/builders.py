"""Lambda events as AWS delivers them, built for tests."""

from __future__ import annotations

import functools
import json
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from resender.aws import AwsClients

QUEUE_ARN = "arn:aws:sqs:us-east-1:123456789012:communication-failures"
TOPIC_ARN = "arn:aws:sns:us-east-1:123456789012:communication-failures"
#: The function's environment with only the settings that have no default.
REQUIRED_ENV: Final[Mapping[str, str]] = {
    "OUTCOMES_TABLE": "outcomes",
    "CAPILLARY_SECRET_ID": "capillary/resender",
    "CAPILLARY_BASE_URL": "https://eu.api.capillarytech.com",
}


def now_millis() -> int:
    """Envelope times are now: the resend policy's age rule reads them."""
    return int(time.time() * 1000)


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def failure(message_id: object, **extra: object) -> str:
    return json.dumps({"messageId": message_id, "channel": "SMS", "reason": "undelivered", **extra})


def sqs_record(
    body: str,
    *,
    receive_count: int = 1,
    source_arn: str = QUEUE_ARN,
    record_id: str | None = None,
    sent_at_ms: int | None = None,
) -> dict[str, Any]:
    record_id = record_id or str(uuid.uuid4())
    return {
        "messageId": record_id,
        "receiptHandle": f"handle-{record_id}",
        "body": body,
        "attributes": {
            "ApproximateReceiveCount": str(receive_count),
            "SentTimestamp": str(sent_at_ms if sent_at_ms is not None else now_millis()),
            "SenderId": "AIDAIENQZJOLO23YVJ4VO",
            "ApproximateFirstReceiveTimestamp": str(now_millis()),
        },
        "messageAttributes": {},
        "md5OfBody": "0" * 32,
        "eventSource": "aws:sqs",
        "eventSourceARN": source_arn,
        "awsRegion": "us-east-1",
    }


def sqs_event(*bodies: str, receive_count: int = 1, source_arn: str = QUEUE_ARN) -> dict[str, Any]:
    return {"Records": [sqs_record(b, receive_count=receive_count, source_arn=source_arn) for b in bodies]}


def sns_envelope(message: str, sns_message_id: str | None = None) -> str:
    """An SQS body as SNS writes it when raw message delivery is off."""
    return json.dumps(
        {
            "Type": "Notification",
            "MessageId": sns_message_id or str(uuid.uuid4()),
            "TopicArn": TOPIC_ARN,
            "Message": message,
            "Timestamp": now_iso(),
            "SignatureVersion": "1",
            "Signature": "EXAMPLE",
            "SigningCertURL": "https://sns.us-east-1.amazonaws.com/cert.pem",
            "UnsubscribeURL": "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe",
        }
    )


def eventbridge_event(detail: dict[str, Any]) -> str:
    return json.dumps(
        {
            "version": "0",
            "id": str(uuid.uuid4()),
            "detail-type": "Communication Delivery Failed",
            "source": "brand.communications",
            "account": "123456789012",
            "time": now_iso(),
            "region": "us-east-1",
            "resources": [],
            "detail": detail,
        }
    )


def sns_event(message: str) -> dict[str, Any]:
    """SNS invoking the function directly."""
    return {
        "Records": [
            {
                "EventSource": "aws:sns",
                "EventVersion": "1.0",
                "EventSubscriptionArn": f"{TOPIC_ARN}:{uuid.uuid4()}",
                "Sns": {
                    "Type": "Notification",
                    "MessageId": str(uuid.uuid4()),
                    "TopicArn": TOPIC_ARN,
                    "Subject": None,
                    "Message": message,
                    "Timestamp": now_iso(),
                    "MessageAttributes": {},
                },
            }
        ]
    }


def written(path: Path, text: str) -> Path:
    """``path``, now holding ``text``: an input file for a command."""
    path.write_text(text, encoding="utf-8")
    return path


def event_file(path: Path, event: dict[str, Any]) -> Path:
    """``path``, now holding ``event`` as JSON, as ``sam local invoke`` and ``resender invoke`` read it."""
    return written(path, json.dumps(event))


@functools.cache
def idle_aws_clients() -> AwsClients:
    """One set of AWS clients for every container whose handler never calls AWS (its store, queues and
    Capillary are fakes): a set takes about 0.2 s to build, and the fuzz tests build thousands of containers."""
    return AwsClients()
