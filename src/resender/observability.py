"""Logger, metrics and tracer shared by the whole function.

The metric names below are the ones the dashboard and alarms in ``template.yaml`` read: the template tests
import them from here, so a renamed metric breaks the build rather than a graph.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from enum import StrEnum
from typing import Any, Final, TypeVar

from aws_lambda_powertools import Logger

#: The ``service`` dimension of every metric and the logs' service: the stack's name when deployed (the
#: template sets POWERTOOLS_SERVICE_NAME), so two stacks in one account never mix their figures or alarms.
SERVICE_NAME: Final = os.environ.get("POWERTOOLS_SERVICE_NAME", "").strip() or "resender"
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
    POISON_HANDED_BACK = "PoisonHandedBack"
    DUPLICATE = "Duplicate"
    OUTCOME_WRITE_FAILED = "OutcomeWriteFailed"
    CIRCUIT_OPEN = "CircuitOpen"
    RESEND_LATENCY = "ResendLatency"
    THROTTLED = "Throttled"  # 429 answers from Capillary
    DEFERRED = "Deferred"  # records held back by pacing (limiter, breaker, throttling), not failed
    PACING_WAIT_MS = "PacingWaitMs"  # time a resend waited inside the invocation for its slot
    BREAKER_OPEN = "BreakerOpen"  # records held back because the org's shared breaker is open
    DEFERRAL_AGE = "DeferralAge"  # seconds since a held-back record's failure first reached the queue
    UNEXPECTED_ERROR = "UnexpectedError"
    CONFIGURATION_REFUSED = "ConfigurationRefused"


#: Opt-in X-Ray SDK subsegments (``true``); off, Lambda's active tracing still records every invocation.
SDK_TRACING_ENV: Final = "XRAY_SDK_TRACING"
Handler = TypeVar("Handler", bound=Callable[..., Any])


def sdk_tracing_enabled() -> bool:
    return os.environ.get(SDK_TRACING_ENV, "").strip().lower() == "true"


def traced(handler: Handler) -> Handler:
    """The handler, wrapped by Powertools' Tracer only when SDK tracing is asked for.

    Importing the X-Ray SDK is about 40% of the handler's import time, and the SDK has been in maintenance
    since 2026-02-25 (end of support 2027-02-25). Lambda's active tracing records the invocation without it,
    and the ``ResendLatency`` metric times every Capillary call, so the SDK is imported only on request.
    """
    if not sdk_tracing_enabled():
        return handler
    from aws_lambda_powertools import Tracer

    wrapped: Handler = Tracer(service=SERVICE_NAME).capture_lambda_handler(capture_response=False)(handler)
    return wrapped
