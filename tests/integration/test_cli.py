"""The ``resender`` command against a moto server over real HTTP (and the Capillary stub where it calls out)."""

from __future__ import annotations

import io
import json
import re
import socket
import sys
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import botocore.loaders
import botocore.session
import pytest
import requests
from botocore.exceptions import EndpointConnectionError

from resender import app
from resender.cli.rendering import parse_since
from resender.cli.target import AwsTarget
from resender.local.aws import LocalResources, MotoServer
from resender.local.runner import DOCUMENTED_NOT_FOUND_ID
from resender.local.runner import sqs_event as event_of_messages
from resender.local.stub import ORG_ID, Behaviour, CapillaryStub
from resender.models import Status
from resender.observability import logger as resender_logger
from resender.queues import POISON_REASON_ATTRIBUTE
from resender.store import OutcomeStore
from tests.builders import event_file, failure, sns_event, sqs_event, sqs_record, written
from tests.conftest import drain, put_outcome
from tests.integration.cli_runs import Run, RunCommand, run_command

EVENTS = Path(__file__).resolve().parents[2] / "events"
ID = 1746061653596
AT = "2026-01-01T00:00:00.000Z"  # when a seeded outcome was last written
SUBCOMMANDS = ("status", "list", "invoke", "redrive", "resend", "submit", "demo", "local")


Invoke = Callable[..., dict[str, Any]]


@pytest.fixture(autouse=True)
def _models_parsed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every boto3 session here shares one loader, so AWS's service models are parsed once, not per client.

    Only speed: credentials, region and endpoint are still resolved per session.
    """
    loader = botocore.loaders.create_loader()

    def shared(*_: Any) -> botocore.loaders.Loader:
        loader.search_paths[:] = list(dict.fromkeys(loader.search_paths))
        return loader

    monkeypatch.setattr(botocore.session, "create_loader", shared)


@pytest.fixture
def fresh_moto(moto_server: MotoServer) -> Iterator[None]:
    """An empty emulator before and after: ``--local`` and ``demo`` start a moto server in this process,
    which shares moto's state with the tests' server."""
    requests.post(f"{moto_server.endpoint_url}/moto-api/reset", timeout=10).raise_for_status()
    yield
    requests.post(f"{moto_server.endpoint_url}/moto-api/reset", timeout=10).raise_for_status()


@pytest.fixture(autouse=True)
def _keep_log_level() -> Iterator[None]:
    # The command silences the function's logger for readable output; other tests rely on its level.
    level = resender_logger.log_level
    yield
    resender_logger.setLevel(level)


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> RunCommand:
    def call(*argv: str) -> Run:
        return run_command(capsys, argv)

    return call


def assert_one_line_error(result: Run, code: int) -> None:
    assert result.code == code
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert "Traceback" not in result.err
    assert lines[0].startswith("resender")


# -- helpers over the emulated AWS ---------------------------------------------------------------------


def dynamodb(resources: LocalResources) -> Any:
    return boto3.client("dynamodb", endpoint_url=resources.endpoint_url)


def sqs(resources: LocalResources) -> Any:
    return boto3.client("sqs", endpoint_url=resources.endpoint_url)


def read_item(resources: LocalResources, message_id: int) -> dict[str, Any]:
    store = OutcomeStore(dynamodb(resources), resources.table_name)
    item = store.get(message_id)
    assert item is not None
    return item


def send(resources: LocalResources, queue_url: str, body: str, poison_reason: str | None = None) -> None:
    attributes = {"channel": {"DataType": "String", "StringValue": "SMS"}}
    if poison_reason:
        attributes[POISON_REASON_ATTRIBUTE] = {"DataType": "String", "StringValue": poison_reason}
    sqs(resources).send_message(QueueUrl=queue_url, MessageBody=body, MessageAttributes=attributes)


def consume(resources: LocalResources, invoke: Callable[..., dict[str, Any]]) -> list[dict[str, Any]]:
    """What Lambda's event source mapping does: hand the source queue's messages to the handler and
    delete the ones it acknowledged. Returns the messages handed over."""
    messages = drain(resources, resources.queue_url)
    if not messages:
        return []
    response = invoke(event_of_messages(messages, resources.queue_arn))
    retried = {failure["itemIdentifier"] for failure in response["batchItemFailures"]}
    client = sqs(resources)
    for message in messages:
        if message["MessageId"] not in retried:
            client.delete_message(QueueUrl=resources.queue_url, ReceiptHandle=message["ReceiptHandle"])
    return messages


def message_id_of(message: dict[str, Any]) -> int:
    return int(json.loads(message["Body"])["messageId"])


# -- usage ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_subcommand_has_help(run: RunCommand, command: str) -> None:
    result = run(command, "--help")

    assert result.code == 0
    assert result.out.startswith(f"usage: resender {command}")
    assert result.err == ""
    examples = result.out.split("examples:\n", 1)[1].splitlines()
    assert examples
    assert all(line.strip().startswith(f"resender {command}") for line in examples if line.strip())


def test_top_level_help_lists_every_subcommand(run: RunCommand) -> None:
    result = run("--help")

    assert result.code == 0
    for command in SUBCOMMANDS:
        assert command in result.out


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param([], id="no-subcommand"),
        pytest.param(["frobnicate"], id="unknown-subcommand"),
        pytest.param(["status"], id="status-without-id"),
        pytest.param(["status", "abc"], id="status-id-not-digits"),
        pytest.param(["status", "0"], id="status-id-zero"),
        pytest.param(["status", "9223372036854775808"], id="status-id-beyond-int64"),
        pytest.param(["status", "1", "--bogus"], id="unknown-option"),
        pytest.param(["list", "--since", "yesterday"], id="list-since-unparseable"),
        pytest.param(["list", "--limit", "0"], id="list-limit-zero"),
        pytest.param(["list", "--limit", "many"], id="list-limit-not-a-number"),
        pytest.param(["list", "--status", "LOST"], id="list-unknown-status"),
        pytest.param(["redrive", "--max", "0"], id="redrive-max-zero"),
        pytest.param(["resend", "1.5"], id="resend-decimal-id"),
        pytest.param(["invoke"], id="invoke-without-file"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(run: RunCommand, argv: list[str]) -> None:
    result = run(*argv)

    assert_one_line_error(result, 2)
    assert result.out == ""


def test_missing_table_name_is_a_configuration_error(
    run: RunCommand, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OUTCOMES_TABLE", raising=False)

    result = run("status", str(ID))

    assert_one_line_error(result, 2)
    assert "OUTCOMES_TABLE" in result.err


def test_a_table_that_does_not_exist_is_one_line_not_a_traceback(
    run: RunCommand, local_aws: LocalResources
) -> None:
    result = run("status", str(ID), "--table", "no-such-table")

    assert_one_line_error(result, 2)
    assert "ResourceNotFoundException" in result.err
    assert "table no-such-table" in result.err
    assert "region us-east-1" in result.err
    assert f"endpoint {local_aws.endpoint_url}" in result.err


def test_an_unreachable_endpoint_is_named(run: RunCommand, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]

    result = run("list", "--table", "outcomes", "--endpoint-url", f"http://127.0.0.1:{port}")

    assert_one_line_error(result, 2)
    assert f"endpoint http://127.0.0.1:{port}" in result.err
    assert "table outcomes" in result.err


def test_missing_credentials_get_the_aws_cli_hint(
    run: RunCommand, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")

    result = run("status", str(ID), "--table", "outcomes", "--region", "eu-west-1")

    assert_one_line_error(result, 2)
    assert 'You can configure credentials by running "aws configure".' in result.err
    assert "region eu-west-1" in result.err


def test_an_unknown_profile_is_a_configuration_error(run: RunCommand) -> None:
    result = run("list", "--table", "outcomes", "--profile", "no-such-profile")

    assert_one_line_error(result, 2)
    assert "no-such-profile" in result.err


def test_endpoint_option_wins_over_the_environment(
    run: RunCommand, local_aws: LocalResources, monkeypatch: pytest.MonkeyPatch
) -> None:
    put_outcome(local_aws, ID, status="RESENT", attempts=1, updatedAt=AT)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there

    result = run("status", str(ID), "--table", local_aws.table_name, "--endpoint-url", local_aws.endpoint_url)

    assert result.code == 0, result.err
    assert "RESENT" in result.out


def test_region_is_resolved_as_the_aws_cli_does(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    assert AwsTarget().sqs().meta.region_name == "eu-west-1"
    assert AwsTarget(region="ap-south-1").sqs().meta.region_name == "ap-south-1"
    monkeypatch.delenv("AWS_REGION")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-central-1")
    assert AwsTarget().dynamodb().meta.region_name == "eu-central-1"


@pytest.mark.parametrize("how", ["AWS_REGION", "AWS_DEFAULT_REGION", "--region"])
@pytest.mark.parametrize("command", ["status", "list", "resend", "invoke"])
def test_every_subcommand_resolves_the_region_the_same_way(
    run: RunCommand,
    function_env: dict[str, str],
    stub: CapillaryStub,
    monkeypatch: pytest.MonkeyPatch,
    command: str,
    how: str,
) -> None:
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    region_options: list[str] = []
    if how == "--region":
        region_options = ["--region", "us-east-1"]
    else:
        monkeypatch.setenv(how, "us-east-1")
    argv = {
        "status": ["status", str(ID)],
        "list": ["list"],
        "resend": ["resend", str(ID)],
        "invoke": ["invoke", str(EVENTS / "sqs-plain.json")],
    }[command]

    result = run(*argv, *region_options, "--json")

    assert "region" not in result.err.lower(), result.err
    # status of an id nobody failed yet is "not found" (1); the others succeed.
    assert result.code == (1 if command == "status" else 0), result.err
    if command == "resend":
        assert stub.resends_performed(ID) == 1


def deploy_emulated_stack(local_aws: LocalResources, stack_name: str, base_url: str) -> None:
    """A stack with the outputs template.yaml declares, and a function whose settings name the stub."""
    session = boto3.session.Session(region_name="us-east-1")
    endpoint = local_aws.endpoint_url
    role = session.client("iam", endpoint_url=endpoint).create_role(
        RoleName=f"{stack_name}-role",
        AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": []}),
    )["Role"]["Arn"]
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("app.py", "def lambda_handler(event, context):\n    return {}\n")
    session.client("lambda", endpoint_url=endpoint).create_function(
        FunctionName=f"{stack_name}-fn",
        Runtime="python3.13",
        Role=role,
        Handler="resender.app.lambda_handler",
        Code={"ZipFile": archive.getvalue()},
        Environment={
            "Variables": {
                "OUTCOMES_TABLE": "stale-name",  # the stack's output wins over a stale copy
                "CAPILLARY_SECRET_ID": local_aws.secret_id,
                "CAPILLARY_BASE_URL": base_url,
                "CAPILLARY_TIMEOUT_SECONDS": "2",
                "DEAD_LETTER_QUEUE_URL": local_aws.dead_letter_queue_url,
            }
        },
    )
    outputs = {
        "OutcomesTableName": local_aws.table_name,
        "QueueUrl": local_aws.queue_url,
        "DeadLetterQueueUrl": local_aws.dead_letter_queue_url,
        "SecretArn": local_aws.secret_id,
        "FunctionName": f"{stack_name}-fn",
    }
    template = {
        "Resources": {"Marker": {"Type": "AWS::SQS::Queue", "Properties": {"QueueName": f"{stack_name}-m"}}},
        "Outputs": {key: {"Value": value} for key, value in outputs.items()},
    }
    session.client("cloudformation", endpoint_url=endpoint).create_stack(
        StackName=stack_name, TemplateBody=json.dumps(template)
    )


def test_stack_name_reads_every_setting_from_the_stack(
    run: RunCommand, local_aws: LocalResources, stub: CapillaryStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("OUTCOMES_TABLE", "CAPILLARY_SECRET_ID", "CAPILLARY_BASE_URL", "DEAD_LETTER_QUEUE_URL"):
        monkeypatch.delenv(name, raising=False)
    deploy_emulated_stack(local_aws, "resender-staging", stub.base_url)

    resent = run("resend", str(ID), "--stack-name", "resender-staging", "--json")
    assert resent.code == 0, resent.err
    assert stub.resends_performed(ID) == 1

    status = run("status", str(ID), "--stack-name", "resender-staging", "--json")
    assert status.code == 0, status.err
    assert status.json()["status"] == "RESENT"

    send(local_aws, local_aws.dead_letter_queue_url, failure(ID + 1))
    redriven = run("redrive", "--stack-name", "resender-staging", "--json")
    assert redriven.code == 0, redriven.err
    assert redriven.json()["moved"] == 1
    assert redriven.json()["queueUrl"] == local_aws.queue_url


def test_an_option_wins_over_the_stack(
    run: RunCommand, local_aws: LocalResources, stub: CapillaryStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    deploy_emulated_stack(local_aws, "resender-prod", stub.base_url)

    result = run("list", "--stack-name", "resender-prod", "--table", "another-table")

    assert_one_line_error(result, 2)
    assert "table another-table" in result.err


def test_an_unknown_stack_is_one_line_naming_it(run: RunCommand, local_aws: LocalResources) -> None:
    result = run("list", "--stack-name", "no-such-stack")

    assert_one_line_error(result, 2)
    assert "no-such-stack" in result.err
    assert "DescribeStacks" in result.err


# -- status --------------------------------------------------------------------------------------------


def test_status_of_an_unknown_id_is_not_found(
    run: RunCommand, local_aws: LocalResources, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OUTCOMES_TABLE", local_aws.table_name)

    result = run("status", str(ID))

    assert_one_line_error(result, 1)
    assert f"no outcome recorded for messageId {ID}" in result.err
    assert result.out == ""


def test_status_shows_the_outcome_and_the_chain_both_ways(
    run: RunCommand, invoke: Invoke, stub: CapillaryStub
) -> None:
    invoke(sqs_event(failure(ID)))
    resent = stub.resend_calls[0].resent_message_id
    assert resent is not None

    first = run("status", str(ID), "--json")

    assert first.code == 0, first.err
    document = first.json()
    assert document["messageId"] == ID
    assert document["status"] == "RESENT"
    assert document["attempts"] == 1
    assert document["resentMessageId"] == resent
    assert document["orgId"] == ORG_ID
    assert document["requestId"]
    assert document["createdAt"] <= document["updatedAt"]
    assert "claimToken" not in document
    assert document["chain"]["resendOf"] is None
    assert document["chain"]["descendants"] == [
        {"messageId": resent, "status": None, "resendOf": ID, "resentMessageId": None}
    ]

    # The resend has no outcome of its own yet: only the link written with ID's outcome.
    link_only = run("status", str(resent), "--json")
    assert_one_line_error(link_only, 1)
    assert f"but it is a resend of {ID}" in link_only.err
    assert link_only.json() == {"messageId": resent, "status": None, "resendOf": ID}

    # Then the resend fails too and is resent: the chain reads from either end.
    invoke(sqs_event(failure(resent)))
    second_resend = stub.resend_calls[1].resent_message_id
    middle = run("status", str(resent), "--json").json()
    assert middle["chain"]["resendOf"] == ID
    assert middle["chain"]["rootMessageId"] == ID
    assert middle["chain"]["depth"] == 1
    assert [link["messageId"] for link in middle["chain"]["ancestors"]] == [ID]
    assert [link["messageId"] for link in middle["chain"]["descendants"]] == [second_resend]

    text = run("status", str(resent))
    assert text.code == 0
    assert f"{ID} (RESENT) -> [{resent} (RESENT)] -> {second_resend} (no outcome)" in text.out
    assert f"resendOf         {ID}" in text.out


def test_status_text_shows_the_error_of_a_not_found(run: RunCommand, invoke: Invoke) -> None:
    invoke(sqs_event(failure(DOCUMENTED_NOT_FOUND_ID)))

    result = run("status", str(DOCUMENTED_NOT_FOUND_ID))

    assert result.code == 0, result.err
    lines = dict(line.split(None, 1) for line in result.out.splitlines())
    assert lines["status"] == "NOT_FOUND"
    assert lines["error"].startswith("4223: ")
    assert lines["attempts"] == "1"


def test_status_shows_how_often_a_record_was_held_back_and_when_it_comes_next(
    run: RunCommand, invoke: Invoke, local_aws: LocalResources, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in {
        "PACING_TABLE": local_aws.pacing_table_name,
        "RESEND_RATE_PER_MINUTE": "1",
        "PACING_MAX_WAIT_SECONDS": "0",
        "RESEND_CONCURRENCY": "1",
    }.items():
        monkeypatch.setenv(name, value)
    app.reset_container()
    sent_now = int(time.time() * 1000)
    invoke({"Records": [sqs_record(failure(m), sent_at_ms=sent_now) for m in (ID, ID + 1)]})

    held = run("status", str(ID + 1))

    assert held.code == 0, held.err
    lines = dict(line.split(None, 1) for line in held.out.splitlines())
    assert lines["status"] == "RETRYING"
    assert lines["deferrals"].startswith("1 (held back by pacing")
    assert lines["nextAttemptAt"] > lines["updatedAt"]
    assert "no resend slot free" in lines["error"]
    sent = dict(line.split(None, 1) for line in run("status", str(ID)).out.splitlines())
    assert "deferrals" not in sent and "nextAttemptAt" not in sent


# -- list ----------------------------------------------------------------------------------------------


def seed_outcomes(resources: LocalResources) -> None:
    put_outcome(resources, 1, status="RESENT", attempts=1, updatedAt="2026-01-01T00:00:01.000Z")
    put_outcome(resources, 2, status="NOT_FOUND", attempts=1, updatedAt="2026-01-01T00:00:02.000Z")
    put_outcome(resources, 3, status="RETRYING", attempts=2, updatedAt="2026-01-01T00:00:03.000Z")
    put_outcome(resources, 4, status="UNCERTAIN", attempts=1, updatedAt="2026-01-01T00:00:04.000Z")
    put_outcome(resources, 5, status="RESENT", attempts=1, updatedAt="2026-01-01T00:00:04.000Z")
    put_outcome(resources, 6, status="SKIPPED", attempts=1, updatedAt="2026-01-01T00:00:05.000Z")
    # A link item (a resend that has not failed) is not an outcome.
    put_outcome(resources, 7, resendOf=5, resendDepth=1, rootMessageId=5, linkedAt="2026-01-01T00:00:06.000Z")


def listed(result: Run) -> list[int]:
    assert result.code == 0, result.err
    return [item["messageId"] for item in result.json()["items"]]


def test_list_is_newest_first_across_statuses_and_filters(run: RunCommand, local_aws: LocalResources) -> None:
    seed_outcomes(local_aws)
    table = ("--table", local_aws.table_name)

    everything = run("list", *table, "--json")

    assert listed(everything) == [6, 5, 4, 3, 2, 1]  # the tie at 00:00:04 goes to the higher messageId
    assert everything.json()["nextPageToken"] is None
    assert everything.json()["count"] == 6
    assert listed(run("list", *table, "--status", "RESENT", "--json")) == [5, 1]
    assert listed(run("list", *table, "--status", "uncertain", "--json")) == [4]
    assert listed(run("list", *table, "--since", "2026-01-01T00:00:03Z", "--json")) == [6, 5, 4, 3]
    assert listed(run("list", *table, "--since", "2026-01-01T01:00:03+01:00", "--json")) == [6, 5, 4, 3]


def test_list_since_a_duration(run: RunCommand, local_aws: LocalResources) -> None:
    put_outcome(local_aws, 1, status="RESENT", attempts=1, updatedAt=parse_since("3h"))
    put_outcome(local_aws, 2, status="RESENT", attempts=1, updatedAt=parse_since("5m"))

    assert listed(run("list", "--table", local_aws.table_name, "--since", "1h", "--json")) == [2]
    assert listed(run("list", "--table", local_aws.table_name, "--since", "1d", "--json")) == [2, 1]


def test_list_pages_through_everything_once(run: RunCommand, local_aws: LocalResources) -> None:
    assert "0 outcome(s)" in run("list", "--table", local_aws.table_name).out  # an empty table is no error
    seed_outcomes(local_aws)
    pages: list[list[int]] = []
    token: str | None = None
    while True:
        argv = ["list", "--table", local_aws.table_name, "--limit", "2", "--json"]
        result = run(*argv, *(["--page-token", token] if token else []))
        pages.append(listed(result))
        token = result.json()["nextPageToken"]
        if token is None:
            break

    assert pages == [[6, 5], [4, 3], [2, 1]]

    # The table form prints the token at its foot.
    result = run("list", "--table", local_aws.table_name, "--limit", "2")
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert lines[0].split() == [
        "updatedAt",
        "messageId",
        "orgId",
        "status",
        "attempts",
        "resentMessageId",
        "error",
    ]
    assert lines[2].split()[:4] == ["2026-01-01T00:00:05.000Z", "6", "-", "SKIPPED"]
    assert "2 outcome(s)" in result.out
    token = lines[-1].removeprefix("more: add --page-token ")
    following = run("list", "--table", local_aws.table_name, "--limit", "2", "--page-token", token, "--json")
    assert listed(following) == [4, 3]


def test_list_all_pages_through_everything(run: RunCommand, local_aws: LocalResources) -> None:
    seed_outcomes(local_aws)

    result = run("list", "--table", local_aws.table_name, "--limit", "2", "--all", "--json")

    assert result.code == 0, result.err
    assert listed(result) == [6, 5, 4, 3, 2, 1]
    assert result.json()["nextPageToken"] is None
    shown = run("list", "--table", local_aws.table_name, "--limit", "2", "--all")
    assert "6 outcome(s)" in shown.out
    assert "more:" not in shown.out


def test_list_pages_through_outcomes_that_share_a_timestamp(
    run: RunCommand, local_aws: LocalResources
) -> None:
    for message_id in range(100, 107):
        put_outcome(local_aws, message_id, status="RESENT", attempts=1, updatedAt=AT)
    seen: list[int] = []
    token: str | None = None
    for _ in range(10):
        argv = ["list", "--table", local_aws.table_name, "--status", "RESENT", "--limit", "3", "--json"]
        result = run(*argv, *(["--page-token", token] if token else []))
        seen.extend(listed(result))
        token = result.json()["nextPageToken"]
        if token is None:
            break

    assert seen == list(range(106, 99, -1))


def test_list_rejects_a_forged_page_token(run: RunCommand, local_aws: LocalResources) -> None:
    result = run("list", "--table", local_aws.table_name, "--page-token", "not-a-token")

    assert_one_line_error(result, 2)
    assert "page token" in result.err


# -- invoke --------------------------------------------------------------------------------------------


def test_invoke_prints_the_batch_response_and_the_outcomes(
    run: RunCommand, function_env: dict[str, str], stub: CapillaryStub, tmp_path: Path
) -> None:
    event_path = event_file(tmp_path / "event.json", sqs_event(failure(ID), "not json"))

    result = run("invoke", str(event_path), "--json")

    assert result.code == 0, result.err
    (invocation,) = result.json()["invocations"]
    assert invocation["eventFile"] == "event.json"
    assert invocation["response"] == {"batchItemFailures": []}
    assert invocation["error"] is None
    resend, poison = invocation["outcomes"]
    assert resend["messageId"] == ID
    assert resend["status"] == "RESENT"
    assert resend["resentMessageId"] == stub.resend_calls[0].resent_message_id
    assert poison["status"] == "POISON"
    assert "JSON" in poison["detail"] or "json" in poison["detail"]

    text = run("invoke", str(event_path))
    assert text.code == 0, text.err
    assert 'event.json: {"batchItemFailures": []}' in text.out
    assert f"event.json  {ID}" in text.out  # the replay is acknowledged: same outcome, no second resend
    assert stub.resends_performed(ID) == 1


def test_invoke_with_sam_env_vars_file(
    run: RunCommand,
    local_aws: LocalResources,
    stub: CapillaryStub,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("OUTCOMES_TABLE", "CAPILLARY_SECRET_ID", "CAPILLARY_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    env = {"ResenderFunction": local_aws.environment(stub.base_url)}
    env_file = written(tmp_path / "env.json", json.dumps(env))
    event_path = event_file(tmp_path / "event.json", sqs_event(failure(ID)))

    result = run("invoke", str(event_path), "--env-vars", str(env_file), "--json")

    assert result.code == 0, result.err
    assert result.json()["invocations"][0]["outcomes"][0]["status"] == "RESENT"


def test_invoke_without_configuration_is_a_configuration_error(
    run: RunCommand, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CAPILLARY_BASE_URL", raising=False)
    event_path = event_file(tmp_path / "event.json", sqs_event(failure(ID)))

    result = run("invoke", str(event_path), "--table", "outcomes")

    assert_one_line_error(result, 2)
    assert "CAPILLARY" in result.err


def test_a_failed_invocation_prints_no_outcome_it_did_not_produce(
    run: RunCommand, function_env: dict[str, str], stub: CapillaryStub, tmp_path: Path
) -> None:
    resent = event_file(tmp_path / "resent.json", sqs_event(failure(ID)))
    assert run("invoke", str(resent)).code == 0
    # The same id again, in an event the handler refuses as a whole (records of two sources).
    mixed = sqs_event(failure(ID))
    mixed["Records"].append(sns_event(failure(ID + 1))["Records"][0])
    refused = event_file(tmp_path / "refused.json", mixed)

    result = run("invoke", str(refused), "--json")

    assert result.code == 1
    (document,) = result.json()["invocations"]
    assert document["error"]
    assert document["outcomes"] == []  # the table's RESENT row is the earlier invocation's, not this one's


def test_invoke_against_a_real_capillary_needs_yes_without_a_terminal(
    run: RunCommand, function_env: dict[str, str], stub: CapillaryStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CAPILLARY_BASE_URL", "https://eu.api.capillarytech.com")
    monkeypatch.setattr("sys.stdin", io.StringIO(""))

    refused = run("invoke", str(EVENTS / "sqs-plain.json"))

    assert_one_line_error(refused, 2)
    assert "--yes" in refused.err
    assert "Capillary https://eu.api.capillarytech.com" in refused.err


def test_invoke_against_real_aws_asks_on_a_terminal(
    run: RunCommand, function_env: dict[str, str], stub: CapillaryStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr("sys.stdin", Terminal("n\n"))
    asked: list[str] = []

    def answer(prompt: str) -> str:
        asked.append(prompt)
        return "n"

    monkeypatch.setattr("builtins.input", answer)

    declined = run("invoke", str(EVENTS / "sqs-plain.json"), "--endpoint-url", "https://dynamodb.example.com")

    assert_one_line_error(declined, 2)
    assert "not confirmed" in declined.err
    assert "AWS https://dynamodb.example.com" in asked[0]
    assert stub.resend_calls == []


def test_invoke_against_loopback_endpoints_does_not_ask(
    run: RunCommand, function_env: dict[str, str], stub: CapillaryStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("builtins.input", lambda prompt: pytest.fail(f"asked: {prompt}"))

    result = run("invoke", str(EVENTS / "sqs-plain.json"))

    assert result.code == 0, result.err


def test_invoke_json_verbose_keeps_results_on_stdout_and_logs_on_stderr(
    run: RunCommand, function_env: dict[str, str], stub: CapillaryStub
) -> None:
    result = run("invoke", str(EVENTS / "sqs-plain.json"), "--json", "--verbose")

    assert result.code == 0, result.err
    document = result.json()  # stdout is exactly one JSON document
    assert document["invocations"][0]["response"] == {"batchItemFailures": []}
    logged = [json.loads(line) for line in result.err.splitlines() if line.startswith("{")]
    assert any(line.get("message") == "resend outcome" for line in logged)


def test_invoke_of_a_missing_file_is_a_usage_error(run: RunCommand, tmp_path: Path) -> None:
    result = run("invoke", str(tmp_path / "absent.json"))

    assert_one_line_error(result, 2)


def test_invoke_local_starts_its_own_emulated_aws_and_stub(run: RunCommand, fresh_moto: None) -> None:
    result = run(
        "invoke", "--local", str(EVENTS / "sqs-plain.json"), str(EVENTS / "sqs-poison.json"), "--json"
    )

    assert result.code == 0, result.err
    plain, poison = result.json()["invocations"]
    assert plain["response"] == {"batchItemFailures": []}
    assert {row["status"] for row in plain["outcomes"]} == {"RESENT"}
    assert {row["status"] for row in poison["outcomes"]} == {"POISON"}


def test_invoke_local_of_the_events_glob_skips_the_env_vars_file(run: RunCommand, fresh_moto: None) -> None:
    files = sorted(str(path) for path in EVENTS.glob("*.json"))  # what the shell makes of events/*.json
    assert any(path.endswith("env.json") for path in files)

    result = run("invoke", "--local", *files, "--json")

    assert result.code == 0, result.err
    invoked = {document["eventFile"] for document in result.json()["invocations"]}
    assert invoked == {Path(path).name for path in files} - {"env.json"}
    assert "skipped" in result.err
    assert "env.json" in result.err


def test_invoke_of_a_file_that_is_not_json_names_the_file(run: RunCommand, tmp_path: Path) -> None:
    broken = written(tmp_path / "broken-event.json", '{"Records": [')

    result = run("invoke", "--local", str(broken))

    assert_one_line_error(result, 2)
    assert "broken-event.json" in result.err
    assert "not valid JSON" in result.err


def test_invoke_of_only_an_env_vars_file_is_a_usage_error(run: RunCommand) -> None:
    result = run("invoke", "--local", str(EVENTS / "env.json"))

    assert_one_line_error(result, 2)
    assert "no event files" in result.err


def test_version_prints_the_installed_version(run: RunCommand) -> None:
    from importlib.metadata import version

    result = run("--version")

    assert result.code == 0
    assert result.out.strip() == f"resender {version('communication-resender')}"


def test_python_dash_m_runs_the_same_command() -> None:
    import subprocess
    import sys
    from importlib.metadata import version

    done = subprocess.run(
        [sys.executable, "-m", "resender.cli", "--version"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.returncode == 0
    assert done.stdout.strip() == f"resender {version('communication-resender')}"


def test_local_up_serves_a_provisioned_stack_with_the_faults_asked_for(
    run: RunCommand, fresh_moto: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from resender.local.up import RunningStack, StubFaults, parse_fault, serve

    ready = threading.Event()
    stop = threading.Event()
    started: list[RunningStack] = []
    printed = io.StringIO()
    env_file = tmp_path / "env.json"
    faults = StubFaults(
        not_found=[ID + 1], rejected=[ID + 2], behaviours=dict([parse_fault(f"{ID + 3}=throttled")])
    )

    def on_ready(stack: RunningStack) -> None:
        started.append(stack)
        ready.set()

    server = threading.Thread(
        target=serve,
        args=(faults,),
        kwargs={
            "out": printed,
            "stop": stop,
            "aws_port": 0,
            "capillary_port": 0,
            "env_file": env_file,
            "on_ready": on_ready,
        },
    )
    server.start()
    try:
        assert ready.wait(30)
        (stack,) = started
        shown = printed.getvalue()
        for name, value in stack.environment().items():
            assert f"export {name}={value}" in shown
        assert stack.resources.table_name in shown
        assert "sam local invoke" in shown
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_REGION"):
            monkeypatch.delenv(name, raising=False)
        event = event_file(tmp_path / "event.json", sqs_event(*(failure(ID + n) for n in range(4))))

        result = run("invoke", "--env-vars", str(env_file), str(event), "--json")

        assert result.code == 0, result.err
        statuses = {row["messageId"]: row["status"] for row in result.json()["invocations"][0]["outcomes"]}
        assert statuses == {ID: "RESENT", ID + 1: "NOT_FOUND", ID + 2: "REJECTED", ID + 3: "RETRYING"}
        assert stack.stub.resends_performed(ID) == 1
    finally:
        stop.set()
        server.join(30)
    assert not server.is_alive()


def test_local_up_refuses_an_unknown_behaviour(run: RunCommand) -> None:
    result = run("local", "up", "--fault", f"{ID}=explode")

    assert_one_line_error(result, 2)
    assert "explode" in result.err


def test_invoke_local_refuses_aws_options(run: RunCommand) -> None:
    result = run("invoke", "--local", "--endpoint-url", "http://127.0.0.1:9", str(EVENTS / "sqs-plain.json"))

    assert_one_line_error(result, 2)
    assert "--endpoint-url" in result.err


def test_demo_runs_every_sample_event(run: RunCommand, fresh_moto: None) -> None:
    result = run("demo", "--events", str(EVENTS))

    assert result.code == 0, result.err
    assert "replaying every file caused 0 more" in result.out
    for command in ("list", "status", "resend", "redrive"):
        assert f"$ resender {command}" in result.out
    assert "unexpected exit code" not in result.out


# -- redrive -------------------------------------------------------------------------------------------


@pytest.fixture
def queues_env(local_aws: LocalResources, monkeypatch: pytest.MonkeyPatch) -> LocalResources:
    monkeypatch.setenv("SOURCE_QUEUE_URL", local_aws.queue_url)
    monkeypatch.setenv("DEAD_LETTER_QUEUE_URL", local_aws.dead_letter_queue_url)
    return local_aws


def test_redrive_of_an_empty_dlq_moves_nothing(run: RunCommand, queues_env: LocalResources) -> None:
    result = run("redrive")

    assert result.code == 0, result.err
    assert "empty" in result.out
    as_json = run("redrive", "--json")
    assert as_json.json()["moved"] == 0
    assert as_json.json()["skippedPoison"] == 0


def test_redrive_moves_failures_and_leaves_poison(run: RunCommand, queues_env: LocalResources) -> None:
    resources = queues_env
    bodies = [failure(ID + n) for n in range(3)]
    for body in bodies:
        send(resources, resources.dead_letter_queue_url, body)
    send(resources, resources.dead_letter_queue_url, "not json", poison_reason="body is not JSON")

    result = run("redrive", "--json")

    assert result.code == 0, result.err
    assert result.json()["moved"] == 3
    assert result.json()["skippedPoison"] == 1
    moved = drain(resources, resources.queue_url)
    assert sorted(message["Body"] for message in moved) == sorted(bodies)
    assert all(message["MessageAttributes"]["channel"]["StringValue"] == "SMS" for message in moved)
    # The poison message is visible again at once, not after the command's visibility timeout.
    (left,) = drain(resources, resources.dead_letter_queue_url)
    assert left["Body"] == "not json"
    assert left["MessageAttributes"][POISON_REASON_ATTRIBUTE]["StringValue"] == "body is not JSON"


def test_redrive_dry_run_counts_and_moves_nothing(run: RunCommand, queues_env: LocalResources) -> None:
    resources = queues_env
    for n in range(4):
        send(resources, resources.dead_letter_queue_url, failure(ID + n))
    send(resources, resources.dead_letter_queue_url, "{}", poison_reason="messageId is missing")

    result = run("redrive", "--dry-run")

    assert result.code == 0, result.err
    assert "Would move 4 message(s)" in result.out
    assert "Skipped 1 poison" in result.out
    assert drain(resources, resources.queue_url) == []
    assert len(drain(resources, resources.dead_letter_queue_url)) == 5


def test_redrive_max_bounds_the_moves(run: RunCommand, queues_env: LocalResources) -> None:
    resources = queues_env
    for n in range(5):
        send(resources, resources.dead_letter_queue_url, failure(ID + n))

    result = run("redrive", "--max", "2", "--json")

    assert result.json()["moved"] == 2
    assert len(drain(resources, resources.queue_url)) == 2
    assert len(drain(resources, resources.dead_letter_queue_url)) == 3


def test_redrive_include_poison_moves_it_with_its_reason(run: RunCommand, queues_env: LocalResources) -> None:
    resources = queues_env
    send(resources, resources.dead_letter_queue_url, '{"id": 5}', poison_reason="messageId is missing")

    result = run("redrive", "--include-poison", "--json")

    assert result.json()["moved"] == 1
    assert result.json()["movedPoison"] == 1
    (moved,) = drain(resources, resources.queue_url)
    assert moved["Body"] == '{"id": 5}'
    assert moved["MessageAttributes"][POISON_REASON_ATTRIBUTE]["StringValue"] == "messageId is missing"


def test_redrive_finds_one_queue_from_the_other(
    run: RunCommand, local_aws: LocalResources, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("SOURCE_QUEUE_URL", "DEAD_LETTER_QUEUE_URL"):
        monkeypatch.delenv(name, raising=False)
    send(local_aws, local_aws.dead_letter_queue_url, failure(ID))
    send(local_aws, local_aws.dead_letter_queue_url, failure(ID + 1))

    from_dlq = run("redrive", "--dlq-url", local_aws.dead_letter_queue_url, "--max", "1", "--json")
    from_source = run("redrive", "--queue-url", local_aws.queue_url, "--json")

    assert from_dlq.json()["queueUrl"] == local_aws.queue_url
    assert from_source.json()["deadLetterQueueUrl"] == local_aws.dead_letter_queue_url
    assert from_dlq.json()["moved"] + from_source.json()["moved"] == 2


def test_redrive_without_queues_is_a_configuration_error(
    run: RunCommand, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("SOURCE_QUEUE_URL", "DEAD_LETTER_QUEUE_URL"):
        monkeypatch.delenv(name, raising=False)

    result = run("redrive")

    assert_one_line_error(result, 2)
    assert "--queue-url" in result.err


def test_redrive_from_a_source_queue_without_redrive_policy_is_a_one_line_error(
    run: RunCommand, local_aws: LocalResources, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("SOURCE_QUEUE_URL", "DEAD_LETTER_QUEUE_URL"):
        monkeypatch.delenv(name, raising=False)
    lonely = boto3.client("sqs", endpoint_url=local_aws.endpoint_url).create_queue(QueueName="no-redrive")

    result = run("redrive", "--queue-url", lonely["QueueUrl"])

    assert_one_line_error(result, 2)
    assert "no redrive policy" in result.err and "--dlq-url" in result.err


@pytest.mark.parametrize("spelling", ["same", "trailing-slash"])
def test_redrive_refuses_a_source_queue_that_is_the_dead_letter_queue(
    run: RunCommand, queues_env: LocalResources, spelling: str
) -> None:
    send(queues_env, queues_env.dead_letter_queue_url, failure(ID))
    source = queues_env.dead_letter_queue_url + ("/" if spelling == "trailing-slash" else "")

    # --max bounds the run: without the refusal the message would be moved onto itself again and again.
    result = run(
        "redrive", "--queue-url", source, "--dlq-url", queues_env.dead_letter_queue_url, "--max", "3"
    )

    assert_one_line_error(result, 2)
    assert "same queue" in result.err
    assert [m["Body"] for m in drain(queues_env, queues_env.dead_letter_queue_url)] == [failure(ID)]


def test_redrive_progress_bar_goes_to_stderr(run: RunCommand, queues_env: LocalResources) -> None:
    for n in range(3):
        send(queues_env, queues_env.dead_letter_queue_url, failure(ID + n))

    result = run("redrive", "--progress")

    assert result.code == 0
    assert "\r[" in result.err
    assert "3/3" in result.err
    assert "moved 3" in result.err
    assert "Moved 3 message(s)" in result.out


def fail_the_nth(operation: str, n: int) -> Callable[[AwsTarget], Any]:
    """AwsTarget.sqs, with the n-th call of ``operation`` failing as if the network dropped."""
    original = AwsTarget.sqs
    calls = {"count": 0}

    def sqs_client(self: AwsTarget) -> Any:
        client = original(self)

        def maybe_fail(**_: Any) -> None:
            calls["count"] += 1
            if calls["count"] == n:
                raise EndpointConnectionError(endpoint_url="http://sqs.emulated")

        client.meta.events.register(f"before-call.sqs.{operation}", maybe_fail)
        return client

    return sqs_client


@pytest.mark.parametrize(
    ("operation", "duplicates"),
    [
        pytest.param("SendMessage", 0, id="before-sending-the-third"),
        pytest.param("DeleteMessage", 1, id="after-sending-the-third"),
    ],
)
def test_redrive_interrupted_halfway_loses_nothing_and_resends_nothing_twice(
    run: RunCommand,
    function_env: dict[str, str],
    local_aws: LocalResources,
    invoke: Invoke,
    stub: CapillaryStub,
    monkeypatch: pytest.MonkeyPatch,
    operation: str,
    duplicates: int,
) -> None:
    monkeypatch.setenv("SOURCE_QUEUE_URL", local_aws.queue_url)
    ids = [ID + n for n in range(6)]
    for message_id in ids:
        send(local_aws, local_aws.dead_letter_queue_url, failure(message_id))
    send(local_aws, local_aws.dead_letter_queue_url, "not json", poison_reason="body is not JSON")

    with monkeypatch.context() as patch:
        patch.setattr(AwsTarget, "sqs", fail_the_nth(operation, 3))
        interrupted = run("redrive")

    assert_one_line_error(interrupted, 2)
    assert "rerun" in interrupted.err
    # The function picks up what arrived before the interruption.
    first = consume(local_aws, invoke)
    assert len(first) == 2 + duplicates

    finished = run("redrive", "--json")

    assert finished.code == 0, finished.err
    assert finished.json()["moved"] == len(ids) - 2
    second = consume(local_aws, invoke)
    delivered = [message_id_of(message) for message in first + second]
    assert sorted(set(delivered)) == ids  # nothing lost
    assert len(delivered) == len(ids) + duplicates  # at most the one sent-but-not-deleted copy
    for message_id in ids:
        assert stub.resends_performed(message_id) == 1  # a duplicate copy is acknowledged, not resent
        item = read_item(local_aws, message_id)
        assert item["status"] == "RESENT"
        assert item["attempts"] == 1
    (poison,) = drain(local_aws, local_aws.dead_letter_queue_url)
    assert poison["Body"] == "not json"
    assert drain(local_aws, local_aws.queue_url) == []


# -- resend --------------------------------------------------------------------------------------------


def test_resend_a_new_failure_goes_through_the_claim_protocol(
    run: RunCommand, function_env: dict[str, str], stub: CapillaryStub, local_aws: LocalResources
) -> None:
    result = run("resend", str(ID), "--json")

    assert result.code == 0, result.err
    document = result.json()
    assert document["status"] == "RESENT"
    assert document["previousStatus"] is None
    assert document["forced"] is False
    assert document["resentMessageId"] == stub.resend_calls[0].resent_message_id
    assert document["outcome"]["attempts"] == 1
    assert stub.resends_performed(ID) == 1
    assert read_item(local_aws, ID)["status"] == "RESENT"


REFUSALS: dict[int, tuple[dict[str, Any], str]] = {
    ID: ({"status": "RESENT", "resentMessageId": 1748743190124}, "already resent"),
    ID + 1: ({"status": "UNCERTAIN", "errorMessage": "read timeout"}, "UNCERTAIN"),
    ID + 2: ({"status": "NOT_FOUND", "errorCode": 4223}, "settled as NOT_FOUND"),
    ID + 3: ({"status": "REJECTED", "errorCode": 400}, "settled as REJECTED"),
    ID + 4: ({"status": "SKIPPED", "errorMessage": "loop guard"}, "settled as SKIPPED"),
    ID + 5: (
        {"status": "IN_PROGRESS", "claimToken": "abc", "leaseExpiresAt": int(time.time()) + 600},
        "right now",
    ),
}


def test_resend_refuses_without_force(
    run: RunCommand, function_env: dict[str, str], stub: CapillaryStub, local_aws: LocalResources
) -> None:
    for message_id, (attributes, _) in REFUSALS.items():
        put_outcome(local_aws, message_id, attempts=1, updatedAt=AT, **attributes)

    for message_id, (attributes, why) in REFUSALS.items():
        result = run("resend", str(message_id))

        assert_one_line_error(result, 2)
        assert why in result.err
        assert "--force" in result.err
        assert read_item(local_aws, message_id)["status"] == attributes["status"]
    assert stub.resend_calls == []


def test_resend_force_on_uncertain_resends_once_and_records_it(
    run: RunCommand, function_env: dict[str, str], stub: CapillaryStub, local_aws: LocalResources
) -> None:
    put_outcome(local_aws, ID, status="UNCERTAIN", attempts=1, errorMessage="read timeout", updatedAt=AT)

    result = run(
        "resend", str(ID), "--force", "--operator", "alice", "--reason", "checked member care", "--json"
    )

    assert result.code == 0, result.err
    document = result.json()
    assert document["previousStatus"] == "UNCERTAIN"
    assert document["status"] == "RESENT"
    assert document["forced"] is True
    assert stub.resends_performed(ID) == 1
    item = read_item(local_aws, ID)
    assert item["status"] == "RESENT"
    assert item["forced"] is True
    assert item["forcedFrom"] == "UNCERTAIN"
    assert item["forcedBy"] == "alice"
    assert item["forceReason"] == "checked member care"
    assert item["attempts"] == 2
    assert "errorMessage" not in item
    assert "claimToken" not in item
    assert item["resentMessageId"] == document["resentMessageId"]
    # The resend is linked like any other, so the loop guard still counts it.
    assert read_item(local_aws, item["resentMessageId"])["resendOf"] == ID
    shown = run("status", str(ID))
    assert "from UNCERTAIN by alice" in shown.out

    again = run("resend", str(ID))
    assert_one_line_error(again, 2)
    assert stub.resends_performed(ID) == 1


def test_forced_by_defaults_to_the_caller_identity(
    run: RunCommand, function_env: dict[str, str], stub: CapillaryStub, local_aws: LocalResources
) -> None:
    put_outcome(local_aws, ID, status="UNCERTAIN", attempts=1, updatedAt=AT)
    caller = boto3.client("sts", region_name="us-east-1").get_caller_identity()["Arn"]

    result = run("resend", str(ID), "--force", "--json")

    assert result.code == 0, result.err
    assert caller.startswith("arn:aws:")
    assert read_item(local_aws, ID)["forcedBy"] == caller


def test_resend_force_on_resent_keeps_the_earlier_resend(
    run: RunCommand, function_env: dict[str, str], stub: CapillaryStub, local_aws: LocalResources
) -> None:
    run("resend", str(ID))
    earlier = stub.resend_calls[0].resent_message_id

    result = run("resend", str(ID), "--force", "--operator", "bob", "--json")

    assert result.code == 0, result.err
    assert result.json()["previousStatus"] == "RESENT"
    assert stub.resends_performed(ID) == 2  # asked for twice, the second time explicitly
    item = read_item(local_aws, ID)
    assert item["resentMessageId"] == stub.resend_calls[1].resent_message_id != earlier
    assert item["previousResentMessageId"] == earlier
    assert item["forcedFrom"] == "RESENT"
    assert f"previously resent as  {earlier}" in run("status", str(ID)).out


def test_a_forced_claim_is_conditional_on_what_the_operator_saw(local_aws: LocalResources) -> None:
    put_outcome(local_aws, ID, status="UNCERTAIN", attempts=1, updatedAt=AT)
    store = OutcomeStore(dynamodb(local_aws), local_aws.table_name)

    first = store.force_claim(ID, 60, expected_status=Status.UNCERTAIN, forced_by="alice")
    second = store.force_claim(ID, 60, expected_status=Status.UNCERTAIN, forced_by="bob")

    assert first is not None
    assert second is None
    assert read_item(local_aws, ID)["forcedBy"] == "alice"

    # Settled, forced and settled again by someone else: the status matches, the item is not the one seen.
    put_outcome(local_aws, ID + 1, status="UNCERTAIN", attempts=2, updatedAt="2026-01-01T00:05:00.000Z")
    changed = store.force_claim(
        ID + 1,
        60,
        expected_status=Status.UNCERTAIN,
        expected_updated_at=AT,
        forced_by="bob",
    )
    assert changed is None
    assert "forced" not in read_item(local_aws, ID + 1)


def test_resend_of_a_stale_claim_follows_the_protocol_into_uncertain(
    run: RunCommand, function_env: dict[str, str], stub: CapillaryStub, local_aws: LocalResources
) -> None:
    put_outcome(
        local_aws,
        ID,
        status="IN_PROGRESS",
        attempts=1,
        claimToken="vanished",
        leaseExpiresAt=int(time.time()) - 5,
        updatedAt=AT,
    )

    assert "(expired: the next delivery records UNCERTAIN)" in run("status", str(ID)).out

    result = run("resend", str(ID))

    assert result.code == 3, result.err  # not resent: the protocol settled it UNCERTAIN
    assert "IN_PROGRESS -> UNCERTAIN" in result.out
    assert stub.resend_calls == []


def test_resend_keeps_the_loop_guard_unless_forced(
    run: RunCommand, function_env: dict[str, str], stub: CapillaryStub, local_aws: LocalResources
) -> None:
    # A link item two resends deep: MAX_RESEND_DEPTH (2) says this one is not resent.
    put_outcome(local_aws, ID, resendOf=ID - 1, resendDepth=2, rootMessageId=ID - 2, linkedAt=AT)

    skipped = run("resend", str(ID), "--json")
    assert skipped.json()["status"] == "SKIPPED"
    assert stub.resend_calls == []

    forced = run("resend", str(ID), "--force", "--json")
    assert forced.json()["status"] == "RESENT"
    assert forced.json()["forced"] is True
    assert stub.resends_performed(ID) == 1


@pytest.mark.parametrize(
    ("behaviour", "status"),
    [
        (Behaviour.REJECTED, "REJECTED"),
        (Behaviour.NOT_FOUND, "NOT_FOUND"),
        (Behaviour.THROTTLED, "RETRYING"),
        (Behaviour.HANG_AFTER_RESEND, "UNCERTAIN"),
    ],
)
def test_resend_that_capillary_answered_without_resending_exits_3(
    run: RunCommand,
    function_env: dict[str, str],
    stub: CapillaryStub,
    monkeypatch: pytest.MonkeyPatch,
    behaviour: Behaviour,
    status: str,
) -> None:
    monkeypatch.setenv("CAPILLARY_TIMEOUT_SECONDS", "0.5")
    stub.script(ID, behaviour)

    result = run("resend", str(ID), "--json")

    assert result.code == 3, result.err
    document = result.json()
    assert document["status"] == status
    assert document["reachedCapillary"] is True


def test_resend_that_resent_exits_0(
    run: RunCommand, function_env: dict[str, str], stub: CapillaryStub
) -> None:
    result = run("resend", str(ID))

    assert result.code == 0, result.err
    assert "no outcome -> RESENT" in result.out


def test_resend_with_a_secret_that_cannot_be_read_exits_4_and_blames_secrets_manager(
    run: RunCommand, function_env: dict[str, str], stub: CapillaryStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CAPILLARY_SECRET_ID", "no/such/secret")

    result = run("resend", str(ID))

    assert result.code == 4
    assert "Secrets Manager" in result.out
    assert "ResourceNotFoundException" in result.out
    assert "not reached" in result.err
    assert stub.resend_calls == []


def test_resend_with_capillary_down_exits_4(
    run: RunCommand, function_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as closed:  # a port nobody listens on: the connection is refused
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    monkeypatch.setenv("CAPILLARY_BASE_URL", f"http://127.0.0.1:{port}")

    result = run("resend", str(ID), "--json")

    assert result.code == 4
    assert result.json()["reachedCapillary"] is False
    assert "not sent" in result.json()["reason"]


def test_resend_without_the_function_settings_is_a_configuration_error(
    run: RunCommand, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OUTCOMES_TABLE", "outcomes")
    monkeypatch.delenv("CAPILLARY_BASE_URL", raising=False)
    monkeypatch.setenv("CAPILLARY_SECRET_ID", "capillary/resender")

    result = run("resend", str(ID))

    assert_one_line_error(result, 2)
    assert "CAPILLARY_BASE_URL" in result.err


@pytest.mark.parametrize(
    ("argv", "module", "extra"),
    [
        (["status", str(ID)], "boto3", "cli"),
        (["demo"], "moto", "local"),
        (["local", "up"], "moto", "local"),
        (["invoke", "--local", str(EVENTS / "sqs-plain.json")], "moto", "local"),
    ],
)
def test_a_missing_optional_dependency_is_one_line_naming_the_extra(
    run: RunCommand, monkeypatch: pytest.MonkeyPatch, argv: list[str], module: str, extra: str
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # what an environment without it looks like to import

    result = run(*argv)

    assert_one_line_error(result, 2)
    assert f"communication-resender[{extra}]" in result.err


def test_invoke_shows_in_batch_duplicates_and_replays_as_duplicate(
    run: RunCommand, function_env: dict[str, str], stub: CapillaryStub
) -> None:
    duplicates = str(EVENTS / "sqs-batch-duplicates.json")

    first = run("invoke", duplicates, "--json")
    replay = run("invoke", duplicates, "--json")

    assert first.code == replay.code == 0, first.err + replay.err
    rows = first.json()["invocations"][0]["outcomes"]
    by_id: dict[int, list[dict[str, Any]]] = {}
    for row in rows:
        by_id.setdefault(row["messageId"], []).append(row)
    assert any(len(same) > 1 for same in by_id.values())  # the file does hold an in-batch duplicate
    for message_id, same in by_id.items():
        settled = same[0]["status"]
        assert settled in {"RESENT", "NOT_FOUND"}
        assert all(row["status"] == "DUPLICATE" and row["foundStatus"] == settled for row in same[1:])
        assert stub.resends_performed(message_id) == (1 if settled == "RESENT" else 0)
    replayed = replay.json()["invocations"][0]["outcomes"]
    assert {row["status"] for row in replayed} == {"DUPLICATE"}
    assert {row["foundStatus"] for row in replayed} == {"RESENT", "NOT_FOUND"}
    shown = run("invoke", duplicates)
    assert "DUPLICATE (RESENT)" in shown.out
    table = shown.out.split("\n\n", 1)[1].splitlines()[2:]
    statuses = [re.split(r"\s{2,}", line.strip())[2] for line in table if line.strip()]
    assert statuses and "RESENT" not in statuses  # no row of the replay claims a resend


def test_invoke_local_ends_with_the_resends_the_stub_performed(run: RunCommand, fresh_moto: None) -> None:
    result = run("invoke", "--local", str(EVENTS / "sqs-plain.json"), str(EVENTS / "sqs-poison.json"))

    assert result.code == 0, result.err
    last = result.out.strip().splitlines()[-1]
    resent = result.out.count(" RESENT ")
    assert last == f"The Capillary stub performed {resent} resend(s)."


def test_demo_says_what_it_started_shows_duplicates_as_such_and_fits_100_columns(
    run: RunCommand, fresh_moto: None
) -> None:
    result = run("demo", "--events", str(EVENTS), "--no-operator-commands")

    assert result.code == 0, result.err
    assert result.out.startswith("Started, on this machine only")
    assert "DUPLICATE (RESENT)" in result.out  # sqs-batch-duplicates.json holds one id twice
    assert "Authorization: Basic <redacted>" in result.out
    assert "server123" not in result.out
    assert max(len(line) for line in result.out.splitlines()) <= 100
