"""The outage storm: a backlog of failures against a rate-limited Capillary; resender and baseline.

    python -m bench.run --storm [--storm-messages 200] [--storm-pollers 5] [--storm-outage 15]

Time runs 30 times faster than in production: Capillary's minute is a 2-second window here (it allows 10
resends per window and answers 429 with a Retry-After to the window's end), and every setting measured in
time is scaled the same way (backoff, the queue's visibility timeout, breaker interval, adaptive period),
except the wait for a slot inside an invocation, which must keep the invocation within the visibility
timeout. Everything else is real: HTTP to a moto server (SQS with a redrive policy to a dead-letter queue,
DynamoDB) and to the Capillary stub, both in the ``bench.servers`` child process.

An emulated event source mapping: C pollers receive batches of up to 10 from the source queue, invoke the
function (each poller its own container, as Lambda gives each concurrent invocation one), and delete what
it acknowledged; what it hands back comes again after its visibility timeout, and after ``maxReceiveCount``
(5) receives SQS moves it to the dead-letter queue. Three scenarios: the limit configured
(``RESEND_RATE_PER_MINUTE`` = Capillary's), no limit configured (adaptive only), and Capillary refusing
connections for a while in the middle. Figures are printed, never asserted.
"""

from __future__ import annotations

import importlib.util
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import boto3

from bench.harness import Discard
from bench.workload import Context, IdAllocator
from resender.dynamodb_codec import item_numbers
from resender.local.aws import lambda_record

Handler = Callable[[dict[str, Any], Any], Any]

ROOT: Final = Path(__file__).resolve().parent.parent
SCALE: Final = 30.0  # one production minute lasts 2 s here
WINDOW_SECONDS: Final = 60.0 / SCALE
LIMIT_PER_WINDOW: Final = 10
RATE_PER_SECOND: Final = LIMIT_PER_WINDOW / WINDOW_SECONDS
BREAKER_INTERVAL_SECONDS: Final = 30.0 / SCALE
VISIBILITY_TIMEOUT_SECONDS: Final = int(180 / SCALE)
BATCH: Final = 10
MAX_RECEIVE_COUNT: Final = 5


@dataclass(frozen=True)
class Scenario:
    name: str
    rate_configured: bool
    outage_seconds: float = 0.0


@dataclass
class StormResult:
    implementation: str
    scenario: str
    messages: int
    resent: int = 0
    double_resends: int = 0
    dead_lettered: int = 0
    throttled: int = 0
    calls: int = 0
    drain_seconds: float = 0.0
    ideal_seconds: float = 0.0
    outage_calls: int = 0
    max_calls_per_interval: int = 0
    breaker_intervals: int = 0
    handler_errors: int = 0
    unresolved: int = 0
    max_per_window: int = 0

    @property
    def throttled_share(self) -> float:
        return self.throttled / max(1, self.resent)

    @property
    def drain_ratio(self) -> float:
        return self.drain_seconds / self.ideal_seconds


def scenarios(outage_seconds: float) -> list[Scenario]:
    return [
        Scenario("limit configured", rate_configured=True),
        Scenario("no limit configured (adaptive)", rate_configured=False),
        Scenario(f"Capillary refusing connections {outage_seconds:g} s", True, outage_seconds),
    ]


def resender_settings(rate_configured: bool, dead_letter_queue_url: str) -> dict[str, str]:
    """The resender's environment for the storm: pacing on, every duration scaled."""
    from resender.local.aws import PACING_TABLE_NAME

    return {
        "PACING_TABLE": PACING_TABLE_NAME,
        "RESEND_RATE_PER_MINUTE": str(LIMIT_PER_WINDOW) if rate_configured else "",
        "RATE_WINDOW_SECONDS": str(WINDOW_SECONDS),
        # Not scaled down 30 times like the rest: an invocation (this wait, plus one call of at most 2 s) must
        # end within the queue's visibility timeout, as it does in production (visibility = 6 x the function's
        # timeout), or SQS hands its records to a second poller while the first still holds their claims.
        "PACING_MAX_WAIT_SECONDS": "2.5",
        "ADAPTIVE_PERIOD_SECONDS": f"{30 / SCALE:.3f}",
        "SHARED_BREAKER_OPEN_SECONDS": str(BREAKER_INTERVAL_SECONDS),
        "RETRY_BASE_SECONDS": "1",
        "RETRY_CAP_SECONDS": "30",
        "CAPILLARY_TIMEOUT_SECONDS": "2",
        "DEAD_LETTER_QUEUE_URL": dead_letter_queue_url,
    }


# -- the function's side -----------------------------------------------------------------------------------


class CallLog:
    """When each implementation called Capillary (the call attempts, whether or not a connection opened)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.times: list[float] = []

    def note(self) -> None:
        with self._lock:
            self.times.append(time.monotonic())

    def between(self, start: float, end: float) -> list[float]:
        with self._lock:
            return [t for t in self.times if start <= t < end]


@contextmanager
def resender_handlers(
    count: int, rate_configured: bool, calls: CallLog, dead_letter_queue_url: str
) -> Iterator[list[Handler]]:
    """``count`` resender containers side by side, each with its own pool, pacer cache and sessions."""
    from resender import app
    from resender.capillary import CapillaryClient
    from resender.local.aws import patched_environ
    from resender.settings import Settings

    original = CapillaryClient.resend

    def counted(self: CapillaryClient, *args: Any, **kwargs: Any) -> Any:
        calls.note()
        return original(self, *args, **kwargs)

    CapillaryClient.resend = counted  # type: ignore[method-assign]
    try:
        with patched_environ(resender_settings(rate_configured, dead_letter_queue_url)):
            containers = [app.build_container(Settings.from_env()) for _ in range(count)]
            yield [
                (lambda event, context, built=built: app.handle(event, context, built))
                for built in containers
            ]
    finally:
        CapillaryClient.resend = original  # type: ignore[method-assign]


class _CountingRequests:
    """The ``requests`` module as the baseline sees it, noting each POST to Capillary."""

    def __init__(self, module: Any, calls: CallLog) -> None:
        self._module = module
        self._calls = calls

    def post(self, *args: Any, **kwargs: Any) -> Any:
        self._calls.note()
        return self._module.post(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)


def baseline_handlers(count: int, calls: CallLog) -> list[Handler]:
    """``count`` separate copies of the baseline module: Powertools' BatchProcessor is one per container."""
    import aws_lambda_powertools
    import requests
    from aws_lambda_powertools.metrics import EphemeralMetrics

    path = ROOT / "bench" / "baseline" / "app.py"
    handlers: list[Handler] = []
    # Powertools' Metrics share one buffer across instances (one per process is the design); these copies
    # stand for separate containers, so each gets a buffer of its own, as a container's process would.
    shared_metrics = aws_lambda_powertools.Metrics
    aws_lambda_powertools.Metrics = EphemeralMetrics  # type: ignore[misc,assignment]
    try:
        handlers = [_load_baseline(path, index, calls, requests) for index in range(count)]
    finally:
        aws_lambda_powertools.Metrics = shared_metrics  # type: ignore[misc]
    return handlers


def _load_baseline(path: Path, index: int, calls: CallLog, requests: Any) -> Handler:
    spec = importlib.util.spec_from_file_location(f"bench_storm_baseline_{index}_{uuid.uuid4().hex}", path)
    if spec is None or spec.loader is None:
        raise RuntimeError("the baseline module cannot be loaded")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.requests = _CountingRequests(requests, calls)  # type: ignore[attr-defined]
    handler: Handler = module.lambda_handler
    return handler


# -- the emulated event source mapping ---------------------------------------------------------------------


class Poller(threading.Thread):
    """One concurrent invocation slot of the event source mapping."""

    def __init__(
        self, handler: Handler, sqs: Any, queue_url: str, queue_arn: str, stop: threading.Event
    ) -> None:
        super().__init__(daemon=True)
        self._handler, self._sqs, self._url, self._arn, self._done = handler, sqs, queue_url, queue_arn, stop
        self.errors = 0

    def run(self) -> None:
        while not self._done.is_set():
            messages = self._sqs.receive_message(
                QueueUrl=self._url,
                MaxNumberOfMessages=BATCH,
                WaitTimeSeconds=1,
                AttributeNames=["All"],
                MessageAttributeNames=["All"],
            ).get("Messages", [])
            if not messages:
                continue
            event = {"Records": [lambda_record(message, self._arn) for message in messages]}
            try:
                response = self._handler(event, Context())
            except Exception:  # a failed invocation hands the whole batch back, as in Lambda
                self.errors += 1
                continue
            failed = {item["itemIdentifier"] for item in (response or {}).get("batchItemFailures", [])}
            done = [
                {"Id": str(index), "ReceiptHandle": message["ReceiptHandle"]}
                for index, message in enumerate(messages)
                if message["MessageId"] not in failed
            ]
            if done:
                self._sqs.delete_message_batch(QueueUrl=self._url, Entries=done)


# -- one run -----------------------------------------------------------------------------------------------


class Stack:
    """The emulated queues and tables, with an operator's (unrestricted) clients."""

    def __init__(self, ready: dict[str, Any]) -> None:
        session = boto3.session.Session(
            aws_access_key_id="testing",
            aws_secret_access_key="testing",  # noqa: S106 - the emulator's
            region_name="us-east-1",
        )
        self.sqs = session.client("sqs", endpoint_url=ready["endpoint_url"])
        self.dynamodb = session.client("dynamodb", endpoint_url=ready["endpoint_url"])
        self.queue_url, self.queue_arn = ready["queue_url"], ready["queue_arn"]
        self.dlq_url = ready["dead_letter_queue_url"]
        from resender.local.aws import PACING_TABLE_NAME

        self.pacing_table = PACING_TABLE_NAME

    def fresh_queues(self) -> None:
        """A new source queue and dead-letter queue for each run (SQS purges once a minute at most)."""
        name = f"storm-{uuid.uuid4().hex[:12]}"
        self.dlq_url = self.sqs.create_queue(QueueName=f"{name}-dlq")["QueueUrl"]
        dlq_arn = self._arn(self.dlq_url)
        redrive = json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": MAX_RECEIVE_COUNT})
        self.queue_url = self.sqs.create_queue(
            QueueName=name,
            Attributes={"VisibilityTimeout": str(VISIBILITY_TIMEOUT_SECONDS), "RedrivePolicy": redrive},
        )["QueueUrl"]
        self.queue_arn = self._arn(self.queue_url)
        self.dynamodb.delete_item(TableName=self.pacing_table, Key={"org": {"S": "default"}})

    def _arn(self, url: str) -> str:
        attributes = self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]
        return str(attributes["QueueArn"])

    def fill(self, message_ids: list[int]) -> None:
        for start in range(0, len(message_ids), BATCH):
            entries = [
                {"Id": str(index), "MessageBody": json.dumps({"messageId": mid, "channel": "SMS"})}
                for index, mid in enumerate(message_ids[start : start + BATCH])
            ]
            self.sqs.send_message_batch(QueueUrl=self.queue_url, Entries=entries)

    def dead_lettered(self) -> int:
        attributes = self.sqs.get_queue_attributes(
            QueueUrl=self.dlq_url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return int(attributes["ApproximateNumberOfMessages"]) + int(
            attributes["ApproximateNumberOfMessagesNotVisible"]
        )

    def breaker_open(self, pacing_table: str) -> bool:
        item = self.dynamodb.get_item(TableName=pacing_table, Key={"org": {"S": "default"}}).get("Item", {})
        open_until = item_numbers(item).get("openUntil")
        return open_until is not None and open_until / 1000 > time.time()


@dataclass
class Rig:
    """What every run shares: the servers' process, the emulated stack, the id source, the storm's size."""

    srv: Any
    stack: Stack
    ids: IdAllocator
    messages: int


@dataclass
class Outage:
    start: float
    end: float
    opened_at: float | None = None  # when the bench first saw the shared breaker open
    over: bool = False


def run_storm(
    implementation: str, scenario: Scenario, handlers: list[Handler], calls: CallLog, rig: Rig
) -> StormResult:
    srv, stack, messages = rig.srv, rig.stack, rig.messages
    srv.command("reset")
    srv.command("window_limit", calls=LIMIT_PER_WINDOW, seconds=WINDOW_SECONDS)
    ideal = messages / RATE_PER_SECOND + scenario.outage_seconds
    result = StormResult(implementation, scenario.name, messages, ideal_seconds=ideal)
    stack.fill(rig.ids.take(messages))
    stop = threading.Event()
    pollers = [Poller(handler, stack.sqs, stack.queue_url, stack.queue_arn, stop) for handler in handlers]
    started = time.monotonic()
    for poller in pollers:
        poller.start()
    outage = _watch(rig, scenario, deadline=started + 4 * ideal + 30)
    result.drain_seconds = time.monotonic() - started
    stop.set()
    for poller in pollers:
        poller.join(timeout=60)
    if outage is not None and not outage.over:
        srv.command("outage", on=False)
    stats = srv.command("storm_stats")
    result.resent = stats["resent"]
    result.double_resends = stats["double_resends"]
    result.throttled = stats["throttled"]
    result.calls = stats["resend_calls"]
    result.max_per_window = max(stats["calls_per_window"].values(), default=0)
    result.dead_lettered = stack.dead_lettered()
    result.handler_errors = sum(poller.errors for poller in pollers)
    result.unresolved = max(0, messages - result.resent - result.dead_lettered)
    if outage is not None:
        _outage_figures(result, outage, calls)
    return result


def _watch(rig: Rig, scenario: Scenario, deadline: float) -> Outage | None:
    """Sample the run until every record is resent or dead-lettered; start and end the outage on the way."""
    outage: Outage | None = None
    while time.monotonic() < deadline:
        stats = rig.srv.command("storm_stats")
        dead = rig.stack.dead_lettered()
        now = time.monotonic()
        if scenario.outage_seconds and outage is None and stats["resent"] >= rig.messages / 3:
            rig.srv.command("outage", on=True)
            outage = Outage(now, now + scenario.outage_seconds)
        if outage is not None and outage.opened_at is None and now < outage.end:
            outage.opened_at = now if rig.stack.breaker_open(rig.stack.pacing_table) else None
        if outage is not None and now >= outage.end and not outage.over:
            rig.srv.command("outage", on=False)
            outage.over = True
        if stats["resent"] + dead >= rig.messages:
            break
        time.sleep(0.1)  # the bench's own sampling period, not a synchronisation
    return outage


def _outage_figures(result: StormResult, outage: Outage, calls: CallLog) -> None:
    """Calls while Capillary refused, and the most in one breaker interval once the breaker had opened."""
    during = calls.between(outage.start, outage.end)
    result.outage_calls = len(during)
    # For the baseline, which has no breaker, counting starts one interval into the outage.
    at = (outage.opened_at or outage.start) + BREAKER_INTERVAL_SECONDS
    counts: list[int] = []
    while at < outage.end:
        counts.append(len([t for t in during if at <= t < at + BREAKER_INTERVAL_SECONDS]))
        at += BREAKER_INTERVAL_SECONDS
    result.max_calls_per_interval = max(counts, default=0)
    result.breaker_intervals = len(counts)


# -- the whole benchmark -----------------------------------------------------------------------------------


@contextmanager
def quiet() -> Iterator[None]:
    """Keep the storm's thousands of WARNING lines (every held-back record logs one) off the report."""
    import contextlib
    import sys

    from resender.observability import logger

    previous = logger.log_level
    logger.setLevel("CRITICAL")
    try:
        with contextlib.redirect_stdout(Discard()):
            yield
    finally:
        logger.setLevel(previous)
        sys.stdout.flush()


def storm(
    srv: Any, ids: IdAllocator, messages: int, pollers: int, outage_seconds: float
) -> list[StormResult]:
    from resender.local.aws import patched_environ

    stack = Stack(srv.ready)
    rig = Rig(srv, stack, ids, messages)
    results: list[StormResult] = []
    print_header(messages, pollers)
    for scenario in scenarios(outage_seconds):
        for implementation in ("resender", "baseline"):
            calls = CallLog()
            stack.fresh_queues()
            with quiet():
                if implementation == "resender":
                    with resender_handlers(
                        pollers, scenario.rate_configured, calls, stack.dlq_url
                    ) as handlers:
                        result = run_storm(implementation, scenario, handlers, calls, rig)
                else:
                    with patched_environ({"POWERTOOLS_LOG_LEVEL": "CRITICAL"}):
                        handlers = baseline_handlers(pollers, calls)
                    result = run_storm(implementation, scenario, handlers, calls, rig)
            print_row(result)
            results.append(result)
    print_legend()
    return results


def print_header(messages: int, pollers: int) -> None:
    title = (
        f"Outage storm: {messages} failures at once, {pollers} pollers, Capillary allows {LIMIT_PER_WINDOW} "
        f"per {WINDOW_SECONDS:g} s window (time x{SCALE:g})"
    )
    print(f"\n== {title} " + "=" * max(0, 96 - len(title)), flush=True)
    print(
        f"  {'scenario':<38}{'impl':<10}{'resent':>7}{'double':>7}{'DLQ':>5}{'429s':>6}{'429/res':>8}"
        f"{'outage calls':>13}{'max/intv':>9}{'drain':>8}{'ideal':>7}{'ratio':>7}"
    )


def print_row(result: StormResult) -> None:
    outage = (
        f"{result.outage_calls:>13}{result.max_calls_per_interval:>9}"
        if result.breaker_intervals
        else " " * 22
    )
    print(
        f"  {result.scenario:<38}{result.implementation:<10}{result.resent:>7}{result.double_resends:>7}"
        f"{result.dead_lettered:>5}{result.throttled:>6}{result.throttled_share:>8.1%}{outage}"
        f"{result.drain_seconds:>7.1f}s{result.ideal_seconds:>6.1f}s{result.drain_ratio:>6.2f}x",
        flush=True,
    )
    if result.unresolved or result.handler_errors:
        unresolved, errors = result.unresolved, result.handler_errors
        print(f"    {unresolved} neither resent nor dead-lettered; {errors} failed invocations")


LEGEND: Final = (
    "double: resends beyond the first for one messageId; DLQ: records in the dead-letter queue at the end",
    "outage calls: calls to Capillary while it refused connections; max/intv: most calls in one breaker",
    f"interval ({BREAKER_INTERVAL_SECONDS:g} s) once the breaker had opened (baseline: after the first one)",
    f"ideal: N / {RATE_PER_SECOND:g} per s (+ the outage); drain: until all are resent or dead-lettered",
)


def print_legend() -> None:
    for line in LEGEND:
        print(f"  {line}")


def storm_targets(results: list[StormResult]) -> list[tuple[str, str, bool]]:
    ours = [r for r in results if r.implementation == "resender"]
    found: list[tuple[str, str, bool]] = []
    for result, short in zip(ours, ("limit configured", "adaptive", "outage"), strict=True):
        found.append((f"{short}: 0 double resends", str(result.double_resends), result.double_resends == 0))
        found.append((f"{short}: 0 dead-lettered", str(result.dead_lettered), result.dead_lettered == 0))
        found.append(
            (f"{short}: drain <= 1.2 x ideal", f"{result.drain_ratio:.2f}x", result.drain_ratio <= 1.2)
        )
    configured, adaptive, outage = ours
    found.append(
        (
            "limit configured: 429s <= 2% of resends",
            f"{configured.throttled_share:.1%}",
            configured.throttled_share <= 0.02,
        )
    )
    found.append(
        (
            "adaptive: 429s <= 10% of resends",
            f"{adaptive.throttled_share:.1%}",
            adaptive.throttled_share <= 0.10,
        )
    )
    found.append(
        (
            "outage: <= 1 call per breaker interval",
            f"max {outage.max_calls_per_interval} over {outage.breaker_intervals} intervals",
            outage.max_calls_per_interval <= 1,
        )
    )
    return found
