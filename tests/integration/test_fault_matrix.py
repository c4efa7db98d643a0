"""The fault matrix: every outside fault ends with nothing lost and no second resend.

Real HTTP throughout: a moto server for AWS and the Capillary stub (or a hostile server of the test's own).
Each scenario sends one batch (four valid ids, an in-batch duplicate and five poison records) through the
real handler, then plays the part of SQS: records reported for retry come back with their receive count + 1
until none is left or the redrive policy would move them to the dead-letter queue (``MAX_RECEIVE_COUNT``).
The fault heals after the first delivery where it would in life. Time between deliveries is simulated:
before a redelivery, every claim whose lease would have run out during the visibility timeout the function
asked for is expired in the table (the test never sleeps). A crash is a failed invocation: the whole batch
comes back, to a new container.

AWS faults are injected with botocore ``before-send`` hooks on the function's own clients, so the SDK's
retries see them exactly as they would see a real throttle, timeout or outage; the same hooks refuse text
that DynamoDB and SQS refuse and moto does not (lone surrogates, control characters in SQS attributes).

Invariants checked after every round of every scenario:
- Capillary performed at most one resend per messageId;
- every record is either reported for retry (and its visibility change was requested) or acknowledged with
  a final status in the table (an in-batch duplicate: with its twin reported for retry);
- poison never reached Capillary, and was kept in the dead-letter queue with its reason;
- no log line carries a password, its md5, an auth header or an OAuth secret or token; every log line and
  every stored ``errorMessage`` stays short, even when Capillary answers with a huge message.
"""

from __future__ import annotations

import functools
import hashlib
import json
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import boto3
import botocore.retries.standard
import pytest
import requests
from aws_lambda_powertools.utilities.typing import LambdaContext
from botocore.awsrequest import AWSResponse
from botocore.compat import HTTPHeaders
from botocore.exceptions import EndpointConnectionError, ReadTimeoutError

from resender import app
from resender.aws import client_config
from resender.capillary import build_session
from resender.dynamodb_codec import item_to_plain
from resender.local.aws import MAX_RECEIVE_COUNT, LocalResources, MotoServer, provision
from resender.local.runner import DEMO_SECRET, LocalContext
from resender.local.stub import Behaviour, CapillaryStub, basic_auth_header
from resender.models import FINAL_STATUSES
from resender.observability import MetricName
from resender.processor import RECORD_ATTEMPTS
from resender.queues import POISON_REASON_ATTRIBUTE
from resender.settings import ConfigurationError, Settings
from tests.builders import QUEUE_ARN, failure, sqs_record
from tests.conftest import OAUTH_SECRET
from tests.tls import self_signed_tls

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_secretsmanager import SecretsManagerClient
    from mypy_boto3_sqs import SQSClient

pytestmark = pytest.mark.integration

IDS = (1746061653596, 1746061653597, 1746061653598, 1746061653599)
WARM_ID = 1746061650001  # used to warm a container (secret, token, keep-alive) before the fault
# Five kinds of poison (the fuzz tests cover the rest): not JSON, an id that is not a plain string of digits,
# ids that are not valid Unicode or carry a control character (the reason quoting them must still be
# accepted as an SQS attribute), and a valid id in a body over the 256 KiB limit.
POISON = (
    "not json {",
    json.dumps({"messageId": " 1746061659002"}),
    json.dumps({"messageId": "\ud800"}),
    json.dumps({"messageId": "\u0007"}),
    json.dumps({"messageId": 1746061659003, "padding": "x" * (256 * 1024)}),
)
MAX_LOG_LINE = 4096
MAX_TEXT_CHARS = 512
ROTATED_PASSWORD = "rotated-s3cret-pw"
HOSTILE_MESSAGE_CHARS = 60_000  # fits in the client's 64 KiB read, so it reaches the clipping code
# botocore's "max_attempts" counts retries: the SDK makes one attempt more than that per API call.
# (botocore sets each option of a Config as an attribute; its stubs declare them only as arguments.)
SDK_ATTEMPTS = client_config(1).retries["max_attempts"] + 1  # type: ignore[attr-defined]


def md5_hex(text: str) -> str:
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


class Crash(BaseException):
    """The Lambda process dies (out of memory, killed at its timeout): no code of the function runs on."""


# -- AWS faults: botocore before-send hooks -------------------------------------------------------------


@dataclass
class AwsCall:
    service: str
    operation: str
    kind: str
    message_id: int | None
    params: dict[str, Any]


def _kind(operation: str, params: dict[str, Any]) -> str:
    if operation == "UpdateItem":
        condition = params.get("ConditionExpression", "")
        if condition.startswith("attribute_not_exists"):
            return "claim"
        if condition == "claimToken = :token":
            return "settle"
        if ":stale" in condition:
            return "expire"
    if operation == "TransactWriteItems":
        return "settle"  # the outcome and the loop guard's link, in one request
    return {
        "GetSecretValue": "secret",
        "ChangeMessageVisibility": "visibility",
        "SendMessage": "dead-letter",
    }.get(operation, operation)


def _message_id(operation: str, params: dict[str, Any]) -> int | None:
    if operation == "TransactWriteItems":
        params = params["TransactItems"][0]["Update"]
    key = item_to_plain(params.get("Key", {})).get("messageId")
    return int(key) if key else None


class _Raw:
    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._body


def aws_error(code: str, status: int = 400) -> Callable[[Any], AWSResponse]:
    """An HTTP answer with an AWS error, parsed and retried by the SDK like a real one."""

    def answer(request: Any) -> AWSResponse:
        body = json.dumps({"__type": f"com.amazonaws#{code}", "message": f"injected {code}"}).encode()
        headers = HTTPHeaders()
        headers["x-amzn-ErrorType"] = f"{code}:"
        headers["Content-Type"] = "application/x-amz-json-1.0"
        return AWSResponse(request.url, status, headers, _Raw(body))

    return answer


def unreachable(request: Any) -> AWSResponse:
    raise EndpointConnectionError(endpoint_url=request.url)


def read_timeout(request: Any) -> AWSResponse:
    raise ReadTimeoutError(endpoint_url=request.url)


def crash(request: Any) -> AWSResponse:
    raise Crash("the function died between the claim and the outcome write")


@dataclass
class Fault:
    """Answers (or breaks) the HTTP requests of one kind, for some message ids, some number of times."""

    kind: str
    effect: Callable[[Any], AWSResponse]
    ids: frozenset[int] | None = None
    times_per_id: int | None = None  # None: until healed
    land_first: bool = False  # let the request reach AWS, then lose its answer
    active: bool = True
    hits: Counter[int | None] = field(default_factory=Counter)

    def applies(self, call: AwsCall) -> bool:
        if not self.active or call.kind != self.kind:
            return False
        if self.ids is not None and call.message_id not in self.ids:
            return False
        return self.times_per_id is None or self.hits[call.message_id] < self.times_per_id


def answer_lost(kind: str) -> Fault:
    """The first request of ``kind`` for each id reaches AWS, and its answer is lost on the way back."""
    return Fault(kind, read_timeout, times_per_id=1, land_first=True)


class AwsFaults:
    """Hooks on the function's clients: every request is logged, and faults decide what happens to it."""

    def __init__(self) -> None:
        self.faults: list[Fault] = []
        self.calls: list[AwsCall] = []
        self._lock = threading.Lock()
        self._hooked: object | None = None

    def add(self, fault: Fault) -> Fault:
        self.faults.append(fault)
        return fault

    def install(self) -> None:
        container = app.container()
        if self._hooked is container:
            return
        clients = container.clients
        for client in (clients.dynamodb, clients.secretsmanager, clients.sqs):
            # The stubs type every handler as returning None; a before-send handler may return the response.
            client.meta.events.register("before-send", self._make_hook(client))  # type: ignore[arg-type]
        self._hooked = container

    def of_kind(self, kind: str, message_id: int | None = None) -> list[AwsCall]:
        with self._lock:
            return [c for c in self.calls if c.kind == kind and message_id in (None, c.message_id)]

    def _make_hook(self, client: Any) -> Callable[..., AWSResponse | None]:
        def before_send(request: Any, event_name: str, **_: Any) -> AWSResponse | None:
            service, operation = event_name.split(".")[1:]
            params = json.loads(request.body) if request.body else {}
            call = AwsCall(
                service, operation, _kind(operation, params), _message_id(operation, params), params
            )
            with self._lock:
                self.calls.append(call)
                fault = next((f for f in self.faults if f.applies(call)), None)
                if fault is not None:
                    fault.hits[call.message_id] += 1
            if fault is None:
                # moto takes text AWS refuses (and may half-apply a write before failing on it): refuse it
                # the way DynamoDB and SQS do, so a scenario sees what production would.
                return _refused_as_aws_would(service, request, params)
            if fault.land_first:
                client._endpoint.http_session.send(request)  # it reaches DynamoDB; the answer is lost
            return fault.effect(request)

        return before_send


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _acceptable(text: str, service: str) -> bool:
    try:
        text.encode("utf-8")  # DynamoDB strings are UTF-8: a lone surrogate is refused
    except UnicodeEncodeError:
        return False
    # SQS takes #x9 | #xA | #xD | #x20 to #xD7FF | #xE000 to #xFFFD | #x10000 to #x10FFFF, nothing else.
    return service != "sqs" or all(c in "\t\n\r" or (c >= " " and c not in "\ufffe\uffff") for c in text)


def _refused_as_aws_would(service: str, request: Any, params: dict[str, Any]) -> AWSResponse | None:
    if all(_acceptable(text, service) for text in _strings(params)):
        return None
    code = "InvalidParameterValue" if service == "sqs" else "ValidationException"
    return aws_error(code)(request)


# -- servers of the test's own: a hostile Capillary, and one with an untrusted certificate -------------------


class OneAnswerServer:
    """Answers every POST with the same status, headers and body; counts the requests that got through."""

    def __init__(self, status: int, body: bytes, headers: dict[str, str], tls: ssl.SSLContext | None = None):
        owner = self
        self.requests = 0

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_POST(self) -> None:
                owner.requests += 1
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                self.send_response(status)
                for name, value in {**headers, "Content-Length": str(len(body))}.items():
                    self.send_header(name, value)
                self.end_headers()
                try:
                    self.wfile.write(body)
                except OSError:  # the client stops reading at its cap and hangs up
                    self.close_connection = True

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._server.handle_error = lambda *_: None  # type: ignore[method-assign]
        if tls is not None:
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
        scheme = "https" if tls else "http"
        self.base_url = f"{scheme}://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05})
        self._thread.daemon = True
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


# -- the harness ------------------------------------------------------------------------------------------


@dataclass
class Round:
    number: int
    records: list[dict[str, Any]]
    retried: set[str]
    crashed: bool
    delays: dict[str, int]  # receipt handle -> VisibilityTimeout the function asked for
    calls_before: int
    calls_after: int


@dataclass
class Matrix:
    stub: CapillaryStub
    aws: LocalResources
    monkeypatch: pytest.MonkeyPatch
    capsys: pytest.CaptureFixture[str]
    log_lines: list[str]
    tmp_path: Path
    faults: AwsFaults = field(default_factory=AwsFaults)
    rounds: list[Round] = field(default_factory=list)
    servers: list[OneAnswerServer] = field(default_factory=list)
    emitted: list[str] = field(default_factory=list)  # what the function printed: metrics (EMF)
    round1_errors: list[str] = field(default_factory=list)  # errorMessage of each valid id after round 1

    def __post_init__(self) -> None:
        self.dynamodb, self.secrets, self.sqs = _clients(self.aws.endpoint_url)

    # configuration ------------------------------------------------------------------------------------

    def configure(self, **environment: str) -> None:
        for name, value in environment.items():
            self.monkeypatch.setenv(name, value)
        app.reset_container()
        self.faults.install()

    def use_capillary(self, base_url: str) -> None:
        self.configure(CAPILLARY_BASE_URL=base_url)

    def put_secret(self, secret: dict[str, str] | str) -> None:
        text = secret if isinstance(secret, str) else json.dumps(secret)
        self.secrets.put_secret_value(SecretId=self.aws.secret_id, SecretString=text)

    def hostile(
        self, status: int, body: bytes, headers: dict[str, str] | None = None, tls: bool = False
    ) -> str:
        context = self_signed_tls(self.tmp_path).context if tls else None
        server = OneAnswerServer(status, body, headers or {"Content-Type": "application/json"}, context)
        self.servers.append(server)
        return server.base_url

    def item(self, message_id: int) -> dict[str, Any] | None:
        return self.items().get(message_id)

    def stored(self, message_id: int) -> dict[str, Any]:
        """The item of ``message_id``, which the scenario expects to exist."""
        item = self.item(message_id)
        assert item is not None, f"no item is stored for messageId {message_id}"
        return item

    def items(self) -> dict[Any, dict[str, Any]]:  # keyed by messageId, as decoded from the item
        typed = self.dynamodb.scan(TableName=self.aws.table_name, ConsistentRead=True)["Items"]
        plain = [item_to_plain(item) for item in typed]
        return {int(item["messageId"]): item for item in plain}

    # running --------------------------------------------------------------------------------------------

    def invoke(self, records: list[dict[str, Any]]) -> tuple[set[str], bool]:
        self.faults.install()
        try:
            response = app.lambda_handler({"Records": records}, cast("LambdaContext", LocalContext(30)))
        except Crash:
            # Lambda saw the invocation fail: the whole batch comes back. The dead container's pool is
            # drained so that what it was still doing cannot race the next delivery, then it is gone.
            app.container().resender._executor.shutdown(wait=True)
            app.reset_container()
            return {record["messageId"] for record in records}, True
        finally:
            self.emitted.extend(self.capsys.readouterr().out.splitlines())
        assert set(response) == {"batchItemFailures"}
        return {item["itemIdentifier"] for item in response["batchItemFailures"]}, False

    def warm_up(self) -> None:
        """One ordinary invocation, so the container holds the secret, a token and a keep-alive connection."""
        retried, _ = self.invoke([sqs_record(failure(WARM_ID))])
        assert retried == set()
        assert self.stub.resends_performed(WARM_ID) == 1

    def run(self, records: list[dict[str, Any]], heal: Callable[[], None] | None) -> list[dict[str, Any]]:
        """Deliver ``records`` until none is handed back; heal the fault after the first delivery.

        Returns what would still be handed back after ``MAX_RECEIVE_COUNT`` deliveries (SQS would then move
        it to the dead-letter queue).
        """
        pending = records
        for number in range(1, MAX_RECEIVE_COUNT + 1):
            calls_before = len(self.stub.resend_calls)
            visibility_before = len(self.faults.of_kind("visibility"))
            retried, crashed = self.invoke(pending)
            delays = {
                call.params["ReceiptHandle"]: int(call.params["VisibilityTimeout"])
                for call in self.faults.of_kind("visibility")[visibility_before:]
            }
            this = Round(number, pending, retried, crashed, delays, calls_before, len(self.stub.resend_calls))
            self.rounds.append(this)
            self.check_round(this)
            if number == 1:
                items = self.items()
                self.round1_errors = [str(items.get(i, {}).get("errorMessage", "")) for i in IDS]
                if heal is not None:
                    heal()
            pending = [_redelivered(r) for r in pending if r["messageId"] in retried]
            if not pending:
                break
            self.let_time_pass(this)
        return pending

    def let_time_pass(self, this: Round) -> None:
        """Expire every claim whose lease runs out before the record it belongs to comes back."""
        now = time.time()
        horizon: dict[int, int] = {}
        for record in this.records:
            if record["messageId"] not in this.retried:
                continue
            # A failed invocation is retried after the queue's visibility timeout, far beyond any lease.
            delay = 10**9 if this.crashed else this.delays.get(record["receiptHandle"], 0)
            message_id = _valid_id(record["body"])
            if message_id is not None:
                horizon[message_id] = max(horizon.get(message_id, 0), delay)
        for item in self.items().values():
            if item.get("status") != "IN_PROGRESS":
                continue
            comes_back_in = horizon.get(item["messageId"])
            if comes_back_in is not None and item["leaseExpiresAt"] <= now + comes_back_in:
                self.dynamodb.update_item(
                    TableName=self.aws.table_name,
                    Key=_key(item["messageId"]),
                    UpdateExpression="SET leaseExpiresAt = :past",
                    ExpressionAttributeValues={":past": {"N": str(int(now) - 1)}},
                )

    # invariants ---------------------------------------------------------------------------------------

    def check_round(self, this: Round) -> None:
        calls = self.stub.resend_calls
        valid = {*IDS, WARM_ID}
        assert {call.message_id for call in calls} <= valid, "poison reached Capillary"
        for valid_id in valid:
            assert self.stub.resends_performed(valid_id) <= 1, f"{valid_id} was resent twice"
        retried_ids = {_valid_id(r["body"]) for r in this.records if r["messageId"] in this.retried}
        items = self.items()
        for record in this.records:
            message_id = _valid_id(record["body"])
            if record["messageId"] in this.retried:
                if not this.crashed:
                    assert record["receiptHandle"] in this.delays, "a retried record got no backoff"
                    assert 0 <= this.delays[record["receiptHandle"]] <= 43_200
                continue
            assert record["receiptHandle"] not in this.delays, "an acknowledged record was delayed"
            if message_id is None:
                continue  # poison: checked in the dead-letter queue at the end
            item = items.get(message_id)
            settled = item is not None and item.get("status") in FINAL_STATUSES
            assert settled or message_id in retried_ids, (
                f"record of {message_id} acknowledged without a final status: {item}"
            )
        for item in items.values():
            message = str(item.get("errorMessage", ""))
            assert len(message) <= MAX_TEXT_CHARS
            message.encode("utf-8")  # DynamoDB strings are UTF-8: a lone surrogate cannot be stored

    def check_end(self) -> None:
        kept = _drain(self.sqs, self.aws.dead_letter_queue_url)
        bodies = Counter(message["Body"] for message in kept)
        for body in POISON:
            # At least once: a delivery that crashed comes back whole, and its poison is kept again.
            assert bodies[body] >= 1, f"poison not kept: {body[:60]}"
        for message in kept:
            assert message["MessageAttributes"][POISON_REASON_ATTRIBUTE]["StringValue"]
        self.check_secrets(kept)

    def check_secrets(self, kept: list[dict[str, Any]]) -> None:
        assert self.log_lines, "nothing was logged: the checks below would prove nothing"
        forbidden = [
            DEMO_SECRET["password"],
            md5_hex(DEMO_SECRET["password"]),
            ROTATED_PASSWORD,
            md5_hex(ROTATED_PASSWORD),
            basic_auth_header(DEMO_SECRET["username"], DEMO_SECRET["password"])[6:],
            basic_auth_header(DEMO_SECRET["username"], ROTATED_PASSWORD)[6:],
            "Basic c3Rv",
            "Authorization: Basic",
            md5_hex(DEMO_SECRET["password"]).upper(),
            OAUTH_SECRET["clientSecret"],
            *self.stub.issued_tokens,
        ]
        stored = json.dumps(list(self.items().values())) + json.dumps(kept)
        for line in self.log_lines:
            assert len(line) <= MAX_LOG_LINE, f"log line of {len(line)} characters: {line[:200]}"
            line.encode("utf-8")  # a line that is not valid UTF-8 never reaches CloudWatch
            for secret in forbidden:
                assert secret not in line, f"secret material in a log line: {line[:300]}"
        for secret in forbidden:
            assert secret not in stored, "secret material stored in the table or the dead-letter queue"

    # observations -------------------------------------------------------------------------------------

    def metric(self, name: str) -> float:
        total = 0.0
        for line in self.emitted:
            if line.startswith('{"_aws"'):
                total += sum(json.loads(line).get(name, []))
        return total

    def round(self, number: int) -> Round:
        return self.rounds[number - 1]

    def statuses(self) -> dict[int, str | None]:
        items = self.items()
        return {message_id: items.get(message_id, {}).get("status") for message_id in IDS}


def _key(message_id: int) -> dict[str, Any]:
    return {"messageId": {"N": str(message_id)}}


def _valid_id(body: str) -> int | None:
    for message_id in IDS:
        if body in (failure(message_id), failure(str(message_id))):
            return message_id
    return None


def _redelivered(record: dict[str, Any]) -> dict[str, Any]:
    count = int(record["attributes"]["ApproximateReceiveCount"]) + 1
    return sqs_record(record["body"], receive_count=count, record_id=record["messageId"])


def _drain(sqs: Any, queue_url: str) -> list[dict[str, Any]]:
    """Every message in the queue, which is left empty."""
    messages: list[dict[str, Any]] = []
    while batch := sqs.receive_message(
        QueueUrl=queue_url, MaxNumberOfMessages=10, MessageAttributeNames=["All"], VisibilityTimeout=600
    ).get("Messages", []):
        messages.extend(batch)
        for message in batch:
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
    return messages


def batch() -> list[dict[str, Any]]:
    """Poison first, so it is set aside before anything can go wrong with the valid records."""
    bodies = [*POISON, *(failure(message_id) for message_id in IDS), failure(str(IDS[0]))]
    return [sqs_record(body, source_arn=QUEUE_ARN) for body in bodies]


@functools.cache
def _clients(endpoint_url: str) -> tuple[DynamoDBClient, SecretsManagerClient, SQSClient]:
    """The test's own clients (no hooks on them), made once: creating a client costs a fifth of a second."""
    return (
        boto3.client("dynamodb", endpoint_url=endpoint_url),
        boto3.client("secretsmanager", endpoint_url=endpoint_url),
        boto3.client("sqs", endpoint_url=endpoint_url),
    )


@pytest.fixture(scope="module")
def stack(moto_server: MotoServer) -> LocalResources:
    """One emulated stack for the whole matrix (provisioning costs half a second); each scenario empties it."""
    requests.post(f"{moto_server.endpoint_url}/moto-api/reset", timeout=10).raise_for_status()
    return provision(moto_server.endpoint_url, DEMO_SECRET)


@pytest.fixture
def matrix(
    stack: LocalResources,
    stub: CapillaryStub,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    log_lines: list[str],
    tmp_path: Path,
) -> Iterator[Matrix]:
    dynamodb, secrets, sqs = _clients(stack.endpoint_url)
    for item in dynamodb.scan(TableName=stack.table_name, ProjectionExpression="messageId")["Items"]:
        dynamodb.delete_item(TableName=stack.table_name, Key=item)
    _drain(sqs, stack.dead_letter_queue_url)
    secrets.put_secret_value(SecretId=stack.secret_id, SecretString=json.dumps(DEMO_SECRET))
    environment = {**stack.environment(stub.base_url), "CAPILLARY_TIMEOUT_SECONDS": "2"}
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    # The SDK still retries what it would retry, without its random pauses.
    monkeypatch.setattr(botocore.retries.standard.ExponentialBackoff, "delay_amount", lambda self, ctx: 0)
    app.reset_container()
    harness = Matrix(stub, stack, monkeypatch, capsys, log_lines, tmp_path)
    yield harness
    app.reset_container()
    for server in harness.servers:
        server.stop()


# -- the scenarios ------------------------------------------------------------------------------------------

Setup = Callable[[Matrix], Callable[[], None] | None]  # injects the fault; returns how it heals, if it does
Expect = str | tuple[str, str, str, str]  # one final status for every valid id, or one for each of IDS


@dataclass(frozen=True)
class Scenario:
    setup: Setup
    final: Expect  # the final status of the valid ids
    resends: int | tuple[int, int, int, int] = 1  # resends Capillary performed per valid id, in all
    # After the first delivery every valid id was "retried" (handed back) or "settled" (acknowledged with a
    # final status); None: it depends (the fault's effect on the first delivery is checked otherwise).
    first: str | None = None
    round_one_calls: int | None = None  # resend requests Capillary received during the first delivery
    env: dict[str, str] = field(default_factory=dict)
    secret: dict[str, str] | None = None
    warm: bool = False
    check: Callable[[Matrix], None] | None = None


def script(*per_id: tuple[Behaviour, ...] | Behaviour) -> Setup:
    """Each valid id gets its own answers (one behaviour, or a tuple of them in order), then OK."""

    def setup(m: Matrix) -> None:
        for message_id, behaviours in zip(IDS, per_id, strict=True):
            m.stub.script(message_id, *(behaviours if isinstance(behaviours, tuple) else (behaviours,)))

    return setup


def aws_fault(*faults: Fault) -> Setup:
    def setup(m: Matrix) -> Callable[[], None]:
        for fault in faults:
            m.faults.add(fault)

        def heal() -> None:
            for fault in faults:
                fault.active = False

        return heal

    return setup


def persistent(setup: Setup) -> Setup:
    def never_heals(m: Matrix) -> None:
        setup(m)

    return never_heals


def then_heal(action: Callable[[Matrix], None], heal: Callable[[Matrix], None]) -> Setup:
    def setup(m: Matrix) -> Callable[[], None]:
        action(m)
        return lambda: heal(m)

    return setup


def with_stub(name: str, value: float, then: Setup | None = None) -> Setup:
    def setup(m: Matrix) -> Callable[[], None] | None:
        setattr(m.stub, name, value)
        return then(m) if then else None

    return setup


def capillary_at(make_url: Callable[[Matrix], str]) -> Setup:
    def setup(m: Matrix) -> Callable[[], None]:
        m.use_capillary(make_url(m))
        return lambda: m.use_capillary(m.stub.base_url)

    return setup


def capillary_down(m: Matrix) -> Callable[[], None]:
    m.stub.stop()  # also closes the keep-alive connection the warm-up left in the pool

    def heal() -> None:
        m.stub.start()

    return heal


def rotated_everywhere(m: Matrix) -> None:
    m.stub.set_basic_password(ROTATED_PASSWORD)
    m.put_secret(ROTATED_SECRET)


def deep_links(m: Matrix) -> None:
    """IDS[2] and IDS[3] are themselves resends, two links down a chain (MAX_RESEND_DEPTH is 2)."""
    for message_id in IDS[2:]:
        m.dynamodb.put_item(
            TableName=m.aws.table_name,
            Item={
                **_key(message_id),
                "resendOf": {"N": "1746061600000"},
                "resendDepth": {"N": "2"},
                "rootMessageId": {"N": "1746061500000"},
            },
        )


def huge_error_message(m: Matrix) -> str:
    body = json.dumps({"warnings": [], "errors": [{"code": 500, "message": "E" * HOSTILE_MESSAGE_CHARS}]})
    headers = {"Content-Type": "application/json", "X-Cap-Requestid": "R" * 8000}
    return m.hostile(500, body.encode(), headers)


def lone_surrogate_message(m: Matrix) -> str:
    # JSON allows the escape; the text it decodes to is not valid Unicode and cannot be encoded as UTF-8.
    body = b'{"warnings": [], "errors": [{"code": 500, "message": "broken \\ud800 text"}]}'
    return m.hostile(500, body)


def megabyte_answer(m: Matrix) -> str:
    return m.hostile(500, json.dumps({"errors": [{"code": 500, "message": "E" * 1_000_000}]}).encode())


def untrusted_certificate(m: Matrix) -> str:
    ok = {"orgId": 1, "undeliveredMessageId": IDS[0], "resentMessageId": 1748743199999, "warnings": []}
    return m.hostile(200, json.dumps(ok).encode(), tls=True)


# -- scenario checks ---------------------------------------------------------------------------------------


def checks(*each: Callable[[Matrix], None]) -> Callable[[Matrix], None]:
    def check(m: Matrix) -> None:
        for one in each:
            one(m)

    return check


def claim_attempted_nothing_recorded(m: Matrix) -> None:
    for message_id in IDS:
        assert m.faults.of_kind("claim", message_id), "the claim was never attempted"
    assert m.round1_errors == [""] * len(IDS), "an unclaimed record has an outcome"


def claims_are_not_left_behind(attempts: int) -> Callable[[Matrix], None]:
    """No UNCERTAIN from a claim nobody acted on: Capillary was called once per id, and it was the answer.

    ``attempts``: the claims each id took, one when the SDK's retry found our own claim, two when the claim
    that may have landed was released and the next delivery claimed the message again.
    """

    def check(m: Matrix) -> None:
        for message_id in IDS:
            assert m.stored(message_id)["attempts"] == attempts, m.item(message_id)

    return check


def logged(fragment: str) -> Callable[[Matrix], None]:
    """The first delivery's error says what is wrong, in the table and in the log."""

    def check(m: Matrix) -> None:
        assert any(fragment in line for line in m.log_lines), f"no log line names {fragment!r}"
        assert any(fragment in e for e in m.round1_errors), m.round1_errors

    return check


def round_one_errors(fragment: str) -> Callable[[Matrix], None]:
    def check(m: Matrix) -> None:
        assert any(fragment in e for e in m.round1_errors), m.round1_errors
        assert all(fragment in e or e == "circuit open" for e in m.round1_errors), m.round1_errors

    return check


def round_one_errors_of(ids: tuple[int, ...], fragment: str) -> Callable[[Matrix], None]:
    def check(m: Matrix) -> None:
        for message_id in ids:
            assert fragment in m.round1_errors[IDS.index(message_id)], m.round1_errors

    return check


def drips_cut_off(count: int) -> Callable[[Matrix], None]:
    def check(m: Matrix) -> None:
        assert m.stub.wait_for_drips(count)
        assert all(written < total for written, total in m.stub.drips), m.stub.drips

    return check


def echo_scrubbed(m: Matrix) -> None:
    """The echo reached the table (so the scrubbing, not the clipping, is what kept the secrets out)."""
    echoed = [e for e in m.round1_errors if e != "circuit open"]  # three 500s in a row open the circuit
    assert echoed, m.round1_errors
    assert all("cannot process request" in e and "[redacted]" in e for e in echoed), m.round1_errors


def retry_after_is_a_floor(m: Matrix) -> None:
    """The delivery that got the 429 asked SQS to wait at least the Retry-After (300 s > the 30 s base)."""
    calls = m.stub.resend_calls
    index = next(i for i, c in enumerate(calls) if c.behaviour is Behaviour.THROTTLED)
    when = next(r for r in m.rounds if r.calls_before <= index < r.calls_after)
    record = next(r for r in when.records if r["body"] == failure(calls[index].message_id))
    assert when.delays[record["receiptHandle"]] >= 300, when.delays


def circuit_opened(m: Matrix) -> None:
    assert m.round1_errors.count("circuit open") == 1, m.round1_errors
    assert m.metric(MetricName.CIRCUIT_OPEN) == 1


def saw_401(m: Matrix) -> None:
    assert any(call.behaviour is Behaviour.UNAUTHORIZED for call in m.stub.resend_calls)


def one_token_renewal(m: Matrix) -> None:
    assert m.stub.token_requests == 2, "one renewal for the whole batch, not one per thread"


def clipped(m: Matrix) -> None:
    assert all(0 < len(e) <= MAX_TEXT_CHARS for e in m.round1_errors), [len(e) for e in m.round1_errors]


def nothing_sent_over_untrusted_tls(m: Matrix) -> None:
    assert m.servers[0].requests == 0, "a request went out over a connection with an unverified certificate"


def links_written(m: Matrix) -> None:
    for call in m.stub.resend_calls:
        if call.message_id in IDS and call.resent_message_id is not None:
            link = m.item(call.resent_message_id)
            assert link is not None, "the loop guard's link is missing"
            assert (link["resendOf"], link["resendDepth"]) == (call.message_id, 1)


def one_request_for_outcome_and_link(m: Matrix) -> None:
    for message_id in IDS:
        writes = [c for c in m.faults.calls if c.service == "dynamodb" and c.message_id == message_id]
        assert [(c.kind, c.operation) for c in writes] == [
            ("claim", "UpdateItem"),
            ("settle", "TransactWriteItems"),
        ]
        assert len(writes[1].params["TransactItems"]) == 2
    links_written(m)


def written_on_second_attempt(m: Matrix) -> None:
    for message_id in IDS:  # the first write failed all its SDK attempts; the function wrote it again
        assert len(m.faults.of_kind("settle", message_id)) == SDK_ATTEMPTS + 1
    assert m.metric(MetricName.OUTCOME_WRITE_FAILED) == 0
    links_written(m)


def outcome_write_failed(m: Matrix) -> None:
    assert m.metric(MetricName.OUTCOME_WRITE_FAILED) == len(IDS)
    error_lines = [json.loads(line) for line in m.log_lines if '"level":"ERROR"' in line]
    at_error = {line.get("resentMessageId") for line in error_lines}
    resent = [c for c in m.stub.resend_calls if c.message_id in IDS]
    assert len(resent) == len(IDS)
    for call in resent:
        assert call.resent_message_id in at_error, "the new resentMessageId was not logged at ERROR"
        # The transaction failed as a whole: no link for the message the resend produced.
        assert call.resent_message_id is not None
        assert m.item(call.resent_message_id) is None
    for message_id in IDS:  # RECORD_ATTEMPTS writes, each with the SDK's own attempts
        assert len(m.faults.of_kind("settle", message_id)) == RECORD_ATTEMPTS * SDK_ATTEMPTS
    # Handed back for no less than the claim's lease (30 s of invocation + the 60 s margin), so the very next
    # delivery finds the claim expired and records UNCERTAIN: no delivery is wasted on a live claim.
    first = m.round(1)
    for record in first.records:
        if _valid_id(record["body"]) is not None and record["messageId"] in first.retried:
            assert first.delays[record["receiptHandle"]] >= 30 + 60, first.delays
    assert len(m.rounds) == 2


def crash_left_an_expired_claim(m: Matrix) -> None:
    assert m.round(1).crashed
    assert "claim expired" in m.stored(IDS[1])["errorMessage"]


def skipped_with_reason(m: Matrix) -> None:
    for message_id in IDS[2:]:
        assert "MAX_RESEND_DEPTH" in m.stored(message_id)["errorMessage"]


ROTATED_SECRET = {**DEMO_SECRET, "password": ROTATED_PASSWORD}
MALFORMED_SECRET = {"authType": "basic", "username": "store.server", "pasword": DEMO_SECRET["password"]}
TRANSIENT: dict[str, Any] = {"final": "RESENT", "first": "retried"}
SETTLED: dict[str, Any] = {"first": "settled"}
NO_CALL: dict[str, Any] = {**TRANSIENT, "round_one_calls": 0}
FAST_TIMEOUT = {"CAPILLARY_TIMEOUT_SECONDS": "0.5"}
THROTTLED = aws_error("ProvisionedThroughputExceededException")


def case(name: str, scenario: Scenario) -> Any:
    return pytest.param(scenario, id=name)


SCENARIOS = [
    case("no-fault", Scenario(lambda m: None, "RESENT", **SETTLED, check=one_request_for_outcome_and_link)),
    # DynamoDB while claiming: no call, the record comes back.
    case(
        "dynamodb-claim-throttled-5xx-unreachable-timeout",
        Scenario(
            aws_fault(
                Fault("claim", THROTTLED, ids=frozenset({IDS[0]})),
                Fault("claim", aws_error("InternalServerError", 500), ids=frozenset({IDS[1]})),
                Fault("claim", unreachable, ids=frozenset({IDS[2]})),
                Fault("claim", read_timeout, ids=frozenset({IDS[3]})),
            ),
            **NO_CALL,
            check=claim_attempted_nothing_recorded,
        ),
    ),
    case(
        # The claim lands but its answer is lost; the SDK's retry fails the condition on our own claim.
        "dynamodb-claim-answer-lost-sdk-retried",
        Scenario(aws_fault(answer_lost("claim")), "RESENT", **SETTLED, check=claims_are_not_left_behind(1)),
    ),
    case(
        # The same, and the SDK's retries time out too: the claim that may have landed must be released.
        "dynamodb-claim-answer-lost-sdk-gave-up",
        Scenario(
            aws_fault(answer_lost("claim"), Fault("claim", read_timeout, times_per_id=SDK_ATTEMPTS - 1)),
            **NO_CALL,
            check=claims_are_not_left_behind(attempts=2),
        ),
    ),
    # DynamoDB while recording, after Capillary accepted the resend.
    case(
        "dynamodb-record-fails-once",  # every SDK attempt of the first write, then nothing
        Scenario(
            aws_fault(Fault("settle", aws_error("InternalServerError", 500), times_per_id=SDK_ATTEMPTS)),
            "RESENT",
            **SETTLED,
            check=written_on_second_attempt,
        ),
    ),
    case(
        "dynamodb-record-answer-lost",
        Scenario(aws_fault(answer_lost("settle")), "RESENT", **SETTLED, check=links_written),
    ),
    case(
        "dynamodb-record-fails",
        Scenario(
            persistent(aws_fault(Fault("settle", THROTTLED))),
            "UNCERTAIN",
            first="retried",
            check=outcome_write_failed,
        ),
    ),
    case(
        "function-dies-between-claim-and-record",
        Scenario(
            persistent(aws_fault(Fault("settle", crash, ids=frozenset({IDS[1]}), times_per_id=1))),
            ("RESENT", "UNCERTAIN", "RESENT", "RESENT"),
            check=crash_left_an_expired_claim,
        ),
    ),
    # Secrets Manager: no call, the record comes back, the error says what is wrong.
    case(
        "secrets-manager-unreachable",
        Scenario(aws_fault(Fault("secret", unreachable)), **NO_CALL, check=logged("Secrets Manager")),
    ),
    case(
        "secrets-manager-throttled",
        Scenario(
            aws_fault(Fault("secret", aws_error("ThrottlingException"))),
            **NO_CALL,
            check=logged("ThrottlingException"),
        ),
    ),
    case(
        "secret-malformed",
        Scenario(
            then_heal(lambda m: m.put_secret(MALFORMED_SECRET), lambda m: m.put_secret(DEMO_SECRET)),
            **NO_CALL,
            check=logged("no 'password' field"),
        ),
    ),
    case(
        "secret-not-json",
        Scenario(
            then_heal(lambda m: m.put_secret(DEMO_SECRET["password"]), lambda m: m.put_secret(DEMO_SECRET)),
            **NO_CALL,
            check=logged("not a JSON object"),
        ),
    ),
    # Capillary, and whatever stands between it and us.
    case(
        "capillary-connection-refused",
        Scenario(capillary_down, **NO_CALL, warm=True, check=round_one_errors("connection failed")),
    ),
    case("capillary-slow", Scenario(with_stub("latency_seconds", 0.3), "RESENT", **SETTLED)),
    case(
        "capillary-slower-than-the-read-timeout",
        Scenario(with_stub("latency_seconds", 1.0), "UNCERTAIN", **SETTLED, env=FAST_TIMEOUT),
    ),
    case(
        "capillary-answer-lost-drop-hang-no-id",
        Scenario(
            with_stub(
                "hang_seconds",
                5,
                script(
                    Behaviour.DROP_AFTER_RESEND,
                    Behaviour.HANG_AFTER_RESEND,
                    Behaviour.NO_RESENT_ID,
                    Behaviour.OK,
                ),
            ),
            ("UNCERTAIN", "UNCERTAIN", "UNCERTAIN", "RESENT"),
            resends=(1, 1, 0, 1),
            **SETTLED,
            env=FAST_TIMEOUT,
        ),
    ),
    case(
        "capillary-500-502json-503/4001-500",  # Capillary's own error envelope: it says it was not done
        Scenario(
            script(
                Behaviour.SERVER_ERROR,
                Behaviour.BAD_GATEWAY,
                Behaviour.AUTH_UNAVAILABLE,
                Behaviour.SERVER_ERROR,
            ),
            **TRANSIENT,
        ),
    ),
    case(
        "capillary-429-461-521-503/4001",
        Scenario(
            with_stub(
                "retry_after_seconds",
                300,
                script(
                    Behaviour.THROTTLED,
                    Behaviour.SEARCH_BUSY,
                    Behaviour.CUSTOMER_BUSY,
                    Behaviour.AUTH_UNAVAILABLE,
                ),
            ),
            **TRANSIENT,
            check=retry_after_is_a_floor,
        ),
    ),
    case(
        "capillary-403/4000-4223in200-400",
        Scenario(
            script(
                (Behaviour.FORBIDDEN, Behaviour.FORBIDDEN),
                (Behaviour.FORBIDDEN, Behaviour.FORBIDDEN),
                Behaviour.NOT_FOUND,
                Behaviour.REJECTED,
            ),
            ("RESENT", "RESENT", "NOT_FOUND", "REJECTED"),
            resends=(1, 1, 0, 0),
        ),
    ),
    case(
        # A gateway that gave up waiting (504), a proxy's 502 page, a proxy's 200 page: the request may have
        # reached Capillary (and for the first two, here, it did not; the client cannot know): never retried.
        "capillary-504-html502-html200-then-502json",
        Scenario(
            script(Behaviour.GATEWAY_TIMEOUT, Behaviour.HTML_ERROR, Behaviour.HTML_OK, Behaviour.BAD_GATEWAY),
            ("UNCERTAIN", "UNCERTAIN", "UNCERTAIN", "RESENT"),
            resends=(0, 0, 0, 1),
            check=round_one_errors_of(IDS[:3], "may have resent"),
        ),
    ),
    case(
        "capillary-2xx-empty-null-list-over-the-cap",
        Scenario(
            script(Behaviour.EMPTY_OK, Behaviour.NULL_OK, Behaviour.LIST_OK, Behaviour.OVERSIZED_OK),
            "UNCERTAIN",
            **SETTLED,
        ),
    ),
    case(
        "capillary-names-a-resend-beside-401-or-503/4001",
        Scenario(
            script(
                Behaviour.RESENT_BUT_UNAUTHORIZED,
                Behaviour.RESENT_BUT_BUSY,
                Behaviour.RESENT_BUT_UNAUTHORIZED,
                Behaviour.RESENT_BUT_BUSY,
            ),
            "UNCERTAIN",
            **SETTLED,
            secret=OAUTH_SECRET,
            round_one_calls=len(IDS),  # no second attempt after the "auth failure" that named a resend
        ),
    ),
    case(
        "capillary-drips-its-answer",
        Scenario(
            with_stub(
                "drip_interval_seconds",
                0.05,
                script(Behaviour.DRIP_AFTER_RESEND, Behaviour.OK, Behaviour.DRIP_AFTER_RESEND, Behaviour.OK),
            ),
            ("UNCERTAIN", "RESENT", "UNCERTAIN", "RESENT"),
            **SETTLED,
            env=FAST_TIMEOUT,
            check=drips_cut_off(2),
        ),
    ),
    case(
        "capillary-echoes-the-basic-credentials",
        Scenario(script(*[Behaviour.ECHO_REQUEST] * len(IDS)), **TRANSIENT, check=echo_scrubbed),
    ),
    case(
        "capillary-echoes-the-oauth-token",
        Scenario(
            script(*[Behaviour.ECHO_REQUEST] * len(IDS)),
            **TRANSIENT,
            secret=OAUTH_SECRET,
            check=echo_scrubbed,
        ),
    ),
    case(
        "oauth-token-malformed",  # a token no header can carry: dropped, nothing sent, retried
        Scenario(
            then_heal(
                lambda m: setattr(m.stub, "token_flaw", "newline"),
                lambda m: setattr(m.stub, "token_flaw", None),
            ),
            **NO_CALL,
            secret=OAUTH_SECRET,
            check=logged("invalid character"),
        ),
    ),
    case(
        "capillary-huge-error-message",
        Scenario(capillary_at(huge_error_message), **NO_CALL, check=clipped),
    ),
    case(
        # Capillary's JSON may spell a lone surrogate (\\ud800): the outcome must still be storable and the
        # log line writable, or a retryable 500 would end UNCERTAIN.
        "capillary-error-message-not-valid-unicode",
        Scenario(capillary_at(lone_surrogate_message), **NO_CALL),
    ),
    case(
        "capillary-megabyte-answer",
        Scenario(
            capillary_at(megabyte_answer), **NO_CALL, check=checks(clipped, round_one_errors("not JSON"))
        ),
    ),
    case(
        "capillary-untrusted-certificate",
        Scenario(
            capillary_at(untrusted_certificate),
            **NO_CALL,
            check=checks(nothing_sent_over_untrusted_tls, round_one_errors("TLS")),
        ),
    ),
    case(
        "circuit-breaker",
        Scenario(
            lambda m: m.stub.fail_next(*[Behaviour.SERVER_ERROR] * 3),
            **TRANSIENT,
            round_one_calls=3,
            env={"RESEND_CONCURRENCY": "1"},
            check=circuit_opened,
        ),
    ),
    # Credentials.
    case(
        "401-after-rotation",  # one fresh read of the secret and one more attempt, in the same invocation
        Scenario(rotated_everywhere, "RESENT", **SETTLED, warm=True, check=saw_401),
    ),
    case(
        "401-rotated-at-capillary-before-the-secret",
        Scenario(
            then_heal(
                lambda m: m.stub.set_basic_password(ROTATED_PASSWORD), lambda m: m.put_secret(ROTATED_SECRET)
            ),
            **TRANSIENT,
            warm=True,
            check=saw_401,
        ),
    ),
    case(
        "498-oauth-token-expired",
        Scenario(
            lambda m: m.stub.expire_tokens(),
            "RESENT",
            **SETTLED,
            secret=OAUTH_SECRET,
            warm=True,
            check=one_token_renewal,
        ),
    ),
    # The loop guard.
    case(
        "resend-chain-too-deep",
        Scenario(
            deep_links,
            ("RESENT", "RESENT", "SKIPPED", "SKIPPED"),
            resends=(1, 1, 0, 0),
            **SETTLED,
            check=skipped_with_reason,
        ),
    ),
]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_fault_ends_with_nothing_lost_and_no_second_resend(matrix: Matrix, scenario: Scenario) -> None:
    if scenario.secret is not None:
        matrix.put_secret(scenario.secret)
    matrix.configure(**scenario.env)
    if scenario.warm:
        matrix.warm_up()
    heal = scenario.setup(matrix)

    left = matrix.run(batch(), heal)

    assert left == [], "records still handed back after maxReceiveCount deliveries"
    first = matrix.round(1)
    if scenario.first is not None:
        valid_first = [r for r in first.records if r["body"] in {failure(i) for i in IDS}]
        handed_back = [r["messageId"] in first.retried for r in valid_first]
        assert handed_back == [scenario.first == "retried"] * len(IDS), f"first delivery not {scenario.first}"
    if scenario.round_one_calls is not None:
        assert first.calls_after - first.calls_before == scenario.round_one_calls
    final = scenario.final if isinstance(scenario.final, tuple) else (scenario.final,) * len(IDS)
    assert matrix.statuses() == dict(zip(IDS, final, strict=True))
    resends = scenario.resends if isinstance(scenario.resends, tuple) else (scenario.resends,) * len(IDS)
    assert {i: matrix.stub.resends_performed(i) for i in IDS} == dict(zip(IDS, resends, strict=True))
    if scenario.check is not None:
        scenario.check(matrix)
    matrix.check_end()


# -- security ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://eu.api.capillarytech.com",
        "http://127.0.0.2:8080",
        "http://localhost.evil.example",
        "ftp://eu.api.capillarytech.com",
    ],
)
def test_base_url_is_https_only_except_loopback(matrix: Matrix, stub: CapillaryStub, url: str) -> None:
    matrix.monkeypatch.setenv("CAPILLARY_BASE_URL", url)
    app.reset_container()

    with pytest.raises(ConfigurationError):
        app.lambda_handler({"Records": [sqs_record(failure(IDS[0]))]}, cast("LambdaContext", LocalContext()))

    assert stub.resend_calls == []


@pytest.mark.parametrize("url", ["https://eu.api.capillarytech.com", "http://localhost:1", "http://[::1]:1"])
def test_https_and_loopback_base_urls_are_accepted(url: str) -> None:
    settings = Settings.from_env(
        {"OUTCOMES_TABLE": "t", "CAPILLARY_SECRET_ID": "s", "CAPILLARY_BASE_URL": url}
    )
    assert settings.capillary_base_url == url


def test_tls_verification_is_on_and_proxies_from_the_environment_are_ignored() -> None:
    session = build_session(4)

    assert session.verify is True
    assert session.trust_env is False
