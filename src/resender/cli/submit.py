"""``resender submit``: feed a list of failed messages in, one notification per distinct messageId.

Capillary pushes no delivery failures to brands: they come from an Insights+ messages export (the
``nsadmin_id`` column is the message id), a report, or a brand's own job. This module reads such a list
(CSV with a header row, JSON Lines, or one id per line), checks every id the way the function does, folds
duplicates, and publishes the notifications of ``schema/failure-notification.schema.json`` to the topic or
queue the function consumes, ten per request.

A rerun is safe: the function claims each messageId before resending it, so a notification published twice
is acknowledged the second time without a second resend.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, NamedTuple, Protocol, TextIO, cast

from botocore.exceptions import BotoCoreError, ClientError

from resender.aws import error_name
from resender.errors import ResenderError
from resender.events import PoisonError, validate_message_id

if TYPE_CHECKING:
    from mypy_boto3_sns import SNSClient
    from mypy_boto3_sns.type_defs import PublishBatchRequestEntryTypeDef
    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_sqs.type_defs import SendMessageBatchRequestEntryTypeDef

#: SendMessageBatch and PublishBatch both take at most ten entries.
BATCH_SIZE: Final = 10
#: Tries of an entry that AWS refused for a reason of its own (throttling, an internal error).
PUBLISH_ATTEMPTS: Final = 3
#: The id column of a CSV when --id-column is not given: the first of these in the header, case ignored.
ID_COLUMNS: Final = ("messageId", "message_id", "id", "nsadmin_id")
#: Optional fields of the feed contract; CSV columns and JSON Lines keys with these names are carried along.
CARRIED_FIELDS: Final = ("orgId", "channel", "reason", "failedAt", "customerId")
#: Fields also sent as message attributes, so SNS subscription filter policies can select on them.
ATTRIBUTE_FIELDS: Final = ("orgId", "channel", "reason")
_DIGITS = re.compile(r"[0-9]{1,19}")


class InputFormat(StrEnum):
    CSV = "csv"
    JSONL = "jsonl"
    IDS = "ids"


class SubmitError(ResenderError):
    """A usage or configuration problem: nothing is published."""


@dataclass(frozen=True, slots=True)
class Notification:
    message_id: int
    body: dict[str, Any]
    origin: str  # "file:line", to point at the input


@dataclass(frozen=True, slots=True)
class InvalidLine:
    file: str
    line: int
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "reason": self.reason}


@dataclass(slots=True)
class ReadResult:
    notifications: list[Notification] = field(default_factory=list)
    duplicates: int = 0
    invalid: list[InvalidLine] = field(default_factory=list)
    _seen: set[int] = field(default_factory=set)

    def add(self, notification: Notification) -> None:
        if notification.message_id in self._seen:
            self.duplicates += 1
            return
        self._seen.add(notification.message_id)
        self.notifications.append(notification)


@dataclass(frozen=True, slots=True)
class Source:
    name: str  # the file name as given, or "-" / "--ids"
    stream: TextIO
    input_format: InputFormat | None = None  # None: from the name, else from the first line


def read_inputs(
    sources: Iterable[Source],
    *,
    input_format: InputFormat | None = None,
    id_column: str | None = None,
    org_id: int | None = None,
) -> ReadResult:
    """Every notification of every source, in order, duplicates folded and bad lines set aside."""
    result = ReadResult()
    for source in sources:
        text = source.stream.read()
        chosen = input_format or source.input_format or guess_format(source.name, text)
        if chosen is InputFormat.CSV:
            rows = _csv_rows(source.name, text, id_column)
        elif chosen is InputFormat.JSONL:
            rows = _jsonl_rows(text)
        else:
            rows = _id_rows(text)
        for line, fields in rows:
            try:
                result.add(_notification(fields, org_id, f"{source.name}:{line}"))
            except PoisonError as error:
                result.invalid.append(InvalidLine(source.name, line, str(error)))
    return result


def guess_format(name: str, text: str) -> InputFormat:
    suffix = Path(name).suffix.lower()
    if suffix in (".csv", ".tsv"):
        return InputFormat.CSV
    if suffix in (".jsonl", ".ndjson"):
        return InputFormat.JSONL
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    if first.startswith("{"):
        return InputFormat.JSONL
    if "," in first or first.lower() in {name.lower() for name in (*ID_COLUMNS, *CARRIED_FIELDS)}:
        return InputFormat.CSV  # a header row
    return InputFormat.IDS


Row = tuple[int, Mapping[str, Any]]


def _csv_rows(name: str, text: str, id_column: str | None) -> Iterator[Row]:
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None:
        return
    lowered = [cell.strip().lower() for cell in header]
    wanted = [id_column] if id_column else list(ID_COLUMNS)
    index = next((lowered.index(c.lower()) for c in wanted if c.lower() in lowered), None)
    if index is None:
        looked_for = f"--id-column {id_column!r}" if id_column else ", ".join(ID_COLUMNS)
        raise SubmitError(f"{name}: the header row has no id column (looked for {looked_for})")
    carried = {
        position: schema_name
        for schema_name in CARRIED_FIELDS
        for position, cell in enumerate(lowered)
        if cell == schema_name.lower() and position != index
    }
    for row in reader:
        if not any(cell.strip() for cell in row):
            continue
        fields: dict[str, Any] = {"messageId": row[index].strip() if index < len(row) else None}
        for position, schema_name in carried.items():
            if position < len(row) and row[position].strip():
                fields[schema_name] = row[position].strip()
        yield reader.line_num, fields


def _jsonl_rows(text: str) -> Iterator[Row]:
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            document = json.loads(raw)
        except ValueError:
            yield line, {"messageId": PoisonError("the line is not valid JSON")}
            continue
        if not isinstance(document, dict):
            yield line, {"messageId": PoisonError("the line is not a JSON object")}
            continue
        yield line, document


def _id_rows(text: str) -> Iterator[Row]:
    for line, raw in enumerate(text.splitlines(), start=1):
        value = raw.strip()
        if value and not value.startswith("#"):
            yield line, {"messageId": value}


def _notification(fields: Mapping[str, Any], org_id: int | None, origin: str) -> Notification:
    raw_id = fields.get("messageId")
    if isinstance(raw_id, PoisonError):
        raise raw_id
    message_id = validate_message_id(raw_id)
    body: dict[str, Any] = {**fields, "messageId": message_id}
    if "orgId" in body:
        body["orgId"] = _org_id(body["orgId"])
    elif org_id is not None:
        body["orgId"] = org_id
    if isinstance(body.get("failedAt"), str) and _DIGITS.fullmatch(body["failedAt"]):
        body["failedAt"] = int(body["failedAt"])
    return Notification(message_id, body, origin)


def _org_id(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if isinstance(value, str) and _DIGITS.fullmatch(value.strip()) and int(value) > 0:
        return int(value)
    raise PoisonError(f"orgId must be a positive integer, got {str(value)[:32]!r}")


def parse_org(text: str) -> int:
    """The --org option: a Capillary org id."""
    try:
        return _org_id(text)
    except PoisonError as error:
        raise SubmitError(str(error)) from None


# -- publishing --------------------------------------------------------------------------------------


class Entry(NamedTuple):
    """One notification of a batch call, under the id the call's answer names it by."""

    entry_id: str
    notification: Notification


class Refused(NamedTuple):
    """An entry a batch call did not publish, why, and whether trying again can help."""

    entry_id: str
    reason: str
    retryable: bool


class Publisher(Protocol):
    target: str

    def send(self, entries: Sequence[Entry]) -> list[Refused]: ...


def message_attributes(body: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    attributes: dict[str, dict[str, str]] = {}
    for name in ATTRIBUTE_FIELDS:
        value = body.get(name)
        if value is None or value == "":
            continue
        data_type = "Number" if isinstance(value, int) and not isinstance(value, bool) else "String"
        attributes[name] = {"DataType": data_type, "StringValue": str(value)[:256]}
    return attributes


def _batch_entry(entry: Entry, body_field: str, target: str) -> dict[str, Any]:
    """A SendMessageBatch or PublishBatch entry: the two differ only in the name of the body's field."""
    notification = entry.notification
    fields: dict[str, Any] = {
        "Id": entry.entry_id,
        body_field: json.dumps(notification.body),
        "MessageAttributes": message_attributes(notification.body),
    }
    if target.endswith(".fifo"):
        # One group per org keeps an org's failures in order; the id deduplicates a rerun within five minutes.
        fields["MessageGroupId"] = str(notification.body.get("orgId", "failures"))
        fields["MessageDeduplicationId"] = str(notification.message_id)
    return fields


def _refused(failed: Sequence[Any]) -> list[Refused]:
    """What a batch call refused; SendMessageBatch and PublishBatch answer alike. AWS's own faults retry."""
    return [
        Refused(entry["Id"], f"{entry['Code']}: {entry.get('Message', '')}", not entry["SenderFault"])
        for entry in failed
    ]


class QueuePublisher:
    def __init__(self, client: SQSClient, queue_url: str) -> None:
        self._client = client
        self.target = queue_url

    def send(self, entries: Sequence[Entry]) -> list[Refused]:
        batch = [_batch_entry(entry, "MessageBody", self.target) for entry in entries]
        response = self._client.send_message_batch(
            QueueUrl=self.target, Entries=cast("list[SendMessageBatchRequestEntryTypeDef]", batch)
        )
        return _refused(response.get("Failed", []))


class TopicPublisher:
    def __init__(self, client: SNSClient, topic_arn: str) -> None:
        self._client = client
        self.target = topic_arn

    def send(self, entries: Sequence[Entry]) -> list[Refused]:
        batch = [_batch_entry(entry, "Message", self.target) for entry in entries]
        response = self._client.publish_batch(
            TopicArn=self.target,
            PublishBatchRequestEntries=cast("list[PublishBatchRequestEntryTypeDef]", batch),
        )
        return _refused(response.get("Failed", []))


@dataclass(slots=True)
class PublishResult:
    published: int = 0
    failed: list[tuple[Notification, str]] = field(default_factory=list)


def publish(
    notifications: Sequence[Notification],
    publisher: Publisher,
    on_progress: Callable[[int, int], None] | None = None,
) -> PublishResult:
    """Send every notification in batches of ten; entries AWS refused for its own reasons are tried again.

    An entry refused for the sender's fault (a malformed attribute, say) is not retried. A batch whose call
    failed as a whole is tried again like its entries, since SQS and SNS publish nothing of a failed call.
    """
    result = PublishResult()
    for start in range(0, len(notifications), BATCH_SIZE):
        batch = notifications[start : start + BATCH_SIZE]
        pending = {str(position): notification for position, notification in enumerate(batch)}
        for attempt in range(1, PUBLISH_ATTEMPTS + 1):
            entries = [Entry(entry_id, notification) for entry_id, notification in pending.items()]
            try:
                refused = publisher.send(entries)
            except (ClientError, BotoCoreError) as error:
                reason = error_name(error)
                refused = [Refused(entry.entry_id, reason, True) for entry in entries]
            refused_ids = {refusal.entry_id for refusal in refused}
            result.published += len(pending) - len(refused_ids & pending.keys())
            retry: dict[str, Notification] = {}
            for refusal in refused:
                notification = pending.get(refusal.entry_id)
                if notification is None:
                    continue
                if refusal.retryable and attempt < PUBLISH_ATTEMPTS:
                    retry[refusal.entry_id] = notification
                else:
                    result.failed.append((notification, refusal.reason))
            pending = retry
            if not pending:
                break
        if on_progress:
            on_progress(result.published + len(result.failed), len(notifications))
    return result
