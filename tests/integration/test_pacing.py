"""Pacing over real HTTP: the shared limiter across threads and processes, deferral through the real queue,
the breaker across containers, throttling, and DynamoDB failing under the limiter.

moto serves DynamoDB and SQS (its writes serialised, as DynamoDB's conditional writes are atomic); the stub
stands for Capillary and counts every call it receives per window.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

import boto3
import pytest
from aws_lambda_powertools.utilities.typing import LambdaContext

from resender import app
from resender.events import DEFERRALS_ATTRIBUTE, FIRST_SEEN_ATTRIBUTE
from resender.local.aws import LocalResources, lambda_record
from resender.local.runner import LocalContext
from resender.local.stub import CapillaryStub
from resender.pacing import DEFAULT_ORG, PacingConfig, SharedPacer
from resender.settings import Settings
from tests.builders import failure, sqs_record
from tests.conftest import FAKE_AWS
from tests.fixture_types import ReadOutcome, stored
from tests.integration import pacing_worker

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_sqs.type_defs import MessageTypeDef

ROOT = Path(__file__).resolve().parents[2]
ID = 1746061653596


def now_ms() -> int:
    return int(time.time() * 1000)


def fresh_event(*message_ids: int) -> dict[str, Any]:
    """SQS records whose failures reached the queue just now (so no deferral is too old)."""
    return {"Records": [sqs_record(failure(m), sent_at_ms=now_ms()) for m in message_ids]}


@pytest.fixture
def sqs(local_aws: LocalResources) -> SQSClient:
    return boto3.client("sqs", endpoint_url=local_aws.endpoint_url)


@pytest.fixture
def receive(local_aws: LocalResources, sqs: SQSClient) -> Callable[[], list[MessageTypeDef]]:
    """Long-poll the source queue: returns as soon as held-back copies become visible."""

    def poll() -> list[MessageTypeDef]:
        response = sqs.receive_message(
            QueueUrl=local_aws.queue_url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=5,
            AttributeNames=["All"],
            MessageAttributeNames=["All"],
        )
        return list(response.get("Messages", []))

    return poll


@pytest.fixture
def paced_env(
    function_env: dict[str, str], local_aws: LocalResources, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, str]]:
    """The function with pacing on: one resend per second, no waiting inside the invocation, one worker."""
    settings = {
        "PACING_TABLE": local_aws.pacing_table_name,
        "RESEND_RATE_PER_MINUTE": "1",
        "RATE_WINDOW_SECONDS": "1",
        "PACING_MAX_WAIT_SECONDS": "0",
        "RESEND_CONCURRENCY": "1",  # records in batch order, so which one gets the slot is known
    }
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    app.reset_container()
    yield {**function_env, **settings}
    app.reset_container()


class Reconfigure(Protocol):
    def __call__(self, **settings: str) -> None: ...


@pytest.fixture
def reconfigure(paced_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Reconfigure:
    """Change settings of the paced function: the next container built reads them."""

    def apply(**settings: str) -> None:
        for name, value in settings.items():
            monkeypatch.setenv(name, value)
        app.reset_container()

    return apply


@pytest.fixture
def delayed(local_aws: LocalResources, sqs: SQSClient) -> Callable[[], int]:
    """How many copies now wait in the source queue for their delay to run out."""

    def count() -> int:
        attributes = sqs.get_queue_attributes(
            QueueUrl=local_aws.queue_url, AttributeNames=["ApproximateNumberOfMessagesDelayed"]
        )["Attributes"]
        return int(attributes["ApproximateNumberOfMessagesDelayed"])

    return count


def handle(event: dict[str, Any]) -> dict[str, Any]:
    return app.lambda_handler(event, cast("LambdaContext", LocalContext(30.0)))


# -- one limiter for every container ----------------------------------------------------------------------


def test_16_threads_and_2_processes_never_exceed_the_shared_rate(
    local_aws: LocalResources, stub: CapillaryStub
) -> None:
    rate, window, seconds = 40, 2.0, 4.0
    environment = {**os.environ, **FAKE_AWS, "AWS_ENDPOINT_URL": local_aws.endpoint_url}
    command = [sys.executable, "-m", "tests.integration.pacing_worker", local_aws.endpoint_url]
    command += [local_aws.pacing_table_name, stub.base_url, str(rate), str(window), str(seconds), "4"]
    children = [
        subprocess.Popen(command, cwd=ROOT, env=environment, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    # Two containers in this process, eight threads each, pacing for as long as the children run.
    dynamodb = boto3.client("dynamodb", endpoint_url=local_aws.endpoint_url)
    config = PacingConfig(window_seconds=window, rate=float(rate))
    running = lambda: any(child.poll() is None for child in children)  # noqa: E731
    made: list[int] = []
    threads = [
        threading.Thread(
            target=lambda: made.append(
                pacing_worker.run(
                    SharedPacer(dynamodb, local_aws.pacing_table_name, config), stub.base_url, 8, running
                )
            )
        )
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    outputs = [child.communicate(timeout=60)[0] for child in children]
    for thread in threads:
        thread.join()

    assert all(child.returncode == 0 for child in children)
    child_calls = [int(output.strip()) for output in outputs]
    assert all(calls > 0 for calls in child_calls), "every process got slots"
    per_window = stub.calls_per_window(window)
    # The stub counts arrivals, and on a busy machine calls granted in one window can arrive bunched in the
    # next (two Python processes start while sixteen threads sleep until their slots). So: every window within
    # 30 % of the rate, and the whole run within the rate over its span plus one window. Without the limiter
    # the threads make about twice the rate in every window, and fail both.
    assert max(per_window.values()) <= rate * 1.3, per_window
    arrivals = sorted(call.at for call in stub.resend_calls)
    span = arrivals[-1] - arrivals[0]
    assert len(arrivals) <= rate * (span / window + 1), (len(arrivals), span)
    busy = sorted(per_window.items())[1:-1]  # whole windows only
    # Not vacuous: the callers did press against the limit (how close depends on the machine's load, so the
    # bound is loose; the guarantee under test is the ceiling above).
    assert sum(count for _, count in busy) >= 0.5 * rate * len(busy), "the limiter let the rate through"
    assert sum(made) + sum(child_calls) == len(stub.resend_calls)


# -- deferral through the real queue ------------------------------------------------------------------------


@pytest.mark.parametrize("first", ["copy", "late original"])
def test_a_held_back_record_and_its_late_original_resend_once(
    paced_env: dict[str, str],
    local_aws: LocalResources,
    stub: CapillaryStub,
    outcome: ReadOutcome,
    receive: Callable[[], list[MessageTypeDef]],
    first: str,
) -> None:
    event = fresh_event(ID, ID + 1)

    response = handle(event)

    # One slot per second: the first record is resent, the second held back without spending a delivery.
    assert response == {"batchItemFailures": []}
    assert [call.message_id for call in stub.resend_calls] == [ID]
    held = stored(outcome, ID + 1)
    assert (held["status"], held["deferrals"]) == ("RETRYING", 1)
    assert held["nextAttemptAt"] > held["updatedAt"]
    (copy,) = receive()
    assert copy["Attributes"]["ApproximateReceiveCount"] == "1"  # the copy starts again at 1
    assert copy["MessageAttributes"][DEFERRALS_ATTRIBUTE]["StringValue"] == "1"
    first_seen = int(copy["MessageAttributes"][FIRST_SEEN_ATTRIBUTE]["StringValue"])
    assert first_seen == int(event["Records"][1]["attributes"]["SentTimestamp"])

    late_original = dict(event["Records"][1])
    late_original["attributes"] = {**late_original["attributes"], "ApproximateReceiveCount": "2"}
    copy_record = lambda_record(copy, local_aws.queue_arn)
    order = [copy_record, late_original] if first == "copy" else [late_original, copy_record]
    for record in order:
        assert handle({"Records": [record]}) == {"batchItemFailures": []}

    assert stub.resends_performed(ID + 1) == 1
    assert stored(outcome, ID + 1)["status"] == "RESENT"
    assert "nextAttemptAt" not in stored(outcome, ID + 1)


def test_dynamodb_failing_under_the_limiter_holds_records_back_and_never_calls(
    reconfigure: Reconfigure, stub: CapillaryStub, outcome: ReadOutcome, delayed: Callable[[], int]
) -> None:
    reconfigure(PACING_TABLE="no-such-pacing-table")

    response = handle(fresh_event(ID, ID + 1))

    assert stub.resend_calls == []
    assert response == {"batchItemFailures": []}
    assert delayed() == 2  # both copies wait in the source queue
    assert {stored(outcome, ID)["status"], stored(outcome, ID + 1)["status"]} == {"RETRYING"}
    assert "pacing table could not be written" in stored(outcome, ID)["errorMessage"]


def test_a_429_holds_the_whole_org_back_and_lowers_the_shared_rate(
    reconfigure: Reconfigure, local_aws: LocalResources, stub: CapillaryStub, delayed: Callable[[], int]
) -> None:
    reconfigure(RESEND_RATE_PER_MINUTE="50")  # above what Capillary allows this key
    stub.window_limit = (2, 1e9)  # a window that cannot roll over during the test
    stub.reset()

    response = handle(fresh_event(*range(ID, ID + 5)))

    assert response == {"batchItemFailures": []}
    assert stub.resends_performed() == 2
    assert stub.throttled == 1, "after the first 429 nobody called again before Retry-After"
    assert len(stub.resend_calls) == 3
    assert delayed() == 3
    state = SharedPacer(
        boto3.client("dynamodb", endpoint_url=local_aws.endpoint_url),
        local_aws.pacing_table_name,
        PacingConfig(),
    ).state(DEFAULT_ORG)
    assert (state["rate"], state["ceiling"]) == (25, 50)


# -- the breaker across containers ---------------------------------------------------------------------------


def test_the_shared_breaker_opened_by_one_container_stops_another(
    reconfigure: Reconfigure, stub: CapillaryStub, delayed: Callable[[], int]
) -> None:
    reconfigure(
        RESEND_RATE_PER_MINUTE="600",
        SHARED_BREAKER_THRESHOLD="2",
        CIRCUIT_BREAKER_THRESHOLD="10",
        PACING_MAX_WAIT_SECONDS="5",
    )
    first, second = app.build_container(Settings.from_env()), app.build_container(Settings.from_env())
    stub.stop()  # connections refused

    app.reset_container(first)
    failed = handle(fresh_event(ID, ID + 1))
    stub.start()
    app.reset_container(second)
    held = handle(fresh_event(ID + 2))

    assert len(failed["batchItemFailures"]) == 2  # real failures: they count toward maxReceiveCount
    assert held == {"batchItemFailures": []}  # held back by the breaker: copied, not failed
    assert stub.resend_calls == []
    assert delayed() == 1
