"""The outcomes table protocol, against moto's in-process DynamoDB."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
from botocore.exceptions import ClientError

from resender.local.aws import create_outcomes_table
from resender.models import Status
from resender.store import Claim, ClaimLostError, ClaimState, Outcome, OutcomeStore, StoreError
from tests.clock import FakeClock

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

TABLE = "outcomes"
ID = 1746061653596
TTL = 7 * 24 * 3600


@pytest.fixture
def dynamodb(moto_dynamodb: DynamoDBClient) -> DynamoDBClient:
    create_outcomes_table(moto_dynamodb, TABLE)
    return moto_dynamodb


@pytest.fixture
def store(dynamodb: DynamoDBClient, clock: FakeClock) -> OutcomeStore:
    return OutcomeStore(dynamodb, TABLE, ttl_seconds=TTL, clock=clock)


def claimed(store: OutcomeStore, message_id: int = ID) -> Claim:
    claim = store.claim(message_id, lease_seconds=90).claim
    assert claim is not None
    return claim


def stored(store: OutcomeStore, message_id: int = ID) -> dict[str, Any]:
    item = store.get(message_id)
    assert item is not None
    return item


def test_first_claim_creates_an_in_progress_item_with_a_lease(store: OutcomeStore, clock: FakeClock) -> None:
    result = store.claim(ID, lease_seconds=90)

    assert result.state is ClaimState.CLAIMED
    assert result.claim is not None
    item = stored(store)
    assert item["status"] == "IN_PROGRESS"
    assert item["attempts"] == 1
    assert item["leaseExpiresAt"] == clock.now + 90 + 1  # whole seconds, rounded up past the lease
    assert item["claimToken"] == result.claim.token
    assert item["expiresAt"] == int(clock.now) + TTL
    assert item["createdAt"] == item["updatedAt"]


def test_second_claim_while_the_first_is_live_is_in_flight(store: OutcomeStore) -> None:
    store.claim(ID, lease_seconds=90)

    again = store.claim(ID, lease_seconds=90)

    assert again.state is ClaimState.IN_FLIGHT
    assert again.claim is None
    assert stored(store)["attempts"] == 1


@pytest.mark.parametrize(
    "status", [Status.RESENT, Status.NOT_FOUND, Status.REJECTED, Status.UNCERTAIN, Status.SKIPPED]
)
def test_final_statuses_are_never_claimed_again(store: OutcomeStore, status: Status) -> None:
    claim = claimed(store)
    store.record(claim, Outcome(status))

    again = store.claim(ID, lease_seconds=90)

    assert (again.state, again.status) == (ClaimState.SETTLED, status)


def test_retrying_items_can_be_claimed_again(store: OutcomeStore) -> None:
    first = claimed(store)
    store.record(first, Outcome(Status.RETRYING, error_code=500, error_message="HTTP 500"))

    second = store.claim(ID, lease_seconds=90)

    assert second.state is ClaimState.CLAIMED
    assert second.claim is not None
    assert second.claim.attempts == 2
    assert second.claim.token != first.token


def test_expired_claim_becomes_uncertain_and_is_not_handed_out(store: OutcomeStore, clock: FakeClock) -> None:
    store.claim(ID, lease_seconds=90)
    clock.advance(91)

    result = store.claim(ID, lease_seconds=90)

    assert (result.state, result.status) == (ClaimState.EXPIRED, Status.UNCERTAIN)
    item = stored(store)
    assert item["status"] == "UNCERTAIN"
    assert "claimToken" not in item
    assert store.claim(ID, lease_seconds=90).state is ClaimState.SETTLED


def test_a_vanished_holder_cannot_overwrite_the_uncertain_verdict(
    store: OutcomeStore, clock: FakeClock
) -> None:
    stale = claimed(store)
    clock.advance(91)
    store.claim(ID, lease_seconds=90)

    with pytest.raises(ClaimLostError):
        store.record(stale, Outcome(Status.RESENT, resent_message_id=ID + 1))

    assert stored(store)["status"] == "UNCERTAIN"


def test_record_writes_the_outcome_and_clears_the_claim_and_stale_errors(
    store: OutcomeStore, clock: FakeClock
) -> None:
    first = claimed(store)
    store.record(
        first, Outcome(Status.RETRYING, error_code=502, error_message="bad gateway", http_status=502)
    )
    clock.advance(3600)
    second = claimed(store)

    store.record(second, Outcome(Status.RESENT, resent_message_id=ID + 7, org_id=100737, request_id="req-1"))

    item = stored(store)
    assert item["status"] == "RESENT"
    assert (item["resentMessageId"], item["orgId"], item["requestId"]) == (ID + 7, 100737, "req-1")
    assert not {"errorCode", "errorMessage", "httpStatus", "claimToken", "leaseExpiresAt"} & item.keys()
    assert item["expiresAt"] == int(clock.now) + TTL  # counted from the last update
    assert (item["createdAt"], item["updatedAt"]) == ("2027-01-15T08:00:00.000Z", "2027-01-15T09:00:00.000Z")


def test_a_resend_links_the_new_message_to_its_origin_in_the_same_request(
    store: OutcomeStore, dynamodb: DynamoDBClient
) -> None:
    calls: list[str] = []
    dynamodb.meta.events.register("before-call.dynamodb.*", lambda model, **_: calls.append(model.name))
    claim = claimed(store)

    store.record(claim, Outcome(Status.RESENT, resent_message_id=ID + 1))

    assert calls == ["UpdateItem", "TransactWriteItems"]
    link = stored(store, ID + 1)
    assert (link["resendOf"], link["resendDepth"], link["rootMessageId"]) == (ID, 1, ID)
    assert "status" not in link
    relinked = claimed(store, ID + 1)
    assert (relinked.depth, relinked.resend_of, relinked.root_message_id) == (1, ID, ID)


def test_claim_failure_is_a_store_error_without_details(
    store: OutcomeStore, dynamodb: DynamoDBClient
) -> None:
    def throttle(**_: object) -> None:
        raise ClientError(
            {"Error": {"Code": "ProvisionedThroughputExceededException", "Message": "slow down"}},
            "UpdateItem",
        )

    dynamodb.meta.events.register("before-call.dynamodb.UpdateItem", throttle)

    with pytest.raises(StoreError, match="ProvisionedThroughputExceededException"):
        store.claim(ID, lease_seconds=90)


def test_missing_table_is_a_store_error(dynamodb: DynamoDBClient, clock: FakeClock) -> None:
    store = OutcomeStore(dynamodb, "no-such-table", clock=clock)

    with pytest.raises(StoreError):
        store.claim(ID, lease_seconds=90)


@pytest.mark.parametrize(
    "outcome",
    [
        Outcome(Status.RESENT, resent_message_id=ID + 1, org_id=100737),
        Outcome(Status.NOT_FOUND, error_code=4223, error_message="Message not found"),
    ],
    ids=["resent-transaction", "not-found-update"],
)
def test_repeating_a_settle_whose_answer_was_lost_is_a_success(
    store: OutcomeStore, clock: FakeClock, outcome: Outcome
) -> None:
    claim = claimed(store)
    store.record(claim, outcome)
    clock.advance(1)  # the repeat is a new request, not a byte-identical SDK retry

    store.record(claim, outcome)

    assert stored(store)["status"] == outcome.status


def test_a_different_outcome_on_a_settled_claim_is_still_a_lost_claim(store: OutcomeStore) -> None:
    claim = claimed(store)
    store.record(claim, Outcome(Status.RETRYING, error_message="HTTP 500"))

    with pytest.raises(ClaimLostError):
        store.record(claim, Outcome(Status.RESENT, resent_message_id=ID + 1))


@pytest.mark.parametrize("resent_id", [ID, 0, -3], ids=["itself", "zero", "negative"])
def test_an_id_that_is_no_other_message_is_never_linked(
    store: OutcomeStore, dynamodb: DynamoDBClient, resent_id: int
) -> None:
    calls: list[str] = []
    dynamodb.meta.events.register("before-call.dynamodb.*", lambda model, **_: calls.append(model.name))
    claim = claimed(store)

    store.record(claim, Outcome(Status.UNCERTAIN, resent_message_id=resent_id, error_message="odd id"))

    assert calls == ["UpdateItem", "UpdateItem"], "a plain settle, no transaction with a link"
    item = stored(store)
    assert item["status"] == "UNCERTAIN" and "resendOf" not in item
    assert store.get(0) is None


def test_a_claim_whose_answer_cannot_be_read_is_released(
    store: OutcomeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    import resender.store as store_module

    real = store_module._claim_from
    answers = iter([KeyError("attempts")])

    def unreadable(*args: object) -> object:
        error = next(answers, None)
        if error is not None:
            raise error
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(store_module, "_claim_from", unreadable)

    with pytest.raises(StoreError, match="KeyError"):
        store.claim(ID, lease_seconds=90)

    assert stored(store)["status"] == "RETRYING", "released: Capillary was not called"
    assert store.claim(ID, lease_seconds=90).state is ClaimState.CLAIMED


# -- settling without a call (policy skips) ------------------------------------------------------------

SKIP = Outcome(
    Status.SKIPPED, error_message="policy: reason: 'HARD_BOUNCED' is HARD_BOUNCED", policy="reason"
)


def test_a_policy_skip_creates_a_final_item_without_a_claim(store: OutcomeStore, clock: FakeClock) -> None:
    result = store.settle_without_call(ID, SKIP)

    assert result.state is ClaimState.RECORDED
    item = stored(store)
    assert item["status"] == "SKIPPED"
    assert item["policy"] == "reason"
    assert item["errorMessage"].startswith("policy: reason")
    assert item["attempts"] == 0
    assert item["expiresAt"] == int(clock.now) + TTL
    assert "claimToken" not in item
    # Final: a later delivery is acknowledged without a claim.
    assert store.claim(ID, lease_seconds=90).state is ClaimState.SETTLED


def test_a_policy_skip_never_overwrites_a_resend(store: OutcomeStore) -> None:
    claim = claimed(store)
    store.record(claim, Outcome(Status.RESENT, resent_message_id=ID + 1))

    result = store.settle_without_call(ID, SKIP)

    assert (result.state, result.status) == (ClaimState.SETTLED, Status.RESENT)
    item = stored(store)
    assert item["status"] == "RESENT"
    assert item["resentMessageId"] == ID + 1
    assert "policy" not in item


def test_a_policy_skip_settles_a_retrying_item_and_clears_its_old_error(store: OutcomeStore) -> None:
    claim = claimed(store)
    store.record(claim, Outcome(Status.RETRYING, error_code=500, error_message="boom", http_status=500))

    assert store.settle_without_call(ID, SKIP).state is ClaimState.RECORDED
    item = stored(store)
    assert (item["status"], item["attempts"], item["errorMessage"]) == ("SKIPPED", 1, SKIP.error_message)
    assert "errorCode" not in item
    assert "httpStatus" not in item


def test_a_policy_skip_leaves_a_live_claim_alone(store: OutcomeStore) -> None:
    claim = claimed(store)

    result = store.settle_without_call(ID, SKIP)

    assert result.state is ClaimState.IN_FLIGHT
    assert stored(store)["claimToken"] == claim.token


def test_a_policy_skip_turns_a_vanished_claim_uncertain(store: OutcomeStore, clock: FakeClock) -> None:
    store.claim(ID, lease_seconds=90)
    clock.advance(3600)

    result = store.settle_without_call(ID, SKIP)

    assert result.state is ClaimState.EXPIRED
    assert stored(store)["status"] == "UNCERTAIN"


def test_a_policy_skip_keeps_the_resend_chain_of_a_link_item(store: OutcomeStore) -> None:
    claim = claimed(store)
    store.record(claim, Outcome(Status.RESENT, resent_message_id=ID + 1))

    assert store.settle_without_call(ID + 1, SKIP).state is ClaimState.RECORDED
    item = stored(store, ID + 1)
    assert (item["status"], item["resendOf"], item["resendDepth"]) == ("SKIPPED", ID, 1)
