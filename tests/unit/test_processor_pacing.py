"""How a batch is paced: held-back records are copied back with a delay, never sent without a permit.

The pacer is a scripted fake (its DynamoDB side is tested in ``test_pacing``); store, Capillary and queues are the
fakes of ``test_processor``, the queues with the re-enqueueing of copies added.
"""

from __future__ import annotations

import inspect
import random
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import pytest

from resender.events import DEFERRALS_ATTRIBUTE, FIRST_SEEN_ATTRIBUTE, Delivery
from resender.models import ResendResult, Status, Verdict
from resender.observability import MetricName
from resender.orgs import OrgRouter, Route
from resender.pacing import HoldReason, Permit, Refusal
from resender.processor import DEADLINE_SAFETY_SECONDS, RecordReport, Resender
from resender.queues import QueueError, Queues
from resender.store import ClaimLostError, StoreError
from tests.builders import TOPIC_ARN, failure
from tests.clock import FakeClock
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


class CopyingQueues(FakeQueues):
    """Keeps each copy instead of sending it: the call bound to the real ``enqueue_copy``'s parameters, by name.

    Binding holds every call to the real signature (one that does not fit raises), without restating it.
    """

    _enqueue_copy = inspect.signature(Queues.enqueue_copy)

    def __init__(self) -> None:
        super().__init__()
        self.copies: list[dict[str, Any]] = []
        self.copy_fails = False

    def enqueue_copy(self, *args: Any, **kwargs: Any) -> None:
        call = self._enqueue_copy.bind(self, *args, **kwargs)
        call.apply_defaults()
        if self.copy_fails:
            raise QueueError("re-enqueueing a held-back record failed (AccessDenied)")
        self.copies.append({name: value for name, value in call.arguments.items() if name != "self"})


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
    def __init__(
        self,
        executor: ThreadPoolExecutor,
        pacer: ScriptedPacer,
        *,
        capillary: FakeCapillary | None = None,
        orgs: OrgRouter | None = None,
        **settings: Any,
    ) -> None:
        self.settings = make_settings(pacing_table="pacing", **settings)
        self.store = FakeStore()
        self.capillary = capillary or FakeCapillary()
        self.queues = CopyingQueues()
        self.pacer = pacer
        self.resender = Resender(
            self.settings,
            store=self.store,
            capillary=self.capillary,
            queues=self.queues,
            executor=executor,
            rng=random.Random(3),
            pacer=pacer,
            orgs=orgs,
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
def processor_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """The processor's ``time`` module reads the batch's wall clock, and its pauses only move it on."""
    monkeypatch.setattr("resender.processor.time", FakeClock(NOW))


@pytest.mark.parametrize("refusal", [limited(), breaker_open(), unavailable()], ids=lambda r: r.reason)
def test_a_refused_record_is_never_sent_and_goes_back_as_a_delayed_copy(
    executor: ThreadPoolExecutor, refusal: Refusal
) -> None:
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
    # The comeback is spread at random by up to half the wait, so only its bounds are fixed.
    assert refusal.retry_at - NOW <= copy["delay_seconds"] <= 1.5 * (refusal.retry_at - NOW)
    ((message_id, reason, deferrals, next_attempt_at),) = paced.store.deferred
    assert (message_id, deferrals) == (BASE_ID, 1)
    assert next_attempt_at == pytest.approx(NOW + copy["delay_seconds"])
    assert refusal.detail in reason
    assert report.status is Status.RETRYING
    assert MetricName.DEFERRED in metric_names(report)
    assert (MetricName.BREAKER_OPEN in metric_names(report)) == (refusal.reason is HoldReason.BREAKER_OPEN)


def test_the_deferral_count_grows_from_copy_to_copy_and_the_first_seen_time_stays(
    executor: ThreadPoolExecutor,
) -> None:
    paced = Paced(executor, ScriptedPacer(limited()))
    copy_of_copy = replace(fresh(BASE_ID), deferrals=4, first_seen_at=NOW - 7200)

    (report,) = paced.process(copy_of_copy)

    attributes = paced.queues.copies[0]["attributes"]
    assert attributes[DEFERRALS_ATTRIBUTE] == "5"
    assert attributes[FIRST_SEEN_ATTRIBUTE] == str(int((NOW - 7200) * 1000))
    age = next(m for m in report.metrics if m.name == MetricName.DEFERRAL_AGE)
    assert (age.value, age.unit) == (7200, "Seconds")


def test_a_record_held_back_longer_than_the_maximum_age_is_kept_in_the_dead_letter_queue(
    executor: ThreadPoolExecutor,
) -> None:
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


def test_a_record_too_old_whose_dead_letter_copy_fails_is_handed_back_not_lost(
    executor: ThreadPoolExecutor,
) -> None:
    paced = Paced(executor, ScriptedPacer(limited()), deferral_max_age_seconds=3600)
    paced.queues.keep_fails = True

    (report,) = paced.process(replace(fresh(BASE_ID), first_seen_at=NOW - 4000))

    assert report.retry
    assert paced.capillary.calls == []


@pytest.mark.parametrize("arn", [FIFO_ARN, TOPIC_ARN], ids=["fifo", "sns"])
def test_fifo_and_sns_records_are_handed_back_instead_of_copied(
    executor: ThreadPoolExecutor, arn: str
) -> None:
    paced = Paced(executor, ScriptedPacer(limited(45)))
    record = replace(delivery(BASE_ID, arn=arn), first_seen_at=NOW - 60)

    (report,) = paced.process(record)

    assert paced.queues.copies == []
    assert report.retry
    # The comeback is spread at random by up to half the wait, so only its bounds are fixed.
    assert 45 <= report.min_delay_seconds <= 1.5 * 45
    assert "Retrying" not in metric_names(report)  # held back, not failed
    assert paced.capillary.calls == []


def test_a_copy_that_cannot_be_enqueued_hands_the_original_back(executor: ThreadPoolExecutor) -> None:
    paced = Paced(executor, ScriptedPacer(limited(20)))
    paced.queues.copy_fails = True

    (report,) = paced.process(fresh(BASE_ID))

    assert report.retry
    # The comeback is spread at random by up to half the wait, so only its bounds are fixed.
    assert 20 <= report.min_delay_seconds <= 1.5 * 20
    assert "copy not enqueued" in (report.reason or "")


def test_a_claim_that_cannot_be_released_is_handed_back_past_its_lease(executor: ThreadPoolExecutor) -> None:
    paced = Paced(executor, ScriptedPacer(limited()))
    paced.store.defer_error = StoreError("releasing a held-back claim failed (InternalServerError)")

    (report,) = paced.process(fresh(BASE_ID))

    assert report.retry
    assert paced.queues.copies == []
    settings = paced.settings
    assert report.min_delay_seconds == settings.default_claim_lease_seconds + settings.claim_margin_seconds
    assert paced.capillary.calls == []


def test_a_claim_settled_by_another_delivery_meanwhile_is_acknowledged(executor: ThreadPoolExecutor) -> None:
    paced = Paced(executor, ScriptedPacer(limited()))
    paced.store.defer_error = ClaimLostError("the claim was settled by another delivery")

    (report,) = paced.process(fresh(BASE_ID))

    assert not report.retry
    assert paced.queues.copies == []


def test_a_granted_record_waits_for_its_slot_then_is_sent(executor: ThreadPoolExecutor) -> None:
    paced = Paced(executor, ScriptedPacer(Permit("default", NOW + 2.5, NOW, 60.0)))

    (report,) = paced.process(fresh(BASE_ID))

    assert paced.capillary.calls == [BASE_ID]
    assert report.status is Status.RESENT
    wait = next(m for m in report.metrics if m.name == MetricName.PACING_WAIT_MS)
    assert (wait.value, wait.unit) == (2500, "Milliseconds")
    assert paced.store.deferred == []


def test_the_wait_for_a_slot_is_bounded_by_the_time_left_in_the_invocation(
    executor: ThreadPoolExecutor,
) -> None:
    pacer = ScriptedPacer()
    paced = Paced(executor, pacer, pacing_max_wait_seconds=10.0)

    paced.process(fresh(BASE_ID), remaining=12.0)

    # What is left after the call's whole budget (the fake's worst case) and the margin to record it.
    worst_case = paced.capillary.worst_case_seconds
    assert pacer.max_wait == pytest.approx(12.0 - DEADLINE_SAFETY_SECONDS - worst_case, abs=0.05)


def test_a_hold_learnt_while_waiting_cancels_the_call(executor: ThreadPoolExecutor) -> None:
    pacer = ScriptedPacer()
    pacer.hold = limited(3)
    paced = Paced(executor, pacer)

    (report,) = paced.process(fresh(BASE_ID))

    assert paced.capillary.calls == []
    assert len(paced.queues.copies) == 1
    assert not report.retry


def test_a_throttled_answer_holds_the_record_back_instead_of_failing_it(executor: ThreadPoolExecutor) -> None:
    throttled = ResendResult(Verdict.TRANSIENT, error_code=429, http_status=429, retry_after_seconds=12.0)
    paced = Paced(executor, ScriptedPacer(), capillary=FakeCapillary([throttled]))

    (report,) = paced.process(fresh(BASE_ID))

    assert not report.retry
    assert MetricName.THROTTLED in metric_names(report)
    # The comeback is spread at random by up to half the wait, so only its bounds are fixed.
    assert 12 <= paced.queues.copies[0]["delay_seconds"] <= 1.5 * 12
    assert paced.pacer.observed[0].http_status == 429
    assert paced.store.records == []  # the claim was given back, not settled RETRYING


def test_a_real_failure_still_counts_toward_the_receive_count(executor: ThreadPoolExecutor) -> None:
    paced = Paced(executor, ScriptedPacer(), capillary=FakeCapillary([transient()]))

    (report,) = paced.process(fresh(BASE_ID))

    assert report.retry
    assert paced.queues.copies == []
    assert paced.pacer.observed[0].verdict is Verdict.TRANSIENT


def test_records_that_are_not_sent_take_no_slot(executor: ThreadPoolExecutor) -> None:
    pacer = ScriptedPacer()
    paced = Paced(executor, pacer, max_resend_depth=1)
    paced.store.depth[BASE_ID + 1] = 1  # loop guard: skipped
    first = fresh(BASE_ID)
    duplicate = replace(first, record_id="another-delivery")

    paced.process(first, duplicate, fresh(BASE_ID + 1), delivery("not json"))

    assert pacer.acquired == 1
    assert paced.capillary.calls == [BASE_ID]


def test_an_open_batch_breaker_holds_the_rest_back_when_paced(executor: ThreadPoolExecutor) -> None:
    paced = Paced(
        executor, ScriptedPacer(), capillary=FakeCapillary([transient()]), circuit_breaker_threshold=1
    )

    first, second = paced.process(fresh(BASE_ID), fresh(BASE_ID + 1))

    assert paced.capillary.calls == [BASE_ID]
    assert first.retry  # a real failure
    assert not second.retry  # held back by the batch breaker: copied, not failed
    assert len(paced.queues.copies) == 1


def test_without_a_pacing_table_nothing_is_held_back(executor: ThreadPoolExecutor) -> None:
    store, queues, capillary = FakeStore(), CopyingQueues(), FakeCapillary()
    resender = Resender(make_settings(), store=store, capillary=capillary, queues=queues, executor=executor)
    (report,) = resender.process([fresh(BASE_ID)], remaining_seconds=lambda: 30.0)

    assert report.status is Status.RESENT
    assert queues.copies == [] and store.deferred == []
    assert MetricName.PACING_WAIT_MS not in metric_names(report)


class OrgsPacer(ScriptedPacer):
    """Grants every slot and remembers which org key each one was asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.orgs: list[str] = []

    def acquire(self, org: str, max_wait_seconds: float) -> Permit | Refusal:
        self.orgs.append(org)
        return super().acquire(org, max_wait_seconds)


class TwoOrgs(OrgRouter):
    """Routes by the payload's orgId to one fake Capillary per org, as OrgRouter does."""

    def __init__(self) -> None:  # no secret to read: route() is the only method the processor calls
        self.clients = {"100737": FakeCapillary(), "200002": FakeCapillary()}

    def route(self, payload: Any) -> Route:
        org = str(payload["orgId"])
        return Route(org, self.clients[org], int(org))


def test_each_record_takes_its_slot_from_its_own_orgs_limiter(executor: ThreadPoolExecutor) -> None:
    pacer, orgs = OrgsPacer(), TwoOrgs()
    paced = Paced(executor, pacer, orgs=orgs)
    first, second = (
        replace(fresh(BASE_ID), body=failure(BASE_ID, orgId=100737)),
        replace(fresh(BASE_ID + 1), body=failure(BASE_ID + 1, orgId=200002)),
    )

    paced.process(first, second)

    assert sorted(pacer.orgs) == ["100737", "200002"]
    assert orgs.clients["100737"].calls == [BASE_ID]
    assert orgs.clients["200002"].calls == [BASE_ID + 1]
