"""The flow of one batch: parse → claim → call → record, and what to tell SQS about each record.

Records are handled concurrently on a bounded pool, because a batch is I/O-bound: ten records should cost
about one round trip to Capillary, not ten. Duplicates inside a batch are folded before any claim, so only
one of them reaches the store.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Final

from resender.capillary import CapillaryClient
from resender.events import (
    DEFERRALS_ATTRIBUTE,
    FIRST_SEEN_ATTRIBUTE,
    Delivery,
    MessageIdParser,
    Notice,
    Poison,
)
from resender.models import ResendResult, Status, Verdict
from resender.observability import MetricName, logger
from resender.pacing import DEFAULT_ORG, HoldReason, Pacer, Refusal, Unpaced, is_throttle
from resender.queues import QueueError, Queues
from resender.settings import Settings
from resender.store import Claim, ClaimLostError, ClaimState, Outcome, OutcomeStore, StoreError

# A call must be able to finish inside the invocation: with less time left than the read timeout plus this,
# a record is not claimed at all but handed back to the queue.
DEADLINE_SAFETY_SECONDS: Final = 2.0
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


class Resender:
    def __init__(
        self,
        settings: Settings,
        *,
        store: OutcomeStore,
        capillary: CapillaryClient,
        queues: Queues,
        executor: ThreadPoolExecutor,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
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
        self._wall_clock = wall_clock
        # Without a pacing table nothing is held back: throttled and breaker-stopped records are retried
        # through the queue as before, and only the per-batch breaker stands between the API and a storm.
        self._paced = pacer is not None
        self._pacer: Pacer = pacer or Unpaced(wall_clock)

    def process(
        self, deliveries: Iterable[Delivery], remaining_seconds: Callable[[], float] | None = None
    ) -> list[RecordReport]:
        breaker = CircuitBreaker(self._settings.circuit_breaker_threshold)
        remaining = remaining_seconds or self._default_remaining()
        parsed = [self._parser.parse(delivery) for delivery in deliveries]
        first_by_id: dict[int, Notice] = {}
        for record in parsed:
            if isinstance(record, Notice):
                first_by_id.setdefault(record.message_id, record)
        futures = {
            notice.message_id: self._executor.submit(self._in_context, notice, breaker, remaining)
            for notice in first_by_id.values()
        }
        reports: list[RecordReport] = []
        for record in parsed:
            if isinstance(record, Poison):
                reports.append(self._set_aside(record))
            elif first_by_id[record.message_id] is record:
                reports.append(futures[record.message_id].result())
            else:
                reports.append(self._in_batch_duplicate(record, first_by_id[record.message_id]))
        for report in reports:
            if report.retry:
                self._schedule_retry(report)
        return reports

    def _default_remaining(self) -> Callable[[], float]:
        deadline = self._clock() + self._settings.default_claim_lease_seconds
        return lambda: deadline - self._clock()

    def _in_context(
        self, notice: Notice, breaker: CircuitBreaker, remaining: Callable[[], float]
    ) -> RecordReport:
        logger.thread_safe_append_keys(messageId=notice.message_id, recordId=notice.delivery.record_id)
        try:
            report = self._handle(notice, breaker, remaining)
            self._log(report)
            return report
        finally:
            logger.thread_safe_remove_keys(["messageId", "recordId"])

    def _handle(
        self, notice: Notice, breaker: CircuitBreaker, remaining: Callable[[], float]
    ) -> RecordReport:
        report = RecordReport(notice.delivery, message_id=notice.message_id)
        time_left = remaining()
        if time_left < self._settings.capillary_timeout_seconds + DEADLINE_SAFETY_SECONDS:
            return _retry(report, "not enough time left in this invocation to call Capillary safely")
        try:
            claimed = self._store.claim(notice.message_id, time_left + self._settings.claim_margin_seconds)
        except StoreError as error:
            return _retry(report, f"not claimed, Capillary not called: {error}")
        if claimed.state is ClaimState.SETTLED:
            report.status = claimed.status
            report.reason = "already settled by an earlier delivery"
            report.metrics.append(Metric(MetricName.DUPLICATE))
            return report
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
        if claimed.claim is None:  # CLAIMED always carries the claim; this keeps the type checker honest
            return _retry(report, "claim answered without a token")
        return self._resend(report, claimed.claim, breaker, remaining)

    def _resend(
        self, report: RecordReport, claim: Claim, breaker: CircuitBreaker, remaining: Callable[[], float]
    ) -> RecordReport:
        settings = self._settings
        if claim.depth >= settings.max_resend_depth:
            limit = settings.max_resend_depth
            reason = (
                f"resend chain depth {claim.depth} reached MAX_RESEND_DEPTH={limit} "
                f"(resend of {claim.resend_of}, chain root {claim.root_message_id})"
            )
            return self._settle(report, claim, Outcome(Status.SKIPPED, error_message=reason), reason)
        if breaker.is_open:
            report.metrics.append(Metric(MetricName.CIRCUIT_OPEN))
            why = "circuit open: Capillary failed repeatedly in this batch"
            if self._paced:
                retry_at = self._wall_clock() + settings.shared_breaker_open_seconds
                return self._hold_back(report, claim, why, retry_at)
            return self._settle(report, claim, Outcome(Status.RETRYING, error_message="circuit open"), why)
        # The slot is taken only now, for a record that is ours and will be sent: a duplicate, a settled
        # message or a loop-guard skip never spends one.
        spare = remaining() - settings.capillary_timeout_seconds - DEADLINE_SAFETY_SECONDS
        permit = self._pacer.acquire(self._org(claim), max(0.0, min(settings.pacing_max_wait_seconds, spare)))
        if isinstance(permit, Refusal):
            return self._refused(report, claim, permit)
        waited_ms = self._pacer.wait(permit)
        if self._paced:
            report.metrics.append(Metric(MetricName.PACING_WAIT_MS, waited_ms, "Milliseconds"))
        held = self._pacer.still_valid(permit)
        if held is not None:
            return self._refused(report, claim, held)
        result = self._capillary.resend(claim.message_id)
        self._pacer.observe(permit, result)
        throttled = is_throttle(result)
        if result.http_status == 429:
            report.metrics.append(Metric(MetricName.THROTTLED))
        if not (self._paced and throttled):
            breaker.observe(result.verdict)  # with pacing, throttling is the limiter's news, not an outage
        if result.latency_ms is not None:
            report.metrics.append(Metric(MetricName.RESEND_LATENCY, result.latency_ms, "Milliseconds"))
        if self._paced and throttled:
            # Capillary refused before doing anything: hold the record back instead of failing it.
            pause = result.retry_after_seconds or settings.rate_window_seconds / 10
            return self._hold_back(report, claim, _describe(result), self._wall_clock() + pause)
        report.min_delay_seconds = result.retry_after_seconds or 0.0
        report.resent_message_id = result.resent_message_id
        return self._settle(report, claim, Outcome.from_result(result), _describe(result))

    @staticmethod
    def _org(claim: Claim) -> str:
        """The pacing key of a message: one Capillary credential, so one org, for now."""
        return DEFAULT_ORG

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
        copyable = (
            delivery.receipt_handle is not None
            and delivery.source_arn is not None
            and delivery.source_arn.startswith("arn:aws:sqs")
            and not delivery.from_fifo_queue
        )
        if copyable and delivery.source_arn is not None:
            pacing_attributes = {
                DEFERRALS_ATTRIBUTE: str(deferrals),
                FIRST_SEEN_ATTRIBUTE: str(int(first_seen * 1000)),
            }
            try:
                self._queues.enqueue_copy(
                    delivery.source_arn, delivery.body, delay, pacing_attributes, delivery.message_attributes
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
        for attempt in range(1, RECORD_ATTEMPTS + 1):
            try:
                self._store.record(claim, outcome)
                return report
            except ClaimLostError:
                logger.error("claim was settled by another delivery before this outcome was written")
                report.retry = False
                return report
            except StoreError as error:
                if attempt == RECORD_ATTEMPTS:
                    return self._unrecorded(report, outcome, str(error))
                time.sleep(0.05 * 2**attempt)
        return report

    def _unrecorded(self, report: RecordReport, outcome: Outcome, error: str) -> RecordReport:
        # The claim stays IN_PROGRESS; once its lease runs out the next delivery records it UNCERTAIN, so the
        # record is handed back to come again only after that.
        logger.error(
            "outcome could not be recorded; the claim will turn UNCERTAIN and the message will not be resent",
            extra={
                "intendedStatus": outcome.status,
                "resentMessageId": outcome.resent_message_id,
                "error": error,
            },
        )
        report.metrics.append(Metric(MetricName.OUTCOME_WRITE_FAILED))
        report.retry = True
        report.reason = f"outcome not recorded ({error}); the claim will expire into UNCERTAIN"
        report.min_delay_seconds = max(
            report.min_delay_seconds,
            self._settings.default_claim_lease_seconds + self._settings.claim_margin_seconds,
        )
        return report

    def _set_aside(self, poison: Poison) -> RecordReport:
        report = RecordReport(poison.delivery, reason=poison.reason, metrics=[Metric(MetricName.POISON)])
        try:
            self._queues.keep_poison(
                poison.delivery.body,
                poison.reason,
                source_arn=poison.delivery.source_arn,
                source_message_id=poison.delivery.record_id,
            )
        except QueueError as error:
            # Handed back to SQS untouched: its redrive policy moves it to the dead-letter queue after
            # maxReceiveCount deliveries, and Capillary is never called for it.
            report.retry = True
            report.reason = f"{poison.reason}; not copied to the dead-letter queue: {error}"
        logger.error(
            "poison record set aside", extra={"recordId": poison.delivery.record_id, "reason": report.reason}
        )
        return report

    @staticmethod
    def _in_batch_duplicate(duplicate: Notice, first: Notice) -> RecordReport:
        logger.info(
            "duplicate within the batch: handled once",
            extra={"messageId": duplicate.message_id, "recordId": duplicate.delivery.record_id},
        )
        return RecordReport(
            duplicate.delivery,
            message_id=duplicate.message_id,
            reason=f"duplicate of record {first.delivery.record_id} in the same batch",
            metrics=[Metric(MetricName.DUPLICATE)],
        )

    def _schedule_retry(self, report: RecordReport) -> None:
        delivery = report.delivery
        if not (
            delivery.receipt_handle and delivery.source_arn and delivery.source_arn.startswith("arn:aws:sqs")
        ):
            return
        delay = self.backoff_seconds(delivery.receive_count, report.min_delay_seconds)
        try:
            self._queues.delay(delivery.source_arn, delivery.receipt_handle, delay)
        except QueueError as error:
            # The record is still reported for retry; it just comes back after the queue's own timeout.
            logger.warning("backoff not applied", extra={"recordId": delivery.record_id, "error": str(error)})

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


def _retry(report: RecordReport, reason: str, *, count: bool = True) -> RecordReport:
    report.retry = True
    report.reason = reason
    if count:
        report.metrics.append(Metric(MetricName.RETRYING))
    return report


def _describe(result: ResendResult) -> str:
    if result.verdict is Verdict.RESENT:
        return f"resent as {result.resent_message_id}"
    detail = result.error_message or "no detail"
    code = f" (code {result.error_code})" if result.error_code is not None else ""
    return f"{result.verdict.lower().replace('_', ' ')}{code}: {detail}"
