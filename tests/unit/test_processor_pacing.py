"""How a batch is paced: held-back records are copied back with a delay, never sent without a permit.

The pacer is a scripted fake (its DynamoDB side is tested in ``test_pacing``); store, Capillary and queues are the
fakes of ``test_processor`` with the deferral operations added.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import pytest

from resender.events import DEFERRALS_ATTRIBUTE, FIRST_SEEN_ATTRIBUTE, Delivery
from resender.models import ResendResult, Status, Verdict
from resender.observability import MetricName
from resender.pacing import HoldReason, Permit, Refusal
from resender.processor import DEADLINE_SAFETY_SECONDS, RecordReport, Resender
from resender.queues import QueueError
from resender.store import Claim, ClaimLostError, StoreError
from tests.builders import TOPIC_ARN
from tests.unit.test_processor import (
    BASE_ID,
    FakeCapillary,
    FakeQueues,
    FakeStore,
    delivery,
    make_settings,
    metric_names,
    transient,
)

NOW = 1_800_000_000.0
FIFO_ARN = "arn:aws:sqs:us-east-1:123456789012:communication-failures.fifo"


class DeferringStore(FakeStore):
    def __init__(self) -> None:
        super().__init__()
        self.deferred: list[tuple[int, str, int, float]] = []
        self.defer_error: Exception | None = None

    def defer(self, claim: Claim, reason: str, *, deferrals: int, next_attempt_at: float) -> None:
        if self.defer_error is not None:
            raise self.defer_error
        self.deferred.append((claim.message_id, reason, deferrals, next_attempt_at))


class CopyingQueues(FakeQueues):
    def __init__(self) -> None:
        super().__init__()
        self.copies: list[dict[str, Any]] = []
        self.copy_fails = False

    def enqueue_copy(
        self,
        source_arn: str,
        body: str,
        delay_seconds: float,
        attributes: dict[str, str],
        kept_attributes: Any = (),
    ) -> None:
        if self.copy_fails:
            raise QueueError("re-enqueueing a held-back record failed (AccessDenied)")
        self.copies.append(
            {"arn": source_arn, "body": body, "delay": delay_seconds, "attributes": dict(attributes)}
        )


class ScriptedPacer:
    """Answers acquire() from ``answers`` in order (then grants), and records what it was told."""

    def __init__(self, *answers: Permit | Refusal) -> None:
        self.answers = list(answers)
        self.acquired = 0
        self.observed: list[ResendResult] = []
        self.hold: Refusal | None = None
        self.waits: list[float] = []

    def acquire(self, org: str, max_wait_seconds: float) -> Permit | Refusal:
        self.acquired += 1
        self.max_wait = max_wait_seconds
        if self.answers:
            return self.answers.pop(0)
        return Permit(org, NOW, NOW, 60.0)

    def wait(self, permit: Permit) -> float:
        self.waits.append(permit.go_at - NOW)
        return max(0.0, permit.go_at - NOW) * 1000

    def still_valid(self, permit: Permit) -> Refusal | None:
        return self.hold

    def observe(self, permit: Permit, result: ResendResult) -> None:
        self.observed.append(result)


def limited(retry_in: float = 30.0) -> Refusal:
    return Refusal(
        "default", HoldReason.LIMITED, NOW + retry_in, "no resend slot free within the wait allowed"
    )


def breaker_open() -> Refusal:
    return Refusal("default", HoldReason.BREAKER_OPEN, NOW + 30, "circuit open: Capillary failed repeatedly")


def unavailable() -> Refusal:
    return Refusal("default", HoldReason.UNAVAILABLE, NOW + 5, "the pacing table could not be written")


def fresh(message_id: int, **changes: Any) -> Delivery:
    """A delivery whose failure reached the queue a minute ago."""
    return replace(delivery(message_id), first_seen_at=NOW - 60, **changes)


class Paced:
    def __init__(self, executor: ThreadPoolExecutor, pacer: ScriptedPacer, **settings: Any) -> None:
        self.settings = make_settings(pacing_table="pacing", **settings)
        self.store = DeferringStore()
        self.capillary = FakeCapillary()
        self.queues = CopyingQueues()
        self.pacer = pacer
        self.resender = Resender(
            self.settings,
            store=self.store,  # type: ignore[arg-type]
            capillary=self.capillary,  # type: ignore[arg-type]
            queues=self.queues,  # type: ignore[arg-type]
            executor=executor,
            rng=random.Random(3),
            pacer=pacer,
            wall_clock=lambda: NOW,
        )

    def process(self, *deliveries: Delivery, remaining: float = 30.0) -> list[RecordReport]:
        return self.resender.process(deliveries, remaining_seconds=lambda: remaining)


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(max_workers=1)
    yield pool
    pool.shutdown(wait=True)


@pytest.fixture(autouse=True)
def no_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("resender.processor.time.sleep", lambda seconds: None)


@pytest.mark.parametrize("refusal", [limited(), breaker_open(), unavailable()], ids=lambda r: r.reason)
def test_a_refused_record_is_never_sent_and_goes_back_as_a_delayed_copy(executor, refusal) -> None:
    paced = Paced(executor, ScriptedPacer(refusal))
    record = fresh(BASE_ID)

    (report,) = paced.process(record)

    assert paced.capillary.calls == []
    assert not report.retry  # the original is acknowledged: its delivery is not spent
    (copy,) = paced.queues.copies
    assert copy["body"] == record.body
    assert copy["attributes"] == {
        DEFERRALS_ATTRIBUTE: "1",
        FIRST_SEEN_ATTRIBUTE: str(int((NOW - 60) * 1000)),
    }
    assert refusal.retry_at - NOW <= copy["delay"] <= 1.5 * (refusal.retry_at - NOW)
    ((message_id, reason, deferrals, next_attempt_at),) = paced.store.deferred
    assert (message_id, deferrals) == (BASE_ID, 1)
    assert next_attempt_at == pytest.approx(NOW + copy["delay"])
    assert refusal.detail in reason
    assert report.status is Status.RETRYING
    assert MetricName.DEFERRED in metric_names(report)
    assert (MetricName.BREAKER_OPEN in metric_names(report)) == (refusal.reason is HoldReason.BREAKER_OPEN)


def test_the_deferral_count_grows_from_copy_to_copy_and_the_first_seen_time_stays(executor) -> None:
    paced = Paced(executor, ScriptedPacer(limited()))
    copy_of_copy = replace(fresh(BASE_ID), deferrals=4, first_seen_at=NOW - 7200)

    (report,) = paced.process(copy_of_copy)

    attributes = paced.queues.copies[0]["attributes"]
    assert attributes[DEFERRALS_ATTRIBUTE] == "5"
    assert attributes[FIRST_SEEN_ATTRIBUTE] == str(int((NOW - 7200) * 1000))
    age = next(m for m in report.metrics if m.name == MetricName.DEFERRAL_AGE)
    assert (age.value, age.unit) == (7200, "Seconds")


def test_a_record_held_back_longer_than_the_maximum_age_is_kept_in_the_dead_letter_queue(executor) -> None:
    paced = Paced(executor, ScriptedPacer(limited()), deferral_max_age_seconds=3600)
    old = replace(fresh(BASE_ID), deferrals=9, first_seen_at=NOW - 3601)

    (report,) = paced.process(old)

    assert paced.capillary.calls == []
    assert paced.queues.copies == []
    ((body, reason),) = paced.queues.kept
    assert body == old.body
    assert reason.startswith("deferred too long")
    assert not report.retry
    assert paced.store.deferred[0][1].startswith("deferred too long")


def test_a_record_too_old_whose_dead_letter_copy_fails_is_handed_back_not_lost(executor) -> None:
    paced = Paced(executor, ScriptedPacer(limited()), deferral_max_age_seconds=3600)
    paced.queues.keep_fails = True

    (report,) = paced.process(replace(fresh(BASE_ID), first_seen_at=NOW - 4000))

    assert report.retry
    assert paced.capillary.calls == []


@pytest.mark.parametrize("arn", [FIFO_ARN, TOPIC_ARN], ids=["fifo", "sns"])
def test_fifo_and_sns_records_are_handed_back_instead_of_copied(executor, arn) -> None:
    paced = Paced(executor, ScriptedPacer(limited(45)))
    record = replace(delivery(BASE_ID, arn=arn), first_seen_at=NOW - 60)

    (report,) = paced.process(record)

    assert paced.queues.copies == []
    assert report.retry
    assert report.min_delay_seconds >= 45
    assert "Retrying" not in metric_names(report)  # held back, not failed
    assert paced.capillary.calls == []


def test_a_copy_that_cannot_be_enqueued_hands_the_original_back(executor) -> None:
    paced = Paced(executor, ScriptedPacer(limited(20)))
    paced.queues.copy_fails = True

    (report,) = paced.process(fresh(BASE_ID))

    assert report.retry
    assert report.min_delay_seconds >= 20
    assert "copy not enqueued" in (report.reason or "")


def test_a_claim_that_cannot_be_released_is_handed_back_past_its_lease(executor) -> None:
    paced = Paced(executor, ScriptedPacer(limited()))
    paced.store.defer_error = StoreError("releasing a held-back claim failed (InternalServerError)")

    (report,) = paced.process(fresh(BASE_ID))

    assert report.retry
    assert paced.queues.copies == []
    assert report.min_delay_seconds >= paced.settings.default_claim_lease_seconds
    assert paced.capillary.calls == []


def test_a_claim_settled_by_another_delivery_meanwhile_is_acknowledged(executor) -> None:
    paced = Paced(executor, ScriptedPacer(limited()))
    paced.store.defer_error = ClaimLostError("the claim was settled by another delivery")

    (report,) = paced.process(fresh(BASE_ID))

    assert not report.retry
    assert paced.queues.copies == []


def test_a_granted_record_waits_for_its_slot_then_is_sent(executor) -> None:
    paced = Paced(executor, ScriptedPacer(Permit("default", NOW + 2.5, NOW, 60.0)))

    (report,) = paced.process(fresh(BASE_ID))

    assert paced.capillary.calls == [BASE_ID]
    assert report.status is Status.RESENT
    wait = next(m for m in report.metrics if m.name == MetricName.PACING_WAIT_MS)
    assert (wait.value, wait.unit) == (2500, "Milliseconds")
    assert paced.store.deferred == []


def test_the_wait_for_a_slot_is_bounded_by_the_time_left_in_the_invocation(executor) -> None:
    pacer = ScriptedPacer()
    paced = Paced(executor, pacer, pacing_max_wait_seconds=10.0)

    paced.process(fresh(BASE_ID), remaining=12.0)

    # What is left after the call's whole budget (the fake's worst case) and the margin to record it.
    worst_case = paced.capillary.worst_case_seconds
    assert pacer.max_wait == pytest.approx(12.0 - DEADLINE_SAFETY_SECONDS - worst_case, abs=0.05)


def test_a_hold_learnt_while_waiting_cancels_the_call(executor) -> None:
    pacer = ScriptedPacer()
    pacer.hold = limited(3)
    paced = Paced(executor, pacer)

    (report,) = paced.process(fresh(BASE_ID))

    assert paced.capillary.calls == []
    assert len(paced.queues.copies) == 1
    assert not report.retry


def test_a_throttled_answer_holds_the_record_back_instead_of_failing_it(executor) -> None:
    paced = Paced(executor, ScriptedPacer())
    paced.capillary = FakeCapillary(
        [ResendResult(Verdict.TRANSIENT, error_code=429, http_status=429, retry_after_seconds=12.0)]
    )
    paced.resender._capillary = paced.capillary  # type: ignore[assignment]

    (report,) = paced.process(fresh(BASE_ID))

    assert not report.retry
    assert MetricName.THROTTLED in metric_names(report)
    assert 12 <= paced.queues.copies[0]["delay"] <= 18
    assert paced.pacer.observed[0].http_status == 429
    assert paced.store.records == []  # the claim was given back, not settled RETRYING


def test_a_real_failure_still_counts_toward_the_receive_count(executor) -> None:
    paced = Paced(executor, ScriptedPacer())
    paced.capillary = FakeCapillary([transient()])
    paced.resender._capillary = paced.capillary  # type: ignore[assignment]

    (report,) = paced.process(fresh(BASE_ID))

    assert report.retry
    assert paced.queues.copies == []
    assert paced.pacer.observed[0].verdict is Verdict.TRANSIENT


def test_records_that_are_not_sent_take_no_slot(executor) -> None:
    pacer = ScriptedPacer()
    paced = Paced(executor, pacer, max_resend_depth=1)
    paced.store.depth[BASE_ID + 1] = 1  # loop guard: skipped
    first = fresh(BASE_ID)
    duplicate = replace(first, record_id="another-delivery")

    paced.process(first, duplicate, fresh(BASE_ID + 1), delivery("not json"))

    assert pacer.acquired == 1
    assert paced.capillary.calls == [BASE_ID]


def test_an_open_batch_breaker_holds_the_rest_back_when_paced(executor) -> None:
    paced = Paced(executor, ScriptedPacer(), circuit_breaker_threshold=1)
    paced.capillary = FakeCapillary([transient()])
    paced.resender._capillary = paced.capillary  # type: ignore[assignment]

    first, second = paced.process(fresh(BASE_ID), fresh(BASE_ID + 1))

    assert paced.capillary.calls == [BASE_ID]
    assert first.retry  # a real failure
    assert not second.retry  # held back by the batch breaker: copied, not failed
    assert len(paced.queues.copies) == 1


def test_without_a_pacing_table_nothing_is_held_back(executor) -> None:
    store, queues, capillary = DeferringStore(), CopyingQueues(), FakeCapillary()
    resender = Resender(
        make_settings(),
        store=store,  # type: ignore[arg-type]
        capillary=capillary,  # type: ignore[arg-type]
        queues=queues,  # type: ignore[arg-type]
        executor=executor,
    )
    (report,) = resender.process([fresh(BASE_ID)], remaining_seconds=lambda: 30.0)

    assert report.status is Status.RESENT
    assert queues.copies == [] and store.deferred == []
    assert MetricName.PACING_WAIT_MS not in metric_names(report)
