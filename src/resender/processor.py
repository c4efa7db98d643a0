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
from resender.events import Delivery, MessageIdParser, Notice, Poison
from resender.models import ResendResult, Status, Verdict
from resender.observability import MetricName, logger
from resender.queues import QueueError, Queues
from resender.settings import Settings
from resender.store import Claim, ClaimLostError, ClaimState, Outcome, OutcomeStore, StoreError

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
    ) -> None:
        self._settings = settings
        self._store = store
        self._capillary = capillary
        self._queues = queues
        self._executor = executor
        self._parser = MessageIdParser(settings.message_id_path, settings.max_body_bytes)
        self._rng = rng or random.SystemRandom()
        self._clock = clock

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
                reports.append(self._set_aside(record, remaining))
            elif first_by_id[record.message_id] is record:
                reports.append(futures[record.message_id].result())
            else:
                reports.append(self._in_batch_duplicate(record, first_by_id[record.message_id]))
        self._count_untouched(reports)
        self._schedule_retries([r for r in reports if r.retry and not r.untouched], remaining)
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

    def _in_context(
        self, notice: Notice, breaker: CircuitBreaker, remaining: Callable[[], float]
    ) -> RecordReport:
        if not self._fits(remaining()):
            return RecordReport(
                notice.delivery,
                message_id=notice.message_id,
                retry=True,
                untouched=True,
                reason="not enough time left in this invocation to call Capillary safely",
            )
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
        if not self._fits(time_left):
            return _retry(report, "not enough time left in this invocation to call Capillary safely")
        # The call returns by then, whatever Capillary does, leaving the margin to record what it said.
        deadline = self._clock() + time_left - DEADLINE_SAFETY_SECONDS
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
        return self._resend(report, claimed.claim, breaker, deadline)

    def _resend(
        self, report: RecordReport, claim: Claim, breaker: CircuitBreaker, deadline: float
    ) -> RecordReport:
        if claim.depth >= self._settings.max_resend_depth:
            limit = self._settings.max_resend_depth
            reason = (
                f"resend chain depth {claim.depth} reached MAX_RESEND_DEPTH={limit} "
                f"(resend of {claim.resend_of}, chain root {claim.root_message_id})"
            )
            return self._settle(report, claim, Outcome(Status.SKIPPED, error_message=reason), reason)
        if breaker.is_open:
            report.metrics.append(Metric(MetricName.CIRCUIT_OPEN))
            outcome = Outcome(Status.RETRYING, error_message="circuit open")
            return self._settle(
                report, claim, outcome, "circuit open: Capillary failed repeatedly in this batch"
            )
        result = self._capillary.resend(claim.message_id, deadline=deadline)
        breaker.observe(result.verdict)
        if result.latency_ms is not None:
            report.metrics.append(Metric(MetricName.RESEND_LATENCY, result.latency_ms, "Milliseconds"))
        report.min_delay_seconds = result.retry_after_seconds or 0.0
        report.resent_message_id = result.resent_message_id
        return self._settle(report, claim, Outcome.from_result(result), _describe(result))

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

    def _set_aside(self, poison: Poison, remaining: Callable[[], float]) -> RecordReport:
        if remaining() < VISIBILITY_MARGIN_SECONDS:
            # No time to copy it: handed back untouched, it comes again (and reaches the DLQ by redrive).
            return RecordReport(
                poison.delivery, retry=True, untouched=True, reason=f"{poison.reason}; not set aside in time"
            )
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
