"""The batch side of reliability over real HTTP: moto server for AWS, the stub (or a fixed answer) for Capillary.

Refused configurations, poison with no dead-letter queue anywhere, unexpected errors inside one record, FIFO
groups, and success answers whose resentMessageId names no new message.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, cast

import boto3
import pytest
from aws_lambda_powertools.utilities.typing import LambdaContext

from resender import app
from resender.local.aws import LocalResources
from resender.local.runner import LocalContext
from resender.local.stub import Behaviour, CapillaryStub
from resender.models import ResendResult
from resender.observability import MetricName
from resender.settings import ConfigurationRefusedError
from resender.store import Claim, ClaimResult, Outcome
from tests.builders import failure, sqs_event, sqs_record
from tests.conftest import Invoke
from tests.fixture_types import DrainDeadLetters, ReadOutcome, stored

if TYPE_CHECKING:
    from mypy_boto3_sqs.type_defs import MessageTypeDef

ID = 1746061653596
SECRET_TEXT = "server123"  # the demo password: an exception that carries it must not reach a log


def emitted_metrics(out: str) -> Counter[str]:
    """Each metric the handler printed (CloudWatch EMF), with the sum of its values."""
    counts: Counter[str] = Counter()
    for line in out.splitlines():
        if '"_aws"' not in line:
            continue
        blob = json.loads(line)
        for directive in blob["_aws"]["CloudWatchMetrics"]:
            for metric in directive["Metrics"]:
                value = blob[metric["Name"]]
                counts[metric["Name"]] += int(sum(value) if isinstance(value, list) else value)
    return counts


def failed_ids(response: dict[str, Any]) -> list[str]:
    return [item["itemIdentifier"] for item in response["batchItemFailures"]]


def received_records(
    resources: LocalResources, queue_url: str, bodies: Sequence[tuple[str, str | None]]
) -> list[dict[str, Any]]:
    """Send ``(body, group)`` pairs to a real queue and receive them as the SQS event source would."""
    sqs = boto3.client("sqs", endpoint_url=resources.endpoint_url)
    arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    for index, (body, group) in enumerate(bodies):
        if group:
            sqs.send_message(
                QueueUrl=queue_url, MessageBody=body, MessageGroupId=group, MessageDeduplicationId=str(index)
            )
        else:
            sqs.send_message(QueueUrl=queue_url, MessageBody=body)
    messages: list[MessageTypeDef] = []
    while len(messages) < len(bodies):
        batch = sqs.receive_message(
            QueueUrl=queue_url,
            MaxNumberOfMessages=10,
            MessageSystemAttributeNames=["All"],
            VisibilityTimeout=60,
        ).get("Messages", [])
        assert batch, "the queue gave back fewer messages than were sent"
        messages.extend(batch)
    records: list[dict[str, Any]] = []
    for message in messages:
        record = sqs_record(message["Body"], source_arn=arn, record_id=message["MessageId"])
        record["receiptHandle"] = message["ReceiptHandle"]
        record["attributes"] = {**record["attributes"], **message.get("Attributes", {})}
        records.append(record)
    return records


# -- a configuration that cannot work is refused ---------------------------------------------------------


def test_timeout_too_short_for_one_resend_is_refused_before_anything_is_claimed(
    invoke: Invoke,
    stub: CapillaryStub,
    outcome: ReadOutcome,
    function_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    log_lines: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("CAPILLARY_TIMEOUT_SECONDS", "10")  # one resend may take 122.6 s
    app.reset_container()

    with pytest.raises(ConfigurationRefusedError, match="FunctionTimeout"):
        invoke(sqs_event(failure(ID), failure(ID + 1)), timeout_seconds=30)

    assert stub.resend_calls == []
    assert outcome(ID) is None and outcome(ID + 1) is None, "nothing claimed, so nothing burns a lease"
    errors = [line for line in log_lines if '"level":"ERROR"' in line.replace(" ", "")]
    assert len(errors) == 1
    assert "CAPILLARY_TIMEOUT_SECONDS" in errors[0] and "FunctionTimeout" in errors[0]
    assert emitted_metrics(capsys.readouterr().out) == {MetricName.CONFIGURATION_REFUSED: 1}

    with pytest.raises(ConfigurationRefusedError):  # the container keeps refusing
        invoke(sqs_event(failure(ID)), timeout_seconds=30)
    assert stub.resend_calls == []


def test_timeout_with_room_for_one_resend_is_accepted(
    invoke: Invoke, stub: CapillaryStub, outcome: ReadOutcome, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CAPILLARY_TIMEOUT_SECONDS", "10")
    app.reset_container()

    response = invoke(sqs_event(failure(ID)), timeout_seconds=180)

    assert response == {"batchItemFailures": []}
    assert stored(outcome, ID)["status"] == "RESENT"


# -- poison when no dead-letter queue is named anywhere ---------------------------------------------------


def test_poison_without_dlq_or_redrive_policy_stays_in_sqs_and_the_batch_settles(
    function_env: dict[str, str],
    local_aws: LocalResources,
    stub: CapillaryStub,
    outcome: ReadOutcome,
    monkeypatch: pytest.MonkeyPatch,
    log_lines: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("DEAD_LETTER_QUEUE_URL")
    app.reset_container()
    sqs = boto3.client("sqs", endpoint_url=local_aws.endpoint_url)
    lonely = sqs.create_queue(QueueName="failures-without-redrive")["QueueUrl"]
    records = received_records(
        local_aws, lonely, [(failure(ID), None), ("not json", None), (failure(ID + 1), None)]
    )
    poison_id = next(r["messageId"] for r in records if r["body"] == "not json")

    response = app.lambda_handler({"Records": records}, cast("LambdaContext", LocalContext()))

    assert failed_ids(response) == [poison_id]
    assert Counter(call.message_id for call in stub.resend_calls) == Counter([ID, ID + 1])
    assert stored(outcome, ID)["status"] == stored(outcome, ID + 1)["status"] == "RESENT"
    reasons = [line for line in log_lines if "poison record set aside" in line]
    assert len(reasons) == 1 and "no usable redrive policy" in reasons[0] and "SQS keeps it" in reasons[0]
    assert emitted_metrics(capsys.readouterr().out)[MetricName.POISON_HANDED_BACK] == 1
    visible = sqs.get_queue_attributes(
        QueueUrl=lonely, AttributeNames=["ApproximateNumberOfMessagesNotVisible"]
    )
    # All three are still in flight: the function deletes nothing (the event source deletes the two it
    # acknowledged once the batch returns), so the poison is kept by SQS.
    assert int(visible["Attributes"]["ApproximateNumberOfMessagesNotVisible"]) == 3, (
        "kept by SQS, not deleted"
    )


# -- an unexpected error inside one record ---------------------------------------------------------------


def test_unexpected_errors_stay_with_their_record(
    invoke: Invoke,
    stub: CapillaryStub,
    outcome: ReadOutcome,
    dead_letters: DrainDeadLetters,
    log_lines: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Claim, call, record and poison copy each raise for one record; the rest of the batch is unaffected."""
    resender = app.container().resender
    claim, resend, record, keep = (
        resender._store.claim,
        resender._capillary.resend,
        resender._store.record,
        resender._queues.keep_poison,
    )

    def failing_claim(message_id: int, lease_seconds: float) -> ClaimResult:
        if message_id == ID:
            raise RuntimeError(SECRET_TEXT)
        return claim(message_id, lease_seconds)

    def failing_resend(message_id: int, *, deadline: float | None = None) -> ResendResult:
        if message_id == ID + 1:
            raise UnicodeEncodeError("latin-1", SECRET_TEXT, 0, 1, "header value")
        return resend(message_id, deadline=deadline)

    def failing_record(held: Claim, result: Outcome) -> None:
        if held.message_id == ID + 2:
            raise KeyError(SECRET_TEXT)
        record(held, result)

    def failing_keep(body: str, reason: str, **where: Any) -> None:
        if body == "first poison":
            raise RuntimeError(SECRET_TEXT)
        keep(body, reason, **where)

    monkeypatch.setattr(resender._store, "claim", failing_claim)
    monkeypatch.setattr(resender._capillary, "resend", failing_resend)
    monkeypatch.setattr(resender._store, "record", failing_record)
    monkeypatch.setattr(resender._queues, "keep_poison", failing_keep)
    records = [
        sqs_record(body, record_id=f"r{n}")
        for n, body in enumerate(
            [failure(ID), failure(ID + 1), failure(ID + 2), failure(ID + 3), "first poison", "second poison"]
        )
    ]

    response = invoke({"Records": records})

    # r0: not claimed, handed back. r1: may have been sent, UNCERTAIN. r2: resent but not recorded, handed
    # back until its claim expires into UNCERTAIN. r3: untouched. r4: poison not copied, handed back.
    assert failed_ids(response) == ["r0", "r2", "r4"]
    assert outcome(ID) is None
    assert stored(outcome, ID + 1)["status"] == "UNCERTAIN"
    assert stored(outcome, ID + 2)["status"] == "IN_PROGRESS"
    assert stored(outcome, ID + 3)["status"] == "RESENT"
    assert [m["Body"] for m in dead_letters()] == ["second poison"]
    assert Counter(call.message_id for call in stub.resend_calls) == Counter([ID + 2, ID + 3])
    assert all(SECRET_TEXT not in line for line in log_lines)
    assert sum("unexpected error while handling a record" in line for line in log_lines) == 3

    again = invoke({"Records": records[:3]})  # redelivered: nothing is sent twice

    assert stub.resends_performed(ID + 2) == 1 and stub.resends_performed(ID + 1) == 0
    assert failed_ids(again) == ["r0", "r2"]


# -- FIFO source queues ---------------------------------------------------------------------------------


#: ``fifo_batch``: ``(body, group)`` pairs in, the records handed to the handler and its response out.
FifoBatch = Callable[[Sequence[tuple[str, str | None]]], tuple[list[dict[str, Any]], dict[str, Any]]]


@pytest.fixture
def fifo_batch(function_env: dict[str, str], local_aws: LocalResources) -> FifoBatch:
    """Send ``(body, group)`` pairs to a FIFO queue and hand what it gives back to the handler as one batch."""
    sqs = boto3.client("sqs", endpoint_url=local_aws.endpoint_url)
    queue_url = sqs.create_queue(QueueName="failures.fifo", Attributes={"FifoQueue": "true"})["QueueUrl"]

    def handle(bodies: Sequence[tuple[str, str | None]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        records = received_records(local_aws, queue_url, bodies)
        return records, app.lambda_handler({"Records": records}, cast("LambdaContext", LocalContext()))

    return handle


def test_fifo_group_is_handed_back_from_its_first_failure_on(
    stub: CapillaryStub, outcome: ReadOutcome, fifo_batch: FifoBatch
) -> None:
    stub.script(ID, Behaviour.SERVER_ERROR)
    bodies = [
        (failure(ID), "a"),
        (failure(ID + 10), "b"),
        (failure(ID + 1), "a"),
        (failure(ID + 11), "b"),
        (failure(ID + 2), "a"),
    ]

    records, response = fifo_batch(bodies)

    by_id = {json.loads(r["body"])["messageId"]: r["messageId"] for r in records}
    assert sorted(failed_ids(response)) == sorted([by_id[ID], by_id[ID + 1], by_id[ID + 2]])
    assert stored(outcome, ID)["status"] == "RETRYING"
    assert outcome(ID + 1) is None and outcome(ID + 2) is None, "later records of the group are not claimed"
    assert stored(outcome, ID + 10)["status"] == stored(outcome, ID + 11)["status"] == "RESENT"
    assert Counter(call.message_id for call in stub.resend_calls) == Counter([ID, ID + 10, ID + 11])
    b_calls = [call.message_id for call in stub.resend_calls if call.message_id in (ID + 10, ID + 11)]
    assert b_calls == [ID + 10, ID + 11], "a group's records are sent in order"


def test_fifo_same_id_in_two_groups_is_resent_once(
    stub: CapillaryStub, outcome: ReadOutcome, fifo_batch: FifoBatch
) -> None:
    _, response = fifo_batch([(failure(ID), "a"), (failure(ID), "b")])

    assert stub.resends_performed(ID) == 1
    assert stored(outcome, ID)["status"] == "RESENT"
    # The groups run concurrently: whether the loser finds the claim still live (and is handed back to find
    # the outcome later) or already settled depends on which call finishes first.
    assert len(failed_ids(response)) <= 1


# -- a success whose resentMessageId names no new message --------------------------------------------------


class FixedAnswer(ThreadingHTTPServer):
    """Capillary answering every resend with one fixed success body."""

    def __init__(self, body: dict[str, Any]) -> None:
        super().__init__(("127.0.0.1", 0), _FixedHandler)
        self.body = json.dumps(body).encode()
        self.calls = 0
        self.lock = threading.Lock()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _FixedHandler(BaseHTTPRequestHandler):
    server: FixedAnswer

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        with self.server.lock:
            self.server.calls += 1
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.server.body)))
        self.end_headers()
        self.wfile.write(self.server.body)

    def log_message(self, *args: object) -> None:
        return


@pytest.fixture
def fixed_answer(
    local_aws: LocalResources, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[int], FixedAnswer]]:
    servers: list[FixedAnswer] = []

    def start(resent_id: int) -> FixedAnswer:
        server = FixedAnswer({"orgId": 100737, "undeliveredMessageId": ID, "resentMessageId": resent_id})
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        for name, value in local_aws.environment(server.base_url).items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("CAPILLARY_TIMEOUT_SECONDS", "2")
        app.reset_container()
        return server

    yield start
    app.reset_container()
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("resent_id", [ID, 0], ids=["same-as-original", "zero"])
def test_success_naming_no_new_message_is_uncertain_with_no_link(
    fixed_answer: Callable[[int], FixedAnswer], outcome: ReadOutcome, resent_id: int
) -> None:
    server = fixed_answer(resent_id)

    response = app.lambda_handler(sqs_event(failure(ID)), cast("LambdaContext", LocalContext()))

    assert response == {"batchItemFailures": []}
    item = stored(outcome, ID)
    assert item["status"] == "UNCERTAIN"
    assert f"resentMessageId {resent_id}" in item["errorMessage"]
    assert "resentMessageId" not in item and "resendOf" not in item
    assert outcome(0) is None
    app.lambda_handler(sqs_event(failure(ID)), cast("LambdaContext", LocalContext()))
    assert server.calls == 1
