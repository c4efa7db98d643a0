"""The outcomes table: one item per messageId, claimed before the call and settled after it.

The claim is a conditional write, so two deliveries of the same id (in one batch, in two containers, or
replayed a week later) cannot both reach Capillary. The claim holds a lease: a holder that vanished (crash,
timeout) leaves an ``IN_PROGRESS`` item whose lease has run out, and the next delivery turns it into
``UNCERTAIN`` instead of resending, because the vanished holder may have been answered already.

Recording a resend also writes a *link* on the item of the message the resend produced (``resendOf``,
``resendDepth``) in the same transaction, so the resend loop guard costs no extra round trip. A link item
has no ``status`` until that message itself fails and is claimed.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Final, cast

from botocore.exceptions import BotoCoreError, ClientError

from resender.aws import error_name
from resender.dynamodb_codec import PlainValue, item_to_plain, to_item
from resender.errors import ResenderError
from resender.models import FINAL_STATUSES, Answer, ResendResult, Status

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_dynamodb.type_defs import TransactWriteItemTypeDef

# Attributes an outcome may carry; those an outcome does not set are removed, so a RESENT item never shows
# the error of an earlier RETRYING attempt.
OPTIONAL_ATTRIBUTES: Final = (
    "resentMessageId",
    "orgId",
    "requestId",
    "errorCode",
    "errorMessage",
    "httpStatus",
    "policy",
    "answeredOrgId",
    "nextAttemptAt",
)


class StoreError(ResenderError):
    """DynamoDB could not be read or written; the message carries the AWS error code only."""


class ClaimLostError(StoreError):
    """The claim token no longer matches: another delivery settled this item first."""


class ClaimState(StrEnum):
    CLAIMED = "CLAIMED"  # ours: call Capillary
    SETTLED = "SETTLED"  # a final status exists: acknowledge without calling
    IN_FLIGHT = "IN_FLIGHT"  # another holder's lease is live: try again later
    EXPIRED = "EXPIRED"  # a vanished holder's claim, now recorded UNCERTAIN
    RECORDED = "RECORDED"  # an outcome written without a claim (a policy skip): nothing to call


@dataclass(frozen=True, slots=True)
class Claim:
    message_id: int
    token: str
    attempts: int
    depth: int  # how many resends separate this message from the original failure
    resend_of: int | None
    root_message_id: int


@dataclass(frozen=True, slots=True)
class ClaimResult:
    state: ClaimState
    claim: Claim | None = None
    status: Status | None = None  # the status found (SETTLED) or written (EXPIRED)
    lease_expires_at: float | None = None  # when another holder's live claim runs out (IN_FLIGHT)


@dataclass(frozen=True, slots=True)
class Outcome(Answer):
    status: Status
    policy: str | None = None  # the rule that refused a SKIPPED record
    answered_org_id: int | None = None  # the orgId Capillary answered with, when it is not ``org_id``

    @classmethod
    def from_result(cls, result: ResendResult) -> Outcome:
        """The outcome Capillary's answer leads to."""
        return cls(result.status, **result.answer())

    def attributes(self) -> dict[str, Any]:
        values = {
            "resentMessageId": self.resent_message_id,
            "orgId": self.org_id,
            "requestId": self.request_id,
            "errorCode": self.error_code,
            "errorMessage": self.error_message,
            "httpStatus": self.http_status,
            "policy": self.policy,
            "answeredOrgId": self.answered_org_id,
        }
        return {name: value for name, value in values.items() if value is not None}


class OutcomeStore:
    def __init__(
        self,
        client: DynamoDBClient,
        table_name: str,
        *,
        ttl_seconds: int = 7 * 24 * 3600,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._table = table_name
        self._ttl = ttl_seconds
        self._clock = clock

    def _stamp(self, now: float) -> dict[str, PlainValue]:
        # Every write refreshes the item's time and its expiry, so an item lives ``ttl_seconds`` after its
        # last change, not after its first.
        return {":now": timestamp(now), ":expires": int(now) + self._ttl}

    def claim(self, message_id: int, lease_seconds: float) -> ClaimResult:
        now = self._clock()
        token = uuid.uuid4().hex
        try:
            response = self._client.update_item(
                TableName=self._table,
                Key=_key(message_id),
                UpdateExpression=(
                    "SET #status = :claimed, attempts = if_not_exists(attempts, :zero) + :one, "
                    "claimToken = :token, leaseExpiresAt = :lease, "
                    "createdAt = if_not_exists(createdAt, :now), updatedAt = :now, expiresAt = :expires"
                ),
                ConditionExpression="attribute_not_exists(#status) OR #status = :retrying",
                ExpressionAttributeNames={"#status": "status"},
                ExpressionAttributeValues=to_item(
                    {
                        ":claimed": Status.IN_PROGRESS,
                        ":retrying": Status.RETRYING,
                        ":zero": 0,
                        ":one": 1,
                        ":token": token,
                        ":lease": int(now + lease_seconds) + 1,
                        **self._stamp(now),
                    }
                ),
                ReturnValues="ALL_NEW",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as error:
            if error_name(error) != "ConditionalCheckFailedException":
                self._release(message_id, token, now)
                raise StoreError(f"claim failed ({error_name(error)})") from None
            existing = cast("Mapping[str, Any] | None", error.response.get("Item")) or self._read(message_id)
            return self._on_taken(message_id, token, existing, now)
        except BotoCoreError as error:
            self._release(message_id, token, now)
            raise StoreError(f"claim failed ({type(error).__name__})") from None
        try:
            return ClaimResult(
                ClaimState.CLAIMED, _claim_from(message_id, token, response.get("Attributes", {}))
            )
        except (KeyError, TypeError, ValueError) as error:
            # The claim landed but its answer cannot be read: undo it, since Capillary was not called.
            self._release(message_id, token, now)
            raise StoreError(f"claim answer unreadable ({type(error).__name__})") from None

    def settle_without_call(self, message_id: int, outcome: Outcome) -> ClaimResult:
        """Write a final ``outcome`` that needs no call to Capillary (a policy skip), in one write.

        It lands only where a claim would: on a new item (or a link item, whose chain attributes stay) or a
        RETRYING one. Anything else is answered as a claim would be: a final status is left alone (a RESENT
        item is never overwritten), a live claim is IN_FLIGHT, and a vanished holder's claim turns UNCERTAIN.
        """
        now = self._clock()
        update = self._outcome_update(
            outcome,
            now,
            also=["attempts = if_not_exists(attempts, :zero)", "createdAt = if_not_exists(createdAt, :now)"],
            values={":retrying": Status.RETRYING, ":zero": 0},
        )
        try:
            self._client.update_item(
                TableName=self._table,
                Key=_key(message_id),
                ConditionExpression="attribute_not_exists(#status) OR #status = :retrying",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
                **update,
            )
        except ClientError as error:
            if error_name(error) != "ConditionalCheckFailedException":
                raise StoreError(f"recording the outcome failed ({error_name(error)})") from None
            existing = cast("Mapping[str, Any] | None", error.response.get("Item")) or self._read(message_id)
            item = item_to_plain(existing or {})
            if item.get("status") == outcome.status and item.get("errorMessage") == outcome.error_message:
                # Already skipped for the same reason: an SDK retry of this write whose answer was lost, or
                # a replay. Either way the answer is this outcome.
                return ClaimResult(ClaimState.RECORDED, status=outcome.status)
            return self._on_taken(message_id, uuid.uuid4().hex, existing, now)
        except BotoCoreError as error:
            raise StoreError(f"recording the outcome failed ({type(error).__name__})") from None
        return ClaimResult(ClaimState.RECORDED, status=outcome.status)

    def _release(self, message_id: int, token: str, now: float) -> None:
        """Undo a claim whose answer was lost: it may have landed, and Capillary was not called.

        Without this, the orphaned claim would block the message until its lease ran out and then be
        recorded UNCERTAIN although nothing was ever sent. If the release fails too, that is what happens:
        the safe side.
        """
        why = "claim released: the claim's answer was lost; Capillary was not called"
        try:
            self._close_claim(message_id, token, Status.RETRYING, why, now)
        except (ClientError, BotoCoreError):
            return  # the claim never landed (condition failed), or DynamoDB is still unreachable

    def _close_claim(
        self,
        message_id: int,
        token: str,
        status: Status,
        why: str,
        now: float,
        *,
        also: Mapping[str, PlainValue] | None = None,
    ) -> None:
        """Move the claim holding ``token`` to ``status`` without an answer from Capillary.

        ``also`` sets further attributes in the same conditional write, by their item names.
        """
        extra = dict(also or {})
        assignments = "".join(f"{name} = :{name}, " for name in extra)
        self._client.update_item(
            TableName=self._table,
            Key=_key(message_id),
            UpdateExpression=(
                f"SET #status = :status, errorMessage = :why, {assignments}updatedAt = :now, "
                "expiresAt = :expires REMOVE claimToken, leaseExpiresAt"
            ),
            ConditionExpression="#status = :claimed AND claimToken = :token",
            ExpressionAttributeNames={"#status": "status"},
            ExpressionAttributeValues=to_item(
                {
                    ":status": status,
                    ":claimed": Status.IN_PROGRESS,
                    ":token": token,
                    ":why": why,
                    **{f":{name}": value for name, value in extra.items()},
                    **self._stamp(now),
                }
            ),
        )

    def defer(self, claim: Claim, reason: str, *, deferrals: int, next_attempt_at: float) -> None:
        """Give our claim back without calling Capillary: pacing holds the message until ``next_attempt_at``.

        The item becomes ``RETRYING`` again (any later delivery may claim it) and shows how often the message
        was held back and when it comes next, for ``resender status``.
        """
        held_back: dict[str, PlainValue] = {
            "deferrals": deferrals,
            "nextAttemptAt": timestamp(next_attempt_at),
        }
        try:
            self._close_claim(
                claim.message_id, claim.token, Status.RETRYING, reason, self._clock(), also=held_back
            )
        except ClientError as error:
            if error_name(error) == "ConditionalCheckFailedException":
                raise ClaimLostError("the claim was settled by another delivery") from None
            raise StoreError(f"releasing a held-back claim failed ({error_name(error)})") from None
        except BotoCoreError as error:
            raise StoreError(f"releasing a held-back claim failed ({type(error).__name__})") from None

    def record(self, claim: Claim, outcome: Outcome) -> None:
        """Settle our claim with ``outcome``; a resend also links the message it produced to this one."""
        update = self._settle_update(claim, outcome)
        try:
            if not linkable(claim.message_id, outcome.resent_message_id):
                self._client.update_item(**update, ReturnValuesOnConditionCheckFailure="ALL_OLD")
            else:
                settle = {**update, "ReturnValuesOnConditionCheckFailure": "ALL_OLD"}
                self._client.transact_write_items(
                    TransactItems=[
                        cast("TransactWriteItemTypeDef", {"Update": settle}),
                        self._link(claim, int(outcome.resent_message_id or 0)),
                    ],
                    # The claim token is used by this settle alone: an SDK retry of a transaction that was
                    # applied but whose answer was lost is then answered as a success, not a failed condition.
                    ClientRequestToken=claim.token,
                )
        except ClientError as error:
            if _already_recorded(error, outcome):
                return
            if _lost_claim(error):
                raise ClaimLostError("the claim was settled by another delivery") from None
            raise StoreError(f"recording the outcome failed ({error_name(error)})") from None
        except BotoCoreError as error:
            raise StoreError(f"recording the outcome failed ({type(error).__name__})") from None

    def get(self, message_id: int) -> dict[str, Any] | None:
        item = self._read(message_id)
        return item_to_plain(item) if item else None

    def _settle_update(self, claim: Claim, outcome: Outcome) -> dict[str, Any]:
        return {
            "TableName": self._table,
            "Key": _key(claim.message_id),
            "ConditionExpression": "claimToken = :token",
            **self._outcome_update(outcome, self._clock(), values={":token": claim.token}),
        }

    def _outcome_update(
        self,
        outcome: Outcome,
        now: float,
        *,
        also: Sequence[str] = (),
        values: Mapping[str, PlainValue],
    ) -> dict[str, Any]:
        """The update that writes ``outcome``: its status and attributes, with nothing left of the claim.

        An attribute the outcome does not carry is removed, so that no answer of an earlier attempt (an
        errorCode after a success, say) survives beside it. ``also`` and ``values`` add the caller's own
        assignments and the values its condition reads.
        """
        attributes = outcome.attributes()
        names = {"#status": "status"}
        written: dict[str, PlainValue] = {":status": outcome.status, **self._stamp(now), **values}
        assignments = ["#status = :status", *also, "updatedAt = :now", "expiresAt = :expires"]
        for index, (name, value) in enumerate(attributes.items()):
            names[f"#a{index}"] = name
            written[f":a{index}"] = value
            assignments.append(f"#a{index} = :a{index}")
        removals = ["claimToken", "leaseExpiresAt"] + [
            name for name in OPTIONAL_ATTRIBUTES if name not in attributes
        ]
        return {
            "UpdateExpression": f"SET {', '.join(assignments)} REMOVE {', '.join(removals)}",
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": to_item(written),
        }

    def _link(self, claim: Claim, resent_message_id: int) -> TransactWriteItemTypeDef:
        now = self._clock()
        return {
            "Update": {
                "TableName": self._table,
                "Key": _key(resent_message_id),
                "UpdateExpression": (
                    "SET resendOf = :of, resendDepth = :depth, rootMessageId = :root, "
                    "linkedAt = :now, expiresAt = if_not_exists(expiresAt, :expires)"
                ),
                "ExpressionAttributeValues": to_item(
                    {
                        ":of": claim.message_id,
                        ":depth": claim.depth + 1,
                        ":root": claim.root_message_id,
                        **self._stamp(now),
                    }
                ),
            }
        }

    def _on_taken(
        self, message_id: int, token: str, existing: Mapping[str, Any] | None, now: float
    ) -> ClaimResult:
        item = item_to_plain(existing or {})
        if item.get("claimToken") == token:
            # The SDK retried a claim whose first answer was lost: the claim that "failed" is our own.
            return ClaimResult(ClaimState.CLAIMED, _claim_from(message_id, token, existing or {}))
        status = _status(item.get("status"))
        if status in FINAL_STATUSES:
            return ClaimResult(ClaimState.SETTLED, status=status)
        lease_expires_at = float(item.get("leaseExpiresAt", 0))
        if status is Status.IN_PROGRESS and lease_expires_at <= now:
            return self._expire(message_id, str(item.get("claimToken", "")), now)
        return ClaimResult(ClaimState.IN_FLIGHT, status=status, lease_expires_at=lease_expires_at)

    def _expire(self, message_id: int, stale_token: str, now: float) -> ClaimResult:
        why = (
            "claim expired: its holder stopped before recording an outcome, "
            "so Capillary may already have resent it"
        )
        try:
            self._close_claim(message_id, stale_token, Status.UNCERTAIN, why, now)
        except ClientError as error:
            if error_name(error) == "ConditionalCheckFailedException":
                return ClaimResult(ClaimState.IN_FLIGHT)  # someone else settled it just now: look again later
            raise StoreError(f"expiring a stale claim failed ({error_name(error)})") from None
        except BotoCoreError as error:
            raise StoreError(f"expiring a stale claim failed ({type(error).__name__})") from None
        return ClaimResult(ClaimState.EXPIRED, status=Status.UNCERTAIN)

    def _read(self, message_id: int) -> dict[str, Any] | None:
        try:
            response = self._client.get_item(TableName=self._table, Key=_key(message_id), ConsistentRead=True)
        except ClientError as error:
            raise StoreError(f"reading the outcome failed ({error_name(error)})") from None
        except BotoCoreError as error:
            raise StoreError(f"reading the outcome failed ({type(error).__name__})") from None
        return dict(response["Item"]) if "Item" in response else None

    # -- operator access (the ``resender`` command) ---------------------------------------------------

    def list_recent(
        self,
        status: Status,
        *,
        since: str | None = None,
        until: str | None = None,
        limit: int = 20,
        page_token: Mapping[str, Any] | None = None,
        index_name: str = "byStatus",
    ) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
        """One page of outcomes with ``status`` from the ``byStatus`` index, newest ``updatedAt`` first.

        ``since`` and ``until`` bound ``updatedAt`` inclusively; they compare as strings, which is time
        order because every ``updatedAt`` is written in one format (UTC, milliseconds, ``Z``). The second
        value returned is DynamoDB's key to pass back as ``page_token`` for the next page, or None.
        """
        condition = "#status = :status"
        values: dict[str, PlainValue] = {":status": status}
        if since is not None and until is not None:
            condition += " AND updatedAt BETWEEN :since AND :until"
            values[":since"], values[":until"] = since, until
        elif since is not None:
            condition += " AND updatedAt >= :since"
            values[":since"] = since
        elif until is not None:
            condition += " AND updatedAt <= :until"
            values[":until"] = until
        request: dict[str, Any] = {
            "TableName": self._table,
            "IndexName": index_name,
            "KeyConditionExpression": condition,
            "ExpressionAttributeNames": {"#status": "status"},
            "ExpressionAttributeValues": to_item(values),
            "ScanIndexForward": False,
            "Limit": max(1, limit),
        }
        if page_token:
            request["ExclusiveStartKey"] = dict(page_token)
        try:
            response = self._client.query(**request)
        except ClientError as error:
            raise StoreError(f"listing outcomes failed ({error_name(error)})") from None
        except BotoCoreError as error:
            raise StoreError(f"listing outcomes failed ({type(error).__name__})") from None
        items = [item_to_plain(item) for item in response.get("Items", [])]
        last_key = response.get("LastEvaluatedKey")
        return items, (dict(last_key) if last_key else None)

    def force_claim(
        self,
        message_id: int,
        lease_seconds: float,
        *,
        expected_status: Status,
        forced_by: str,
        expected_token: str | None = None,
        expected_updated_at: str | None = None,
        previous_resent_message_id: int | None = None,
        reason: str | None = None,
    ) -> Claim | None:
        """Claim an item whose status the normal claim refuses, for an operator's deliberate resend.

        The write is conditional on what the operator saw: the status, and when given the claim token and
        ``updatedAt`` (so a settle-and-force by someone else in between does not pass for "unchanged").
        Two operators forcing the same id at once cannot both win: the loser gets None and must not call
        Capillary. ``forced``, ``forcedFrom``, ``forcedBy``, ``forcedAt`` and ``previousResentMessageId``
        (the resend this one adds to) stay on the item after ``record`` settles it, because ``record``
        removes only outcome attributes.
        """
        now = self._clock()
        token = uuid.uuid4().hex
        condition = "#status = :expected"
        values: dict[str, PlainValue] = {
            ":claimed": Status.IN_PROGRESS,
            ":expected": expected_status,
            ":one": 1,
            ":zero": 0,
            ":token": token,
            ":lease": int(now + lease_seconds) + 1,
            **self._stamp(now),
            ":forced": True,
            ":by": forced_by,
        }
        if expected_token is not None:
            condition += " AND claimToken = :stale"
            values[":stale"] = expected_token
        if expected_updated_at is not None:
            condition += " AND updatedAt = :seen"
            values[":seen"] = expected_updated_at
        assignments = (
            "SET #status = :claimed, attempts = if_not_exists(attempts, :zero) + :one, claimToken = :token, "
            "leaseExpiresAt = :lease, createdAt = if_not_exists(createdAt, :now), updatedAt = :now, "
            "expiresAt = :expires, forced = :forced, forcedFrom = :expected, forcedBy = :by, forcedAt = :now"
        )
        if reason:
            assignments += ", forceReason = :reason"
            values[":reason"] = reason
        if previous_resent_message_id is not None:
            assignments += ", previousResentMessageId = :previous"
            values[":previous"] = previous_resent_message_id
        try:
            response = self._client.update_item(
                TableName=self._table,
                Key=_key(message_id),
                UpdateExpression=assignments,
                ConditionExpression=condition,
                ExpressionAttributeNames={"#status": "status"},
                ExpressionAttributeValues=to_item(values),
                ReturnValues="ALL_NEW",
            )
        except ClientError as error:
            if error_name(error) == "ConditionalCheckFailedException":
                return None
            raise StoreError(f"forcing a claim failed ({error_name(error)})") from None
        except BotoCoreError as error:
            raise StoreError(f"forcing a claim failed ({type(error).__name__})") from None
        return _claim_from(message_id, token, response.get("Attributes", {}))


def linkable(message_id: int, resent_message_id: int | None) -> bool:
    """May the loop guard link ``resent_message_id`` back to ``message_id``?

    Only a positive id of another message: DynamoDB refuses a transaction that writes one item twice, and a
    message linked to itself would look like its own resend.
    """
    return resent_message_id is not None and 0 < resent_message_id < 2**63 and resent_message_id != message_id


def _claim_from(message_id: int, token: str, typed_item: Mapping[str, Any]) -> Claim:
    item = item_to_plain(typed_item)
    return Claim(
        message_id=message_id,
        token=token,
        attempts=int(item.get("attempts", 1)),
        depth=int(item.get("resendDepth", 0)),
        resend_of=_optional_int(item.get("resendOf")),
        root_message_id=int(item.get("rootMessageId", message_id)),
    )


def _key(message_id: int) -> dict[str, Any]:
    return {"messageId": {"N": str(message_id)}}


def timestamp(epoch_seconds: float) -> str:
    """The one format of ``createdAt``, ``updatedAt`` and ``nextAttemptAt``: UTC, milliseconds, ``Z``.

    Listing by time compares these strings, so every writer and reader of them uses this.
    """
    return (
        datetime.fromtimestamp(epoch_seconds, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


def _status(value: object) -> Status | None:
    try:
        return Status(str(value)) if value is not None else None
    except ValueError:
        return None


def _optional_int(value: object) -> int | None:
    return int(value) if isinstance(value, int | str) and str(value).isdigit() else None


def _already_recorded(error: ClientError, outcome: Outcome) -> bool:
    """Did an earlier attempt of this very settle land, with only its answer lost?"""
    if error_name(error) == "IdempotentParameterMismatchException":
        # Only an earlier record() of the same claim can have used its token: that transaction was applied.
        return True
    if error_name(error) == "ConditionalCheckFailedException":
        found: object = error.response.get("Item")
    elif error_name(error) == "TransactionCanceledException":
        reasons = error.response.get("CancellationReasons") or [{}]
        found = reasons[0].get("Item")
    else:
        return False
    item = item_to_plain(cast("Mapping[str, Any]", found or {}))
    return (
        "claimToken" not in item
        and item.get("status") == outcome.status
        and item.get("errorMessage") == outcome.error_message
        and item.get("resentMessageId") == outcome.resent_message_id
    )


def _lost_claim(error: ClientError) -> bool:
    code = error_name(error)
    if code == "ConditionalCheckFailedException":
        return True
    if code == "TransactionCanceledException":
        reasons = error.response.get("CancellationReasons", [])
        return bool(reasons) and reasons[0].get("Code") == "ConditionalCheckFailed"
    return False
