"""The textbook Powertools implementation of the resender, kept as the benchmark's yardstick.

It is what the Powertools documentation leads to for "process an SQS batch, call an API once per message":
a serial ``BatchProcessor`` with ``process_partial_response``, ``idempotent_function`` on a DynamoDB
persistence layer, ``parameters.get_secret`` for the credentials and ``requests.post`` for the call, under
the Logger, Tracer and Metrics decorators. Nothing here is slowed down on purpose; it is only as fast as the
pattern is.

Environment: ``IDEMPOTENCY_TABLE``, ``CAPILLARY_SECRET_ID``, ``CAPILLARY_BASE_URL``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from typing import Any

import requests
from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities import parameters
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.idempotency import (
    DynamoDBPersistenceLayer,
    IdempotencyConfig,
    idempotent_function,
)
from aws_lambda_powertools.utilities.typing import LambdaContext

SERVICE = "resender-baseline"

processor = BatchProcessor(event_type=EventType.SQS)
tracer = Tracer(service=SERVICE)
logger = Logger(service=SERVICE)
metrics = Metrics(namespace="CommunicationResenderBaseline", service=SERVICE)

persistence_layer = DynamoDBPersistenceLayer(table_name=os.environ["IDEMPOTENCY_TABLE"])
config = IdempotencyConfig(event_key_jmespath="messageId", expires_after_seconds=7 * 24 * 3600)


class ResendError(Exception):
    """Capillary answered with an error; the record is reported as failed and SQS retries it."""


@idempotent_function(  # type: ignore[untyped-decorator]
    data_keyword_argument="failure", config=config, persistence_store=persistence_layer
)
@tracer.capture_method
def resend(failure: dict[str, Any]) -> dict[str, Any]:
    secret: Any = parameters.get_secret(os.environ["CAPILLARY_SECRET_ID"], transform="json", max_age=300)
    # Capillary's Basic scheme carries the md5 of the password.
    digest = hashlib.md5(secret["password"].encode(), usedforsecurity=False).hexdigest()
    token = base64.b64encode(f"{secret['username']}:{digest}".encode()).decode()
    response = requests.post(
        f"{os.environ['CAPILLARY_BASE_URL']}/v2/communications/resend",
        json={"messageId": failure["messageId"]},
        headers={"Authorization": f"Basic {token}", "Accept": "application/json"},
        timeout=10,
    )
    response.raise_for_status()
    body: dict[str, Any] = response.json()
    if body.get("errors"):
        raise ResendError(str(body["errors"]))
    return body


@tracer.capture_method
def record_handler(record: SQSRecord) -> dict[str, Any]:
    failure = json.loads(record.body)
    result: dict[str, Any] = resend(failure=failure)
    metrics.add_metric(name="Resent", unit=MetricUnit.Count, value=1)
    logger.info(
        "resent", extra={"messageId": failure["messageId"], "resentMessageId": result.get("resentMessageId")}
    )
    return result


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics(capture_cold_start_metric=True)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    config.register_lambda_context(context)
    return process_partial_response(
        event=event, record_handler=record_handler, processor=processor, context=context
    )
