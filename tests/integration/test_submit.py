"""``resender submit`` against a moto server over real HTTP: inputs, validation, folding, batches, targets."""

from __future__ import annotations

import functools
import io
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import boto3
import pytest

from resender.cli.submit import Entry, Notification, Refused, publish
from resender.events import Delivery, MessageIdParser, Notice
from resender.local.aws import LocalResources
from tests.builders import written
from tests.conftest import drain
from tests.integration.cli_runs import Run, RunCommand, run_command

ID = 1746061653596
EXAMPLES = Path(__file__).resolve().parents[2] / "schema" / "examples"


Queued = Callable[[], list[dict[str, Any]]]


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str], local_aws: LocalResources) -> RunCommand:
    def call(*argv: str) -> Run:
        return run_command(capsys, ["submit", *argv])

    return call


@pytest.fixture
def queued(local_aws: LocalResources) -> Queued:
    """Every message now in the source queue: body and attributes."""
    return functools.partial(drain, local_aws, local_aws.queue_url)


def bodies(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted((json.loads(m["Body"]) for m in messages), key=lambda body: body["messageId"])


def test_csv_export_with_nsadmin_id_and_carried_columns(
    run: RunCommand, local_aws: LocalResources, queued: Queued, tmp_path: Path
) -> None:
    export = written(
        tmp_path / "messages.csv",
        "nsadmin_id,Channel,reason,sent_by,failedAt\n"
        f"{ID},SMS,SOFT_BOUNCED,campaign-7,2026-11-30T09:15:00Z\n"
        f"{ID + 1},EMAIL,,campaign-7,\n",
    )

    result = run(str(export), "--queue-url", local_aws.queue_url)

    assert result.code == 0, result.err
    assert "Published 2 notification(s)" in result.out
    messages = queued()
    assert bodies(messages) == [
        {"messageId": ID, "channel": "SMS", "reason": "SOFT_BOUNCED", "failedAt": "2026-11-30T09:15:00Z"},
        {"messageId": ID + 1, "channel": "EMAIL"},
    ]
    sms = next(m for m in messages if json.loads(m["Body"])["messageId"] == ID)
    assert sms["MessageAttributes"]["channel"]["StringValue"] == "SMS"
    assert sms["MessageAttributes"]["reason"]["StringValue"] == "SOFT_BOUNCED"


def test_csv_id_column_is_chosen_by_option(
    run: RunCommand, local_aws: LocalResources, queued: Queued, tmp_path: Path
) -> None:
    export = written(tmp_path / "report.csv", f"id,communication\n7,{ID}\n8,{ID + 1}\n")

    assert run(str(export), "--id-column", "communication", "--queue-url", local_aws.queue_url).code == 0

    assert [body["messageId"] for body in bodies(queued())] == [ID, ID + 1]


def test_csv_without_an_id_column_is_a_usage_error(
    run: RunCommand, local_aws: LocalResources, queued: Queued, tmp_path: Path
) -> None:
    export = written(tmp_path / "report.csv", f"customer,channel\n{ID},SMS\n")

    result = run(str(export), "--queue-url", local_aws.queue_url)

    assert result.code == 2
    assert "no id column" in result.err
    assert queued() == []


def test_jsonl_with_bad_lines_reports_file_and_line_and_publishes_the_rest(
    run: RunCommand, local_aws: LocalResources, queued: Queued, tmp_path: Path
) -> None:
    feed = written(
        tmp_path / "failures.jsonl",
        f'{{"messageId": {ID}, "orgId": 100737, "campaign": "otp"}}\n'
        "not json\n"
        '{"messageId": true}\n'
        "\n"
        f'{{"messageId": "{ID + 1}"}}\n'
        '{"messageId": "12ab"}\n'
        f'{{"messageId": {ID}, "orgId": "x"}}\n',
    )

    result = run(str(feed), "--queue-url", local_aws.queue_url)

    assert result.code == 1
    reported = result.err.strip().splitlines()
    assert [line.split(": ", 1)[0] for line in reported] == [
        f"{feed}:2",
        f"{feed}:3",
        f"{feed}:6",
        f"{feed}:7",
    ]
    assert "boolean" in reported[1]
    assert bodies(queued()) == [
        {"messageId": ID, "orgId": 100737, "campaign": "otp"},
        {"messageId": ID + 1},
    ]


def test_plain_ids_from_stdin_with_duplicates_folded(
    run: RunCommand, local_aws: LocalResources, queued: Queued, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = [ID + n for n in range(23)]
    monkeypatch.setattr(
        "sys.stdin", io.StringIO("\n".join(str(i) for i in [*ids, ids[0], ids[5]]) + "\n# done\n")
    )

    result = run("-", "--ids", str(ids[1]), str(ID + 99), "--queue-url", local_aws.queue_url, "--json")

    assert result.code == 0
    summary = result.json()
    assert (summary["distinct"], summary["published"], summary["duplicates"]) == (24, 24, 3)
    assert summary["invalid"] == []
    assert [body["messageId"] for body in bodies(queued())] == sorted([*ids, ID + 99])


def test_every_published_notification_is_one_the_function_accepts(
    run: RunCommand, local_aws: LocalResources, queued: Queued, tmp_path: Path
) -> None:
    feed = written(tmp_path / "ids.txt", f"{ID}\n 00{ID + 1} \n")

    assert run(str(feed), "--org", "100737", "--queue-url", local_aws.queue_url).code == 0

    parser = MessageIdParser()
    for message in queued():
        parsed = parser.parse(Delivery("r", message["Body"]))
        assert isinstance(parsed, Notice)
        assert parsed.message_id in (ID, ID + 1)
        assert json.loads(message["Body"])["orgId"] == 100737
        assert message["MessageAttributes"]["orgId"] == {"DataType": "Number", "StringValue": "100737"}


def test_dry_run_publishes_nothing(run: RunCommand, local_aws: LocalResources, queued: Queued) -> None:
    result = run("--ids", str(ID), str(ID), "0", "--queue-url", local_aws.queue_url, "--dry-run", "--json")

    assert result.code == 1
    summary = result.json()
    assert summary["dryRun"] is True
    assert (summary["distinct"], summary["published"], summary["duplicates"]) == (1, 0, 1)
    assert summary["invalid"] == [
        {"file": "--ids", "line": 3, "reason": "messageId must be greater than 0, got 0"}
    ]
    assert queued() == []


def test_topic_target_delivers_through_the_subscription(
    run: RunCommand, local_aws: LocalResources, queued: Queued
) -> None:
    sns = boto3.client("sns", endpoint_url=local_aws.endpoint_url)
    topic_arn = sns.create_topic(Name="communication-failures")["TopicArn"]
    sns.subscribe(
        TopicArn=topic_arn,
        Protocol="sqs",
        Endpoint=local_aws.queue_arn,
        Attributes={"RawMessageDelivery": "true"},
    )

    result = run("--ids", *[str(ID + n) for n in range(12)], "--topic-arn", topic_arn)

    assert result.code == 0, result.err
    assert [body["messageId"] for body in bodies(queued())] == [ID + n for n in range(12)]


def test_a_dry_run_needs_no_target(
    run: RunCommand, local_aws: LocalResources, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("SOURCE_QUEUE_URL", raising=False)
    monkeypatch.delenv("FAILURE_TOPIC_ARN", raising=False)
    feed = written(tmp_path / "ids.txt", f"{ID}\nnope\n")

    result = run(str(feed), "--dry-run")

    assert result.code == 1
    assert "would publish 1 notification(s)" in result.out
    assert f"{feed}:2: messageId string is not a plain string of digits" in result.err


def test_no_input_or_no_target_is_a_usage_error(
    run: RunCommand, local_aws: LocalResources, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SOURCE_QUEUE_URL", raising=False)
    monkeypatch.delenv("FAILURE_TOPIC_ARN", raising=False)

    assert run("--queue-url", local_aws.queue_url).code == 2
    assert run("--ids", str(ID)).code == 2
    assert run("--ids", str(ID), "--org", "acme", "--queue-url", local_aws.queue_url).code == 2
    assert run("--ids", str(ID), "--queue-url", local_aws.queue_url, "--topic-arn", "arn:x").code == 2


def test_the_shipped_examples_submit_cleanly(
    run: RunCommand, local_aws: LocalResources, queued: Queued
) -> None:
    result = run(
        str(EXAMPLES / "insights-export.csv"),
        str(EXAMPLES / "failures.jsonl"),
        "--queue-url",
        local_aws.queue_url,
        "--json",
    )

    assert result.code == 0
    assert result.json()["duplicates"] == 1
    assert len(queued()) == 3


class FlakyPublisher:
    """Refuses chosen entries: AWS's own faults first, then a sender fault that must not be retried."""

    target = "test"

    def __init__(self) -> None:
        self.calls: list[list[int]] = []

    def send(self, entries: Sequence[Entry]) -> list[Refused]:
        self.calls.append([entry.notification.message_id for entry in entries])
        refused = []
        for entry in entries:
            if entry.notification.message_id == ID + 3 and len(self.calls) == 1:
                refused.append(Refused(entry.entry_id, "InternalError: try again", retryable=True))
            if entry.notification.message_id == ID + 4:
                refused.append(Refused(entry.entry_id, "InvalidParameterValue: bad", retryable=False))
        return refused


def test_partial_batch_failures_are_retried_only_when_aws_was_at_fault() -> None:
    notifications = [Notification(ID + n, {"messageId": ID + n}, f"-:{n}") for n in range(13)]
    publisher = FlakyPublisher()
    progress: list[tuple[int, int]] = []

    result = publish(notifications, publisher, lambda done, total: progress.append((done, total)))

    assert [len(call) for call in publisher.calls] == [10, 1, 3]
    assert publisher.calls[1] == [ID + 3]
    assert result.published == 12
    assert [(item.message_id, reason) for item, reason in result.failed] == [
        (ID + 4, "InvalidParameterValue: bad")
    ]
    assert progress == [(10, 13), (13, 13)]
