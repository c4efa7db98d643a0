"""The invocation's deadline: records are claimed only when their call fits, and the handler returns in time.

Time is simulated: one clock, read by the processor, by the fake Capillary client (which "takes" the time a
call takes, never past the deadline it is given, as the real client does) and by the Lambda context. No
wall-clock assertion: "before the deadline" means the simulated clock had not reached it when the handler
returned.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, cast

import pytest
from aws_lambda_powertools.utilities.typing import LambdaContext

from resender import app
from resender.local.runner import LocalContext
from resender.models import ResendResult, Verdict
from resender.observability import MetricName
from resender.processor import DEADLINE_SAFETY_SECONDS, VISIBILITY_MARGIN_SECONDS, Resender
from resender.settings import StartupCheck
from tests.builders import QUEUE_ARN, failure, idle_aws_clients, sqs_record
from tests.clock import FakeClock
from tests.unit.test_processor import FakeQueues, FakeStore, delivery, make_settings

BASE_ID = 1746061653596
BATCH = 10_000  # the most an SQS event source hands one invocation (with a batching window)


def monotonic_clock() -> FakeClock:
    """A monotonic reading counts from boot, not the epoch: small, so sums of 50 ms steps stay exact to far
    below the millisecond the Lambda context rounds to."""
    return FakeClock(now=1_000.0)


class TimedCapillary:
    """A client whose every call takes ``call_seconds`` of simulated time, cut off at its deadline."""

    def __init__(
        self,
        clock: FakeClock,
        call_seconds: float,
        worst_case_seconds: float = 4.0,
        answer: ResendResult | None = None,
    ) -> None:
        self.clock = clock
        self.answer = answer or ResendResult(Verdict.RESENT, resent_message_id=1, http_status=200)
        self.call_seconds = call_seconds
        self.worst_case_seconds = worst_case_seconds
        self.calls: list[tuple[int, float | None]] = []
        self._lock = threading.Lock()

    def resend(self, message_id: int, *, deadline: float | None = None) -> ResendResult:
        with self._lock:
            self.calls.append((message_id, deadline))
        took = self.call_seconds if deadline is None else min(self.call_seconds, deadline - self.clock())
        # Another worker may have moved the shared clock past the deadline already: then it takes no time.
        self.clock.advance(max(took, 0.0))
        return self.answer


class TimedQueues(FakeQueues):
    """Each visibility change takes ``delay_seconds`` of simulated time."""

    def __init__(self, clock: FakeClock, delay_seconds: float) -> None:
        super().__init__()
        self.clock = clock
        self.delay_seconds = delay_seconds

    def delay(self, source_arn: str, receipt_handle: str, seconds: int) -> None:
        self.clock.advance(self.delay_seconds)
        super().delay(source_arn, receipt_handle, seconds)


@dataclass
class SimulatedContext(LocalContext):
    clock: FakeClock = field(default_factory=monotonic_clock)
    ends_at: float = 0.0

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.ends_at - self.clock()) * 1000))


@dataclass
class Run:
    response: dict[str, Any]
    returned_at: float
    ends_at: float
    capillary: TimedCapillary
    store: FakeStore
    queues: TimedQueues
    printed: str


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=4) as executor:
        yield executor
    app.reset_container()


def invoke(
    pool: ThreadPoolExecutor,
    capsys: pytest.CaptureFixture[str],
    records: list[dict[str, Any]],
    *,
    time_left: float,
    call_seconds: float,
    delay_seconds: float,
    answer: ResendResult | None = None,
) -> Run:
    clock = monotonic_clock()
    capillary = TimedCapillary(clock, call_seconds, answer=answer)
    store, queues = FakeStore(), TimedQueues(clock, delay_seconds)
    # A 1 s read timeout: the start-up check admits a 20 s invocation (the default 10 s needs 122.6 s).
    settings = make_settings(capillary_timeout_seconds=1.0)
    resender = Resender(
        settings,
        store=store,
        capillary=capillary,
        queues=queues,
        executor=pool,
        clock=clock,
    )
    # Real clients, never called: the handler reaches AWS only through the fakes inside the resender.
    app.reset_container(app.Container(settings, idle_aws_clients(), resender, StartupCheck(settings)))
    ends_at = clock() + time_left
    capsys.readouterr()
    context = cast("LambdaContext", SimulatedContext(clock=clock, ends_at=ends_at))
    response = app.lambda_handler({"Records": records}, context)
    return Run(response, clock(), ends_at, capillary, store, queues, capsys.readouterr().out)


def metric_total(printed: str, name: str) -> float:
    return sum(
        sum(json.loads(line).get(name, [])) for line in printed.splitlines() if line.startswith('{"_aws"')
    )


def big_batch() -> list[dict[str, Any]]:
    return [sqs_record(failure(BASE_ID + offset), source_arn=QUEUE_ARN) for offset in range(BATCH)]


def test_a_batch_of_ten_thousand_with_little_time_left_returns_before_the_deadline(
    pool: ThreadPoolExecutor, capsys: pytest.CaptureFixture[str], log_lines: list[str]
) -> None:
    records = big_batch()

    run = invoke(pool, capsys, records, time_left=20.0, call_seconds=3.0, delay_seconds=0.05)

    assert run.returned_at <= run.ends_at, "the handler ran past the invocation's deadline"
    called = len(run.capillary.calls)
    # Four workers share the simulated clock, so how many calls start before it runs out depends on how
    # their threads interleave: only the bounds are fixed.
    assert 0 < called < 20
    # The few that were called were resent; every other record is handed back, not started.
    assert len(run.response["batchItemFailures"]) == BATCH - called
    # Records not started were not claimed, and cost neither a visibility change nor a log line each.
    assert len(run.store.claims) == called
    assert run.queues.delays == []  # and the ones called were resent, so none is retried either
    assert sum("resend outcome" in line for line in log_lines) == called
    [untouched_line] = [json.loads(line) for line in log_lines if "handed back untouched" in line]
    assert untouched_line["handedBack"] == BATCH - called
    assert metric_total(run.printed, MetricName.RETRYING) == BATCH - called
    assert metric_total(run.printed, MetricName.RESENT) == called


def test_every_call_gets_the_invocation_deadline_less_the_recording_margin(
    pool: ThreadPoolExecutor, capsys: pytest.CaptureFixture[str]
) -> None:
    run = invoke(pool, capsys, big_batch()[:40], time_left=30.0, call_seconds=3.0, delay_seconds=0.0)

    assert run.capillary.calls
    for _, deadline in run.capillary.calls:
        assert deadline is not None
        assert deadline <= run.ends_at - DEADLINE_SAFETY_SECONDS + 1e-6
    assert run.returned_at <= run.ends_at


def test_visibility_changes_stop_when_time_runs_out(
    pool: ThreadPoolExecutor, capsys: pytest.CaptureFixture[str], log_lines: list[str]
) -> None:
    # Every call answers at once (an auth failure: retried, and no reason to open the circuit), so all ten
    # thousand are handed back for a retry; each visibility change takes 50 ms.
    refused = ResendResult(Verdict.AUTH_FAILED, error_code=401, error_message="Unauthorized", http_status=401)
    run = invoke(
        pool, capsys, big_batch(), time_left=30.0, call_seconds=0.0, delay_seconds=0.05, answer=refused
    )

    assert len(run.capillary.calls) == BATCH
    assert len(run.response["batchItemFailures"]) == BATCH
    assert run.returned_at <= run.ends_at
    assert run.ends_at - run.returned_at < VISIBILITY_MARGIN_SECONDS + 0.05 + 1e-6
    # Calls take no simulated time and each change 50 ms: changes go on until less than the margin is left.
    assert len(run.queues.delays) == round((30.0 - VISIBILITY_MARGIN_SECONDS) / 0.05) + 1
    [skipped] = [json.loads(line) for line in log_lines if "backoff not applied: no time left" in line]
    assert skipped["withoutBackoff"] == BATCH - len(run.queues.delays)


@pytest.mark.parametrize(("time_left", "claimed"), [(21.9, False), (22.1, True)])
def test_a_record_is_claimed_only_if_the_whole_budget_of_its_call_fits(
    pool: ThreadPoolExecutor, time_left: float, claimed: bool
) -> None:
    clock = monotonic_clock()
    capillary = TimedCapillary(clock, call_seconds=0.0, worst_case_seconds=20.0)
    store = FakeStore()
    resender = Resender(
        make_settings(),
        store=store,
        capillary=capillary,
        queues=FakeQueues(),
        executor=pool,
        clock=clock,
    )

    [report] = resender.process([delivery(BASE_ID)], remaining_seconds=lambda: time_left)

    assert bool(store.claims) is claimed
    assert bool(capillary.calls) is claimed
    assert report.retry is not claimed  # resent when called; handed back when not
    if claimed:
        [(_, deadline)] = capillary.calls
        assert deadline == pytest.approx(clock() + time_left - DEADLINE_SAFETY_SECONDS)
    else:
        assert report.reason is not None
        assert "not enough time" in report.reason


def test_poison_that_cannot_be_set_aside_in_time_is_handed_back_untouched(pool: ThreadPoolExecutor) -> None:
    queues = FakeQueues()
    resender = Resender(
        make_settings(),
        store=FakeStore(),
        capillary=TimedCapillary(monotonic_clock(), 0.0),
        queues=queues,
        executor=pool,
    )

    [report] = resender.process([delivery("not json {")], remaining_seconds=lambda: 0.5)

    assert report.retry
    assert queues.kept == []
