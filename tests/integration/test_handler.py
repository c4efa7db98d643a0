"""The handler over real HTTP: moto server for AWS, the local stub for Capillary."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path
from typing import Any, cast

import boto3
import pytest
from aws_lambda_powertools.utilities.typing import LambdaContext

from resender import app
from resender.dynamodb_codec import to_item
from resender.local.aws import LocalResources
from resender.local.runner import DEMO_SECRET, LocalContext, as_delivered_now
from resender.local.stub import Behaviour, CapillaryStub, basic_auth_header
from resender.observability import MetricName
from resender.queues import POISON_REASON_ATTRIBUTE
from tests.builders import eventbridge_event, failure, sns_envelope, sns_event, sqs_event, sqs_record
from tests.conftest import OAUTH_SECRET, Invoke
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


@pytest.mark.parametrize(
    ("behaviour", "status", "retried"),
    [
        (Behaviour.OK, "RESENT", False),
        (Behaviour.NOT_FOUND, "NOT_FOUND", False),
        (Behaviour.REJECTED, "REJECTED", False),
        (Behaviour.SERVER_ERROR, "RETRYING", True),
        (Behaviour.BAD_GATEWAY, "RETRYING", True),
        (Behaviour.THROTTLED, "RETRYING", True),
        (Behaviour.SEARCH_BUSY, "RETRYING", True),
        (Behaviour.CUSTOMER_BUSY, "RETRYING", True),
        (Behaviour.AUTH_UNAVAILABLE, "RETRYING", True),
        (Behaviour.HTML_ERROR, "UNCERTAIN", False),  # a proxy's 502 page: it may have forwarded the request
        (Behaviour.GATEWAY_TIMEOUT, "UNCERTAIN", False),
        (Behaviour.EMPTY_OK, "UNCERTAIN", False),
        (Behaviour.RESENT_BUT_UNAUTHORIZED, "UNCERTAIN", False),
        (Behaviour.HANG_AFTER_RESEND, "UNCERTAIN", False),
        (Behaviour.DROP_AFTER_RESEND, "UNCERTAIN", False),
        (Behaviour.NO_RESENT_ID, "UNCERTAIN", False),
    ],
)
def test_each_answer_is_recorded_and_only_retryable_ones_are_reported(
    invoke: Invoke,
    stub: CapillaryStub,
    outcome: ReadOutcome,
    behaviour: Behaviour,
    status: str,
    retried: bool,
) -> None:
    stub.hang_seconds = 5
    stub.script(ID, behaviour)
    event = sqs_event(failure(ID))

    response = invoke(event)

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


def test_retrying_item_is_claimed_again_and_resent_once(
    invoke: Invoke, stub: CapillaryStub, outcome: ReadOutcome
) -> None:
    stub.script(ID, Behaviour.SERVER_ERROR)

    first = invoke(sqs_event(failure(ID)))
    second = invoke(sqs_event(failure(ID), receive_count=2))

    assert len(first["batchItemFailures"]) == 1
    assert second == {"batchItemFailures": []}
    item = stored(outcome, ID)
    assert (item["status"], item["attempts"]) == ("RESENT", 2)
    assert "errorMessage" not in item  # the earlier failure does not linger on a success
    assert stub.resends_performed(ID) == 1


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


def test_lost_answer_ends_uncertain_and_is_never_resent(
    invoke: Invoke, stub: CapillaryStub, outcome: ReadOutcome
) -> None:
    stub.script(ID, Behaviour.DROP_AFTER_RESEND)

    first = invoke(sqs_event(failure(ID)))
    redelivery = invoke(sqs_event(failure(ID), receive_count=2))

    assert first == redelivery == {"batchItemFailures": []}
    assert stored(outcome, ID)["status"] == "UNCERTAIN"
    assert stub.resends_performed(ID) == 1
    assert len(stub.resend_calls) == 1


def test_claim_left_by_a_vanished_holder_becomes_uncertain_without_a_call(
    invoke: Invoke, stub: CapillaryStub, outcome: ReadOutcome, local_aws: LocalResources
) -> None:
    dynamodb = boto3.client("dynamodb", endpoint_url=local_aws.endpoint_url)
    dynamodb.put_item(
        TableName=local_aws.table_name,
        Item=to_item(
            {
                "messageId": ID,
                "status": "IN_PROGRESS",
                "attempts": 1,
                "claimToken": "vanished-holder",
                "leaseExpiresAt": int(time.time()) - 1,
            }
        ),
    )

    response = invoke(sqs_event(failure(ID), receive_count=2))

    assert response == {"batchItemFailures": []}
    assert stub.resend_calls == []
    item = stored(outcome, ID)
    assert item["status"] == "UNCERTAIN"
    assert "claim expired" in item["errorMessage"]


def test_live_claim_of_another_holder_is_retried_later_not_resent(
    invoke: Invoke, stub: CapillaryStub, outcome: ReadOutcome, local_aws: LocalResources
) -> None:
    dynamodb = boto3.client("dynamodb", endpoint_url=local_aws.endpoint_url)
    dynamodb.put_item(
        TableName=local_aws.table_name,
        Item=to_item(
            {
                "messageId": ID,
                "status": "IN_PROGRESS",
                "claimToken": "busy-holder",
                "leaseExpiresAt": int(time.time()) + 600,
            }
        ),
    )

    response = invoke(sqs_event(failure(ID)))

    assert len(response["batchItemFailures"]) == 1
    assert stub.resend_calls == []
    assert stored(outcome, ID)["status"] == "IN_PROGRESS"


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


def test_unreadable_secret_retries_without_calling_capillary(
    invoke: Invoke, stub: CapillaryStub, monkeypatch: pytest.MonkeyPatch, outcome: ReadOutcome
) -> None:
    monkeypatch.setenv("CAPILLARY_SECRET_ID", "no-such-secret")
    app.reset_container()

    response = invoke(sqs_event(failure(ID)))

    assert len(response["batchItemFailures"]) == 1
    assert stub.resend_calls == []
    assert stored(outcome, ID)["status"] == "RETRYING"


def test_unreachable_table_retries_without_calling_capillary(
    invoke: Invoke, stub: CapillaryStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OUTCOMES_TABLE", "no-such-table")
    app.reset_container()

    response = invoke(sqs_event(failure(ID)))

    assert len(response["batchItemFailures"]) == 1
    assert stub.resend_calls == []


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
