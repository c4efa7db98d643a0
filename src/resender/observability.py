"""Logger, metrics and tracer shared by the whole function.

The metric names below are the ones the dashboard and alarms in ``template.yaml`` read: the template tests
import them from here, so a renamed metric breaks the build rather than a graph.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

from aws_lambda_powertools import Logger

SERVICE_NAME: Final = "resender"
METRICS_NAMESPACE: Final = "CommunicationResender"

logger = Logger(service=SERVICE_NAME)


class MetricName(StrEnum):
    """Every metric the function emits (namespace ``CommunicationResender``, dimension ``service``)."""

    RESENT = "Resent"
    NOT_FOUND = "NotFound"
    REJECTED = "Rejected"
    RETRYING = "Retrying"
    UNCERTAIN = "Uncertain"
    SKIPPED = "Skipped"
    POISON = "Poison"
    DUPLICATE = "Duplicate"
    OUTCOME_WRITE_FAILED = "OutcomeWriteFailed"
    CIRCUIT_OPEN = "CircuitOpen"
    RESEND_LATENCY = "ResendLatency"
    THROTTLED = "Throttled"  # 429 answers from Capillary
    DEFERRED = "Deferred"  # records held back by pacing (limiter, breaker, throttling), not failed
    PACING_WAIT_MS = "PacingWaitMs"  # time a resend waited inside the invocation for its slot
    BREAKER_OPEN = "BreakerOpen"  # records held back because the org's shared breaker is open
    DEFERRAL_AGE = "DeferralAge"  # seconds since a held-back record's failure first reached the queue
