"""The handler over real HTTP: moto server for AWS, the local stub for Capillary."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path
from typing import Any, cast

import pytest
from aws_lambda_powertools.utilities.typing import LambdaContext

from resender import app
from resender.dynamodb_codec import PlainValue
from resender.local.aws import LocalResources
from resender.local.runner import DEMO_SECRET, LocalContext, as_delivered_now
from resender.local.stub import Behaviour, CapillaryStub, basic_auth_header
from resender.observability import MetricName
from resender.queues import POISON_REASON_ATTRIBUTE
from tests.builders import eventbridge_event, failure, sns_envelope, sns_event, sqs_event, sqs_record
from tests.conftest import OAUTH_SECRET, Invoke, put_outcome
from tests.fixture_types import DrainDeadLetters, ReadOutcome, SetSecret, stored

EVENTS = Path(__file__).resolve().parents[2] / "events"
ID = 1746061653596


def failed_ids(response: dict[str, Any]) -> list[str]:
    return [item["itemIdentifier"] for item in response["batchItemFailures"]]


# -- event shapes --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(failure(ID), id="sqs-body"),
        pytest.param(failure(str(ID)), id="sqs-body-digit-string"),
        pytest.param(sns_envelope(failure(ID)), id="sns-envelope-in-sqs"),
        pytest.param(eventbridge_event({"messageId": ID, "channel": "EMAIL"}), id="eventbridge-in-sqs"),
    ],
)
def test_every_sqs_shape_resends_the_communication_id(
    invoke: Invoke, stub: CapillaryStub, outcome: ReadOutcome, body: str
) -> None:
    response = invoke(sqs_event(body))

    assert response == {"batchItemFailures": []}
    assert [call.message_id for call in stub.resend_calls] == [ID]
    assert stored(outcome, ID)["status"] == "RESENT"


def test_sns_envelope_id_is_never_taken_for_the_communication_id(
    invoke: Invoke, stub: CapillaryStub, dead_letters: DrainDeadLetters
) -> None:
    # The envelope's own MessageId looks numeric here; the inner failure has no id at all.
    body = sns_envelope(json.dumps({"channel": "SMS"}), sns_message_id="1746061653596")

    response = invoke(sqs_event(body))

    assert response == {"batchItemFailures": []}
    assert stub.resend_calls == []
    assert len(dead_letters()) == 1


def test_direct_sns_invocation_resends(invoke: Invoke, stub: CapillaryStub, outcome: ReadOutcome) -> None:
    invoke(sns_event(failure(ID)))

    assert stub.resends_performed(ID) == 1
    assert stored(outcome, ID)["status"] == "RESENT"


def test_direct_sns_retryable_failure_raises_for_lambda_async_retries(
    invoke: Invoke, stub: CapillaryStub, outcome: ReadOutcome
) -> None:
    stub.script(ID, Behaviour.SERVER_ERROR)

    with pytest.raises(app.RetryableFailureError):
        invoke(sns_event(failure(ID)))

    assert stored(outcome, ID)["status"] == "RETRYING"
    invoke(sns_event(failure(ID)))  # Lambda's retry
    assert stored(outcome, ID)["status"] == "RESENT"
    assert stub.resends_performed(ID) == 1


@pytest.mark.parametrize(
    "name",
    [
        "sqs-plain.json",
        "sqs-sns-envelope.json",
        "sqs-raw-sns.json",
        "sns-direct.json",
        "sqs-eventbridge.json",
    ],
)
def test_sample_events_each_cause_one_resend(invoke: Invoke, stub: CapillaryStub, name: str) -> None:
    event = as_delivered_now(json.loads((EVENTS / name).read_text()))

    response = invoke(event)

    assert response == {"batchItemFailures": []}
    assert stub.resends_performed() == 1


# -- classification reaches the table and the batch response ---------------------------------------


#: Capillary's answers by the status each must leave; only RETRYING ones are reported for retry.
ANSWERS_BY_STATUS = {
    "RESENT": [Behaviour.OK],
    "NOT_FOUND": [Behaviour.NOT_FOUND],
    "REJECTED": [Behaviour.REJECTED],
    "RETRYING": [
        Behaviour.SERVER_ERROR,
        Behaviour.BAD_GATEWAY,
        Behaviour.THROTTLED,
        Behaviour.SEARCH_BUSY,
        Behaviour.CUSTOMER_BUSY,
        Behaviour.AUTH_UNAVAILABLE,
    ],
    "UNCERTAIN": [
        Behaviour.HTML_ERROR,  # a proxy's 502 page: it may have forwarded the request
        Behaviour.GATEWAY_TIMEOUT,
        Behaviour.EMPTY_OK,
        Behaviour.RESENT_BUT_UNAUTHORIZED,
        Behaviour.HANG_AFTER_RESEND,
        Behaviour.DROP_AFTER_RESEND,
        Behaviour.NO_RESENT_ID,
    ],
}


@pytest.mark.parametrize(
    ("behaviour", "status"),
    [
        pytest.param(behaviour, status, id=f"{behaviour.value}-{status}-{status == 'RETRYING'}")
        for status, behaviours in ANSWERS_BY_STATUS.items()
        for behaviour in behaviours
    ],
)
def test_each_answer_is_recorded_and_only_retryable_ones_are_reported(
    invoke: Invoke, stub: CapillaryStub, outcome: ReadOutcome, behaviour: Behaviour, status: str
) -> None:
    stub.hang_seconds = 5
    stub.script(ID, behaviour)
    event = sqs_event(failure(ID))

    response = invoke(event)

    retried = status == "RETRYING"
    assert failed_ids(response) == ([event["Records"][0]["messageId"]] if retried else [])
    item = stored(outcome, ID)
    assert item["status"] == status
    assert "claimToken" not in item
    if status == "NOT_FOUND":
        assert item["errorCode"] == 4223
    if status == "RESENT":
        assert item["resentMessageId"] > 0
        assert item["orgId"] == 100737
        assert item["requestId"]
    if status == "RETRYING":
        assert item["errorMessage"]


# -- at most one resend ------------------------------------------------------------------------------


def test_duplicates_within_one_batch_resend_once(invoke: Invoke, stub: CapillaryStub) -> None:
    event = sqs_event(failure(ID), failure(str(ID)), failure(ID + 1), failure(ID))

    response = invoke(event)

    assert response == {"batchItemFailures": []}
    assert stub.resends_performed(ID) == 1
    assert stub.resends_performed(ID + 1) == 1


def test_duplicates_across_invocations_resend_once(
    invoke: Invoke, stub: CapillaryStub, outcome: ReadOutcome
) -> None:
    invoke(sqs_event(failure(ID)))
    replay = invoke(sqs_event(failure(ID)))

    assert replay == {"batchItemFailures": []}
    assert stub.resends_performed(ID) == 1
    assert stored(outcome, ID)["attempts"] == 1


def test_sixteen_concurrent_invocations_of_one_id_resend_once(
    function_env: dict[str, str], stub: CapillaryStub, outcome: ReadOutcome
) -> None:
    stub.latency_seconds = 0.05  # keeps the first call in flight while the others arrive
    barrier = threading.Barrier(16)
    responses: list[dict[str, Any]] = []
    errors: list[BaseException] = []

    def run() -> None:
        barrier.wait()
        try:
            responses.append(
                app.lambda_handler(sqs_event(failure(ID)), cast("LambdaContext", LocalContext()))
            )
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=run) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert len(responses) == 16
    assert stub.resends_performed(ID) == 1
    assert stored(outcome, ID)["status"] == "RESENT"


@pytest.mark.parametrize(
    ("behaviour", "handed_back", "status", "attempts", "error_kept", "calls"),
    [
        # Not done: claimed again on the redelivery and resent; the earlier failure does not linger.
        pytest.param(Behaviour.SERVER_ERROR, True, "RESENT", 2, False, 2, id="not-done-is-resent-once"),
        # May have been done: the redelivery finds the outcome final and sends nothing.
        pytest.param(
            Behaviour.DROP_AFTER_RESEND, False, "UNCERTAIN", 1, True, 1, id="lost-answer-never-resent"
        ),
    ],
)
def test_a_redelivery_resends_only_what_capillary_said_was_not_done(
    invoke: Invoke,
    stub: CapillaryStub,
    outcome: ReadOutcome,
    behaviour: Behaviour,
    handed_back: bool,
    status: str,
    attempts: int,
    error_kept: bool,
    calls: int,
) -> None:
    stub.script(ID, behaviour)
    event = sqs_event(failure(ID))

    first = invoke(event)
    redelivery = invoke(sqs_event(failure(ID), receive_count=2))

    assert failed_ids(first) == ([event["Records"][0]["messageId"]] if handed_back else [])
    assert redelivery == {"batchItemFailures": []}
    item = stored(outcome, ID)
    assert (item["status"], item["attempts"]) == (status, attempts)
    assert ("errorMessage" in item) is error_kept
    assert stub.resends_performed(ID) == 1
    assert len(stub.resend_calls) == calls


@pytest.mark.parametrize(
    ("holder", "lease_left", "receive_count", "handed_back", "status", "error"),
    [
        # A holder that vanished (crash, timeout) may have sent the request: never sent again.
        pytest.param(
            {"claimToken": "vanished-holder", "attempts": 1},
            -1,
            2,
            False,
            "UNCERTAIN",
            "claim expired",
            id="vanished-holder-becomes-uncertain",
        ),
        pytest.param(
            {"claimToken": "busy-holder"}, 600, 1, True, "IN_PROGRESS", None, id="live-holder-retried-later"
        ),
    ],
)
def test_a_claim_of_another_holder_is_never_called_over(
    invoke: Invoke,
    stub: CapillaryStub,
    outcome: ReadOutcome,
    local_aws: LocalResources,
    holder: dict[str, PlainValue],
    lease_left: int,
    receive_count: int,
    handed_back: bool,
    status: str,
    error: str | None,
) -> None:
    put_outcome(local_aws, ID, status="IN_PROGRESS", leaseExpiresAt=int(time.time()) + lease_left, **holder)
    event = sqs_event(failure(ID), receive_count=receive_count)

    response = invoke(event)

    assert failed_ids(response) == ([event["Records"][0]["messageId"]] if handed_back else [])
    assert stub.resend_calls == []
    item = stored(outcome, ID)
    assert item["status"] == status
    if error is None:
        assert "errorMessage" not in item
    else:
        assert error in item["errorMessage"]


# -- poison ----------------------------------------------------------------------------------------


def test_poison_goes_to_the_dead_letter_queue_with_its_reason_and_never_to_capillary(
    invoke: Invoke, stub: CapillaryStub, dead_letters: DrainDeadLetters
) -> None:
    bodies = ["not json", json.dumps({"messageId": True}), json.dumps({"messageId": -1}), ""]
    event = sqs_event(*bodies, failure(ID))

    response = invoke(event)

    assert response == {"batchItemFailures": []}
    assert [call.message_id for call in stub.resend_calls] == [ID]
    kept = dead_letters()
    assert sorted(message["Body"] for message in kept) == sorted([*bodies[:3], " "])
    reasons = [message["MessageAttributes"][POISON_REASON_ATTRIBUTE]["StringValue"] for message in kept]
    assert any("boolean" in reason for reason in reasons)
    assert any("not valid JSON" in reason for reason in reasons)
    assert any("empty" in reason for reason in reasons)


def test_poison_uses_the_source_queues_redrive_target_when_no_dlq_is_configured(
    invoke: Invoke,
    stub: CapillaryStub,
    dead_letters: DrainDeadLetters,
    monkeypatch: pytest.MonkeyPatch,
    local_aws: LocalResources,
) -> None:
    monkeypatch.delenv("DEAD_LETTER_QUEUE_URL")
    app.reset_container()

    response = invoke(sqs_event("{broken", source_arn=local_aws.queue_arn))

    assert response == {"batchItemFailures": []}
    assert len(dead_letters()) == 1
    assert stub.resend_calls == []


def test_poison_that_cannot_be_copied_is_handed_back_to_sqs_not_to_capillary(
    invoke: Invoke, stub: CapillaryStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DEAD_LETTER_QUEUE_URL", "http://127.0.0.1:1/123456789012/missing-queue")
    app.reset_container()
    event = sqs_event("{broken")

    response = invoke(event)

    assert failed_ids(response) == [event["Records"][0]["messageId"]]
    assert stub.resend_calls == []


# -- credentials -----------------------------------------------------------------------------------


def test_oauth_token_is_reused_across_invocations_and_renewed_after_expiry(
    invoke: Invoke, stub: CapillaryStub, set_secret: SetSecret
) -> None:
    set_secret(OAUTH_SECRET)
    for offset in range(3):
        invoke(sqs_event(failure(ID + offset)))
    assert stub.token_requests == 1

    stub.expire_tokens()
    response = invoke(sqs_event(failure(ID + 10)))

    assert response == {"batchItemFailures": []}
    assert stub.token_requests == 2
    assert stub.resends_performed() == 4


def test_password_rotation_recovers_without_losing_the_message(
    invoke: Invoke, stub: CapillaryStub, set_secret: SetSecret, outcome: ReadOutcome
) -> None:
    invoke(sqs_event(failure(ID)))  # warms the secret cache with the old password
    stub.set_basic_password("rotated-password")
    set_secret({**DEMO_SECRET, "password": "rotated-password"})

    response = invoke(sqs_event(failure(ID + 1)))

    assert response == {"batchItemFailures": []}
    assert stored(outcome, ID + 1)["status"] == "RESENT"


@pytest.mark.parametrize(
    ("setting", "value", "recorded"),
    [
        pytest.param("CAPILLARY_SECRET_ID", "no-such-secret", "RETRYING", id="unreadable-secret"),
        # Nowhere to claim, so nothing is recorded in the real table either.
        pytest.param("OUTCOMES_TABLE", "no-such-table", None, id="unreachable-table"),
    ],
)
def test_an_unusable_secret_or_table_retries_without_calling_capillary(
    invoke: Invoke,
    stub: CapillaryStub,
    monkeypatch: pytest.MonkeyPatch,
    outcome: ReadOutcome,
    setting: str,
    value: str,
    recorded: str | None,
) -> None:
    monkeypatch.setenv(setting, value)
    app.reset_container()
    event = sqs_event(failure(ID))

    response = invoke(event)

    assert failed_ids(response) == [event["Records"][0]["messageId"]]
    assert stub.resend_calls == []
    if recorded is None:
        assert outcome(ID) is None
    else:
        assert stored(outcome, ID)["status"] == recorded


def test_no_secret_material_reaches_the_logs(
    invoke: Invoke, stub: CapillaryStub, set_secret: SetSecret, log_lines: list[str]
) -> None:
    password = DEMO_SECRET["password"]
    md5 = hashlib.md5(password.encode(), usedforsecurity=False).hexdigest()
    forbidden = [password, md5, basic_auth_header(DEMO_SECRET["username"], password), "Authorization"]
    stub.script(ID, Behaviour.UNAUTHORIZED, Behaviour.UNAUTHORIZED)
    invoke(sqs_event(failure(ID), "not json"))
    set_secret(OAUTH_SECRET)
    app.reset_container()
    invoke(sqs_event(failure(ID + 1)))
    assert stub.issued_tokens, "no OAuth token was issued: the check below would prove nothing"
    forbidden += [OAUTH_SECRET["clientSecret"], "X-CAP-API-OAUTH-TOKEN", *stub.issued_tokens]

    text = "\n".join(log_lines)

    assert len(log_lines) >= 3, "the function logged almost nothing: the check below would prove nothing"
    for secret in forbidden:
        assert secret not in text


def test_every_line_about_a_record_names_its_message_id(
    invoke: Invoke, stub: CapillaryStub, log_lines: list[str]
) -> None:
    stub.script(ID, Behaviour.SERVER_ERROR)

    invoke(sqs_event(failure(ID)))

    record_lines = [json.loads(line) for line in log_lines if "resend outcome" in line]
    assert record_lines
    assert all(line["messageId"] == ID for line in record_lines)


# -- loop guard --------------------------------------------------------------------------------------


def test_resend_chain_stops_at_max_resend_depth(
    invoke: Invoke, stub: CapillaryStub, outcome: ReadOutcome
) -> None:
    invoke(sqs_event(failure(ID)))
    first_resend = stored(outcome, ID)["resentMessageId"]
    invoke(sqs_event(failure(first_resend)))
    second_resend = stored(outcome, first_resend)["resentMessageId"]

    response = invoke(sqs_event(failure(second_resend)))

    assert response == {"batchItemFailures": []}
    assert stub.resends_performed() == 2
    item = stored(outcome, second_resend)
    assert item["status"] == "SKIPPED"
    assert item["errorMessage"].startswith("policy: loopGuard: ")
    assert "MAX_RESEND_DEPTH" in item["errorMessage"]
    assert item["policy"] == "loopGuard"
    assert (item["resendOf"], item["rootMessageId"], item["resendDepth"]) == (first_resend, ID, 2)


# -- metrics -----------------------------------------------------------------------------------------


def test_one_metric_per_outcome_and_latency_are_emitted(
    invoke: Invoke, stub: CapillaryStub, capsys: pytest.CaptureFixture[str]
) -> None:
    stub.not_found_ids.add(ID + 1)
    invoke(sqs_event(failure(ID), failure(ID + 1), "poison"))

    blobs = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    emitted = {
        metric["Name"]
        for blob in blobs
        for directive in blob["_aws"]["CloudWatchMetrics"]
        for metric in directive["Metrics"]
    }
    assert {MetricName.RESENT, MetricName.NOT_FOUND, MetricName.POISON, MetricName.RESEND_LATENCY} <= emitted
    assert all(blob["service"] == "resender" for blob in blobs)


def test_unsupported_event_fails_loudly(invoke: Invoke) -> None:
    with pytest.raises(ValueError, match="Records"):
        invoke({"messageId": ID})


def test_record_ids_in_batch_item_failures_are_the_sqs_message_ids(
    invoke: Invoke, stub: CapillaryStub
) -> None:
    records = [sqs_record(failure(ID), record_id="sqs-a"), sqs_record(failure(ID + 1), record_id="sqs-b")]
    stub.script(ID + 1, Behaviour.SERVER_ERROR)

    response = invoke({"Records": records})

    assert failed_ids(response) == ["sqs-b"]
