"""The resend policy through the real handler: refused records are SKIPPED, acknowledged and never sent."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import pytest

from resender import app
from resender.events import MessageIdParser, Notice, parse_event
from resender.local.runner import LOCAL_POLICY_ENV, as_delivered_now
from resender.local.stub import CapillaryStub
from resender.observability import MetricName
from resender.policy import ResendPolicy
from resender.settings import DEFAULT_SKIP_REASONS, ConfigurationError, Settings
from tests.builders import failure, sns_envelope, sqs_event, sqs_record
from tests.conftest import Invoke
from tests.fixture_types import ReadOutcome, stored

ID = 1746061653596
EVENTS = Path(__file__).resolve().parents[2] / "events"


def metric_totals(captured: str) -> dict[str, float]:
    """Each metric's sum over every EMF blob printed."""
    totals: dict[str, float] = {}
    for line in captured.splitlines():
        if '"_aws"' not in line:
            continue
        blob = json.loads(line)
        for directive in blob["_aws"]["CloudWatchMetrics"]:
            for metric in directive["Metrics"]:
                values = blob[metric["Name"]]
                totals[metric["Name"]] = totals.get(metric["Name"], 0) + sum(
                    values if isinstance(values, list) else [values]
                )
    return totals


def test_every_default_status_is_skipped_without_calling_capillary(
    invoke: Invoke, stub: CapillaryStub, outcome: ReadOutcome, capsys: pytest.CaptureFixture[str]
) -> None:
    bodies = [failure(ID + offset, reason=status) for offset, status in enumerate(DEFAULT_SKIP_REASONS)]

    response = invoke(sqs_event(*bodies))

    assert response == {"batchItemFailures": []}
    assert stub.resend_calls == []
    for offset, status in enumerate(DEFAULT_SKIP_REASONS):
        item = stored(outcome, ID + offset)
        assert item["status"] == "SKIPPED"
        assert item["policy"] == "reason"
        assert item["errorMessage"].startswith("policy: reason: ")
        assert status in item["errorMessage"]
    totals = metric_totals(capsys.readouterr().out)
    assert totals[MetricName.SKIPPED] == len(DEFAULT_SKIP_REASONS)
    assert totals[MetricName.SKIPPED_BY_POLICY] == len(DEFAULT_SKIP_REASONS)


def test_a_hard_bounce_spelled_loosely_is_skipped_and_a_soft_bounce_resent(
    invoke: Invoke, stub: CapillaryStub, outcome: ReadOutcome
) -> None:
    invoke(sqs_event(failure(ID, reason="hard bounced"), failure(ID + 1, reason="soft-bounced")))

    assert [call.message_id for call in stub.resend_calls] == [ID + 1]
    assert stored(outcome, ID)["status"] == "SKIPPED"
    assert stored(outcome, ID + 1)["status"] == "RESENT"


def test_a_skipped_message_stays_skipped_when_it_comes_again(
    invoke: Invoke, stub: CapillaryStub, outcome: ReadOutcome
) -> None:
    invoke(sqs_event(failure(ID, reason="DND_BLOCKED")))
    # The feed corrected itself, but SKIPPED is final: an operator forces it if it should go out.
    invoke(sqs_event(failure(ID, reason="undelivered")))

    assert stub.resend_calls == []
    assert stored(outcome, ID)["status"] == "SKIPPED"


def test_a_policy_never_overwrites_a_resend(
    invoke: Invoke, stub: CapillaryStub, outcome: ReadOutcome
) -> None:
    invoke(sqs_event(failure(ID)))
    invoke(sqs_event(failure(ID, reason="HARD_BOUNCED")))

    assert stub.resends_performed(ID) == 1
    item = stored(outcome, ID)
    assert item["status"] == "RESENT"
    assert "policy" not in item


def test_channel_rule(
    invoke: Invoke, stub: CapillaryStub, outcome: ReadOutcome, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RESEND_CHANNELS", "sms,WhatsApp")
    app.reset_container()

    invoke(sqs_event(failure(ID, channel="EMAIL"), failure(ID + 1, channel="whatsapp"), failure(ID + 2)))

    assert Counter(call.message_id for call in stub.resend_calls) == Counter([ID + 1, ID + 2])
    assert stored(outcome, ID)["policy"] == "channel"
    assert stored(outcome, ID)["errorMessage"].startswith("policy: channel: ")


def test_age_from_the_payload(invoke: Invoke, stub: CapillaryStub, outcome: ReadOutcome) -> None:
    old = time.time() - 2 * 86_400
    invoke(sqs_event(failure(ID, failedAt=int(old * 1000)), failure(ID + 1, failedAt=int(time.time()))))

    assert [call.message_id for call in stub.resend_calls] == [ID + 1]
    assert stored(outcome, ID)["policy"] == "age"
    assert "RESEND_MAX_AGE_SECONDS=86400" in stored(outcome, ID)["errorMessage"]


def test_age_from_the_envelope_when_the_payload_has_no_time(
    invoke: Invoke, stub: CapillaryStub, outcome: ReadOutcome
) -> None:
    record = sqs_record(failure(ID))
    record["attributes"]["SentTimestamp"] = str(int((time.time() - 3 * 86_400) * 1000))
    stale_sns = json.loads(sns_envelope(failure(ID + 1)))
    stale_sns["Timestamp"] = "2020-02-02T02:02:02.000Z"

    invoke({"Records": [record, sqs_record(json.dumps(stale_sns)), sqs_record(failure(ID + 2))]})

    assert [call.message_id for call in stub.resend_calls] == [ID + 2]
    assert stored(outcome, ID)["policy"] == "age"
    assert stored(outcome, ID + 1)["policy"] == "age"
    assert "envelope" in stored(outcome, ID + 1)["errorMessage"]


def test_a_future_or_unreadable_time_is_resent_and_logged(
    invoke: Invoke, stub: CapillaryStub, log_lines: list[str]
) -> None:
    invoke(sqs_event(failure(ID, failedAt="last tuesday"), failure(ID + 1, failedAt=time.time() + 7200)))

    assert stub.resends_performed() == 2
    warnings = [json.loads(line) for line in log_lines if '"WARNING"' in line]
    messages = {line["message"] for line in warnings}
    assert "failure time is unreadable: the age rule does not apply" in messages
    assert "failure time is in the future: the age rule does not apply" in messages


def test_skip_when(
    invoke: Invoke, stub: CapillaryStub, outcome: ReadOutcome, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SKIP_WHEN", "campaign == 'otp'")
    app.reset_container()

    invoke(sqs_event(failure(ID, campaign="otp"), failure(ID + 1, campaign="loyalty")))

    assert [call.message_id for call in stub.resend_calls] == [ID + 1]
    item = stored(outcome, ID)
    assert item["policy"] == "skipWhen"
    assert "campaign == 'otp'" in item["errorMessage"]


def test_an_invalid_skip_when_refuses_to_start(invoke: Invoke, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKIP_WHEN", "campaign ==")
    app.reset_container()

    with pytest.raises(ConfigurationError, match="SKIP_WHEN is not a valid JMESPath expression"):
        invoke(sqs_event(failure(ID)))


# -- the sample events of each rule --------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "rule"),
    [
        ("sqs-policy-reason.json", "reason"),
        ("sqs-policy-channel.json", "channel"),
        ("sqs-policy-age.json", "age"),
        ("sqs-policy-skip-when.json", "skipWhen"),
    ],
)
def test_each_policy_sample_is_skipped_by_its_rule(
    invoke: Invoke,
    stub: CapillaryStub,
    outcome: ReadOutcome,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    rule: str,
) -> None:
    for variable, value in LOCAL_POLICY_ENV.items():
        monkeypatch.setenv(variable, value)
    app.reset_container()
    event = as_delivered_now(json.loads((EVENTS / name).read_text()))
    message_id = json.loads(event["Records"][0]["body"])["messageId"]

    assert invoke(event) == {"batchItemFailures": []}

    assert stub.resend_calls == []
    assert stored(outcome, message_id)["policy"] == rule


def test_the_sam_local_settings_skip_the_age_sample_as_it_is(
    function_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Under `sam local invoke` the envelope times are the file's (2025); env.json allows ten years.
    local = json.loads((EVENTS / "env.json").read_text())["ResenderFunction"]
    settings = Settings.from_env({**function_env, **local})
    rules = ResendPolicy.from_settings(settings)
    parser = MessageIdParser()

    def refusal(name: str) -> str | None:
        _, deliveries = parse_event(json.loads((EVENTS / name).read_text()))
        notice = parser.parse(deliveries[0])
        assert isinstance(notice, Notice)
        found = rules.evaluate(notice)
        return None if found is None else found.rule

    assert refusal("sqs-policy-age.json") == "age"
    assert refusal("sqs-plain.json") is None
    assert refusal("sqs-sns-envelope.json") is None


def test_status_and_list_show_the_rule_that_skipped(
    invoke: Invoke, stub: CapillaryStub, capsys: pytest.CaptureFixture[str]
) -> None:
    from resender import cli

    invoke(sqs_event(failure(ID, reason="MARKED_SPAM")))
    capsys.readouterr()

    assert cli.main(["status", str(ID)]) == 0
    shown = dict(line.split(None, 1) for line in capsys.readouterr().out.splitlines() if line.strip())
    assert shown["status"].strip() == "SKIPPED"
    assert shown["policy"].strip() == "reason"
    assert cli.main(["list", "--status", "SKIPPED", "--json"]) == 0
    (item,) = json.loads(capsys.readouterr().out)["items"]
    assert (item["messageId"], item["policy"]) == (ID, "reason")
    assert item["errorMessage"].startswith("policy: reason: ")
