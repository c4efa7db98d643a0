"""SQS: where poison records are kept, and how long a retried record waits before it comes back."""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Final

from botocore.exceptions import BotoCoreError, ClientError

from resender.errors import ResenderError

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient

#: Message attribute that carries why a record was set aside (operators and ``resender redrive`` read it).
POISON_REASON_ATTRIBUTE: Final = "poisonReason"
SOURCE_QUEUE_ATTRIBUTE: Final = "sourceQueueArn"
SOURCE_MESSAGE_ID_ATTRIBUTE: Final = "sourceMessageId"
SQS_MAX_VISIBILITY_SECONDS: Final = 43_200
SQS_MAX_DELAY_SECONDS: Final = 900
SQS_MAX_MESSAGE_ATTRIBUTES: Final = 10


class QueueError(ResenderError):
    """SQS refused or could not be reached; the message names the operation and the AWS error code."""


class NoDeadLetterQueueError(QueueError):
    """Neither ``DEAD_LETTER_QUEUE_URL`` nor the source queue's redrive policy names a dead-letter queue."""


def dead_letter_target_arn(policy: object) -> str | None:
    """The ``deadLetterTargetArn`` of a redrive policy as SQS returns it (a JSON string), if it has one.

    A missing, empty or malformed policy yields None: the caller decides what having no DLQ means.
    """
    if not isinstance(policy, str) or not policy.strip():
        return None
    try:
        document = json.loads(policy)
    except (ValueError, RecursionError):
        return None
    target = document.get("deadLetterTargetArn") if isinstance(document, dict) else None
    if not isinstance(target, str) or len(target.split(":")) != 6:
        return None
    return target


class Queues:
    def __init__(self, client: SQSClient, dead_letter_queue_url: str | None = None) -> None:
        self._client = client
        self._configured_dlq = dead_letter_queue_url
        self._lock = threading.Lock()
        self._urls: dict[str, str] = {}
        self._dlq_by_source: dict[str, str] = {}

    def keep_poison(self, body: str, reason: str, *, source_arn: str | None, source_message_id: str) -> None:
        """Copy a poison record to the dead-letter queue with its reason, so it is kept but never retried."""
        queue_url = self.dead_letter_queue_url(source_arn)
        attributes = {
            POISON_REASON_ATTRIBUTE: {"DataType": "String", "StringValue": reason},
            SOURCE_MESSAGE_ID_ATTRIBUTE: {
                "DataType": "String",
                "StringValue": source_message_id or "unknown",
            },
        }
        if source_arn:
            attributes[SOURCE_QUEUE_ATTRIBUTE] = {"DataType": "String", "StringValue": source_arn}
        try:
            self._client.send_message(
                QueueUrl=queue_url,
                # SQS refuses an empty body; the reason attribute says it was empty.
                MessageBody=body or " ",
                MessageAttributes=attributes,  # type: ignore[arg-type]
            )
        except (ClientError, BotoCoreError) as error:
            raise QueueError(
                f"copying a poison record to the dead-letter queue failed ({_name(error)})"
            ) from None

    def enqueue_copy(
        self,
        source_arn: str,
        body: str,
        delay_seconds: float,
        attributes: dict[str, str],
        kept_attributes: Iterable[tuple[str, str, str]] = (),
    ) -> None:
        """Put a copy of a held-back record back on its source queue, hidden for ``delay_seconds``.

        ``attributes`` (pacing's own, as strings) win over the record's ``kept_attributes`` of the same name;
        SQS takes at most ten attributes, so the record's own are kept only as far as room remains.
        """
        message_attributes = {
            name: {"DataType": "String", "StringValue": value} for name, value in attributes.items()
        }
        for name, data_type, value in kept_attributes:
            if len(message_attributes) >= SQS_MAX_MESSAGE_ATTRIBUTES:
                break
            message_attributes.setdefault(name, {"DataType": data_type, "StringValue": value})
        try:
            self._client.send_message(
                QueueUrl=self.queue_url(source_arn),
                MessageBody=body or " ",
                DelaySeconds=max(0, min(math.ceil(delay_seconds), SQS_MAX_DELAY_SECONDS)),
                MessageAttributes=message_attributes,  # type: ignore[arg-type]
            )
        except (ClientError, BotoCoreError) as error:
            raise QueueError(f"re-enqueueing a held-back record failed ({_name(error)})") from None

    def delay(self, source_arn: str, receipt_handle: str, seconds: int) -> None:
        """Hide a record that will be retried for ``seconds`` (its backoff)."""
        try:
            self._client.change_message_visibility(
                QueueUrl=self.queue_url(source_arn),
                ReceiptHandle=receipt_handle,
                VisibilityTimeout=max(0, min(seconds, SQS_MAX_VISIBILITY_SECONDS)),
            )
        except (ClientError, BotoCoreError) as error:
            raise QueueError(f"changing the visibility of a retried record failed ({_name(error)})") from None

    def dead_letter_queue_url(self, source_arn: str | None) -> str:
        if self._configured_dlq:
            return self._configured_dlq
        if not source_arn:
            raise QueueError("DEAD_LETTER_QUEUE_URL is not set and the record names no source queue")
        with self._lock:
            cached = self._dlq_by_source.get(source_arn)
        if cached:
            return cached
        try:
            answer = self._client.get_queue_attributes(
                QueueUrl=self.queue_url(source_arn), AttributeNames=["RedrivePolicy"]
            )
        except (ClientError, BotoCoreError) as error:
            raise QueueError(f"reading the source queue's redrive policy failed ({_name(error)})") from None
        # SQS leaves "Attributes" out entirely when none of those asked for is set.
        attributes = answer.get("Attributes") or {}
        target = dead_letter_target_arn(attributes.get("RedrivePolicy"))
        if target is None:
            raise NoDeadLetterQueueError(
                "DEAD_LETTER_QUEUE_URL is not set and the source queue has no usable redrive policy"
            )
        url = self.queue_url(target)
        with self._lock:
            self._dlq_by_source[source_arn] = url
        return url

    def queue_url(self, queue_arn: str) -> str:
        with self._lock:
            cached = self._urls.get(queue_arn)
        if cached:
            return cached
        parts = queue_arn.split(":")
        if len(parts) != 6 or parts[2] != "sqs":
            raise QueueError("the record's event source is not an SQS queue ARN")
        account, name = parts[4], parts[5]
        try:
            url = self._client.get_queue_url(QueueName=name, QueueOwnerAWSAccountId=account).get("QueueUrl")
        except (ClientError, BotoCoreError) as error:
            raise QueueError(f"looking up the queue URL failed ({_name(error)})") from None
        if not url:
            raise QueueError("looking up the queue URL failed (answer without a QueueUrl)")
        with self._lock:
            self._urls[queue_arn] = url
        return url


def _name(error: Exception) -> str:
    if isinstance(error, ClientError):
        return str(error.response.get("Error", {}).get("Code", "Unknown"))
    return type(error).__name__
