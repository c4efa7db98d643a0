"""The flow of a batch with fakes around it: backoff, the circuit breaker, the loop guard, outcome writes.

Store and Capillary client are fakes checked against their protocols (``resender.ports``), the queues a
fake whose overrides are checked against ``Queues``; the pool is a real ThreadPoolExecutor (one worker
where the order of calls matters); randomness comes from a seeded ``random.Random``.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import random
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from resender.events import Delivery
from resender.models import ResendResult, Status, Verdict
from resender.observability import MetricName
from resender.ports import Capillary, Store
from resender.processor import RECORD_ATTEMPTS, CircuitBreaker, RecordReport, Resender
from resender.queues import QueueError, Queues
from resender.settings import Settings
from resender.store import Claim, ClaimLostError, ClaimResult, ClaimState, Outcome, StoreError
from tests.builders import QUEUE_ARN, REQUIRED_ENV, TOPIC_ARN, failure
from tests.clock import FakeClock

BASE_ID = 1746061653596


def make_settings(**overrides: Any) -> Settings:
    return dataclasses.replace(Settings.from_env(REQUIRED_ENV), **overrides)


def resent(message_id: int) -> ResendResult:
    return ResendResult(Verdict.RESENT, resent_message_id=message_id + 10**6, org_id=100737, http_status=200)


def transient(retry_after: float | None = None) -> ResendResult:
    return ResendResult(
        Verdict.TRANSIENT,
        error_code=500,
        error_message="boom",
        http_status=500,
        retry_after_seconds=retry_after,
    )


# -- fakes -----------------------------------------------------------------------------------------------


class FakeStore:
    def __init__(self) -> None:
        self.claims: list[tuple[int, float]] = []
        self.records: list[tuple[int, Outcome]] = []
        self.depth: dict[int, int] = {}
        self.answers: dict[int, ClaimResult] = {}
        self.claim_error: Exception | None = None
        # Raised by successive record() calls (None: that call succeeds); the last one repeats.
        self.record_errors: list[Exception | None] = []
        self.settled: list[tuple[int, Outcome]] = []
        self.deferred: list[tuple[int, str, int, float]] = []
        self.defer_error: Exception | None = None
        self._lock = threading.Lock()

    def claim(self, message_id: int, lease_seconds: float) -> ClaimResult:
        with self._lock:
            self.claims.append((message_id, lease_seconds))
        if self.claim_error is not None:
            raise self.claim_error
        if message_id in self.answers:
            return self.answers[message_id]
        depth = self.depth.get(message_id, 0)
        claim = Claim(message_id, f"token-{message_id}", 1, depth, BASE_ID if depth else None, BASE_ID)
        return ClaimResult(ClaimState.CLAIMED, claim)

    def record(self, claim: Claim, outcome: Outcome) -> None:
        with self._lock:
            self.records.append((claim.message_id, outcome))
            errors = self.record_errors
            error = errors.pop(0) if len(errors) > 1 else (errors[0] if errors else None)
        if error is not None:
            raise error

    def settle_without_call(self, message_id: int, outcome: Outcome) -> ClaimResult:
        with self._lock:
            self.settled.append((message_id, outcome))
        return ClaimResult(ClaimState.RECORDED, status=outcome.status)

    def defer(self, claim: Claim, reason: str, *, deferrals: int, next_attempt_at: float) -> None:
        if self.defer_error is not None:
            raise self.defer_error
        with self._lock:
            self.deferred.append((claim.message_id, reason, deferrals, next_attempt_at))

    def outcome(self, message_id: int | None) -> Outcome:
        return [o for m, o in self.records if m == message_id][-1]


class FakeCapillary:
    """Answers in call order from ``sequence`` (then ``default``), and keeps every call."""

    def __init__(
        self,
        sequence: Iterable[ResendResult] = (),
        default: Callable[[int], ResendResult] = resent,
    ) -> None:
        self.calls: list[int] = []
        self.deadlines: list[float | None] = []
        self._sequence = list(sequence)
        self._default = default
        self._lock = threading.Lock()

    worst_case_seconds = 4.0

    def resend(self, message_id: int, *, deadline: float | None = None) -> ResendResult:
        with self._lock:
            self.calls.append(message_id)
            self.deadlines.append(deadline)
            if self._sequence:
                return self._sequence.pop(0)
        return self._default(message_id)


class FakeQueues(Queues):
    """Records what would go to SQS; as a subclass, each override is held to the real signature."""

    def __init__(self) -> None:  # no SQS client: every call of an unpaced batch is overridden
        self.delays: list[tuple[str, str, int]] = []
        self.kept: list[tuple[str, str]] = []
        self.failing_handles: set[str | None] = set()
        self.keep_fails = False

    def delay(self, source_arn: str, receipt_handle: str, seconds: int) -> None:
        self.delays.append((source_arn, receipt_handle, seconds))
        if receipt_handle in self.failing_handles:
            raise QueueError("changing the visibility of a retried record failed (ReceiptHandleIsInvalid)")

    def keep_poison(self, body: str, reason: str, *, source_arn: str | None, source_message_id: str) -> None:
        if self.keep_fails:
            raise QueueError("copying a poison record to the dead-letter queue failed (AccessDenied)")
        self.kept.append((body, reason))

    def delay_of(self, handle: str | None) -> int:
        return next(seconds for _, h, seconds in self.delays if h == handle)


class TopOfRange(random.Random):
    """Full jitter that always draws the top of its range: the backoff equals its ceiling."""

    def uniform(self, a: float, b: float) -> float:
        return b


# The type checker fails here if a fake drifts from the protocol the processor depends on.
_store_conforms: Store = FakeStore()
_capillary_conforms: Capillary = FakeCapillary()

_record_ids = itertools.count(1)


def delivery(id_or_body: int | str, *, receive_count: int = 1, arn: str = QUEUE_ARN) -> Delivery:
    """An SQS (or SNS) delivery of ``failure(id)``, or of the body given."""
    body = failure(id_or_body) if isinstance(id_or_body, int) else id_or_body
    record_id = f"record-{next(_record_ids)}"
    handle = f"handle-{record_id}" if arn.startswith("arn:aws:sqs") else None
    return Delivery(record_id, body, receive_count, handle, arn)


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(max_workers=1)
    yield pool
    pool.shutdown(wait=True)


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch, clock: FakeClock) -> list[float]:
    """The pauses between outcome-write attempts, kept instead of slept (the test stays fast).

    The test's ``clock`` takes the place of the processor's ``time`` module: the wall clock it reads too.
    """
    monkeypatch.setattr("resender.processor.time", clock)
    return clock.sleeps


class World:
    def __init__(
        self, executor: ThreadPoolExecutor, rng: random.Random | None = None, **settings: Any
    ) -> None:
        self.settings = make_settings(**settings)
        self.store = FakeStore()
        self.capillary = FakeCapillary()
        self.queues = FakeQueues()
        self.executor = executor
        self.rng = rng or random.Random(7)

    @property
    def resender(self) -> Resender:
        return Resender(
            self.settings,
            store=self.store,
            capillary=self.capillary,
            queues=self.queues,
            executor=self.executor,
            rng=self.rng,
        )

    def process(self, *deliveries: Delivery, remaining: float = 30.0) -> list[RecordReport]:
        return self.resender.process(deliveries, remaining_seconds=lambda: remaining)


@pytest.fixture
def world(executor: ThreadPoolExecutor, sleeps: list[float]) -> World:
    return World(executor)


def metric_names(report: RecordReport) -> list[str]:
    return [metric.name for metric in report.metrics]


# -- backoff ---------------------------------------------------------------------------------------------


def backoffs(resender: Resender, receive_count: int, floor: float = 0.0, n: int = 2000) -> list[int]:
    return [resender.backoff_seconds(receive_count, floor) for _ in range(n)]


def test_backoff_ceiling_doubles_with_the_receive_count_up_to_the_cap(executor: ThreadPoolExecutor) -> None:
    resender = World(executor, random.Random(1), retry_base_seconds=30, retry_cap_seconds=900).resender

    maxima = [max(backoffs(resender, count)) for count in range(1, 9)]

    ceilings = [30, 60, 120, 240, 480, 900, 900, 900]
    for seen, ceiling in zip(maxima, ceilings, strict=True):
        # The largest of 2000 uniform draws comes near its ceiling but is random below it.
        assert 0.97 * ceiling <= seen <= ceiling, (maxima, ceilings)


@pytest.mark.parametrize("receive_count", [1, 3, 6, 50, 10**6])
def test_backoff_is_full_jitter_between_zero_and_its_ceiling(
    executor: ThreadPoolExecutor, receive_count: int
) -> None:
    resender = World(
        executor, random.Random(receive_count), retry_base_seconds=30, retry_cap_seconds=900
    ).resender
    ceiling = min(900, 30 * 2 ** min(receive_count - 1, 30))

    values = backoffs(resender, receive_count, n=4000)

    assert all(0 <= value <= ceiling for value in values)
    assert min(values) <= 0.02 * ceiling + 1, "no short waits: the jitter does not start at zero"
    quarters = Counter(min(3, int(4 * value / (ceiling + 1))) for value in values)
    assert all(800 <= quarters[q] <= 1200 for q in range(4)), quarters  # uniform: ~1000 in each quarter


def test_backoff_base_and_cap_come_from_the_settings(executor: ThreadPoolExecutor) -> None:
    world = World(executor, TopOfRange())
    world.settings = Settings.from_env({**REQUIRED_ENV, "RETRY_BASE_SECONDS": "5", "RETRY_CAP_SECONDS": "40"})

    assert [world.resender.backoff_seconds(count) for count in range(1, 6)] == [5, 10, 20, 40, 40]


def test_settings_defaults_for_retry_breaker_and_loop_guard() -> None:
    settings = Settings.from_env(REQUIRED_ENV)

    assert (settings.retry_base_seconds, settings.retry_cap_seconds) == (30, 900)
    assert settings.circuit_breaker_threshold == 3
    assert settings.max_resend_depth == 2


@pytest.mark.parametrize(
    ("receive_count", "floor"),
    [(1, 300), (1, 10.2), (4, 100), (8, 2000)],  # below the ceiling, above it, and above the cap
)
def test_backoff_is_never_shorter_than_a_retry_after(
    executor: ThreadPoolExecutor, receive_count: int, floor: float
) -> None:
    resender = World(executor, random.Random(3), retry_base_seconds=30, retry_cap_seconds=900).resender

    values = backoffs(resender, receive_count, floor)

    # Full jitter: each value is random between its bounds, and the ceiling rounds up a fractional floor.
    assert min(values) >= floor
    assert max(values) <= max(floor + 1, min(900, 30 * 2 ** (receive_count - 1)))


def test_retried_record_is_hidden_for_a_backoff_that_grows_with_its_receive_count(
    executor: ThreadPoolExecutor, sleeps: list[float]
) -> None:
    world = World(executor, TopOfRange())
    world.capillary = FakeCapillary(default=lambda _: transient())
    records = [delivery(BASE_ID + count, receive_count=count) for count in (1, 2, 3, 4)]

    reports = world.process(*records)

    assert all(report.retry for report in reports)
    assert [world.queues.delay_of(r.receipt_handle) for r in records] == [30, 60, 120, 240]
    assert {arn for arn, _, _ in world.queues.delays} == {QUEUE_ARN}


def test_retry_after_from_capillary_is_the_floor_of_the_backoff(world: World) -> None:
    world.capillary = FakeCapillary(default=lambda _: transient(retry_after=600))
    record = delivery(BASE_ID)

    [report] = world.process(record)

    assert report.retry
    assert report.min_delay_seconds == 600
    # The first delivery's backoff ceiling (30 s) is below the floor, so the floor is the delay.
    assert world.queues.delay_of(record.receipt_handle) == 600


def test_failed_visibility_change_still_retries_the_record_and_the_batch_goes_on(
    world: World, log_lines: list[str]
) -> None:
    world.capillary = FakeCapillary(default=lambda _: transient())
    records = [delivery(BASE_ID + offset) for offset in range(3)]
    world.queues.failing_handles.add(records[0].receipt_handle)

    reports = world.process(*records)

    assert [report.retry for report in reports] == [True, True, True]
    assert [handle for _, handle, _ in world.queues.delays] == [r.receipt_handle for r in records]
    warnings = [json.loads(line) for line in log_lines if "backoff not applied" in line]
    assert [line["recordId"] for line in warnings] == [records[0].record_id]


def test_only_retried_sqs_records_are_delayed(world: World) -> None:
    world.capillary = FakeCapillary([resent(BASE_ID), transient()])
    sqs_ok, sns_retried = delivery(BASE_ID), delivery(BASE_ID + 1, arn=TOPIC_ARN)

    reports = world.process(sqs_ok, sns_retried)

    assert [report.retry for report in reports] == [False, True]
    assert world.queues.delays == []


# -- circuit breaker -------------------------------------------------------------------------------------


def test_circuit_opens_after_threshold_consecutive_transient_failures(world: World) -> None:
    world.capillary = FakeCapillary(default=lambda _: transient())
    records = [delivery(BASE_ID + offset) for offset in range(10)]

    reports = world.process(*records)

    assert world.capillary.calls == [BASE_ID, BASE_ID + 1, BASE_ID + 2]
    assert all(report.retry and report.status is Status.RETRYING for report in reports)
    for report in reports[3:]:
        assert "circuit open" in (report.reason or "")
        assert MetricName.CIRCUIT_OPEN in metric_names(report)
        assert world.store.outcome(report.message_id) == Outcome(
            Status.RETRYING, error_message="circuit open"
        )
    assert all(MetricName.CIRCUIT_OPEN not in metric_names(report) for report in reports[:3])
    assert len(world.queues.delays) == 10


@pytest.mark.parametrize(
    "closing",
    [resent(BASE_ID), ResendResult(Verdict.NOT_FOUND, error_code=4223), ResendResult(Verdict.REJECTED)],
    ids=["resent", "not-found", "rejected"],
)
def test_an_answer_from_capillary_closes_the_circuit(world: World, closing: ResendResult) -> None:
    t = transient()
    world.capillary = FakeCapillary([t, t, closing, t, t, closing, t, t, t], default=lambda _: transient())

    reports = world.process(*(delivery(BASE_ID + offset) for offset in range(10)))

    assert len(world.capillary.calls) == 9
    assert "circuit open" in (reports[9].reason or "")


def test_circuit_threshold_is_a_setting(executor: ThreadPoolExecutor, sleeps: list[float]) -> None:
    world = World(executor, circuit_breaker_threshold=5)
    world.capillary = FakeCapillary(default=lambda _: transient())

    world.process(*(delivery(BASE_ID + offset) for offset in range(10)))

    assert len(world.capillary.calls) == 5


def test_each_batch_starts_with_a_closed_circuit(world: World) -> None:
    world.capillary = FakeCapillary([transient()] * 3)
    resender = world.resender  # one per container: the breaker must still be one per batch
    resender.process([delivery(BASE_ID + offset) for offset in range(5)], lambda: 30.0)
    assert len(world.capillary.calls) == 3

    [report] = resender.process([delivery(BASE_ID + 3, receive_count=2)], lambda: 30.0)

    assert len(world.capillary.calls) == 4
    assert report.status is Status.RESENT


def test_circuit_breaker_counts_exactly_under_contention() -> None:
    threshold = 8 * 500

    def hammer(breaker: CircuitBreaker) -> None:
        for _ in range(500):
            breaker.observe(Verdict.TRANSIENT)

    for margin, expected in ((0, True), (1, False)):
        breaker = CircuitBreaker(threshold + margin)
        threads = [threading.Thread(target=hammer, args=(breaker,)) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert breaker.is_open is expected


# -- outcome writes --------------------------------------------------------------------------------------


def test_outcome_write_failing_after_a_resend_is_logged_for_reconciliation(
    world: World, sleeps: list[float], log_lines: list[str]
) -> None:
    world.store.record_errors = [StoreError("recording the outcome failed (ProvisionedThroughputExceeded)")]
    record = delivery(BASE_ID)

    [report] = world.process(record, remaining=900.0)  # Lambda's longest invocation: the longest lease

    assert world.capillary.calls == [BASE_ID]
    assert len(world.store.records) == RECORD_ATTEMPTS
    assert sleeps == sorted(sleeps) and len(sleeps) == RECORD_ATTEMPTS - 1 and sleeps[0] > 0
    assert report.retry
    assert MetricName.OUTCOME_WRITE_FAILED in metric_names(report)
    errors = [json.loads(line) for line in log_lines if '"level":"ERROR"' in line]
    assert any(line.get("resentMessageId") == BASE_ID + 10**6 for line in errors)
    # The record comes back only once the claim has expired, so the next delivery records UNCERTAIN.
    [(_, lease)] = world.store.claims
    assert report.min_delay_seconds == lease
    assert world.queues.delay_of(record.receipt_handle) == math.ceil(lease)


def test_outcome_write_that_succeeds_on_a_later_attempt_is_acknowledged(
    world: World, sleeps: list[float]
) -> None:
    error = StoreError("recording the outcome failed (InternalServerError)")
    world.store.record_errors = [error, error, None]

    [report] = world.process(delivery(BASE_ID))

    assert len(world.store.records) == 3
    assert (report.status, report.retry) == (Status.RESENT, False)
    assert MetricName.OUTCOME_WRITE_FAILED not in metric_names(report)


def test_claim_lost_while_recording_is_acknowledged_not_retried(world: World) -> None:
    world.store.record_errors = [ClaimLostError("the claim was settled by another delivery")]

    [report] = world.process(delivery(BASE_ID))

    assert len(world.store.records) == 1
    assert report.retry is False
    assert MetricName.OUTCOME_WRITE_FAILED not in metric_names(report)


def test_resend_outcome_carries_the_new_id_so_the_store_can_link_it_in_the_same_write(world: World) -> None:
    [report] = world.process(delivery(BASE_ID))

    outcome = world.store.outcome(BASE_ID)
    assert outcome.status is Status.RESENT
    assert outcome.resent_message_id == report.resent_message_id == BASE_ID + 10**6
    assert len(world.store.records) == 1


# -- claims and the deadline -----------------------------------------------------------------------------


def test_too_little_time_left_means_no_claim_and_no_call(world: World) -> None:
    [report] = world.process(delivery(BASE_ID), remaining=1.0)

    assert world.store.claims == []
    assert world.capillary.calls == []
    assert report.retry
    assert "not enough time" in (report.reason or "")


def test_claim_lease_covers_the_rest_of_the_invocation_plus_the_margin(
    executor: ThreadPoolExecutor, sleeps: list[float]
) -> None:
    world = World(executor, claim_margin_seconds=60)

    world.process(delivery(BASE_ID), remaining=30.0)

    assert world.store.claims == [(BASE_ID, 90.0)]


def test_store_failing_to_claim_means_no_call_and_a_retry(world: World) -> None:
    world.store.claim_error = StoreError("claim failed (ProvisionedThroughputExceededException)")

    [report] = world.process(delivery(BASE_ID))

    assert world.capillary.calls == []
    assert report.retry
    assert "not claimed" in (report.reason or "")


@pytest.mark.parametrize(
    ("answer", "status", "retry"),
    [
        (lambda now: ClaimResult(ClaimState.SETTLED, status=Status.RESENT), Status.RESENT, False),
        (lambda now: ClaimResult(ClaimState.EXPIRED, status=Status.UNCERTAIN), Status.UNCERTAIN, False),
        (lambda now: ClaimResult(ClaimState.IN_FLIGHT, lease_expires_at=now + 100), None, True),
    ],
    ids=["settled", "expired", "in-flight"],
)
def test_claim_taken_by_someone_else_is_never_called(
    world: World,
    clock: FakeClock,
    answer: Callable[[float], ClaimResult],
    status: Status | None,
    retry: bool,
) -> None:
    world.store.answers[BASE_ID] = answer(clock.now)
    record = delivery(BASE_ID)

    [report] = world.process(record)

    assert world.capillary.calls == []
    assert (report.status, report.retry) == (status, retry)
    if retry:  # it comes back once the other holder's lease has run out, not before
        # The lease's 100 s and a second past it: a first backoff (at most 30 s) stays below that floor.
        assert world.queues.delay_of(record.receipt_handle) == 100 + 1


# -- loop guard ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("depth", "limit", "called"), [(0, 2, True), (1, 2, True), (2, 2, False), (5, 2, False), (2, 3, True)]
)
def test_resend_chain_stops_at_max_resend_depth(
    executor: ThreadPoolExecutor, sleeps: list[float], depth: int, limit: int, called: bool
) -> None:
    world = World(executor, max_resend_depth=limit)
    world.store.depth[BASE_ID] = depth

    [report] = world.process(delivery(BASE_ID))

    assert world.capillary.calls == ([BASE_ID] if called else [])
    assert report.retry is False
    if not called:
        assert report.status is Status.SKIPPED
        assert MetricName.SKIPPED in metric_names(report)
        outcome = world.store.outcome(BASE_ID)
        assert outcome.status is Status.SKIPPED
        assert f"MAX_RESEND_DEPTH={limit}" in (outcome.error_message or "")


# -- poison, duplicates, concurrency ---------------------------------------------------------------------


def test_body_over_256_kib_is_poison_even_with_a_valid_id(world: World) -> None:
    at_limit = json.dumps({"messageId": BASE_ID, "pad": ""})
    at_limit = at_limit[:-2] + "x" * (256 * 1024 - len(at_limit)) + '"}'
    over = at_limit[:-2] + 'x"}'
    assert (len(at_limit.encode()), len(over.encode())) == (256 * 1024, 256 * 1024 + 1)

    reports = world.process(delivery(at_limit), delivery(over))

    assert world.capillary.calls == [BASE_ID]
    assert reports[1].message_id is None
    assert reports[1].retry is False
    assert MetricName.POISON in metric_names(reports[1])
    [(body, reason)] = world.queues.kept
    assert body == over
    assert "bytes" in reason


def test_poison_that_cannot_be_kept_is_handed_back_never_sent(world: World) -> None:
    world.queues.keep_fails = True

    [report] = world.process(delivery("not json"))

    assert report.retry
    assert world.capillary.calls == []
    assert world.store.claims == []


def test_records_are_handled_concurrently(sleeps: list[float]) -> None:
    barrier = threading.Barrier(10, timeout=5)  # breaks unless ten calls are in flight at the same time

    def meet(message_id: int) -> ResendResult:
        barrier.wait()
        return resent(message_id)

    with ThreadPoolExecutor(max_workers=10) as pool:
        world = World(pool)
        world.capillary = FakeCapillary(default=meet)
        reports = world.process(*(delivery(BASE_ID + offset) for offset in range(10)))

    assert [report.status for report in reports] == [Status.RESENT] * 10


def test_duplicates_in_a_concurrent_batch_reach_capillary_once(sleeps: list[float]) -> None:
    with ThreadPoolExecutor(max_workers=10) as pool:
        world = World(pool)
        records = [delivery(BASE_ID, receive_count=n) for n in range(1, 9)]
        records += [delivery(failure(str(BASE_ID)), receive_count=n) for n in range(1, 9)]
        reports = world.process(*records)

    assert world.capillary.calls == [BASE_ID]
    assert [report.retry for report in reports] == [False] * 16
