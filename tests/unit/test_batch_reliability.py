"""One record's failure stays that record's: unexpected errors, poison with nowhere to go, FIFO groups, odd ids.

The fakes of ``test_processor`` stand in for the store, Capillary and the queues; each test makes one of them
raise something the code does not expect (RuntimeError, KeyError, UnicodeError) at one stage of a record and
checks that the record's outcome matches how far it got, and that the rest of the batch is untouched.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import pytest

from resender.events import Delivery, ParsedRecord
from resender.models import ResendResult, Status, Verdict
from resender.observability import MetricName, logger
from resender.processor import CircuitBreaker, credible_outcome
from resender.queues import NoDeadLetterQueueError
from resender.store import ClaimResult, Outcome
from tests.builders import QUEUE_ARN
from tests.unit.test_processor import (  # noqa: F401 - executor and sleeps are fixtures used by name
    BASE_ID,
    FakeCapillary,
    World,
    delivery,
    executor,
    metric_names,
    resent,
    sleeps,
    transient,
)

FIFO_ARN = QUEUE_ARN + ".fifo"
SECRET_TEXT = "password=server123"  # what a careless exception message could carry


@pytest.fixture
def world(executor: ThreadPoolExecutor, sleeps: list[float]) -> World:  # noqa: F811
    return World(executor)


class RaisingCapillary(FakeCapillary):
    def __init__(self, failing: dict[int, Exception]) -> None:
        super().__init__()
        self._failing = failing

    def resend(self, message_id: int, *, deadline: float | None = None) -> ResendResult:
        with self._lock:
            self.calls.append(message_id)
        if message_id in self._failing:
            raise self._failing[message_id]
        return resent(message_id)


# -- an unexpected error at each stage of one record ----------------------------------------------------


def test_error_before_the_claim_hands_the_record_back_and_the_batch_goes_on(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    store_claim = world.store.claim

    def claim(message_id: int, lease_seconds: float) -> ClaimResult:
        if message_id == BASE_ID:
            raise RuntimeError(SECRET_TEXT)
        return store_claim(message_id, lease_seconds)

    monkeypatch.setattr(world.store, "claim", claim)

    broken, fine = world.process(delivery(BASE_ID), delivery(BASE_ID + 1))

    assert broken.retry and broken.status is None
    assert "RuntimeError" in (broken.reason or "") and "not called" in (broken.reason or "")
    assert SECRET_TEXT not in (broken.reason or "")
    assert MetricName.UNEXPECTED_ERROR in metric_names(broken)
    assert world.capillary.calls == [BASE_ID + 1]
    assert fine.status is Status.RESENT and not fine.retry


def test_error_after_the_claim_before_the_call_releases_the_claim(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    def is_open(self: CircuitBreaker) -> bool:
        raise KeyError("threshold")

    monkeypatch.setattr(CircuitBreaker, "is_open", property(is_open))

    (report,) = world.process(delivery(BASE_ID))

    assert world.capillary.calls == []
    assert report.retry and report.status is Status.RETRYING
    released = world.store.outcome(BASE_ID)
    assert released.status is Status.RETRYING
    assert "KeyError" in (released.error_message or "") and "not called" in (released.error_message or "")


@pytest.mark.parametrize(
    "error",
    [UnicodeEncodeError("latin-1", "é", 0, 1, "header"), RuntimeError(SECRET_TEXT), KeyError("x")],
    ids=["UnicodeError", "RuntimeError", "KeyError"],
)
def test_error_from_the_call_is_uncertain_never_retried(world: World, error: Exception) -> None:
    world.capillary = RaisingCapillary({BASE_ID: error})

    broken, fine = world.process(delivery(BASE_ID), delivery(BASE_ID + 1))

    assert broken.status is Status.UNCERTAIN and not broken.retry
    recorded = world.store.outcome(BASE_ID)
    assert recorded.status is Status.UNCERTAIN
    assert type(error).__name__ in (recorded.error_message or "") and "may have resent" in (
        recorded.error_message or ""
    )
    assert SECRET_TEXT not in (recorded.error_message or "")
    assert fine.status is Status.RESENT
    assert sorted(world.capillary.calls) == [BASE_ID, BASE_ID + 1]


def test_answer_read_then_an_error_still_records_the_answer(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    def observe(self: CircuitBreaker, verdict: Verdict) -> None:
        raise RuntimeError("metrics sink")

    monkeypatch.setattr(CircuitBreaker, "observe", observe)

    (report,) = world.process(delivery(BASE_ID))

    assert world.store.outcome(BASE_ID).status is Status.RESENT
    assert world.store.outcome(BASE_ID).resent_message_id == BASE_ID + 10**6
    assert report.status is Status.RESENT and not report.retry
    assert MetricName.UNEXPECTED_ERROR in metric_names(report)


def test_record_raising_once_unexpectedly_still_records_the_answer(world: World) -> None:
    world.store.record_errors = [TypeError("once"), None]

    (report,) = world.process(delivery(BASE_ID))

    assert report.status is Status.RESENT and not report.retry
    assert [message_id for message_id, _ in world.store.records] == [BASE_ID, BASE_ID]
    assert world.store.outcome(BASE_ID).resent_message_id == BASE_ID + 10**6
    assert MetricName.UNEXPECTED_ERROR in metric_names(report)


def test_record_raising_every_time_leaves_the_claim_to_expire_into_uncertain(world: World) -> None:
    world.store.record_errors = [RuntimeError(SECRET_TEXT)]

    (report,) = world.process(delivery(BASE_ID))

    assert world.capillary.calls == [BASE_ID]
    assert report.retry  # handed back to come again only after the lease: then UNCERTAIN, never resent
    assert MetricName.OUTCOME_WRITE_FAILED in metric_names(report)
    settings = world.settings
    assert report.min_delay_seconds == settings.default_claim_lease_seconds + settings.claim_margin_seconds
    assert SECRET_TEXT not in (report.reason or "")


def test_poison_copy_raising_unexpectedly_hands_the_poison_back(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    def keep_poison(*args: object, **kwargs: object) -> None:
        raise RuntimeError(SECRET_TEXT)

    monkeypatch.setattr(world.queues, "keep_poison", keep_poison)

    poison, fine = world.process(delivery("not json"), delivery(BASE_ID))

    assert poison.retry and poison.message_id is None
    assert MetricName.POISON_HANDED_BACK in metric_names(poison)
    assert MetricName.UNEXPECTED_ERROR in metric_names(poison)
    assert SECRET_TEXT not in (poison.reason or "")
    assert world.capillary.calls == [BASE_ID]
    assert fine.status is Status.RESENT


def test_backoff_raising_unexpectedly_still_reports_the_record(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    def delay(*args: object) -> None:
        raise KeyError("handle")

    monkeypatch.setattr(world.queues, "delay", delay)
    world.capillary = FakeCapillary(default=lambda _: transient())

    reports = world.process(delivery(BASE_ID), delivery(BASE_ID + 1))

    assert [report.retry for report in reports] == [True, True]


def test_a_parser_that_raises_makes_poison_not_a_crash(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    resender = world.resender
    parse = resender._parser.parse

    def fragile(record: Delivery) -> ParsedRecord:
        if record.body == "explodes":
            raise RecursionError("deep")
        return parse(record)

    monkeypatch.setattr(resender._parser, "parse", fragile)

    poison, fine = resender.process([delivery("explodes"), delivery(BASE_ID)], remaining_seconds=lambda: 30)

    assert poison.status is None and not poison.retry  # copied to the DLQ with its reason
    assert world.queues.kept == [("explodes", "the body could not be read (RecursionError)")]
    assert fine.status is Status.RESENT


@pytest.mark.parametrize("level", ["info", "warning", "error"])
def test_a_logger_that_raises_changes_no_outcome(
    world: World, monkeypatch: pytest.MonkeyPatch, level: str
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise OSError("log pipe closed")

    monkeypatch.setattr(logger, level, broken)
    world.capillary = FakeCapillary([transient()])
    world.queues.keep_fails = True

    reports = world.process(delivery(BASE_ID), delivery(BASE_ID + 1), delivery(BASE_ID + 1), delivery("{}"))

    assert [(r.status, r.retry) for r in reports] == [
        (Status.RETRYING, True),
        (Status.RESENT, False),
        (None, False),  # the in-batch duplicate
        (None, True),  # poison that could not be copied: handed back
    ]


def test_unexpected_error_log_names_the_type_and_place_never_the_message(
    world: World, log_lines: list[str]
) -> None:
    world.capillary = RaisingCapillary({BASE_ID: RuntimeError(SECRET_TEXT)})

    world.process(delivery(BASE_ID))

    lines = [line for line in log_lines if "unexpected error" in line]
    assert len(lines) == 1
    assert '"errorType":"RuntimeError"' in lines[0].replace(" ", "")
    assert "test_batch_reliability.py" in lines[0] and "in resend" in lines[0]
    assert all("server123" not in line for line in log_lines)


# -- poison with no dead-letter queue -------------------------------------------------------------------


def test_poison_without_a_dead_letter_queue_is_handed_back_and_counted(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    def keep_poison(*args: object, **kwargs: object) -> None:
        raise NoDeadLetterQueueError("DEAD_LETTER_QUEUE_URL is not set and the source queue has no policy")

    monkeypatch.setattr(world.queues, "keep_poison", keep_poison)

    poison, fine = world.process(delivery('{"messageId": 0}'), delivery(BASE_ID))

    assert poison.retry
    assert "SQS keeps it" in (poison.reason or "") and "messageId must be greater than 0" in (
        poison.reason or ""
    )
    assert metric_names(poison) == [MetricName.POISON, MetricName.POISON_HANDED_BACK]
    assert world.capillary.calls == [BASE_ID]
    assert fine.status is Status.RESENT and not fine.retry


# -- resentMessageId that names no new message ------------------------------------------------------------


@pytest.mark.parametrize(
    ("resent_id", "words"),
    [(BASE_ID, "the original messageId"), (0, "not a positive id"), (-7, "not a positive id")],
    ids=["same-as-original", "zero", "negative"],
)
def test_a_success_naming_no_new_message_is_uncertain_and_unlinked(resent_id: int, words: str) -> None:
    outcome = Outcome(Status.RESENT, resent_message_id=resent_id, org_id=100737, request_id="r-1")

    credible = credible_outcome(outcome, BASE_ID)

    assert credible.status is Status.UNCERTAIN
    assert credible.resent_message_id is None
    assert f"resentMessageId {resent_id}, {words}" in (credible.error_message or "")
    assert (credible.org_id, credible.request_id) == (100737, "r-1")


def test_an_error_naming_an_impossible_resend_keeps_its_status_without_the_id() -> None:
    outcome = Outcome(Status.UNCERTAIN, resent_message_id=0, error_code=500, error_message="boom")

    credible = credible_outcome(outcome, BASE_ID)

    assert (credible.status, credible.resent_message_id, credible.error_code) == (Status.UNCERTAIN, None, 500)
    assert (credible.error_message or "").startswith("boom; Capillary answered with resentMessageId 0")


def test_a_real_new_id_is_left_alone() -> None:
    outcome = Outcome(Status.RESENT, resent_message_id=BASE_ID + 1)

    assert credible_outcome(outcome, BASE_ID) is outcome


def test_processor_records_a_self_resend_as_uncertain(world: World) -> None:
    world.capillary = FakeCapillary(
        default=lambda message_id: ResendResult(Verdict.RESENT, resent_message_id=message_id, http_status=200)
    )

    (report,) = world.process(delivery(BASE_ID))

    assert report.status is Status.UNCERTAIN and not report.retry
    assert report.resent_message_id is None
    assert world.store.outcome(BASE_ID).resent_message_id is None
    assert MetricName.UNCERTAIN in metric_names(report)


# -- FIFO source queues ----------------------------------------------------------------------------------


def fifo(id_or_body: int | str, group: str) -> Delivery:
    return replace(delivery(id_or_body, arn=FIFO_ARN), message_group_id=group)


def test_fifo_group_after_a_handed_back_record_is_handed_back_untouched(world: World) -> None:
    world.capillary = FakeCapillary(
        default=lambda message_id: transient() if message_id == BASE_ID else resent(message_id)
    )
    batch = [
        fifo(BASE_ID, "a"),
        fifo(BASE_ID + 10, "b"),
        fifo(BASE_ID + 1, "a"),
        fifo(BASE_ID + 11, "b"),
        fifo(BASE_ID + 2, "a"),
    ]

    reports = world.process(*batch)

    assert [r.retry for r in reports] == [True, False, True, False, True]
    claimed = sorted(message_id for message_id, _ in world.store.claims)
    assert claimed == [BASE_ID, BASE_ID + 10, BASE_ID + 11], (
        "records after the handed-back one are not claimed"
    )
    assert sorted(world.capillary.calls) == [BASE_ID, BASE_ID + 10, BASE_ID + 11]
    assert all("message group 'a'" in (r.reason or "") for r in (reports[2], reports[4]))
    assert all(r.status is None and r.metrics == [] for r in (reports[2], reports[4]))
    assert world.queues.delays == [], "no visibility change on a FIFO queue: it could reorder a group"


def test_fifo_poison_kept_does_not_block_its_group_poison_handed_back_does(world: World) -> None:
    kept = world.process(fifo("not json", "a"), fifo(BASE_ID, "a"))
    assert [r.retry for r in kept] == [False, False]
    assert world.capillary.calls == [BASE_ID]

    world.queues.keep_fails = True
    handed_back = world.process(fifo("not json", "b"), fifo(BASE_ID + 1, "b"))
    assert [r.retry for r in handed_back] == [True, True]
    assert world.capillary.calls == [BASE_ID]


@pytest.mark.usefixtures("sleeps")
def test_fifo_records_of_one_group_run_one_after_another() -> None:
    with ThreadPoolExecutor(max_workers=4) as pool:
        world = World(pool)
        second_called = threading.Event()
        first_recorded_when_second_called: list[bool] = []

        def answer(message_id: int) -> ResendResult:
            if message_id == BASE_ID:
                # Run concurrently, the second record would be called while this one waits here.
                second_called.wait(timeout=0.3)
            elif message_id == BASE_ID + 1:
                first_recorded_when_second_called.append(any(m == BASE_ID for m, _ in world.store.records))
                second_called.set()
            return resent(message_id)

        world.capillary = FakeCapillary(default=answer)
        reports = world.process(fifo(BASE_ID, "g"), fifo(BASE_ID + 1, "g"), fifo(BASE_ID + 20, "h"))

    assert first_recorded_when_second_called == [True]
    assert [r.status for r in reports] == [Status.RESENT] * 3


def test_standard_queue_records_are_still_delayed_on_retry(world: World) -> None:
    world.capillary = FakeCapillary([transient()])

    (report,) = world.process(delivery(BASE_ID))

    assert report.retry
    assert len(world.queues.delays) == 1
