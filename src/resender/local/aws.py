"""An emulated AWS on this machine: a moto server over real HTTP, with the stack's resources created in it.

Used by ``make demo``, ``resender invoke --local`` and the integration tests. moto is a development
dependency, imported only here, never by the Lambda function.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final

import boto3

REGION: Final = "us-east-1"
ACCOUNT_ID: Final = "123456789012"
TABLE_NAME: Final = "communication-outcomes"
PACING_TABLE_NAME: Final = "communication-pacing"
SECRET_ID: Final = "capillary/resender"  # noqa: S105 - a secret name, not a secret
QUEUE_NAME: Final = "communication-failures"
DLQ_NAME: Final = "communication-failures-dlq"
STATUS_INDEX: Final = "byStatus"
MAX_RECEIVE_COUNT: Final = 5

# Credentials for the emulator only: moto accepts any, and these can never reach a real account.
_FAKE_CREDENTIALS: Final = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_REGION": REGION,
}


@dataclass(frozen=True, slots=True)
class LocalResources:
    endpoint_url: str
    table_name: str
    secret_id: str
    queue_url: str
    queue_arn: str
    dead_letter_queue_url: str
    dead_letter_queue_arn: str
    pacing_table_name: str = PACING_TABLE_NAME

    def environment(self, capillary_base_url: str) -> dict[str, str]:
        """The function's environment for this emulated stack."""
        return {
            **_FAKE_CREDENTIALS,
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "OUTCOMES_TABLE": self.table_name,
            "CAPILLARY_SECRET_ID": self.secret_id,
            "CAPILLARY_BASE_URL": capillary_base_url,
            "DEAD_LETTER_QUEUE_URL": self.dead_letter_queue_url,
        }


class MotoServer:
    """A moto server on a free loopback port, quiet, and with atomic DynamoDB writes."""

    def __init__(self, port: int = 0) -> None:
        from moto.server import ThreadedMotoServer

        make_dynamodb_writes_atomic()
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        self.endpoint_url = ""

    def start(self) -> MotoServer:
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint_url = f"http://{host}:{port}"
        return self

    def stop(self) -> None:
        self._server.stop()

    def __enter__(self) -> MotoServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


_atomic_lock = threading.RLock()


def make_dynamodb_writes_atomic() -> None:
    """Serialise moto's DynamoDB writes.

    DynamoDB applies a conditional write atomically; moto checks the condition and then writes, and two
    server threads can interleave between the two. The claim protocol relies on that atomicity, so the
    emulator gets it back with one lock around every write.
    """
    from moto.dynamodb.models import DynamoDBBackend

    for name in ("put_item", "update_item", "delete_item", "transact_write_items"):
        method = getattr(DynamoDBBackend, name)
        if getattr(method, "_resender_atomic", False):
            continue
        setattr(DynamoDBBackend, name, _locked(method))


def _locked(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with _atomic_lock:
            return method(*args, **kwargs)

    wrapper._resender_atomic = True  # type: ignore[attr-defined]
    return wrapper


@contextmanager
def patched_environ(values: dict[str, str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def lambda_record(message: Mapping[str, Any], queue_arn: str) -> dict[str, Any]:
    """A message received from the emulated queue, as the SQS event source mapping hands it to the function.

    ``message`` is one of ``receive_message``'s ``Messages``, received with ``AttributeNames=["All"]`` and
    ``MessageAttributeNames=["All"]`` for the receive count, sent time, FIFO group and attributes to be the
    queue's own.
    """
    return {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message["Body"],
        "attributes": {
            "ApproximateReceiveCount": "1",
            "SentTimestamp": str(int(time.time() * 1000)),
            **message.get("Attributes", {}),
        },
        "messageAttributes": {
            name: {"stringValue": value.get("StringValue"), "dataType": value.get("DataType")}
            for name, value in message.get("MessageAttributes", {}).items()
        },
        "md5OfBody": message.get("MD5OfBody", ""),
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": queue_arn.split(":")[3],
    }


def provision(endpoint_url: str, secret: Mapping[str, Any]) -> LocalResources:
    """Create the outcomes table, the Capillary secret and the queues, as ``template.yaml`` does."""
    session = boto3.session.Session(
        aws_access_key_id=_FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=_FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        region_name=REGION,
    )
    dynamodb = session.client("dynamodb", endpoint_url=endpoint_url)
    create_outcomes_table(dynamodb, TABLE_NAME)
    create_pacing_table(dynamodb, PACING_TABLE_NAME)
    secrets = session.client("secretsmanager", endpoint_url=endpoint_url)
    secrets.create_secret(Name=SECRET_ID, SecretString=json.dumps(secret))
    sqs = session.client("sqs", endpoint_url=endpoint_url)
    dlq_url = sqs.create_queue(QueueName=DLQ_NAME, Attributes={"MessageRetentionPeriod": "1209600"})[
        "QueueUrl"
    ]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    redrive = json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": MAX_RECEIVE_COUNT})
    queue_url = sqs.create_queue(
        QueueName=QUEUE_NAME, Attributes={"VisibilityTimeout": "180", "RedrivePolicy": redrive}
    )["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    return LocalResources(endpoint_url, TABLE_NAME, SECRET_ID, queue_url, queue_arn, dlq_url, dlq_arn)


def create_pacing_table(dynamodb: Any, table_name: str) -> None:
    """The pacing table of ``template.yaml``: key ``org`` (S), no TTL."""
    dynamodb.create_table(
        TableName=table_name,
        BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": "org", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "org", "KeyType": "HASH"}],
    )


def create_outcomes_table(dynamodb: Any, table_name: str) -> None:
    """The outcomes table of ``template.yaml``: key ``messageId`` (N), TTL on ``expiresAt``."""
    dynamodb.create_table(
        TableName=table_name,
        BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[
            {"AttributeName": "messageId", "AttributeType": "N"},
            {"AttributeName": "status", "AttributeType": "S"},
            {"AttributeName": "updatedAt", "AttributeType": "S"},
        ],
        KeySchema=[{"AttributeName": "messageId", "KeyType": "HASH"}],
        GlobalSecondaryIndexes=[
            {
                "IndexName": STATUS_INDEX,
                "KeySchema": [
                    {"AttributeName": "status", "KeyType": "HASH"},
                    {"AttributeName": "updatedAt", "KeyType": "RANGE"},
                ],
                "Projection": {"ProjectionType": "ALL"},
            }
        ],
    )
    dynamodb.update_time_to_live(
        TableName=table_name, TimeToLiveSpecification={"Enabled": True, "AttributeName": "expiresAt"}
    )
