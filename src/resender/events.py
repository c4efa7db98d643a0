"""From a Lambda event to the communication ids it asks us to resend.

Four shapes reach the function: an SQS body that is the failure itself, an SNS envelope inside an SQS body
(subscription without raw delivery), SNS invoking the function directly, and an EventBridge event in an SQS
body. Each is unwrapped to the failure payload, then ``MESSAGE_ID_PATH`` (JMESPath) finds the id. Anything
that does not yield a positive int64 is poison: it carries the reason and is never sent to Capillary.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Final

import jmespath
from jmespath.exceptions import JMESPathError
from jmespath.parser import ParsedResult

from resender.errors import ResenderError
from resender.settings import ConfigurationError

INT64_LIMIT: Final = 2**63
#: Message attributes of a copy re-enqueued by pacing (see :mod:`resender.processor`).
DEFERRALS_ATTRIBUTE: Final = "resenderDeferrals"
FIRST_SEEN_ATTRIBUTE: Final = "resenderFirstSeenAt"
_DIGITS = re.compile(r"[0-9]{1,19}")
_EPOCH = re.compile(r"[0-9]{1,16}(\.[0-9]{1,9})?")
_MILLISECONDS_FROM: Final = 1e11
# An SNS envelope nested in an EventBridge event nested in ... is legitimate up to a point; past it, the
# body is treated as what it most likely is: a payload that happens to look like an envelope.
_MAX_UNWRAP_DEPTH: Final = 4
#: Deepest nesting of arrays and objects a body may have. A fixed limit, not Python's recursion limit, so a
#: body is poison or not whatever thread or stack depth reads it.
MAX_NESTING_DEPTH: Final = 64
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_NOT_A_BRACKET = re.compile(r"[^\[\]{}]+")


class EventSource(StrEnum):
    SQS = "aws:sqs"
    SNS = "aws:sns"


@dataclass(frozen=True, slots=True)
class Delivery:
    """Where a record came from, so it can be acknowledged, retried or copied to the dead-letter queue."""

    record_id: str
    body: str
    receive_count: int = 1
    receipt_handle: str | None = None
    source_arn: str | None = None
    # When the queue or topic took the record in (SQS ``SentTimestamp``, SNS ``Timestamp``), epoch seconds.
    sent_at: float | None = None
    # FIFO queues only: records of one group must be handled, and handed back, in order.
    message_group_id: str | None = None
    # Pacing: how often this record was held back already, and when its failure first reached the queue
    # (epoch seconds), carried on the re-enqueued copy as message attributes.
    deferrals: int = 0
    first_seen_at: float | None = None
    # The record's String and Number message attributes (name, data type, value), kept on a deferred copy.
    message_attributes: tuple[tuple[str, str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Notice:
    """A valid request to resend one communication."""

    delivery: Delivery
    message_id: int
    # What the resend policy and the org routing read: the failure itself, envelopes peeled off.
    payload: Any = None
    # The oldest time any envelope around the failure knows (SNS, SQS, EventBridge), epoch seconds.
    envelope_time: float | None = None


@dataclass(frozen=True, slots=True)
class Poison:
    """A record that can never become a resend; ``reason`` says why in words an operator can act on."""

    delivery: Delivery
    reason: str


ParsedRecord = Notice | Poison


class UnsupportedEventError(ResenderError, ValueError):
    """The event is neither an SQS batch nor an SNS invocation."""


class MessageIdParser:
    """Reads the communication id out of one record's body."""

    def __init__(self, message_id_path: str = "messageId", max_body_bytes: int = 256 * 1024) -> None:
        try:
            self._path: ParsedResult = jmespath.compile(message_id_path)
        except JMESPathError as error:
            raise ConfigurationError(f"MESSAGE_ID_PATH is not a valid JMESPath expression: {error}") from None
        self._path_text = message_id_path
        self._max_body_bytes = max_body_bytes

    def parse(self, delivery: Delivery) -> ParsedRecord:
        try:
            payload, times = self._payload(delivery.body)
            message_id = self._find_id(payload)
        except PoisonError as error:
            return Poison(delivery, str(error))
        # A copy held back by pacing carries its original's first-seen time: the failure's age counts.
        times.extend(moment for moment in (delivery.sent_at, delivery.first_seen_at) if moment is not None)
        return Notice(delivery, message_id, payload, min(times) if times else None)

    def message_id(self, body: str) -> int:
        """The id in ``body``, or :class:`PoisonError` saying why there is none."""
        payload, _ = self._payload(body)
        return self._find_id(payload)

    def _payload(self, body: str) -> tuple[Any, list[float]]:
        size = len(body.encode("utf-8", errors="surrogatepass"))
        if size > self._max_body_bytes:
            raise PoisonError(f"body is {size} bytes, more than the {self._max_body_bytes} allowed")
        return unwrap_with_times(_load_json(body, "body"))

    def _find_id(self, payload: Any) -> int:
        try:
            found = self._path.search(payload)
        except (JMESPathError, TypeError, ValueError):
            found = None
        return validate_message_id(found, self._path_text)


class PoisonError(ResenderError, ValueError):
    """Raised with the reason a record is poison."""


def validate_message_id(value: object, path: str = "messageId") -> int:
    """A positive int64 given as a JSON integer or a string of ASCII digits; nothing else."""
    if value is None:
        raise PoisonError(f"messageId is missing or null at {path!r}")
    # bool is a subclass of int in Python, and ``true`` is never a message id.
    if isinstance(value, bool):
        raise PoisonError("messageId is a boolean, not an integer")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str):
        if not _DIGITS.fullmatch(value):
            raise PoisonError(f"messageId string is not a plain string of digits: {_excerpt(value)}")
        number = int(value)
    elif isinstance(value, float):
        raise PoisonError(f"messageId is a decimal number, not an integer: {_excerpt(repr(value))}")
    else:
        raise PoisonError(f"messageId must be an integer, got a JSON {_json_type(value)}")
    if number <= 0:
        raise PoisonError(f"messageId must be greater than 0, got {number}")
    if number >= INT64_LIMIT:
        raise PoisonError("messageId does not fit in a signed 64-bit integer")
    return number


def unwrap(payload: Any) -> Any:
    """Peel SNS envelopes and EventBridge events off the failure payload."""
    return unwrap_with_times(payload)[0]


def unwrap_with_times(payload: Any) -> tuple[Any, list[float]]:
    """The failure payload, and the times (epoch seconds) its envelopes carried."""
    times: list[float] = []
    for _ in range(_MAX_UNWRAP_DEPTH):
        if _is_sns_envelope(payload):
            message = payload["Message"]
            if not isinstance(message, str):
                raise PoisonError("SNS envelope Message is not a string")
            _add_time(times, parse_time(payload.get("Timestamp")))
            # The envelope's own MessageId is SNS's uuid: it is dropped here with the envelope on purpose.
            payload = _load_json(message, "SNS Message")
        elif _is_eventbridge_event(payload):
            _add_time(times, parse_time(payload.get("time")))
            payload = payload["detail"]
        else:
            return payload, times
    return payload, times


def parse_time(value: object) -> float | None:
    """Epoch seconds from ISO 8601 text, or epoch seconds or milliseconds (number or digits); else None.

    A number above 10^11 is read as milliseconds: as seconds it would be after the year 5000, and as
    milliseconds below it, before 1973. ISO 8601 text without an offset is read as UTC.
    """
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        if _EPOCH.fullmatch(text):
            return parse_time(float(text))
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            return None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return moment.timestamp()
    if isinstance(value, int | float):
        number = float(value)
        if not math.isfinite(number) or number < 0:
            return None
        return number / 1000 if number > _MILLISECONDS_FROM else number
    return None


def _add_time(times: list[float], moment: float | None) -> None:
    if moment is not None:
        times.append(moment)


def parse_event(event: Mapping[str, Any]) -> tuple[EventSource, list[Delivery]]:
    """Split a Lambda event into deliveries, each with the body to parse."""
    records = event.get("Records")
    if not isinstance(records, list) or not records:
        raise UnsupportedEventError("event has no Records: expected an SQS batch or an SNS invocation")
    sources = {_record_source(record) for record in records}
    if len(sources) != 1:
        raise UnsupportedEventError("event mixes records from different sources")
    source = sources.pop()
    reader = _sqs_delivery if source is EventSource.SQS else _sns_delivery
    return source, [reader(record) for record in records]


def _record_source(record: object) -> EventSource:
    if isinstance(record, Mapping):
        name = record.get("eventSource") or record.get("EventSource")
        if name == EventSource.SQS:
            return EventSource.SQS
        if name == EventSource.SNS or isinstance(record.get("Sns"), Mapping):
            return EventSource.SNS
    raise UnsupportedEventError("record is neither from SQS nor from SNS")


def _sqs_delivery(record: Mapping[str, Any]) -> Delivery:
    attributes = record.get("attributes")
    attributes = attributes if isinstance(attributes, Mapping) else {}
    receive_count = _digits(attributes.get("ApproximateReceiveCount")) or 1
    raw_group = attributes.get("MessageGroupId")
    group_id = str(raw_group) if raw_group is not None else None
    sent_at = parse_time(attributes.get("SentTimestamp"))
    message_attributes = _message_attributes(record.get("messageAttributes"))
    values = {name: value for name, _, value in message_attributes}
    first_seen_ms = _digits(values.get(FIRST_SEEN_ATTRIBUTE))
    body = record.get("body")
    return Delivery(
        record_id=str(record.get("messageId", "")),
        body=body if isinstance(body, str) else "",
        receive_count=max(receive_count, 1),
        receipt_handle=record.get("receiptHandle"),
        source_arn=record.get("eventSourceARN"),
        sent_at=sent_at,
        message_group_id=group_id,
        deferrals=_digits(values.get(DEFERRALS_ATTRIBUTE)) or 0,
        first_seen_at=first_seen_ms / 1000 if first_seen_ms else sent_at,
        message_attributes=message_attributes,
    )


def _digits(value: object) -> int | None:
    text = str(value) if value is not None else ""
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 19 else None


def _message_attributes(raw: object) -> tuple[tuple[str, str, str], ...]:
    if not isinstance(raw, Mapping):
        return ()
    kept: list[tuple[str, str, str]] = []
    for name, attribute in raw.items():
        if not isinstance(attribute, Mapping):
            continue
        data_type, value = attribute.get("dataType"), attribute.get("stringValue")
        # Binary attributes arrive base64-encoded under another key; only text survives a copy.
        if (
            isinstance(name, str)
            and isinstance(value, str)
            and str(data_type).startswith(("String", "Number"))
        ):
            kept.append((name, str(data_type), value))
    return tuple(kept)


def _sns_delivery(record: Mapping[str, Any]) -> Delivery:
    sns = record.get("Sns")
    sns = sns if isinstance(sns, Mapping) else {}
    message = sns.get("Message")
    return Delivery(
        record_id=str(sns.get("MessageId", "")),
        body=message if isinstance(message, str) else "",
        source_arn=sns.get("TopicArn") or record.get("EventSubscriptionArn"),
        sent_at=parse_time(sns.get("Timestamp")),
    )


def nesting_depth(text: str) -> int:
    """How deeply arrays and objects nest in ``text`` (brackets inside strings do not count)."""
    brackets = _NOT_A_BRACKET.sub("", _JSON_STRING.sub("", text))
    depth = deepest = 0
    for bracket in brackets:
        depth += 1 if bracket in "[{" else -1
        deepest = max(deepest, depth)
    return deepest


def _load_json(text: str, what: str) -> Any:
    if not text.strip():
        raise PoisonError(f"{what} is empty")
    if nesting_depth(text) > MAX_NESTING_DEPTH:
        raise PoisonError(f"{what} is nested more than {MAX_NESTING_DEPTH} levels deep")
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise PoisonError(f"{what} is nested too deeply") from None
    except ValueError as error:  # JSONDecodeError, NaN/Infinity, integers too long to convert
        raise PoisonError(f"{what} is not valid JSON: {_excerpt(str(error))}") from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _is_sns_envelope(payload: Any) -> bool:
    return (
        isinstance(payload, dict)
        and payload.get("Type") == "Notification"
        and "Message" in payload
        and "TopicArn" in payload
    )


def _is_eventbridge_event(payload: Any) -> bool:
    return isinstance(payload, dict) and "detail" in payload and "detail-type" in payload


def _json_type(value: object) -> str:
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    return type(value).__name__


def _excerpt(text: str, limit: int = 64) -> str:
    # A reason travels to logs and SQS message attributes; SQS refuses control characters, lone surrogates
    # and U+FFFE/U+FFFF, so a hostile body must not be able to put them there.
    clipped = "".join(char if _sqs_safe(char) else "?" for char in text[: limit + 1])
    return clipped if len(clipped) <= limit else clipped[:limit] + "..."


def _sqs_safe(char: str) -> bool:
    code = ord(char)
    return (0x20 <= code <= 0xD7FF) or (0xE000 <= code <= 0xFFFD) or code >= 0x10000
