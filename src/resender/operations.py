"""What the ``resender`` command does for operators: read outcomes, redrive the DLQ, resend by hand.

Each function takes the AWS clients (or the function's own wiring) it needs and returns plain data; the
command line in :mod:`resender.cli` parses arguments and prints. Everything here goes through the same
outcomes table and claim protocol as the function, so an operator can never cause a resend the function
would have refused, unless they say ``--force`` and the item records it.
"""

from __future__ import annotations

import base64
import binascii
import functools
import getpass
import json
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

import boto3
import botocore.loaders
import botocore.session
from botocore.exceptions import BotoCoreError, ClientError

from resender.aws import region_from_environment
from resender.errors import ResenderError
from resender.events import Delivery, MessageIdParser, Notice, parse_event
from resender.local.aws import patched_environ
from resender.models import FINAL_STATUSES, Status
from resender.queues import POISON_REASON_ATTRIBUTE, dead_letter_target_arn
from resender.store import Claim, ClaimLostError, Outcome, OutcomeStore, StoreError

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_sqs.type_defs import MessageTypeDef

    from resender.app import Container

#: Environment variables the command shares with the function (same names, same meaning).
TABLE_ENV: Final = "OUTCOMES_TABLE"
DEAD_LETTER_QUEUE_ENV: Final = "DEAD_LETTER_QUEUE_URL"
#: The source queue is not in the function's environment (Lambda's event source mapping knows it).
SOURCE_QUEUE_ENV: Final = "SOURCE_QUEUE_URL"

#: How many hops of a resend chain ``status`` follows each way; the loop guard keeps real chains shorter.
MAX_CHAIN_HOPS: Final = 10
#: How long ``redrive`` keeps the messages it received hidden. Skipped (and, in a dry run, counted) messages
#: stay hidden until the run ends, so a receive never returns them twice; they are released at the end.
REDRIVE_VISIBILITY_SECONDS: Final = 120
DRY_RUN_VISIBILITY_SECONDS: Final = 30
# SQS's short poll samples a subset of its servers and may answer empty while messages wait; a few long
# polls settle whether the queue is really empty before the redrive stops.
_EMPTY_RECEIVE_CONFIRMATIONS: Final = 2
_LONG_POLL_SECONDS: Final = 2

_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$", re.IGNORECASE)
_UNIT_SECONDS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
# A claim token lets its holder settle the item; it is nobody else's business, so it is never shown.
_HIDDEN_ATTRIBUTES: Final = frozenset({"claimToken"})


class OperatorError(ResenderError):
    """The command cannot do what was asked (configuration, AWS, a refusal); exit code 2."""


class NotFoundError(ResenderError):
    """Nothing is recorded for what was asked about; exit code 1."""

    def __init__(self, message: str, details: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.details = dict(details or {})


class RefusedError(OperatorError):
    """A resend the protocol refuses without ``--force``."""


# -- AWS access ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AwsTarget:
    """Which AWS to talk to, chosen the way the AWS CLI chooses it.

    Unset values fall back to the SDK's own resolution: ``AWS_PROFILE``, ``AWS_REGION`` /
    ``AWS_DEFAULT_REGION``, the profile's region and ``AWS_ENDPOINT_URL`` (which boto3 reads itself when no
    endpoint is passed, so the same command works against a local emulator).
    """

    profile: str | None = None
    region: str | None = None
    endpoint_url: str | None = None

    def session(self) -> boto3.session.Session:
        try:
            core = botocore.session.Session()
            # Service models are static files; parsing them once per process, not once per client, is
            # most of what creating a client costs. Credentials and settings are still resolved afresh.
            loader = _shared_loader()
            core.register_component("data_loader", loader)
            # The AWS CLI (v2) reads AWS_REGION before AWS_DEFAULT_REGION; botocore reads only the latter.
            region = self.region or region_from_environment()
            session = boto3.session.Session(
                botocore_session=core, profile_name=self.profile, region_name=region
            )
            # boto3 adds its own data folder to the loader's search path on every new session.
            loader.search_paths[:] = list(dict.fromkeys(loader.search_paths))
            return session
        except BotoCoreError as error:
            raise OperatorError(f"AWS configuration: {error}") from None

    def dynamodb(self) -> DynamoDBClient:
        client: DynamoDBClient = self._client("dynamodb")
        return client

    def sqs(self) -> SQSClient:
        client: SQSClient = self._client("sqs")
        return client

    def _client(self, service: str) -> Any:
        from resender.aws import client_config

        try:
            return self.session().client(  # type: ignore[call-overload]
                service, endpoint_url=self.endpoint_url or None, config=client_config(10)
            )
        except BotoCoreError as error:
            raise OperatorError(f"AWS configuration: {error}") from None

    def environment(self) -> dict[str, str]:
        """The same choice as environment variables, for code that builds its own clients (the function)."""
        values: dict[str, str] = {}
        if self.profile:
            values["AWS_PROFILE"] = self.profile
        if self.region:
            values["AWS_REGION"] = values["AWS_DEFAULT_REGION"] = self.region
        if self.endpoint_url:
            values["AWS_ENDPOINT_URL"] = self.endpoint_url
        return values


@functools.cache
def _shared_loader() -> botocore.loaders.Loader:
    return botocore.loaders.create_loader()


def resolve(value: str | None, env_name: str) -> str | None:
    """An option's value, else the environment variable the function uses for the same thing."""
    return (value or os.environ.get(env_name, "")).strip() or None


def table_name(option: str | None) -> str:
    name = resolve(option, TABLE_ENV)
    if not name:
        raise OperatorError(f"no outcomes table: pass --table or set {TABLE_ENV}")
    return name


def aws_failure(error: BotoCoreError | ClientError) -> str:
    """One line naming what AWS said, without a traceback."""
    if isinstance(error, ClientError):
        details = error.response.get("Error", {})
        code = details.get("Code", "Unknown")
        message = details.get("Message") or ""
        return f"AWS error ({code}){': ' + message if message else ''}"
    return f"AWS error: {error}"


# -- times -------------------------------------------------------------------------------------------------


def iso(moment: datetime) -> str:
    """The format of ``createdAt``/``updatedAt`` in the table (UTC, milliseconds, ``Z``)."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_since(text: str, now: datetime | None = None) -> str:
    """``30m``, ``1h``, ``2d``, ``1w`` ago, or an ISO 8601 time (UTC if it names no offset)."""
    now = now or datetime.now(UTC)
    match = _DURATION.match(text)
    if match:
        amount, unit = int(match.group(1)), match.group(2).lower()
        return iso(now - timedelta(seconds=amount * _UNIT_SECONDS[unit]))
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"invalid time {text!r}: use a duration such as 30m, 1h, 2d or an ISO time"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return iso(moment)


def epoch_to_iso(value: object) -> str | None:
    return iso(datetime.fromtimestamp(value, UTC)) if isinstance(value, int) else None


def public(item: Mapping[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in sorted(item.items()) if name not in _HIDDEN_ATTRIBUTES}


# -- status ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChainLink:
    message_id: int
    status: str | None  # None: no outcome recorded (the message has not failed, or its item expired)
    resend_of: int | None
    resent_message_id: int | None

    def to_json(self) -> dict[str, Any]:
        return {
            "messageId": self.message_id,
            "status": self.status,
            "resendOf": self.resend_of,
            "resentMessageId": self.resent_message_id,
        }


@dataclass(frozen=True, slots=True)
class StatusReport:
    message_id: int
    item: dict[str, Any]
    ancestors: list[ChainLink]  # oldest first: what this message was a resend of, and so on up
    descendants: list[ChainLink]  # what its resend became, and so on down

    def to_json(self) -> dict[str, Any]:
        document = public(self.item)
        document["messageId"] = self.message_id
        document["leaseExpiresAtIso"] = epoch_to_iso(self.item.get("leaseExpiresAt"))
        document["expiresAtIso"] = epoch_to_iso(self.item.get("expiresAt"))
        document["chain"] = {
            "resendOf": self.item.get("resendOf"),
            "rootMessageId": self.item.get("rootMessageId", self.message_id),
            "depth": self.item.get("resendDepth", 0),
            "ancestors": [link.to_json() for link in self.ancestors],
            "descendants": [link.to_json() for link in self.descendants],
        }
        return document


def read_status(store: OutcomeStore, message_id: int) -> StatusReport:
    """The outcome of ``message_id`` with its resend chain; NotFoundError if it has no outcome."""
    item = store.get(message_id)
    if item is None or "status" not in item:
        resend_of = item.get("resendOf") if item else None
        message = f"no outcome recorded for messageId {message_id}"
        if resend_of is not None:
            # A link item: this message is a resend that has not failed (or not been reported) itself.
            message += f", but it is a resend of {resend_of}"
        details = {"messageId": message_id, "status": None, "resendOf": resend_of}
        raise NotFoundError(message, details)
    return StatusReport(message_id, item, _ancestors(store, item), _descendants(store, item))


def _link(message_id: int, item: Mapping[str, Any] | None) -> ChainLink:
    item = item or {}
    return ChainLink(
        message_id,
        item.get("status"),
        _int_or_none(item.get("resendOf")),
        _int_or_none(item.get("resentMessageId")),
    )


def _ancestors(store: OutcomeStore, item: Mapping[str, Any]) -> list[ChainLink]:
    links: list[ChainLink] = []
    seen: set[int] = set()
    parent = _int_or_none(item.get("resendOf"))
    while parent is not None and parent not in seen and len(links) < MAX_CHAIN_HOPS:
        seen.add(parent)
        link = _link(parent, store.get(parent))
        links.append(link)
        parent = link.resend_of
    return list(reversed(links))


def _descendants(store: OutcomeStore, item: Mapping[str, Any]) -> list[ChainLink]:
    links: list[ChainLink] = []
    seen: set[int] = set()
    child = _int_or_none(item.get("resentMessageId"))
    while child is not None and child not in seen and len(links) < MAX_CHAIN_HOPS:
        seen.add(child)
        link = _link(child, store.get(child))
        links.append(link)
        child = link.resent_message_id
    return links


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


# -- list --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Page:
    items: list[dict[str, Any]]
    next_page_token: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "items": [public(item) for item in self.items],
            "count": len(self.items),
            "nextPageToken": self.next_page_token,
        }


def encode_page_token(item: Mapping[str, Any]) -> str:
    cursor = json.dumps({"u": item["updatedAt"], "m": item["messageId"]}, separators=(",", ":"))
    return base64.urlsafe_b64encode(cursor.encode()).decode().rstrip("=")


def decode_page_token(token: str) -> tuple[str, int]:
    try:
        padded = token + "=" * (-len(token) % 4)
        cursor = json.loads(base64.urlsafe_b64decode(padded.encode()))
        updated_at, message_id = cursor["u"], cursor["m"]
    except (ValueError, TypeError, KeyError, binascii.Error):
        raise ValueError("invalid page token: pass the nextPageToken of an earlier list") from None
    if not isinstance(updated_at, str) or not isinstance(message_id, int):
        raise ValueError("invalid page token: pass the nextPageToken of an earlier list")
    return updated_at, message_id


def list_outcomes(
    store: OutcomeStore,
    statuses: Sequence[Status],
    *,
    since: str | None = None,
    limit: int = 20,
    page_token: str | None = None,
) -> Page:
    """Outcomes newest first (by ``updatedAt``, then ``messageId``), one page of ``limit``.

    Each status is one partition of the ``byStatus`` index, already sorted by time; the page merges them.
    The page token is the position of the last item shown, not a DynamoDB key, because one page spans
    several partitions. Reading ``limit + 1`` items per status tells whether another page exists.
    """
    cursor = decode_page_token(page_token) if page_token else None
    wanted = limit + 1
    candidates: list[dict[str, Any]] = []
    for status in statuses:
        taken: list[dict[str, Any]] = []
        for item in _newest_first(store, status, since, cursor[0] if cursor else None, wanted):
            if "status" not in item or not _before(item, cursor):
                continue
            # Items sharing one updatedAt come in no particular order, so a tie is read to its end.
            if len(taken) >= wanted and item["updatedAt"] != taken[-1]["updatedAt"]:
                break
            taken.append(item)
        candidates.extend(taken)
    candidates.sort(key=_order, reverse=True)
    page = candidates[:limit]
    more = len(candidates) > limit
    return Page(page, encode_page_token(page[-1]) if more and page else None)


def _newest_first(
    store: OutcomeStore, status: Status, since: str | None, until: str | None, page_size: int
) -> Iterator[dict[str, Any]]:
    token: dict[str, Any] | None = None
    while True:
        items, token = store.list_recent(status, since=since, until=until, limit=page_size, page_token=token)
        yield from items
        if token is None:
            return


def _order(item: Mapping[str, Any]) -> tuple[str, int]:
    return str(item.get("updatedAt", "")), int(item.get("messageId", 0))


def _before(item: Mapping[str, Any], cursor: tuple[str, int] | None) -> bool:
    return cursor is None or _order(item) < cursor


# -- invoke ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RecordOutcome:
    """What the outcomes table says about one record of an event file after the handler ran."""

    record_id: str
    message_id: int | None
    status: str | None
    resent_message_id: int | None = None
    detail: str | None = None
    #: For a DUPLICATE row: the status this invocation found, which an earlier record or run produced.
    found_status: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "recordId": self.record_id,
            "messageId": self.message_id,
            "status": self.status,
            "foundStatus": self.found_status,
            "resentMessageId": self.resent_message_id,
            "detail": self.detail,
        }


#: What a record that this invocation did not act on is shown as: never the status it merely found.
DUPLICATE = "DUPLICATE"


def record_outcomes(
    event: Mapping[str, Any],
    store: OutcomeStore,
    message_id_path: str = "messageId",
    *,
    invoked_at: str | None = None,
) -> list[RecordOutcome]:
    """One row per record of ``event``: what this invocation did with it.

    The stored outcome of its id when this invocation wrote it (``updatedAt`` at or after ``invoked_at``);
    ``DUPLICATE`` with the status found when the id came twice in the batch or was settled before, so a
    replay never looks like a second resend.
    """
    try:
        _, deliveries = parse_event(event)
    except ValueError as error:
        return [RecordOutcome("-", None, None, detail=str(error))]
    parser = MessageIdParser(message_id_path)
    rows: list[RecordOutcome] = []
    first_record: dict[int, str] = {}
    for delivery in deliveries:
        parsed = parser.parse(delivery)
        if not isinstance(parsed, Notice):
            rows.append(RecordOutcome(delivery.record_id, None, "POISON", detail=parsed.reason))
            continue
        item = store.get(parsed.message_id) or {}
        status = item.get("status")
        resent = _int_or_none(item.get("resentMessageId"))
        earlier = first_record.setdefault(parsed.message_id, delivery.record_id)
        if earlier != delivery.record_id:
            detail = f"duplicate of record {earlier} in this batch: handled once"
            rows.append(
                RecordOutcome(delivery.record_id, parsed.message_id, DUPLICATE, resent, detail, status)
            )
        elif invoked_at is not None and status and str(item.get("updatedAt", "")) < invoked_at:
            detail = f"already {status} before this invocation: acknowledged, not resent again"
            rows.append(
                RecordOutcome(delivery.record_id, parsed.message_id, DUPLICATE, resent, detail, status)
            )
        else:
            rows.append(
                RecordOutcome(delivery.record_id, parsed.message_id, status, resent, item.get("errorMessage"))
            )
    return rows


def load_env_vars(path: str) -> dict[str, str]:
    """``sam local invoke --env-vars`` files: ``{"Parameters": {...}}`` or ``{"<FunctionId>": {...}}``."""
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise OperatorError(f"cannot read --env-vars {path}: {error}") from None
    if not isinstance(document, dict):
        raise OperatorError(f"--env-vars {path}: expected a JSON object")
    # "Parameters" applies to every function; a function's own section wins over it.
    values: dict[str, Any] = dict(document.get("Parameters") or {})
    for name, section in document.items():
        if name != "Parameters" and isinstance(section, dict):
            values.update(section)
    return {name: str(value) for name, value in values.items() if value is not None}


# -- redrive -----------------------------------------------------------------------------------------------


@dataclass(slots=True)
class RedriveResult:
    dry_run: bool
    total_estimate: int = 0  # messages in the DLQ when the run started (SQS's approximate count)
    moved: int = 0  # in a dry run: would be moved
    skipped_poison: int = 0
    moved_poison: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "dryRun": self.dry_run,
            "moved": self.moved,
            "skippedPoison": self.skipped_poison,
            "movedPoison": self.moved_poison,
            "inDeadLetterQueueAtStart": self.total_estimate,
        }


class RedriveInterruptedError(OperatorError):
    def __init__(self, result: RedriveResult, cause: str) -> None:
        super().__init__(
            f"redrive stopped after moving {result.moved} message(s): {cause}. Nothing was lost; rerun "
            "to move the rest (a message sent but not yet deleted may be delivered twice, and the "
            "outcomes table acknowledges the second copy without resending)"
        )
        self.result = result


def queue_urls(sqs: SQSClient, queue_url: str | None, dlq_url: str | None) -> tuple[str, str]:
    """The source queue and its dead-letter queue; either may be found from the other."""
    try:
        if queue_url and not dlq_url:
            answer = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["RedrivePolicy"])
            policy = (answer.get("Attributes") or {}).get("RedrivePolicy")
            target = dead_letter_target_arn(policy)
            if target is None:
                what = "a redrive policy without a dead-letter queue ARN" if policy else "no redrive policy"
                raise OperatorError(
                    f"the source queue has {what}: pass --dlq-url or set {DEAD_LETTER_QUEUE_ENV}"
                )
            _, _, _, _, account, dlq_name = target.split(":")
            dlq_url = sqs.get_queue_url(QueueName=dlq_name, QueueOwnerAWSAccountId=account).get("QueueUrl")
        elif dlq_url and not queue_url:
            sources = sqs.list_dead_letter_source_queues(QueueUrl=dlq_url).get("queueUrls", [])
            if len(sources) != 1:
                raise OperatorError(
                    f"cannot tell the source queue ({len(sources)} queues use this DLQ): "
                    f"pass --queue-url or set {SOURCE_QUEUE_ENV}"
                )
            queue_url = sources[0]
    except (BotoCoreError, ClientError) as error:
        raise OperatorError(f"finding the queues failed: {aws_failure(error)}") from None
    if not queue_url or not dlq_url:
        raise OperatorError(
            f"no queues: pass --queue-url (or set {SOURCE_QUEUE_ENV}) and/or --dlq-url "
            f"(or set {DEAD_LETTER_QUEUE_ENV})"
        )
    if same_queue(queue_url, dlq_url):
        # Each message would be sent back to the queue it was read from: a new copy that the next receive
        # takes for a message not yet moved, for ever.
        raise OperatorError(
            f"the source queue and the dead-letter queue are the same queue ({queue_url}): "
            "pass the source queue with --queue-url and the DLQ with --dlq-url"
        )
    return queue_url, dlq_url


def same_queue(first_url: str, second_url: str) -> bool:
    """Do two SQS queue URLs name one queue? Their path (account, name) does; the host has several forms."""
    return _queue_path(first_url) == _queue_path(second_url)


def _queue_path(url: str) -> str:
    return urlsplit(url.strip()).path.rstrip("/")


def redrive(
    sqs: SQSClient,
    *,
    queue_url: str,
    dlq_url: str,
    dry_run: bool = False,
    max_moves: int | None = None,
    include_poison: bool = False,
    on_progress: Callable[[RedriveResult], None] | None = None,
) -> RedriveResult:
    """Move messages from the DLQ back to the source queue, one at a time, send first and delete second.

    SQS's own StartMessageMoveTask is not used: it moves everything, so it can neither leave poison
    messages behind nor stop after ``max_moves``, and the local emulator does not implement it.

    The order is what makes an interruption safe: a message is deleted from the DLQ only after the source
    queue accepted its copy, so a crash loses nothing; at worst the message is in both queues, and the
    outcomes table turns the second delivery into an acknowledged duplicate, never a second resend.
    """
    result = RedriveResult(dry_run=dry_run, total_estimate=_visible_count(sqs, dlq_url))
    visibility = DRY_RUN_VISIBILITY_SECONDS if dry_run else REDRIVE_VISIBILITY_SECONDS
    held: dict[str, str] = {}  # SQS message id -> receipt handle, released when the run ends
    seen: set[str] = set()
    try:
        while max_moves is None or result.moved < max_moves:
            wanted = 10 if max_moves is None else min(10, max_moves - result.moved)
            batch = _receive(sqs, dlq_url, wanted, visibility)
            if not batch:
                break
            fresh = [message for message in batch if message["MessageId"] not in seen]
            # Every message received is held (a message seen before and visible again with its newest
            # handle), so an interruption anywhere in the batch hands all of them back.
            held.update((message["MessageId"], message["ReceiptHandle"]) for message in batch)
            if not fresh:
                break  # every message in the queue has been looked at once
            for message in fresh:
                seen.add(message["MessageId"])
                poison = POISON_REASON_ATTRIBUTE in message.get("MessageAttributes", {})
                if poison and not include_poison:
                    result.skipped_poison += 1
                elif dry_run:
                    result.moved += 1
                    result.moved_poison += int(poison)
                else:
                    _move(sqs, message, queue_url, dlq_url)
                    del held[message["MessageId"]]
                    result.moved += 1
                    result.moved_poison += int(poison)
                if on_progress:
                    on_progress(result)
    except (BotoCoreError, ClientError) as error:
        _release(sqs, dlq_url, held)
        raise RedriveInterruptedError(result, aws_failure(error)) from None
    except BaseException:
        _release(sqs, dlq_url, held)  # Ctrl-C: hand the messages back now, not after their timeout
        raise
    _release(sqs, dlq_url, held)
    return result


def _visible_count(sqs: SQSClient, queue_url: str) -> int:
    try:
        attributes = sqs.get_queue_attributes(
            QueueUrl=queue_url, AttributeNames=["ApproximateNumberOfMessages"]
        )["Attributes"]
    except (BotoCoreError, ClientError) as error:
        raise OperatorError(f"reading the dead-letter queue failed: {aws_failure(error)}") from None
    return int(attributes.get("ApproximateNumberOfMessages", "0"))


def _receive(sqs: SQSClient, queue_url: str, wanted: int, visibility: int) -> list[MessageTypeDef]:
    for attempt in range(_EMPTY_RECEIVE_CONFIRMATIONS + 1):
        messages = sqs.receive_message(
            QueueUrl=queue_url,
            MaxNumberOfMessages=wanted,
            MessageAttributeNames=["All"],
            MessageSystemAttributeNames=["MessageGroupId"],
            VisibilityTimeout=visibility,
            WaitTimeSeconds=0 if attempt == 0 else _LONG_POLL_SECONDS,
        ).get("Messages", [])
        if messages or _visible_count(sqs, queue_url) == 0:
            return messages
    return []


def _move(sqs: SQSClient, message: MessageTypeDef, queue_url: str, dlq_url: str) -> None:
    request: dict[str, Any] = {"QueueUrl": queue_url, "MessageBody": message["Body"]}
    attributes = _sendable_attributes(message.get("MessageAttributes", {}))
    if attributes:
        request["MessageAttributes"] = attributes
    if queue_url.endswith(".fifo"):
        request["MessageGroupId"] = message.get("Attributes", {}).get("MessageGroupId", "redrive")
        # The DLQ message id is stable across reruns, so SQS drops a copy resent within its 5-minute window.
        request["MessageDeduplicationId"] = message["MessageId"]
    sqs.send_message(**request)
    sqs.delete_message(QueueUrl=dlq_url, ReceiptHandle=message["ReceiptHandle"])


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


def _release(sqs: SQSClient, queue_url: str, held: Mapping[str, str]) -> None:
    """Make held messages visible again now, rather than when their visibility timeout runs out."""
    handles = list(held.values())
    for start in range(0, len(handles), 10):
        entries = [
            {"Id": str(index), "ReceiptHandle": handle, "VisibilityTimeout": 0}
            for index, handle in enumerate(handles[start : start + 10])
        ]
        try:
            sqs.change_message_visibility_batch(QueueUrl=queue_url, Entries=entries)  # type: ignore[arg-type]
        except (BotoCoreError, ClientError):
            # They come back on their own when the visibility timeout ends; nothing is lost either way.
            return


# -- resend ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ResendReport:
    message_id: int
    previous_status: str | None
    status: str
    forced: bool
    reason: str
    resent_message_id: int | None = None
    outcome: dict[str, Any] = field(default_factory=dict)

    @property
    def reached_capillary(self) -> bool:
        """Whether the request got to Capillary: it answered (an HTTP status), or may have (UNCERTAIN).

        A RETRYING outcome without an HTTP status never left this side: the secret could not be read, the
        connection was refused, or the circuit breaker held the call back.
        """
        return self.status != Status.RETRYING or "httpStatus" in self.outcome

    def to_json(self) -> dict[str, Any]:
        return {
            "messageId": self.message_id,
            "previousStatus": self.previous_status,
            "status": self.status,
            "forced": self.forced,
            "resentMessageId": self.resent_message_id,
            "reachedCapillary": self.reached_capillary,
            "reason": self.reason,
            "outcome": public(self.outcome),
        }


def operator_name(option: str | None, target: AwsTarget | None = None) -> str:
    """Who forces a resend: the option, else the AWS caller identity, else the local login name.

    The caller identity names the person or role behind the credentials; a login name on a shared bastion
    is often just ``root``.
    """
    if option:
        return option
    if target is not None:
        try:
            identity = target.session().client("sts", endpoint_url=target.endpoint_url or None)
            return str(identity.get_caller_identity()["Arn"])
        except (BotoCoreError, ClientError, OperatorError, KeyError):
            pass  # the resend itself reports an AWS problem; naming the operator must not hide it
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name in some containers
        return "unknown"


def refusal(item: Mapping[str, Any] | None, now: float) -> str | None:
    """Why the claim protocol would not resend this message now, or None if it would."""
    if item is None or "status" not in item:
        return None
    status = item["status"]
    if status == Status.RESENT:
        return (
            f"messageId {item['messageId']} was already resent as {item.get('resentMessageId', '?')}; "
            "another resend sends the customer a second copy"
        )
    if status == Status.UNCERTAIN:
        return (
            f"messageId {item['messageId']} is UNCERTAIN: Capillary may already have resent it; "
            "check Capillary first"
        )
    if status in FINAL_STATUSES:
        return f"messageId {item['messageId']} is already settled as {status}"
    if status == Status.IN_PROGRESS and float(item.get("leaseExpiresAt", 0)) > now:
        return f"messageId {item['messageId']} is being resent right now (a live claim)"
    return None


def manual_resend(
    container: Container,
    message_id: int,
    *,
    force: bool,
    operator: str,
    reason: str | None = None,
    clock: Callable[[], float] = time.time,
) -> ResendReport:
    """Resend one message through the claim protocol; ``force`` overrides a settled or live status.

    Without ``force`` the message goes through the function's own processor as a one-record batch, so the
    claim, the loop guard and the outcome are exactly what a delivery from the queue would get.
    """
    settings = container.settings
    store = OutcomeStore(
        container.clients.dynamodb, settings.outcomes_table, ttl_seconds=settings.idempotency_ttl_seconds
    )
    current = store.get(message_id)
    previous = current.get("status") if current else None
    why_not = refusal(current, clock())
    if why_not is None:
        return _through_processor(container, store, message_id, previous)
    if not force:
        raise RefusedError(f"{why_not}; pass --force to resend anyway (recorded on the item as forced)")
    if current is None:  # a refusal always comes from an existing item; this keeps the types honest
        raise OperatorError(f"messageId {message_id} has no outcome to force")
    return _forced(container, store, current, operator, reason)


def _through_processor(
    container: Container, store: OutcomeStore, message_id: int, previous: str | None
) -> ResendReport:
    from resender.observability import MetricName

    delivery = Delivery(record_id=f"manual-{uuid.uuid4()}", body=json.dumps({"messageId": message_id}))
    (report,) = container.resender.process([delivery])
    if any(metric.name is MetricName.DUPLICATE for metric in report.metrics):
        raise RefusedError(
            f"messageId {message_id} was claimed by another delivery meanwhile "
            f"({report.status or 'in progress'}); see resender status {message_id}"
        )
    if report.status is None:
        raise OperatorError(f"messageId {message_id} was not resent: {report.reason}")
    return ResendReport(
        message_id,
        previous,
        report.status,
        forced=False,
        reason=report.reason or "",
        resent_message_id=report.resent_message_id,
        outcome=store.get(message_id) or {},
    )


def _forced(
    container: Container,
    store: OutcomeStore,
    current: Mapping[str, Any],
    operator: str,
    reason: str | None,
) -> ResendReport:
    from resender.capillary import CapillaryClient
    from resender.credentials import CredentialsProvider

    settings = container.settings
    message_id = int(current["messageId"])
    previous = Status(current["status"])
    claim = store.force_claim(
        message_id,
        settings.default_claim_lease_seconds + settings.claim_margin_seconds,
        expected_status=previous,
        expected_token=current.get("claimToken") if previous is Status.IN_PROGRESS else None,
        expected_updated_at=current.get("updatedAt"),
        previous_resent_message_id=_int_or_none(current.get("resentMessageId")),
        forced_by=operator,
        reason=reason,
    )
    if claim is None:
        raise RefusedError(
            f"messageId {message_id} changed while forcing (another operator or delivery got there "
            f"first); nothing was sent. See resender status {message_id}"
        )
    capillary = CapillaryClient(
        settings.capillary_base_url,
        CredentialsProvider(
            container.clients.secretsmanager, settings.capillary_secret_id, settings.secret_max_age_seconds
        ),
        timeout_seconds=settings.capillary_timeout_seconds,
        pool_size=1,
        max_text_chars=settings.max_text_chars,
    )
    # The loop guard is not applied: forcing a SKIPPED message is how an operator overrides it.
    result = capillary.resend(message_id)
    outcome = Outcome.from_result(result)
    try:
        _record(store, claim, outcome)
    except ClaimLostError:
        raise OperatorError(
            f"messageId {message_id}: Capillary answered {outcome.status} "
            f"(resentMessageId {outcome.resent_message_id}) but the item was settled by someone else "
            "before this outcome was written"
        ) from None
    except StoreError as error:
        raise OperatorError(
            f"messageId {message_id}: Capillary answered {outcome.status} "
            f"(resentMessageId {outcome.resent_message_id}) but recording it failed ({error}); the "
            "claim will turn UNCERTAIN"
        ) from None
    description = (
        f"forced by {operator} from {previous}: resent as {result.resent_message_id}"
        if result.resent_message_id is not None
        else f"forced by {operator} from {previous}: {result.error_message or outcome.status}"
    )
    return ResendReport(
        message_id,
        previous,
        outcome.status,
        forced=True,
        reason=description,
        resent_message_id=result.resent_message_id,
        outcome=store.get(message_id) or {},
    )


def _record(store: OutcomeStore, claim: Claim, outcome: Outcome, attempts: int = 3) -> None:
    # Capillary has answered by now, so a throttled write is worth a few tries before giving up.
    for attempt in range(1, attempts + 1):
        try:
            store.record(claim, outcome)
            return
        except ClaimLostError:
            raise
        except StoreError:
            if attempt == attempts:
                raise
            time.sleep(0.1 * 2**attempt)


def _settings_environment(table: str | None) -> dict[str, str]:
    """The function's environment with the command's table option applied."""
    values = dict(os.environ)
    if table:
        values[TABLE_ENV] = table
    return values


def build_operator_container(table: str | None, target: AwsTarget) -> Container:
    """The function's wiring, for the table and AWS the command was pointed at."""
    from resender.app import build_container
    from resender.settings import Settings

    # The id is put in the body by this command, at the default place, whatever the feed uses.
    settings = replace(Settings.from_env(_settings_environment(table)), message_id_path="messageId")
    with patched_environ(target.environment()):
        return build_container(settings)
