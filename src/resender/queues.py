"""SQS: where poison records are kept, how long a retried record waits, and how a DLQ is moved back.

:class:`Queues` is the function's side: every AWS failure becomes a :class:`QueueError`. The functions under
"redrive" are the operator tool's: they let botocore's errors through unchanged, because the tool words
them with the queue, region and endpoint it was aimed at.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

from botocore.exceptions import BotoCoreError, ClientError

from resender.aws import error_name
from resender.errors import ResenderError

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_sqs.type_defs import ChangeMessageVisibilityBatchRequestEntryTypeDef, MessageTypeDef

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
                f"copying a poison record to the dead-letter queue failed ({error_name(error)})"
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
            raise QueueError(f"re-enqueueing a held-back record failed ({error_name(error)})") from None

    def delay(self, source_arn: str, receipt_handle: str, seconds: int) -> None:
        """Hide a record that will be retried for ``seconds`` (its backoff)."""
        try:
            self._client.change_message_visibility(
                QueueUrl=self.queue_url(source_arn),
                ReceiptHandle=receipt_handle,
                VisibilityTimeout=max(0, min(seconds, SQS_MAX_VISIBILITY_SECONDS)),
            )
        except (ClientError, BotoCoreError) as error:
            raise QueueError(
                f"changing the visibility of a retried record failed ({error_name(error)})"
            ) from None

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
            raise QueueError(
                f"reading the source queue's redrive policy failed ({error_name(error)})"
            ) from None
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
        try:
            url = url_of_arn(self._client, queue_arn)
        except (ClientError, BotoCoreError) as error:
            raise QueueError(f"looking up the queue URL failed ({error_name(error)})") from None
        if not url:
            raise QueueError("looking up the queue URL failed (answer without a QueueUrl)")
        with self._lock:
            self._urls[queue_arn] = url
        return url


def url_of_arn(client: SQSClient, queue_arn: str) -> str | None:
    """The URL of the queue an ARN (``arn:aws:sqs:<region>:<account>:<name>``) names, as SQS answers it."""
    _, _, _, _, account, name = queue_arn.split(":")
    return client.get_queue_url(QueueName=name, QueueOwnerAWSAccountId=account).get("QueueUrl")


# -- redrive (the operator tool) --------------------------------------------------------------------------

#: SQS takes at most ten entries in a batch call and returns at most ten messages per receive.
SQS_BATCH_SIZE: Final = 10
# SQS's short poll samples a subset of its servers and may answer empty while messages wait; a few long
# polls settle whether the queue is really empty.
_EMPTY_RECEIVE_CONFIRMATIONS: Final = 2
_LONG_POLL_SECONDS: Final = 2


def same_queue(first_url: str, second_url: str) -> bool:
    """Do two SQS queue URLs name one queue? Their path (account, name) does; the host has several forms."""
    return _queue_path(first_url) == _queue_path(second_url)


def _queue_path(url: str) -> str:
    return urlsplit(url.strip()).path.rstrip("/")


def redrive_policy(client: SQSClient, queue_url: str) -> str | None:
    """The queue's ``RedrivePolicy`` attribute as SQS returns it (a JSON string), if it has one."""
    answer = client.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["RedrivePolicy"])
    # SQS leaves "Attributes" out entirely when none of those asked for is set.
    return (answer.get("Attributes") or {}).get("RedrivePolicy")


def dead_letter_sources(client: SQSClient, dead_letter_queue_url: str) -> list[str]:
    """The queues whose redrive policy targets this dead-letter queue."""
    return client.list_dead_letter_source_queues(QueueUrl=dead_letter_queue_url).get("queueUrls", [])


def visible_count(client: SQSClient, queue_url: str) -> int:
    """SQS's approximate count of the messages a receive could return now."""
    attributes = client.get_queue_attributes(
        QueueUrl=queue_url, AttributeNames=["ApproximateNumberOfMessages"]
    )["Attributes"]
    return int(attributes.get("ApproximateNumberOfMessages", "0"))


def receive(client: SQSClient, queue_url: str, wanted: int, visibility_seconds: int) -> list[MessageTypeDef]:
    """Up to ``wanted`` messages with their attributes, hidden for ``visibility_seconds``; [] when empty."""
    for attempt in range(_EMPTY_RECEIVE_CONFIRMATIONS + 1):
        messages = client.receive_message(
            QueueUrl=queue_url,
            MaxNumberOfMessages=wanted,
            MessageAttributeNames=["All"],
            MessageSystemAttributeNames=["MessageGroupId"],
            VisibilityTimeout=visibility_seconds,
            WaitTimeSeconds=0 if attempt == 0 else _LONG_POLL_SECONDS,
        ).get("Messages", [])
        if messages or visible_count(client, queue_url) == 0:
            return messages
    return []


def move(client: SQSClient, message: MessageTypeDef, to_url: str, from_url: str) -> None:
    """Send a copy of ``message`` to ``to_url`` first, delete it from ``from_url`` second.

    The order is what makes an interruption safe: at worst the message is in both queues, never in none.
    """
    request: dict[str, Any] = {"QueueUrl": to_url, "MessageBody": message["Body"]}
    attributes = _sendable_attributes(message.get("MessageAttributes", {}))
    if attributes:
        request["MessageAttributes"] = attributes
    if to_url.endswith(".fifo"):
        request["MessageGroupId"] = message.get("Attributes", {}).get("MessageGroupId", "redrive")
        # The DLQ message id is stable across reruns, so SQS drops a copy resent within its 5-minute window.
        request["MessageDeduplicationId"] = message["MessageId"]
    client.send_message(**request)
    client.delete_message(QueueUrl=from_url, ReceiptHandle=message["ReceiptHandle"])


def _sendable_attributes(attributes: Mapping[str, Any]) -> dict[str, Any]:
    # ReceiveMessage may add list fields SendMessage does not accept; only type and value carry meaning.
    sendable: dict[str, Any] = {}
    for name, value in attributes.items():
        copy = {"DataType": value["DataType"]}
        for key in ("StringValue", "BinaryValue"):
            if key in value:
                copy[key] = value[key]
        sendable[name] = copy
    return sendable


def release(client: SQSClient, queue_url: str, receipt_handles: Iterable[str]) -> None:
    """Make received messages visible again now, rather than when their visibility timeout runs out."""
    handles = list(receipt_handles)
    for start in range(0, len(handles), SQS_BATCH_SIZE):
        entries: list[ChangeMessageVisibilityBatchRequestEntryTypeDef] = [
            {"Id": str(index), "ReceiptHandle": handle, "VisibilityTimeout": 0}
            for index, handle in enumerate(handles[start : start + SQS_BATCH_SIZE])
        ]
        try:
            client.change_message_visibility_batch(QueueUrl=queue_url, Entries=entries)
        except (BotoCoreError, ClientError):
            # They come back on their own when the visibility timeout ends; nothing is lost either way.
            return
