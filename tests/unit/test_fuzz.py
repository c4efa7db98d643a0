"""Fuzzing the Lambda entry point: any SQS batch, whatever its bodies, gets a well-formed answer.

``resender.app.lambda_handler`` runs for real (event parsing, the processor, its pool, logging and metrics);
only the container behind it is made of fakes (store, Capillary, queues), so an example costs a fraction of
a millisecond of I/O and thousands of them run in seconds.

Properties, for every batch:
- the handler never raises;
- Capillary is called only for ids a reference reading of the body says are valid, at most once each;
- the answer is ``{"batchItemFailures": [{"itemIdentifier": <record id>}, ...]}``, ids unique and from the
  batch, and when nothing fails every valid id is resent once and nothing is handed back.

The default run draws a few hundred examples per property (derandomized, so CI is reproducible);
``make fuzz`` sets ``FUZZ_EXAMPLES`` (10,000) and prints how many examples ran.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import random
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final, cast

import pytest
import requests
import requests.adapters
from aws_lambda_powertools.utilities.typing import LambdaContext
from hypothesis import HealthCheck, Verbosity, example, given, settings
from hypothesis import strategies as st
from urllib3 import HTTPResponse
from urllib3.exceptions import ProtocolError

from resender import app, ports
from resender import queues as sqs_queues
from resender.capillary import TOKEN_PATH, CapillaryClient, build_session
from resender.credentials import BasicCredentials, CachedCredentials, OAuthCredentials
from resender.local.runner import LocalContext
from resender.models import ResendResult, Status, Verdict
from resender.processor import Resender
from resender.settings import Settings, StartupCheck
from resender.store import Claim, ClaimResult, ClaimState, Outcome, StoreError
from tests.builders import QUEUE_ARN, TOPIC_ARN, idle_aws_clients, sqs_record
from tests.clock import FakeClock

FUZZ_EXAMPLES: Final = int(os.environ.get("FUZZ_EXAMPLES", "0") or 0)
INT64_MAX: Final = 2**63 - 1
MAX_BODY_BYTES: Final = 256 * 1024
MAX_NESTING_DEPTH: Final = 64  # the documented limit (README: poison input)
BASE_FUZZ_ID: Final = 1746061653596

settings.register_profile(
    "resender-default",
    max_examples=300,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "resender-fuzz",
    max_examples=max(FUZZ_EXAMPLES, 1),
    deadline=None,
    derandomize=False,
    suppress_health_check=list(HealthCheck),
    verbosity=Verbosity.normal,
)
FUZZ = settings.get_profile("resender-fuzz" if FUZZ_EXAMPLES else "resender-default")
# A second property over the same bodies needs fewer examples in the default run; make fuzz runs it in full.
FUZZ_LIGHT = FUZZ if FUZZ_EXAMPLES else settings(FUZZ, max_examples=120)

examples_run: Counter[str] = Counter()


class _ExampleCount:
    """Adds the number of examples run to pytest's final summary (``make fuzz`` reports it)."""

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        total = sum(examples_run.values())
        detail = ", ".join(f"{name} {count}" for name, count in sorted(examples_run.items()))
        terminalreporter.write_line(f"fuzz: {total} examples run ({detail})")


@pytest.fixture(scope="module", autouse=True)
def _report_example_count(request: pytest.FixtureRequest) -> Iterator[None]:
    manager = request.config.pluginmanager
    if not manager.has_plugin("resender-fuzz-count"):
        manager.register(_ExampleCount(), "resender-fuzz-count")
    yield
    if FUZZ_EXAMPLES:
        short = {name: count for name, count in examples_run.items() if count < FUZZ_EXAMPLES}
        assert not short, f"fewer than FUZZ_EXAMPLES={FUZZ_EXAMPLES} examples ran: {short}"


# -- a reference reading of a body: what the design says is a valid id ---------------------------------


def _reject_constant(name: str) -> Any:
    raise ValueError(name)


def reference_depth(text: str) -> int:
    """Nesting depth by a character walk that tracks strings and escapes (independent of events.py)."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def expected_id(body: str) -> int | None:
    """The id a body carries per DESIGN.md, independently of resender.events; None if it is poison."""
    if len(body.encode("utf-8", errors="surrogatepass")) > MAX_BODY_BYTES:
        return None
    if reference_depth(body) > MAX_NESTING_DEPTH:
        return None
    try:
        document: Any = json.loads(body, parse_constant=_reject_constant)
        for _ in range(4):  # SNS envelopes and EventBridge events, peeled at most four deep
            if isinstance(document, dict) and document.get("Type") == "Notification":
                if "Message" not in document or "TopicArn" not in document:
                    break
                if not isinstance(document["Message"], str):
                    return None
                if reference_depth(document["Message"]) > MAX_NESTING_DEPTH:
                    return None
                document = json.loads(document["Message"], parse_constant=_reject_constant)
            elif isinstance(document, dict) and "detail" in document and "detail-type" in document:
                document = document["detail"]
            else:
                break
    except (ValueError, RecursionError):
        return None
    value = document.get("messageId") if isinstance(document, dict) else None
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        if not (1 <= len(value) <= 19 and all("0" <= c <= "9" for c in value)):
            return None
        value = int(value)
    if isinstance(value, int) and 0 < value <= INT64_MAX:
        return value
    return None


def _sqs_safe(text: str) -> bool:
    """SQS takes #x9 | #xA | #xD | #x20-#xD7FF | #xE000-#xFFFD | #x10000-#x10FFFF in an attribute value."""
    return all(
        c in "\t\n\r" or "\x20" <= c <= "\ud7ff" or "\ue000" <= c <= "\ufffd" or c >= "\U00010000"
        for c in text
    )


# -- fakes behind the real handler ---------------------------------------------------------------------


class Store:
    def __init__(self, claim_fails: frozenset[int], record_fails: frozenset[int]) -> None:
        self._claim_fails, self._record_fails = claim_fails, record_fails

    def claim(self, message_id: int, lease_seconds: float) -> ClaimResult:
        if message_id % 7 in self._claim_fails:
            raise StoreError("claim failed (ProvisionedThroughputExceededException)")
        return ClaimResult(
            ClaimState.CLAIMED, Claim(message_id, "token", 1, message_id % 4, None, message_id)
        )

    def record(self, claim: Claim, outcome: Outcome) -> None:
        if claim.message_id % 7 in self._record_fails:
            raise StoreError("recording the outcome failed (InternalServerError)")

    def settle_without_call(self, message_id: int, outcome: Outcome) -> ClaimResult:
        if message_id % 7 in self._record_fails:
            raise StoreError("recording the outcome failed (InternalServerError)")
        return ClaimResult(ClaimState.RECORDED, status=outcome.status)

    def defer(self, claim: Claim, reason: str, *, deferrals: int, next_attempt_at: float) -> None:
        if claim.message_id % 7 in self._record_fails:
            raise StoreError("releasing a held-back claim failed (InternalServerError)")


class Capillary:
    def __init__(self, answers: list[ResendResult]) -> None:
        self.calls: list[int] = []
        self._answers = answers
        self._lock = threading.Lock()

    worst_case_seconds = 4.0

    def resend(self, message_id: int, *, deadline: float | None = None) -> ResendResult:
        with self._lock:
            self.calls.append(message_id)
            if self._answers:
                return self._answers.pop(0)
        return ResendResult(Verdict.RESENT, resent_message_id=(message_id % INT64_MAX) + 1)


class Queues(sqs_queues.Queues):
    """Keeps poison in memory; as a subclass, each override is held to the real signature."""

    # No SQS client: every call of an unpaced batch is overridden.
    def __init__(self, delay_fails: bool) -> None:
        self.kept: list[str] = []
        self._delay_fails = delay_fails

    def keep_poison(self, body: str, reason: str, *, source_arn: str | None, source_message_id: str) -> None:
        self.kept.append(reason)

    def delay(self, source_arn: str, receipt_handle: str, seconds: int) -> None:
        assert seconds >= 0, seconds
        if self._delay_fails:
            raise sqs_queues.QueueError(
                "changing the visibility of a retried record failed (ReceiptHandleIsInvalid)"
            )


# The type checker fails here if a fake drifts from the protocol the processor depends on.
_store_conforms: ports.Store = Store(frozenset(), frozenset())
_capillary_conforms: ports.Capillary = Capillary([])

SETTINGS = Settings(
    outcomes_table="outcomes",
    capillary_secret_id="capillary/resender",
    capillary_base_url="https://eu.api.capillarytech.com",
    capillary_timeout_seconds=1.0,
)


@pytest.fixture(scope="module")
def pool() -> Iterator[ThreadPoolExecutor]:
    # The pauses between outcome-write attempts only move a fake clock: thousands of examples cannot wait
    # 0.3 s each.
    with pytest.MonkeyPatch.context() as patch, ThreadPoolExecutor(max_workers=4) as executor:
        patch.setattr("resender.processor.time", FakeClock())
        yield executor
    app.reset_container()


# -- strategies ------------------------------------------------------------------------------------------

INT64_EDGES = [
    0,
    1,
    -1,
    2**31 - 1,
    2**31,
    2**32,
    INT64_MAX - 1,
    INT64_MAX,
    2**63,
    2**64,
    -(2**63),
    -(2**63) - 1,
]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from(INT64_EDGES),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=10,
)
digit_strings = st.from_regex(r"[ \t+\-0]?[0-9]{1,22}[ \n]?", fullmatch=True)
message_id_values = st.one_of(
    st.integers(min_value=1, max_value=INT64_MAX),  # valid
    st.integers(min_value=1, max_value=INT64_MAX).map(str),  # valid
    st.sampled_from(INT64_EDGES),
    st.sampled_from(INT64_EDGES).map(str),
    digit_strings,
    st.floats(),
    st.booleans(),
    json_values,
)


def failure_body(message_id: Any, extra: dict[str, Any]) -> dict[str, Any]:
    return {**extra, "messageId": message_id, "channel": "SMS"}


failures = st.builds(
    failure_body, message_id_values, st.dictionaries(st.text(max_size=8), json_values, max_size=3)
)


def sns_wrap(payload: Any, envelope_id: str) -> dict[str, Any]:
    return {
        "Type": "Notification",
        "MessageId": envelope_id,
        "TopicArn": TOPIC_ARN,
        "Message": json.dumps(payload),
    }


def eventbridge_wrap(payload: Any) -> dict[str, Any]:
    return {"version": "0", "detail-type": "Communication Delivery Failed", "source": "x", "detail": payload}


@st.composite
def enveloped(draw: st.DrawFn) -> str:
    """A failure inside zero to six SNS envelopes and EventBridge events (only four are peeled)."""
    payload: Any = draw(st.one_of(failures, json_values))
    for kind in draw(st.lists(st.sampled_from(["sns", "eventbridge"]), max_size=6)):
        if kind == "sns":
            payload = sns_wrap(payload, draw(st.sampled_from(["1746061653596", str(uuid.UUID(int=0))])))
        else:
            payload = eventbridge_wrap(payload)
    return json.dumps(payload)


@st.composite
def near_the_size_limit(draw: st.DrawFn) -> str:
    """A valid failure padded to a few bytes either side of 256 KiB (multi-byte characters included)."""
    message_id = draw(st.integers(min_value=1, max_value=INT64_MAX))
    head = json.dumps({"messageId": message_id, "pad": ""})[:-2]
    filler = draw(st.sampled_from(["x", "é", "€", "😀"]))
    target = MAX_BODY_BYTES + draw(st.integers(min_value=-8, max_value=8))
    room = target - len(head.encode()) - 2
    return head + filler * max(0, room // len(filler.encode())) + '"}'


@st.composite
def deep_documents(draw: st.DrawFn) -> str:
    depth = draw(st.integers(min_value=1, max_value=100_000))
    kind = draw(st.sampled_from(["array", "object", "object-with-id"]))
    if kind == "array":
        return "[" * depth + "]" * depth
    inner = '{"a":' * depth + "1" + "}" * depth
    if kind == "object":
        return inner
    return '{"messageId": 1746061653596, "deep": ' + inner + "}"


@st.composite
def bad_escapes(draw: st.DrawFn) -> str:
    """JSON text with escapes that are not valid UTF-16 (lone surrogates) or not valid at all."""
    escape = draw(
        st.sampled_from(
            ["\\ud800", "\\udfff", "\\ud83d", "\\udc00\\ud800", "\\u12", "\\x41", "\\", "\\uZZZZ"]
        )
    )
    where = draw(st.sampled_from(["id", "other"]))
    if where == "id":
        return '{"messageId": "' + escape + '"}'
    return '{"messageId": 1746061653596, "reason": "' + escape + '"}'


raw_text = st.one_of(
    st.text(),
    st.binary().map(lambda raw: raw.decode("utf-8", errors="replace")),
    st.binary().map(lambda raw: raw.decode("latin-1")),
)
bodies = st.one_of(
    failures.map(json.dumps),
    enveloped(),
    json_values.map(json.dumps),
    raw_text,
    bad_escapes(),
    deep_documents(),
    near_the_size_limit(),
    st.integers(min_value=1, max_value=INT64_MAX).map(lambda i: json.dumps({"messageId": i})),
)
answers = st.one_of(
    st.builds(lambda i: ResendResult(Verdict.RESENT, resent_message_id=i), st.integers(1, INT64_MAX)),
    st.sampled_from(
        [
            ResendResult(Verdict.NOT_FOUND, error_code=4223),
            ResendResult(Verdict.REJECTED, error_code=400),
            ResendResult(Verdict.AUTH_FAILED, error_code=401),
            ResendResult(Verdict.TRANSIENT, error_code=500),
            ResendResult(Verdict.TRANSIENT, error_code=429, retry_after_seconds=43_200.0),
            ResendResult(Verdict.UNCERTAIN, error_message="no answer within the read timeout"),
            ResendResult(Verdict.RESENT, resent_message_id=None),
        ]
    ),
)
faults = st.fixed_dictionaries(
    {
        "claim_fails": st.frozensets(st.integers(0, 6), max_size=2),
        "record_fails": st.frozensets(st.integers(0, 6), max_size=2),
        "delay_fails": st.booleans(),
        "answers": st.lists(answers, max_size=10),
    }
)


def record_of(body: str, receive_count: int) -> dict[str, Any]:
    return sqs_record(body, receive_count=receive_count, source_arn=QUEUE_ARN)


def run_handler(
    pool: ThreadPoolExecutor, records: list[dict[str, Any]], plan: dict[str, Any] | None
) -> tuple[dict[str, Any], Capillary, Queues]:
    plan = plan or {
        "claim_fails": frozenset(),
        "record_fails": frozenset(),
        "delay_fails": False,
        "answers": [],
    }
    capillary, queues = Capillary(list(plan["answers"])), Queues(plan["delay_fails"])
    resender = Resender(
        SETTINGS,
        store=Store(plan["claim_fails"], plan["record_fails"]),
        capillary=capillary,
        queues=queues,
        executor=pool,
    )
    app.reset_container(app.Container(SETTINGS, idle_aws_clients(), resender, StartupCheck(SETTINGS)))
    response = app.lambda_handler({"Records": records}, cast("LambdaContext", LocalContext(30)))
    return response, capillary, queues


def assert_well_formed(response: Any, records: list[dict[str, Any]]) -> list[str]:
    assert isinstance(response, dict)
    assert list(response) == ["batchItemFailures"]
    failures_ = response["batchItemFailures"]
    assert isinstance(failures_, list)
    identifiers = []
    for item in failures_:
        assert isinstance(item, dict)
        assert list(item) == ["itemIdentifier"]
        assert isinstance(item["itemIdentifier"], str)
        identifiers.append(item["itemIdentifier"])
    assert len(identifiers) == len(set(identifiers)), "a record is reported twice"
    assert set(identifiers) <= {record["messageId"] for record in records}
    return identifiers


# -- properties ------------------------------------------------------------------------------------------


@FUZZ
@given(
    st.lists(st.tuples(bodies, st.integers(min_value=1, max_value=1000)), min_size=1, max_size=10),
    st.one_of(st.none(), faults),
)
@example([('{"messageId": 9223372036854775807}', 1), ('{"messageId": 9223372036854775808}', 1)], None)
@example([('{"messageId": "+1746061653596"}', 1), ('{"messageId": " 1746061653596"}', 2)], None)
@example([("[" * 50_000 + "]" * 50_000, 1), ('{"messageId": "\\ud800"}', 3)], None)
@example(
    [
        ('{"messageId": 1746061653596, "x": ' + "[" * 63 + "]" * 63 + "}", 1),
        ('{"messageId": 1746061653597, "x": ' + "[" * 64 + "]" * 64 + "}", 1),
        ('{"messageId": 1746061653598, "x": "' + "[" * 900 + '"}', 1),
        ('{"messageId": 1746061653599, "x": ' + "[" * 1000 + "]" * 1000 + "}", 1),
    ],
    None,
)
def test_handler_answers_any_sqs_batch(
    pool: ThreadPoolExecutor, batch: list[tuple[str, int]], plan: dict[str, Any] | None
) -> None:
    examples_run["handler"] += 1
    records = [record_of(body, count) for body, count in batch]
    valid = {i for i in (expected_id(body) for body, _ in batch) if i is not None}

    response, capillary, queues = run_handler(pool, records, plan)

    reported = assert_well_formed(response, records)
    assert set(capillary.calls) <= valid, "Capillary was called for an invalid id"
    assert len(capillary.calls) == len(set(capillary.calls)), "an id was sent twice in one batch"
    poison = [r for r, (body, _) in zip(records, batch, strict=True) if expected_id(body) is None]
    assert len(queues.kept) == len(poison)
    assert not {r["messageId"] for r in poison} & set(reported), "poison was handed back for a retry"
    for reason in queues.kept:  # it goes to an SQS message attribute and a log line
        assert _sqs_safe(reason), repr(reason)
        assert len(reason) <= 512
    if plan is None:  # nothing fails: every valid id is resent exactly once, nothing comes back
        assert sorted(capillary.calls) == sorted(i for i in valid if i % 4 < SETTINGS.max_resend_depth)
        assert reported == []


@FUZZ_LIGHT
@given(st.lists(bodies, min_size=1, max_size=3))
def test_every_record_of_a_valid_id_is_answered_for_exactly_once(
    pool: ThreadPoolExecutor, batch: list[str]
) -> None:
    """Duplicates of a body within a batch: one call, and the answer names each record at most once."""
    examples_run["duplicates"] += 1
    records = [record_of(body, 1) for body in batch * 3]

    response, capillary, _ = run_handler(pool, records, None)

    assert_well_formed(response, records)
    expected = {i for i in (expected_id(body) for body in batch) if i is not None}
    assert Counter(capillary.calls) == Counter(i for i in expected if i % 4 < SETTINGS.max_resend_depth)


def backoff_resender(pool: ThreadPoolExecutor, base: int, cap: int, rng: random.Random) -> Resender:
    settings_ = dataclasses.replace(SETTINGS, retry_base_seconds=base, retry_cap_seconds=cap)
    store, capillary, queues = Store(frozenset(), frozenset()), Capillary([]), Queues(delay_fails=False)
    return Resender(settings_, store=store, capillary=capillary, queues=queues, executor=pool, rng=rng)


@FUZZ
@given(
    st.integers(min_value=1, max_value=10**9),
    st.one_of(st.integers(min_value=0, max_value=43_200), st.floats(min_value=0, max_value=43_200)),
    st.integers(min_value=0, max_value=3600),
    st.integers(min_value=0, max_value=43_200),
    st.randoms(use_true_random=False),
)
def test_backoff_stays_between_the_floor_and_the_cap(
    pool: ThreadPoolExecutor, receive_count: int, floor: float, base: int, cap: int, rng: random.Random
) -> None:
    """A Retry-After (or a live lease) is a floor even above the cap; otherwise full jitter up to the cap."""
    examples_run["backoff"] += 1

    delay = backoff_resender(pool, base, cap, rng).backoff_seconds(receive_count, floor)

    assert isinstance(delay, int)
    assert floor <= delay <= max(math.ceil(floor), min(cap, base * 2 ** min(receive_count - 1, 20)))


def test_backoff_is_never_below_a_fractional_floor(pool: ThreadPoolExecutor) -> None:
    resender = backoff_resender(pool, 30, 900, random.Random(0))

    assert resender.backoff_seconds(1, 300.0004) == 301  # rounded up: a ceiling of 30 s cannot reach it


# -- found by fuzzing (fixed in src): text from a hostile body that is not valid Unicode, or that SQS refuses --


@pytest.mark.parametrize(
    "escape",
    [
        "\\ud800",
        "\\udc00x",
        "\\ud83d",
        "\\u0000",  # SQS refuses control characters in a message attribute
        "\\u001b[2J",
        "\\uffff",
    ],
)
def test_poison_reason_and_log_lines_are_valid_text_whatever_the_body(
    pool: ThreadPoolExecutor, log_lines: list[str], escape: str
) -> None:
    body = '{"messageId": "' + escape + '"}'

    response, capillary, queues = run_handler(pool, [record_of(body, 1)], None)

    assert response == {"batchItemFailures": []}
    assert capillary.calls == []
    [reason] = queues.kept
    assert _sqs_safe(reason), repr(reason)
    assert log_lines
    for line in log_lines:
        line.encode("utf-8")  # a line that is not valid UTF-8 never reaches CloudWatch


# -- Capillary's answers, fuzzed through the real handler and the real client ---------------------------------
#
# The client runs for real (request building, the capped, deadline-bounded read, the classifier, the scrubber);
# only the socket is replaced by a requests transport adapter that answers from a drawn script and keeps count
# of what "Capillary" did. An answer drawn as *performed* (Capillary resent the message) is one that may follow
# a resend: a clean success, anything naming a resentMessageId, a 2xx whose body is not Capillary's error
# envelope, a gateway that gave up waiting, a 502 page, a connection dropped after the request went out. An
# answer not performed may be anything at all, echoes of the request's credentials included. SQS is played
# for a few rounds: what the handler hands back comes again, against the same outcomes.

FUZZ_PASSWORD: Final = "fuzz-pass-w0rd"
FUZZ_SECRETS: Final[dict[str, BasicCredentials | OAuthCredentials]] = {
    "basic": BasicCredentials("store.fuzz", FUZZ_PASSWORD),
    "oauth": OAuthCredentials("fuzz-client-key", "fuzz-client-s3cret"),
}
ROUNDS: Final = 4


@dataclasses.dataclass(frozen=True)
class Answer:
    status: int = 200
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    performed: bool = False
    echo: bool = False  # the request's headers and body are quoted in the error message
    drop: bool = False  # the connection drops after the request was written


class ScriptedCapillary(requests.adapters.BaseAdapter):
    """A transport that answers from ``script`` (then a clean success) and counts what Capillary did."""

    def __init__(self, script: list[Answer]) -> None:
        super().__init__()
        self.script = list(script)
        self.performed: dict[int, list[bool]] = {}
        self.tokens: list[str] = []
        self._lock = threading.Lock()
        self._http = requests.adapters.HTTPAdapter()

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        body = request.body if isinstance(request.body, bytes) else str(request.body or "").encode()
        if str(request.url).endswith(TOKEN_PATH):
            token = f"fuzz-token-{uuid.uuid4().hex}"
            with self._lock:
                self.tokens.append(token)
            payload = {"data": {"accessToken": token, "ttlSeconds": 300}, "errors": None}
            return self._response(request, Answer(body=json.dumps(payload).encode()))
        message_id = json.loads(body)["messageId"]
        with self._lock:
            answer = self.script.pop(0) if self.script else None
            if answer is None:
                answer = Answer(body=json.dumps({"resentMessageId": message_id + 1}).encode(), performed=True)
            self.performed.setdefault(message_id, []).append(answer.performed)
        if answer.drop:
            raise requests.ConnectionError(ProtocolError("Connection aborted.", ConnectionResetError(104)))
        if answer.echo:
            quoted = f"cannot process {dict(request.headers)!r} {body!r}"
            echoed = {"errors": [{"code": 500, "message": quoted}]}
            answer = dataclasses.replace(
                answer, body=json.dumps(echoed).encode(), headers=(("X-Cap-Requestid", quoted),)
            )
        return self._response(request, answer)

    def _response(self, request: requests.PreparedRequest, answer: Answer) -> requests.Response:
        raw = HTTPResponse(
            body=io.BytesIO(answer.body),
            headers=dict(answer.headers),
            status=answer.status,
            preload_content=False,
            decode_content=True,
        )
        return self._http.build_response(request, raw)

    def close(self) -> None:
        return


class MemoryStore:
    """Claims as DynamoDB's conditional write decides them: free or RETRYING is claimed, anything else is not."""

    def __init__(self) -> None:
        self.status: dict[int, Status] = {}
        self._lock = threading.Lock()

    def claim(self, message_id: int, lease_seconds: float) -> ClaimResult:
        with self._lock:
            status = self.status.get(message_id)
            if status is None or status is Status.RETRYING:
                self.status[message_id] = Status.IN_PROGRESS
                return ClaimResult(ClaimState.CLAIMED, Claim(message_id, "token", 1, 0, None, message_id))
            if status is Status.IN_PROGRESS:
                return ClaimResult(ClaimState.IN_FLIGHT)
            return ClaimResult(ClaimState.SETTLED, status=status)

    def record(self, claim: Claim, outcome: Outcome) -> None:
        with self._lock:
            self.status[claim.message_id] = outcome.status

    def settle_without_call(self, message_id: int, outcome: Outcome) -> ClaimResult:
        with self._lock:
            status = self.status.get(message_id)
            if status is None or status is Status.RETRYING:
                self.status[message_id] = outcome.status
                return ClaimResult(ClaimState.RECORDED, status=outcome.status)
            if status is Status.IN_PROGRESS:
                return ClaimResult(ClaimState.IN_FLIGHT)
            return ClaimResult(ClaimState.SETTLED, status=status)

    def defer(self, claim: Claim, reason: str, *, deferrals: int, next_attempt_at: float) -> None:
        with self._lock:
            self.status[claim.message_id] = Status.RETRYING


class SingleCredentials:
    def __init__(self, credentials: BasicCredentials | OAuthCredentials) -> None:
        self._cached = CachedCredentials(credentials, 1)

    def get(self) -> CachedCredentials:
        return self._cached

    def invalidate(self, generation: int) -> None:
        return


ENVELOPE_CODES = [400, 401, 403, 429, 461, 498, 500, 502, 503, 504, 521, 4000, 4001, 4223, 9999]
answer_statuses = st.one_of(
    st.sampled_from([200, 201, 204, 400, 401, 403, 429, 461, 498, 500, 502, 503, 504, 521, 524, 599]),
    st.integers(min_value=100, max_value=599),
)
answer_headers = st.lists(
    st.tuples(
        st.sampled_from(["X-Cap-Requestid", "Retry-After", "Content-Type", "Content-Encoding"]),
        st.one_of(st.sampled_from(["gzip", "3", "nan", "-1", "text/html"]), st.text(max_size=20)).map(
            lambda v: (
                v.encode("latin-1", errors="ignore").decode("latin-1").replace("\r", "").replace("\n", "")
            )
        ),
    ),
    max_size=3,
    unique_by=lambda pair: pair[0],
)
error_envelopes = st.lists(
    st.fixed_dictionaries(
        {"code": st.one_of(st.sampled_from(ENVELOPE_CODES), json_values), "message": st.text(max_size=30)}
    ),
    min_size=1,
    max_size=2,
).map(lambda errors: {"warnings": [], "errors": errors})
not_an_envelope = st.one_of(
    st.binary(max_size=40),
    st.sampled_from([b"", b"null", b"[]", b"<html>502 Bad Gateway</html>", b"x" * (70 * 1024)]),
    json_values.filter(lambda v: not isinstance(v, dict)).map(lambda v: json.dumps(v).encode()),
    st.dictionaries(st.sampled_from(["orgId", "warnings", "data"]), json_values, max_size=2).map(
        lambda d: json.dumps(d).encode()
    ),
)
any_body = st.one_of(not_an_envelope, error_envelopes.map(lambda d: json.dumps(d).encode()))
naming_a_resend = st.builds(
    lambda status, errors, resent: json.dumps({**errors, "resentMessageId": resent}).encode(),
    answer_statuses,
    st.one_of(st.just({}), error_envelopes),
    st.one_of(
        st.integers(min_value=-5, max_value=INT64_MAX + 5), json_values.filter(lambda v: v is not None)
    ),
)
after_a_resend = st.one_of(
    st.builds(Answer, answer_statuses, answer_headers, naming_a_resend, st.just(True)),
    st.builds(
        Answer, st.integers(min_value=200, max_value=299), answer_headers, not_an_envelope, st.just(True)
    ),
    st.builds(Answer, st.sampled_from([504, 524, 598, 599]), answer_headers, any_body, st.just(True)),
    st.builds(Answer, st.just(502), answer_headers, not_an_envelope, st.just(True)),
    st.just(Answer(performed=True, drop=True)),
)
not_resent = st.builds(
    Answer,
    answer_statuses,
    answer_headers,
    any_body,
    st.just(False),
    echo=st.booleans(),
    drop=st.booleans(),
)
answer_scripts = st.lists(st.one_of(after_a_resend, not_resent), max_size=12)


def forbidden_texts(kind: str, adapter: ScriptedCapillary) -> list[str]:
    credentials = FUZZ_SECRETS[kind]
    return [*credentials.secret_values(), *adapter.tokens]


@settings(FUZZ_LIGHT, suppress_health_check=list(HealthCheck))
@given(
    st.lists(st.integers(min_value=1, max_value=30), min_size=1, max_size=10),
    answer_scripts,
    st.sampled_from(sorted(FUZZ_SECRETS)),
)
@example([1, 2], [Answer(500, echo=True), Answer(401, echo=True)], "basic")
@example([1, 2], [Answer(200, echo=True), Answer(498, echo=True)], "oauth")
@example(
    [1], [Answer(401, body=b'{"resentMessageId": 7, "errors": [{"code": 401}]}', performed=True)], "oauth"
)
@example([1], [Answer(200, body=b"null", performed=True)], "basic")
@example([1], [Answer(504, body=b"", performed=True)], "basic")
def test_any_answers_from_capillary_never_resend_twice_never_raise_never_log_a_credential(
    pool: ThreadPoolExecutor, log_lines: list[str], ids: list[int], script: list[Answer], kind: str
) -> None:
    examples_run["answers"] += 1
    adapter = ScriptedCapillary(script)
    session = build_session(4)
    session.mount("https://", adapter)
    client = CapillaryClient(
        SETTINGS.capillary_base_url,
        SingleCredentials(FUZZ_SECRETS[kind]),
        timeout_seconds=SETTINGS.capillary_timeout_seconds,
        session=session,
    )
    store = MemoryStore()
    resender = Resender(
        SETTINGS,
        store=store,
        capillary=client,
        queues=Queues(delay_fails=False),
        executor=pool,
    )
    app.reset_container(app.Container(SETTINGS, idle_aws_clients(), resender, StartupCheck(SETTINGS)))
    lines_before = len(log_lines)
    pending = [record_of(json.dumps({"messageId": BASE_FUZZ_ID + i}), 1) for i in ids]

    for round_number in range(1, ROUNDS + 1):
        response = app.lambda_handler(
            {"Records": pending}, cast("LambdaContext", LocalContext(30))
        )  # never raises
        retried = set(assert_well_formed(response, pending))
        pending = [
            record_of(record["body"], round_number + 1)
            for record in pending
            if record["messageId"] in retried
        ]
        if not pending:
            break

    for message_id, performed in adapter.performed.items():
        assert performed.count(True) <= 1, f"{message_id} was resent twice: {performed}"
        if True in performed:
            assert performed.index(True) == len(performed) - 1, f"{message_id} called after a resend"
    for message_id in adapter.performed:
        assert store.status[message_id] is not Status.IN_PROGRESS
    forbidden = forbidden_texts(kind, adapter)
    for line in log_lines[lines_before:]:
        for secret in forbidden:
            assert secret.lower() not in line.lower(), f"a credential in a log line: {line[:200]}"
