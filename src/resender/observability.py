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
    POISON_HANDED_BACK = "PoisonHandedBack"
    DUPLICATE = "Duplicate"
    OUTCOME_WRITE_FAILED = "OutcomeWriteFailed"
    CIRCUIT_OPEN = "CircuitOpen"
    RESEND_LATENCY = "ResendLatency"
    UNEXPECTED_ERROR = "UnexpectedError"
    CONFIGURATION_REFUSED = "ConfigurationRefused"
