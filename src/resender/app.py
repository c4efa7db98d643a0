"""Lambda entry point: wiring only. The flow lives in :mod:`resender.processor`."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from resender.aws import AwsClients
from resender.capillary import CapillaryClient
from resender.credentials import CredentialSource, CredentialsProvider
from resender.errors import ResenderError
from resender.events import EventSource, parse_event
from resender.observability import METRICS_NAMESPACE, SERVICE_NAME, MetricName, logger, traced
from resender.orgs import OrgRouter
from resender.pacing import PacingConfig, SharedPacer
from resender.policy import ResendPolicy
from resender.processor import Metric, Resender
from resender.queues import Queues
from resender.settings import ConfigurationRefusedError, Settings, StartupCheck
from resender.store import OutcomeStore

if TYPE_CHECKING:
    import botocore.session


class RetryableFailureError(ResenderError, RuntimeError):
    """Raised for a direct SNS invocation whose record should be retried by Lambda's async retries."""


@dataclass(frozen=True, slots=True)
class Container:
    """Everything built once per Lambda container and reused by every invocation."""

    settings: Settings
    clients: AwsClients
    resender: Resender
    startup: StartupCheck


def build_container(
    settings: Settings | None = None,
    *,
    session: botocore.session.Session | None = None,
    region: str | None = None,
    endpoint_url: str | None = None,
) -> Container:
    """The function's wiring; ``session``, ``region`` and ``endpoint_url`` choose the AWS it talks to.

    Lambda passes none of them (the environment decides); the operator tool passes its own, so it wires
    the same container for the table, region, endpoint and profile it was pointed at.
    """
    settings = settings or Settings.from_env()
    clients = AwsClients(
        pool_size=settings.resend_concurrency, session=session, region=region, endpoint_url=endpoint_url
    )
    credentials = CredentialsProvider(
        clients.secretsmanager, settings.capillary_secret_id, settings.secret_max_age_seconds
    )

    def capillary_client(base_url: str, source: CredentialSource) -> CapillaryClient:
        return CapillaryClient(
            base_url,
            source,
            timeout_seconds=settings.capillary_timeout_seconds,
            pool_size=settings.resend_concurrency,
            max_text_chars=settings.max_text_chars,
        )

    capillary = capillary_client(settings.capillary_base_url, credentials)
    resender = Resender(
        settings,
        store=OutcomeStore(
            clients.dynamodb, settings.outcomes_table, ttl_seconds=settings.idempotency_ttl_seconds
        ),
        capillary=capillary,
        queues=Queues(clients.sqs, settings.dead_letter_queue_url),
        executor=ThreadPoolExecutor(max_workers=settings.resend_concurrency, thread_name_prefix="resend"),
        policy=ResendPolicy.from_settings(settings),
        orgs=OrgRouter(settings, credentials, capillary, capillary_client),
        pacer=build_pacer(settings, clients),
    )
    return Container(settings, clients, resender, StartupCheck(settings))


def build_pacer(settings: Settings, clients: AwsClients) -> SharedPacer | None:
    """The shared limiter and breaker, or None (pacing off) without a PACING_TABLE."""
    if settings.pacing_table is None:
        return None
    config = PacingConfig(
        window_seconds=settings.rate_window_seconds,
        rate=settings.resend_rate_per_minute,
        burst=settings.resend_burst,
        start_rate=settings.adaptive_start_per_minute,
        min_rate=settings.adaptive_min_per_minute,
        period_seconds=settings.adaptive_period_seconds,
        breaker_threshold=settings.shared_breaker_threshold,
        breaker_open_seconds=settings.shared_breaker_open_seconds,
    )
    return SharedPacer(clients.dynamodb, settings.pacing_table, config)


_container: Container | None = None
_container_lock = threading.Lock()


def container() -> Container:
    global _container  # noqa: PLW0603 - one container per Lambda execution environment, built on first use
    with _container_lock:
        if _container is None:
            _container = build_container()
        return _container


def reset_container(replacement: Container | None = None) -> None:
    """Drop (or replace) the per-container state, e.g. after the environment changed."""
    global _container  # noqa: PLW0603
    with _container_lock:
        _container = replacement


@logger.inject_lambda_context(log_event=False)
@traced
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return handle(event, context, container())


def handle(event: dict[str, Any], context: LambdaContext, current: Container) -> dict[str, Any]:
    """One invocation on ``current`` (the benchmark runs several containers side by side in one process)."""
    try:
        current.startup.check(context.get_remaining_time_in_millis() / 1000)
    except ConfigurationRefusedError as refused:
        # Raised, not answered with every record as a batch item failure: the event source retries the batch
        # after the visibility timeout, Lambda's Errors and the ConfigurationRefused alarm fire, and no record
        # is claimed or sent under settings that cannot finish a resend.
        logger.error(str(refused))
        publish_metrics([Metric(MetricName.CONFIGURATION_REFUSED)])
        raise
    source, deliveries = parse_event(event)
    reports = current.resender.process(
        deliveries, remaining_seconds=lambda: context.get_remaining_time_in_millis() / 1000
    )
    try:
        publish_metrics(metric for report in reports for metric in report.metrics)
    except Exception as error:  # the outcomes are recorded; the batch response matters more than figures
        logger.error("metrics not published", extra={"errorType": type(error).__name__})
    retried = [report for report in reports if report.retry]
    if source is EventSource.SNS:
        if retried:
            raise RetryableFailureError(f"{len(retried)} SNS record(s) must be retried: {retried[0].reason}")
        return {"batchItemFailures": []}
    return {"batchItemFailures": [{"itemIdentifier": report.delivery.record_id} for report in retried]}


def publish_metrics(figures: Iterable[Metric]) -> None:
    # Ephemeral metrics keep each invocation's figures apart when the handler runs on several threads.
    metrics = EphemeralMetrics(namespace=METRICS_NAMESPACE, service=SERVICE_NAME)
    for metric in figures:
        metrics.add_metric(name=metric.name, unit=MetricUnit(metric.unit), value=metric.value)
    metrics.flush_metrics()
