"""The flow of one batch: parse → claim → call → record, and what to tell SQS about each record.

Records are handled concurrently on a bounded pool, because a batch is I/O-bound: ten records should cost
about one round trip to Capillary, not ten. Duplicates inside a batch are folded before any claim, so only
one of them reaches the store.

Records of a FIFO queue are handled one message group at a time, in order: once a record of a group is
handed back, the later records of that group are handed back too without being claimed (AWS's rule for FIFO
partial batch responses), and no visibility change reorders them.

Nothing raised while handling one record leaves :meth:`Resender.process`: the record gets an outcome that
matches how far it got (not claimed, claimed but not sent, or possibly sent) and the others go on.
"""

from __future__ import annotations

import contextlib
import math
import random
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Final

from resender.credentials import SecretError
from resender.events import (
    DEFERRALS_ATTRIBUTE,
    FIRST_SEEN_ATTRIBUTE,
    Delivery,
    MessageIdParser,
    Notice,
    ParsedRecord,
    Poison,
)
from resender.models import ResendResult, Status, Verdict
from resender.observability import MetricName, logger
from resender.orgs import DEFAULT_ORG_KEY, OrgRouter, OrgRoutingError, Route
from resender.pacing import HoldReason, Pacer, Refusal, Unpaced, is_throttle
from resender.policy import ResendPolicy, Skip, loop_guard
from resender.ports import Capillary, Store
from resender.queues import NoDeadLetterQueueError, QueueError, Queues
from resender.settings import Settings
from resender.store import (
    Claim,
    ClaimLostError,
    ClaimResult,
    ClaimState,
    Outcome,
    StoreError,
)

# Time kept back at the end of the invocation to record an outcome and answer Lambda. A record is claimed
# only if the whole budget of its Capillary call plus this fits in the time left, and the call is given a
# deadline this long before the invocation's end.
DEADLINE_SAFETY_SECONDS: Final = 2.0
# Visibility changes for retried records stop when less than this is left: the batch response must go out.
VISIBILITY_MARGIN_SECONDS: Final = 1.0
# How many times an outcome write is tried within the invocation before the claim is left to expire.
RECORD_ATTEMPTS: Final = 3

_STATUS_METRIC: Final = {
    Status.RESENT: MetricName.RESENT,
    Status.NOT_FOUND: MetricName.NOT_FOUND,
    Status.REJECTED: MetricName.REJECTED,
    Status.RETRYING: MetricName.RETRYING,
    Status.UNCERTAIN: MetricName.UNCERTAIN,
    Status.SKIPPED: MetricName.SKIPPED,
}


@dataclass(frozen=True, slots=True)
class Metric:
    name: MetricName
    value: float = 1.0
    unit: str = "Count"


@dataclass(slots=True)
class RecordReport:
    """What happened to one record of the batch."""

    delivery: Delivery
    message_id: int | None = None
    status: Status | None = None
    retry: bool = False
    reason: str | None = None
    resent_message_id: int | None = None
    # Seconds the record must stay hidden before its next delivery (a Retry-After, or a live lease).
    min_delay_seconds: float = 0.0
    metrics: list[Metric] = field(default_factory=list)
    # Handed back before anything was done (no claim, no call): not worth a visibility change or a log line.
    untouched: bool = False


@dataclass(slots=True)
class _Progress:
    """How far one record got, so that an unexpected error is answered according to what was done."""

    claim: Claim | None = None
    call_started: bool = False
    outcome: Outcome | None = None  # Capillary's answer, once read


class CircuitBreaker:
    """Stops calling Capillary for the rest of a batch once it has failed transiently N times in a row."""

    def __init__(self, threshold: int) -> None:
        self._threshold = threshold
        self._consecutive_failures = 0
        self._lock = threading.Lock()

    @property
    def is_open(self) -> bool:
        with self._lock:
            return self._consecutive_failures >= self._threshold

    def observe(self, verdict: Verdict) -> None:
        with self._lock:
            if verdict is Verdict.TRANSIENT:
                self._consecutive_failures += 1
            elif verdict in (Verdict.RESENT, Verdict.NOT_FOUND, Verdict.REJECTED):
                self._consecutive_failures = 0


class Breakers:
    """One circuit breaker per org for a batch: one org's outage must not stop another org's resends."""

    def __init__(self, threshold: int) -> None:
        self._threshold = threshold
        self._lock = threading.Lock()
        self._by_org: dict[str, CircuitBreaker] = {}

    def get(self, org_key: str) -> CircuitBreaker:
        with self._lock:
            return self._by_org.setdefault(org_key, CircuitBreaker(self._threshold))


class Resender:
    def __init__(
        self,
        settings: Settings,
        *,
        store: Store,
        capillary: Capillary,
        queues: Queues,
        executor: ThreadPoolExecutor,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        policy: ResendPolicy | None = None,
        orgs: OrgRouter | None = None,
        pacer: Pacer | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._store = store
        self._capillary = capillary
        self._queues = queues
        self._executor = executor
        self._parser = MessageIdParser(settings.message_id_path, settings.max_body_bytes)
        self._rng = rng or random.SystemRandom()
        self._clock = clock
        self._policy = policy or ResendPolicy.from_settings(settings)
        self._orgs = orgs
        self._wall_clock = wall_clock
        # Without a pacing table nothing is held back: throttled and breaker-stopped records are retried
        # through the queue as before, and only the per-batch breaker stands between the API and a storm.
        self._paced = pacer is not None
        self._pacer: Pacer = pacer or Unpaced(wall_clock)

    def process(
        self, deliveries: Iterable[Delivery], remaining_seconds: Callable[[], float] | None = None
    ) -> list[RecordReport]:
        breakers = Breakers(self._settings.circuit_breaker_threshold)
        remaining = remaining_seconds or self._default_remaining()
        parsed = [self._parse(delivery) for delivery in deliveries]
        if any(_from_fifo_queue(record.delivery) for record in parsed):
            reports = self._process_fifo(parsed, breakers, remaining)
        else:
            reports = self._process_standard(parsed, breakers, remaining)
        self._count_untouched(reports)
        # FIFO: the visibility of a record handed back is left alone, so no change can reorder a group;
        # the group waits for the queue's visibility timeout instead. Records handed back untouched are left
        # alone too: they cost nothing, whatever the batch size.
        delayed = [r for r in reports if r.retry and not r.untouched and not _from_fifo_queue(r.delivery)]
        self._schedule_retries(delayed, remaining)
        return reports

    def _parse(self, delivery: Delivery) -> ParsedRecord:
        try:
            return self._parser.parse(delivery)
        except Exception as error:  # a body that breaks the parser is poison, not a crash
            _log_safely("error", "record body could not be parsed", errorType=type(error).__name__)
            return Poison(delivery, f"the body could not be read ({type(error).__name__})")

    def _process_standard(
        self, parsed: list[ParsedRecord], breakers: Breakers, remaining: Callable[[], float]
    ) -> list[RecordReport]:
        first_by_id: dict[int, Notice] = {}
        for record in parsed:
            if isinstance(record, Notice):
                first_by_id.setdefault(record.message_id, record)
        futures = {
            notice.message_id: self._executor.submit(self._in_context, notice, breakers, remaining)
            for notice in first_by_id.values()
        }
        reports: list[RecordReport] = []
        for record in parsed:
            if isinstance(record, Poison):
                reports.append(self._set_aside(record, remaining))
            elif first_by_id[record.message_id] is record:
                reports.append(futures[record.message_id].result())
            else:
                reports.append(self._in_batch_duplicate(record, first_by_id[record.message_id]))
        return reports

    def _process_fifo(
        self, parsed: list[ParsedRecord], breakers: Breakers, remaining: Callable[[], float]
    ) -> list[RecordReport]:
        """Message groups side by side, the records of one group one after another, in batch order.

        Duplicates are not folded here: within a group the second copy finds the first one's outcome, and
        across groups the claim lets one through and hands the other back.
        """
        groups: dict[str, list[int]] = {}
        for index, record in enumerate(parsed):
            groups.setdefault(record.delivery.message_group_id or "", []).append(index)
        futures = [
            (
                indexes,
                self._executor.submit(self._run_group, [parsed[i] for i in indexes], breakers, remaining),
            )
            for indexes in groups.values()
        ]
        reports: dict[int, RecordReport] = {}
        for indexes, future in futures:
            reports.update(zip(indexes, future.result(), strict=True))
        return [reports[index] for index in range(len(parsed))]

    def _run_group(
        self, records: list[ParsedRecord], breakers: Breakers, remaining: Callable[[], float]
    ) -> list[RecordReport]:
        reports: list[RecordReport] = []
        blocking: RecordReport | None = None
        for record in records:
            if blocking is not None:
                reports.append(_held_back(record, blocking))
            elif isinstance(record, Poison):
                reports.append(self._set_aside(record, remaining))
            else:
                reports.append(self._in_context(record, breakers, remaining))
            if blocking is None and reports[-1].retry:
                blocking = reports[-1]
        return reports

    def _fits(self, time_left: float) -> bool:
        return time_left >= self._capillary.worst_case_seconds + DEADLINE_SAFETY_SECONDS

    @staticmethod
    def _count_untouched(reports: list[RecordReport]) -> None:
        untouched = [report for report in reports if report.untouched]
        if not untouched:
            return
        # One metric value and one line for all of them: a batch of 10,000 must be handed back cheaply.
        untouched[0].metrics.append(Metric(MetricName.RETRYING, float(len(untouched))))
        logger.warning(
            "records handed back untouched: not enough time left in this invocation for a Capillary call",
            extra={"handedBack": len(untouched)},
        )

    def _default_remaining(self) -> Callable[[], float]:
        deadline = self._clock() + self._settings.default_claim_lease_seconds
        return lambda: deadline - self._clock()

    def _in_context(self, notice: Notice, breakers: Breakers, remaining: Callable[[], float]) -> RecordReport:
        if not self._fits(remaining()):
            return RecordReport(
                notice.delivery,
                message_id=notice.message_id,
                retry=True,
                untouched=True,
                reason="not enough time left in this invocation to call Capillary safely",
            )
        progress = _Progress()
        try:
            logger.thread_safe_append_keys(messageId=notice.message_id, recordId=notice.delivery.record_id)
            report = self._handle(notice, breakers, remaining, progress)
        except Exception as error:  # one record's failure must not take the batch down
            report = self._recover(notice, progress, error)
        try:
            self._log(report)
        except Exception as error:  # the outcome is already decided; losing a log line is all
            _log_safely("error", "outcome not logged", errorType=type(error).__name__)
        finally:
            with contextlib.suppress(Exception):  # nothing to do about a logger that cannot drop its keys
                logger.thread_safe_remove_keys(["messageId", "recordId"])
        return report

    def _recover(self, notice: Notice, progress: _Progress, error: Exception) -> RecordReport:
        """An outcome for a record whose handling raised, chosen by how far it got.

        Not claimed: handed back, nothing to undo. Claimed, not sent: the claim is released to RETRYING.
        The call may have gone out and no answer was read: UNCERTAIN, never resent automatically. Answered:
        the answer is recorded (a second write of an outcome already recorded is recognised by the store).
        """
        kind = type(error).__name__
        where = _origin(error.__traceback__)
        _log_safely("error", "unexpected error while handling a record", errorType=kind, raisedAt=where)
        report = RecordReport(notice.delivery, message_id=notice.message_id)
        report.metrics.append(Metric(MetricName.UNEXPECTED_ERROR))
        claim = progress.claim
        if claim is None:
            return _retry(report, f"unexpected {kind} before the claim; Capillary was not called")
        if not progress.call_started:
            why = f"unexpected {kind} before the call; Capillary was not called"
            outcome = Outcome(Status.RETRYING, error_message=why)
        elif progress.outcome is None:
            why = f"unexpected {kind} while calling Capillary: it may have resent"
            outcome = Outcome(Status.UNCERTAIN, error_message=why)
        else:
            outcome, why = progress.outcome, f"answered, then an unexpected {kind}"
        try:
            return self._settle(report, claim, outcome, why)
        except Exception as second:
            return self._unrecorded(report, outcome, f"unexpected {type(second).__name__}")

    def _handle(
        self,
        notice: Notice,
        breakers: Breakers,
        remaining: Callable[[], float],
        progress: _Progress,
    ) -> RecordReport:
        report = RecordReport(notice.delivery, message_id=notice.message_id)
        skip = self._policy.evaluate(notice)
        if skip is not None:
            return self._skip(report, notice.message_id, skip)
        try:
            route = self.route(notice.payload)
        except OrgRoutingError as error:
            # Never sent with another org's credentials: kept in the DLQ until the secret names the org.
            return self._set_aside(Poison(notice.delivery, str(error)), remaining, notice.message_id)
        time_left = remaining()
        if not self._fits(time_left):
            return _retry(report, "not enough time left in this invocation to call Capillary safely")
        # The call returns by then, whatever Capillary does, leaving the margin to record what it said.
        deadline = self._clock() + time_left - DEADLINE_SAFETY_SECONDS
        try:
            claimed = self._store.claim(notice.message_id, time_left + self._settings.claim_margin_seconds)
        except StoreError as error:
            return _retry(report, f"not claimed, Capillary not called: {error}")
        if claimed.state is not ClaimState.CLAIMED:
            return self._taken(report, claimed)
        if claimed.claim is None:  # CLAIMED always carries the claim; this keeps the type checker honest
            return _retry(report, "claim answered without a token")
        progress.claim = claimed.claim
        return self._resend(
            report,
            claimed.claim,
            breakers.get(route.org_key),
            route=route,
            progress=progress,
            deadline=deadline,
        )

    def route(self, payload: object) -> Route:
        """The org and Capillary client for a failure payload (see :class:`~resender.orgs.OrgRouter`)."""
        default = Route(DEFAULT_ORG_KEY, self._capillary)
        if self._orgs is None:
            return default
        try:
            return self._orgs.route(payload)
        except SecretError:
            # The secret cannot be read: the default client fails the same way after the claim, so the
            # item records RETRYING with the reason, as for any credentials failure. It can never send:
            # with a several-orgs secret its own read refuses to pick one org's credentials.
            return default

    @staticmethod
    def _taken(report: RecordReport, claimed: ClaimResult) -> RecordReport:
        """Another delivery owns or owned this id: say so, and come back only if it may still need us."""
        if claimed.state is ClaimState.IN_FLIGHT:
            report.metrics.append(Metric(MetricName.DUPLICATE))
            # Come back once the other holder has settled it or its lease has run out, not before.
            if claimed.lease_expires_at:
                report.min_delay_seconds = max(0.0, claimed.lease_expires_at - time.time()) + 1
            return _retry(report, "another delivery holds a live claim on this message", count=False)
        if claimed.state is ClaimState.EXPIRED:
            report.status = Status.UNCERTAIN
            report.reason = "an earlier claim expired without an outcome; not resent automatically"
            report.metrics.append(Metric(MetricName.UNCERTAIN))
            return report
        report.status = claimed.status
        report.reason = "already settled by an earlier delivery"
        report.metrics.append(Metric(MetricName.DUPLICATE))
        return report

    def _resend(
        self,
        report: RecordReport,
        claim: Claim,
        breaker: CircuitBreaker,
        *,
        route: Route,
        progress: _Progress,
        deadline: float,
    ) -> RecordReport:
        settings = self._settings
        if claim.depth >= settings.max_resend_depth:
            skip = loop_guard(claim.depth, settings.max_resend_depth, claim.resend_of, claim.root_message_id)
            report.metrics.append(Metric(MetricName.SKIPPED_BY_POLICY))
            outcome = Outcome(Status.SKIPPED, error_message=skip.message, policy=skip.rule)
            return self._settle(report, claim, outcome, skip.message)
        if breaker.is_open:
            report.metrics.append(Metric(MetricName.CIRCUIT_OPEN))
            why = "circuit open: Capillary failed repeatedly in this batch"
            if self._paced:
                retry_at = self._wall_clock() + settings.shared_breaker_open_seconds
                return self._hold_back(report, claim, why, retry_at)
            return self._settle(report, claim, Outcome(Status.RETRYING, error_message="circuit open"), why)
        # The slot is taken only now, for a record that is ours and will be sent: a duplicate, a settled
        # message or a loop-guard skip never spends one.
        # The wait ends early enough for the call's whole budget to fit before the deadline.
        spare = deadline - self._clock() - route.client.worst_case_seconds
        permit = self._pacer.acquire(route.org_key, max(0.0, min(settings.pacing_max_wait_seconds, spare)))
        if isinstance(permit, Refusal):
            return self._refused(report, claim, permit)
        waited_ms = self._pacer.wait(permit)
        if self._paced:
            report.metrics.append(Metric(MetricName.PACING_WAIT_MS, waited_ms, "Milliseconds"))
        held = self._pacer.still_valid(permit)
        if held is not None:
            return self._refused(report, claim, held)
        progress.call_started = True
        result = route.client.resend(claim.message_id, deadline=deadline)
        outcome = credible_outcome(outcome_for(route, result), claim.message_id)
        progress.outcome = outcome
        self._pacer.observe(permit, result)
        throttled = is_throttle(result)
        if result.http_status == 429:
            report.metrics.append(Metric(MetricName.THROTTLED))
        if not (self._paced and throttled):
            breaker.observe(result.verdict)  # with pacing, throttling is the limiter's news, not an outage
        if result.latency_ms is not None:
            report.metrics.append(Metric(MetricName.RESEND_LATENCY, result.latency_ms, "Milliseconds"))
        if self._paced and throttled and outcome.status is Status.RETRYING:
            # Capillary refused before doing anything: hold the record back instead of failing it.
            pause = result.retry_after_seconds or settings.rate_window_seconds / 10
            return self._hold_back(report, claim, _describe(result), self._wall_clock() + pause)
        report.min_delay_seconds = result.retry_after_seconds or 0.0
        report.resent_message_id = outcome.resent_message_id
        reason = _describe(result) if outcome.status is result.status else str(outcome.error_message)
        return self._settle(report, claim, outcome, reason)

    def _skip(self, report: RecordReport, message_id: int, skip: Skip) -> RecordReport:
        """Record a refused record SKIPPED without a claim and without calling Capillary."""
        outcome = Outcome(Status.SKIPPED, error_message=skip.message, policy=skip.rule)
        try:
            written = self._store.settle_without_call(message_id, outcome)
        except StoreError as error:
            return _retry(report, f"policy skip not recorded ({error}); Capillary not called")
        if written.state is ClaimState.RECORDED:
            report.status = Status.SKIPPED
            report.reason = skip.message
            report.metrics += [Metric(MetricName.SKIPPED), Metric(MetricName.SKIPPED_BY_POLICY)]
            return report
        return self._taken(report, written)

    def _refused(self, report: RecordReport, claim: Claim, refusal: Refusal) -> RecordReport:
        if refusal.reason is HoldReason.BREAKER_OPEN:
            report.metrics.append(Metric(MetricName.BREAKER_OPEN))
        return self._hold_back(report, claim, refusal.detail, refusal.retry_at)

    def _hold_back(self, report: RecordReport, claim: Claim, why: str, retry_at: float) -> RecordReport:
        """Keep a record that was not sent for later without spending one of its deliveries.

        A copy goes back to the source queue with a delay and the original is acknowledged: the copy starts
        again at receive count 1. Our claim is given back first, so whichever of the copy and a late
        original comes first claims the message and the other finds it settled. FIFO queues take no delay
        per message and SNS invocations have no queue: those records are handed back instead.
        """
        settings, delivery = self._settings, report.delivery
        now = self._wall_clock()
        first_seen = delivery.first_seen_at or now
        age = max(0.0, now - first_seen)
        deferrals = delivery.deferrals + 1
        report.status = Status.RETRYING
        report.metrics.append(Metric(MetricName.DEFERRED))
        report.metrics.append(Metric(MetricName.DEFERRAL_AGE, age, "Seconds"))
        if age > settings.deferral_max_age_seconds:
            return self._deferred_too_long(report, claim, why, age)
        # Spread the comeback so that records held back together do not all return in the same second.
        delay = max(1.0, retry_at - now)
        delay += self._rng.uniform(0, delay / 2)
        try:
            self._store.defer(claim, f"held back: {why}", deferrals=deferrals, next_attempt_at=now + delay)
        except ClaimLostError:
            report.reason = "claim was settled by another delivery while held back"
            return report
        except StoreError as error:
            return self._unrecorded(report, Outcome(Status.RETRYING, error_message=why), str(error))
        report.reason = f"held back ({why}); deferral {deferrals}, next attempt in {delay:.0f} s"
        queue_arn = _sqs_queue_arn(delivery)
        if queue_arn is not None and delivery.receipt_handle is not None and not _from_fifo_queue(delivery):
            pacing_attributes = {
                DEFERRALS_ATTRIBUTE: str(deferrals),
                FIRST_SEEN_ATTRIBUTE: str(int(first_seen * 1000)),
            }
            try:
                self._queues.enqueue_copy(
                    queue_arn, delivery.body, delay, pacing_attributes, delivery.message_attributes
                )
                return report
            except QueueError as error:
                report.reason += f"; copy not enqueued ({error}), handed back instead"
        report.retry = True
        report.min_delay_seconds = delay
        return report

    def _deferred_too_long(self, report: RecordReport, claim: Claim, why: str, age: float) -> RecordReport:
        limit = self._settings.deferral_max_age_seconds
        reason = (
            f"deferred too long: held back for {age:.0f} s (DEFERRAL_MAX_AGE_SECONDS={limit}); last: {why}"
        )
        delivery = report.delivery
        try:
            self._store.defer(claim, reason, deferrals=delivery.deferrals, next_attempt_at=self._wall_clock())
        except ClaimLostError:
            report.reason = "claim was settled by another delivery while held back"
            return report
        except StoreError as error:
            return self._unrecorded(report, Outcome(Status.RETRYING, error_message=reason), str(error))
        report.reason = reason
        try:
            self._queues.keep_poison(
                delivery.body, reason, source_arn=delivery.source_arn, source_message_id=delivery.record_id
            )
        except QueueError as error:
            report.retry = True
            report.reason = f"{reason}; not copied to the dead-letter queue: {error}"
        logger.error("record kept in the dead-letter queue", extra={"reason": report.reason})
        return report

    def _settle(self, report: RecordReport, claim: Claim, outcome: Outcome, reason: str) -> RecordReport:
        report.status = outcome.status
        report.reason = reason
        report.metrics.append(Metric(_STATUS_METRIC[outcome.status]))
        report.retry = outcome.status is Status.RETRYING
        try:
            record_settled(self._store, claim, outcome)
        except ClaimLostError:
            _log_safely("error", "claim was settled by another delivery before this outcome was written")
            report.retry = False
        except StoreError as error:
            return self._unrecorded(report, outcome, str(error))
        return report

    def _unrecorded(self, report: RecordReport, outcome: Outcome, error: str) -> RecordReport:
        # The claim stays IN_PROGRESS; once its lease runs out the next delivery records it UNCERTAIN, so the
        # record is handed back to come again only after that.
        _log_safely(
            "error",
            "outcome could not be recorded; the claim will turn UNCERTAIN and the message will not be resent",
            intendedStatus=outcome.status,
            resentMessageId=outcome.resent_message_id,
            error=error,
        )
        report.metrics.append(Metric(MetricName.OUTCOME_WRITE_FAILED))
        report.retry = True
        report.reason = f"outcome not recorded ({error}); the claim will expire into UNCERTAIN"
        report.min_delay_seconds = max(
            report.min_delay_seconds,
            self._settings.default_claim_lease_seconds + self._settings.claim_margin_seconds,
        )
        return report

    def _set_aside(
        self, poison: Poison, remaining: Callable[[], float], message_id: int | None = None
    ) -> RecordReport:
        if remaining() < VISIBILITY_MARGIN_SECONDS:
            # No time to copy it: handed back untouched, it comes again (and reaches the DLQ by redrive).
            return RecordReport(
                poison.delivery,
                message_id=message_id,
                retry=True,
                untouched=True,
                reason=f"{poison.reason}; not set aside in time",
            )
        report = RecordReport(
            poison.delivery, message_id=message_id, reason=poison.reason, metrics=[Metric(MetricName.POISON)]
        )
        try:
            self._queues.keep_poison(
                poison.delivery.body,
                poison.reason,
                source_arn=poison.delivery.source_arn,
                source_message_id=poison.delivery.record_id,
            )
        except Exception as error:  # QueueError, or anything else: the record is kept either way
            # Handed back to SQS untouched, so SQS keeps it: its redrive policy (if any) moves it to the
            # dead-letter queue after maxReceiveCount deliveries, and Capillary is never called for it.
            report.retry = True
            report.metrics.append(Metric(MetricName.POISON_HANDED_BACK))
            if isinstance(error, NoDeadLetterQueueError):
                detail = f"{error}; SQS keeps it (set DEAD_LETTER_QUEUE_URL or a redrive policy)"
            elif isinstance(error, QueueError):
                detail = str(error)
            else:
                detail = f"unexpected {type(error).__name__}"
                report.metrics.append(Metric(MetricName.UNEXPECTED_ERROR))
            report.reason = f"{poison.reason}; not copied to the dead-letter queue: {detail}"
        _log_safely(
            "error", "poison record set aside", recordId=poison.delivery.record_id, reason=report.reason
        )
        return report

    @staticmethod
    def _in_batch_duplicate(duplicate: Notice, first: Notice) -> RecordReport:
        _log_safely(
            "info",
            "duplicate within the batch: handled once",
            messageId=duplicate.message_id,
            recordId=duplicate.delivery.record_id,
        )
        return RecordReport(
            duplicate.delivery,
            message_id=duplicate.message_id,
            reason=f"duplicate of record {first.delivery.record_id} in the same batch",
            metrics=[Metric(MetricName.DUPLICATE)],
        )

    def _schedule_retries(self, reports: list[RecordReport], remaining: Callable[[], float]) -> None:
        for index, report in enumerate(reports):
            if remaining() < VISIBILITY_MARGIN_SECONDS:
                # They are still handed back; SQS shows them again after the queue's own visibility timeout.
                logger.warning(
                    "backoff not applied: no time left in this invocation",
                    extra={"withoutBackoff": len(reports) - index},
                )
                return
            self._schedule_retry(report)

    def _schedule_retry(self, report: RecordReport) -> None:
        delivery = report.delivery
        queue_arn = _sqs_queue_arn(delivery)
        if queue_arn is None or not delivery.receipt_handle:
            return
        try:
            delay = self.backoff_seconds(delivery.receive_count, report.min_delay_seconds)
            self._queues.delay(queue_arn, delivery.receipt_handle, delay)
        except Exception as error:
            # The record is still reported for retry; it just comes back after the queue's own timeout.
            detail = str(error) if isinstance(error, QueueError) else f"unexpected {type(error).__name__}"
            _log_safely("warning", "backoff not applied", recordId=delivery.record_id, error=detail)

    def backoff_seconds(self, receive_count: int, floor_seconds: float = 0.0) -> int:
        """Exponential in the receive count with full jitter, capped, never below ``floor_seconds``."""
        settings = self._settings
        ceiling = min(
            settings.retry_cap_seconds, settings.retry_base_seconds * 2 ** min(receive_count - 1, 20)
        )
        jittered = self._rng.uniform(0, ceiling)
        return math.ceil(max(jittered, floor_seconds))

    def _log(self, report: RecordReport) -> None:
        fields: dict[str, object] = {"status": report.status, "retry": report.retry, "reason": report.reason}
        if report.resent_message_id is not None:
            fields["resentMessageId"] = report.resent_message_id
        if report.status in (Status.UNCERTAIN, Status.RETRYING):
            logger.warning("resend outcome", extra=fields)
        else:
            logger.info("resend outcome", extra=fields)


def record_settled(store: Store, claim: Claim, outcome: Outcome, attempts: int = RECORD_ATTEMPTS) -> None:
    """Write the outcome Capillary gave, trying ``attempts`` times with a growing pause.

    Capillary has answered by now, so a throttled write is worth a few tries. A lost claim is not retried:
    someone else settled the item, and writing again cannot change that. The last StoreError is raised.
    """
    for attempt in range(1, attempts + 1):
        try:
            store.record(claim, outcome)
            return
        except ClaimLostError:
            raise
        except StoreError:
            if attempt == attempts:
                raise
            time.sleep(0.05 * 2**attempt)


def credible_outcome(outcome: Outcome, message_id: int) -> Outcome:
    """The outcome to record, once a ``resentMessageId`` that cannot name a new message is ruled out.

    An id equal to the original, zero or negative is no proof of a new message, nor of its absence: a
    success answer carrying one is ``UNCERTAIN``; no outcome links the message to it (the loop-guard link
    would point the item at itself, or at an id no message has).
    """
    resent = outcome.resent_message_id
    if resent is None or (resent > 0 and resent != message_id):
        return outcome
    what = "the original messageId" if resent == message_id else "not a positive id"
    note = f"Capillary answered with resentMessageId {resent}, {what}"
    if outcome.status is Status.RESENT:
        message = f"{note}: whether it resent is unknown"
        return Outcome(
            Status.UNCERTAIN,
            org_id=outcome.org_id,
            request_id=outcome.request_id,
            error_message=message,
            http_status=outcome.http_status,
        )
    detail = f"{outcome.error_message}; {note}" if outcome.error_message else note
    return Outcome(
        outcome.status,
        org_id=outcome.org_id,
        request_id=outcome.request_id,
        error_code=outcome.error_code,
        error_message=detail,
        http_status=outcome.http_status,
    )


def _sqs_queue_arn(delivery: Delivery) -> str | None:
    """The ARN of the SQS queue the record came from; None for SNS or a hand-made event."""
    arn = delivery.source_arn
    return arn if arn and arn.startswith("arn:aws:sqs") else None


def _from_fifo_queue(delivery: Delivery) -> bool:
    return delivery.message_group_id is not None or (_sqs_queue_arn(delivery) or "").endswith(".fifo")


def _held_back(record: ParsedRecord, blocking: RecordReport) -> RecordReport:
    """A later record of a FIFO group whose earlier record was handed back: untouched, handed back too."""
    group = record.delivery.message_group_id or ""
    return RecordReport(
        record.delivery,
        message_id=record.message_id if isinstance(record, Notice) else None,
        retry=True,
        reason=(
            f"not started: record {blocking.delivery.record_id} of message group {group!r} was handed back "
            "before it, and a FIFO group is processed in order"
        ),
    )


def _origin(trace: TracebackType | None) -> str:
    """Where an exception was raised, as ``file:line in function``: code locations only, never values."""
    last = None
    while trace is not None:
        last, trace = trace, trace.tb_next
    if last is None:
        return "unknown"
    code = last.tb_frame.f_code
    return f"{code.co_filename.rsplit('/', 1)[-1]}:{last.tb_lineno} in {code.co_name}"


def _log_safely(level: str, message: str, **fields: object) -> None:
    """Log without letting a broken log pipeline take a record's outcome with it."""
    with contextlib.suppress(Exception):  # the outcome matters more than the line about it
        getattr(logger, level)(message, extra=fields)


def _retry(report: RecordReport, reason: str, *, count: bool = True) -> RecordReport:
    report.retry = True
    report.reason = reason
    if count:
        report.metrics.append(Metric(MetricName.RETRYING))
    return report


def outcome_for(route: Route, result: ResendResult) -> Outcome:
    """The outcome of Capillary's answer, recording the org it was sent for."""
    outcome = Outcome.from_result(result)
    if route.org_id is None:
        return outcome
    answered = None
    if result.org_id is not None and result.org_id != route.org_id:
        answered = result.org_id
        logger.warning(
            "Capillary answered for another org than the one the resend was sent for",
            extra={"orgId": route.org_id, "answeredOrgId": result.org_id},
        )
    return replace(outcome, org_id=route.org_id, answered_org_id=answered)


def _describe(result: ResendResult) -> str:
    if result.verdict is Verdict.RESENT:
        return f"resent as {result.resent_message_id}"
    detail = result.error_message or "no detail"
    code = f" (code {result.error_code})" if result.error_code is not None else ""
    return f"{result.verdict.lower().replace('_', ' ')}{code}: {detail}"
