"""Shared fixtures: a moto server over real HTTP, the Capillary stub, and the function wired to both."""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, cast

import boto3
import pytest
import requests

from resender import app
from resender.dynamodb_codec import PlainValue, item_to_plain, to_item
from resender.local.aws import LocalResources, MotoServer, provision
from resender.local.runner import DEMO_SECRET, DOCUMENTED_NOT_FOUND_ID, LocalContext
from resender.local.stub import CapillaryStub
from resender.observability import logger as resender_logger
from tests.fixture_types import DrainDeadLetters, ReadOutcome, SetSecret

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext

FAKE_AWS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}
OAUTH_SECRET = {"authType": "oauth", "clientKey": "demo-client-key", "clientSecret": "demo-client-secret"}


#: Each test folder is one kind of test; its marker lets ``-m unit`` (etc.) pick a kind wherever it runs.
KIND_BY_FOLDER = {"unit": "unit", "integration": "integration", "template": "template"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        folder = item.path.parent.name
        if folder in KIND_BY_FOLDER:
            item.add_marker(KIND_BY_FOLDER[folder])


@pytest.fixture(autouse=True)
def _isolated_aws_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may reach a real AWS account or read the developer's profile."""
    for name, value in FAKE_AWS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    with MotoServer() as server:
        yield server


@pytest.fixture
def local_aws(moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch) -> LocalResources:
    """A fresh emulated stack (table, secret, queues) for each test."""
    requests.post(f"{moto_server.endpoint_url}/moto-api/reset", timeout=10).raise_for_status()
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server.endpoint_url)
    return provision(moto_server.endpoint_url, DEMO_SECRET)


@pytest.fixture
def stub() -> Iterator[CapillaryStub]:
    with CapillaryStub() as capillary:
        capillary.not_found_ids.add(DOCUMENTED_NOT_FOUND_ID)
        yield capillary


@pytest.fixture
def function_env(
    local_aws: LocalResources, stub: CapillaryStub, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, str]]:
    """The function's environment pointed at the emulated stack and the stub; a fresh container."""
    environment = local_aws.environment(stub.base_url)
    environment["CAPILLARY_TIMEOUT_SECONDS"] = "2"
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    app.reset_container()
    yield environment
    app.reset_container()


Invoke = Callable[..., dict[str, Any]]


@pytest.fixture
def invoke(function_env: dict[str, str]) -> Invoke:
    """Call the real handler as Lambda would."""

    def call(event: dict[str, Any], timeout_seconds: float = 30.0) -> dict[str, Any]:
        return app.lambda_handler(event, cast("LambdaContext", LocalContext(timeout_seconds)))

    return call


def put_outcome(resources: LocalResources, message_id: int, **attributes: PlainValue) -> None:
    """Write the outcome item of ``message_id`` as it stands, as another container or an earlier run left it."""
    boto3.client("dynamodb", endpoint_url=resources.endpoint_url).put_item(
        TableName=resources.table_name, Item=to_item({"messageId": message_id, **attributes})
    )


@pytest.fixture
def outcome(local_aws: LocalResources) -> ReadOutcome:
    """The outcome item stored for a messageId, as plain values."""
    client = boto3.client("dynamodb", endpoint_url=local_aws.endpoint_url)

    def read(message_id: int) -> dict[str, Any] | None:
        item = client.get_item(TableName=local_aws.table_name, Key=to_item({"messageId": message_id}))
        typed = item.get("Item")
        return None if typed is None else item_to_plain(typed)

    return read


@pytest.fixture
def set_secret(local_aws: LocalResources) -> SetSecret:
    """A new version of the Capillary secret: any JSON document, an org map included."""
    client = boto3.client("secretsmanager", endpoint_url=local_aws.endpoint_url)

    def put(secret: dict[str, Any]) -> None:
        client.put_secret_value(SecretId=local_aws.secret_id, SecretString=json.dumps(secret))

    return put


def drain(resources: LocalResources, queue_url: str) -> list[dict[str, Any]]:
    """Receive every visible message of a queue, with its attributes (each stays hidden for a minute, so none
    is returned twice)."""
    client = boto3.client("sqs", endpoint_url=resources.endpoint_url)
    messages: list[dict[str, Any]] = []
    while batch := client.receive_message(
        QueueUrl=queue_url,
        MaxNumberOfMessages=10,
        MessageAttributeNames=["All"],
        AttributeNames=["All"],
        VisibilityTimeout=60,
    ).get("Messages", []):
        messages.extend(cast("list[dict[str, Any]]", batch))
    return messages


@pytest.fixture
def dead_letters(local_aws: LocalResources) -> DrainDeadLetters:
    """Every message now in the dead-letter queue, with its attributes."""
    return functools.partial(drain, local_aws, local_aws.dead_letter_queue_url)


class _Capture(logging.Handler):
    def __init__(self, formatter: logging.Formatter) -> None:
        super().__init__(level=logging.DEBUG)
        self.setFormatter(formatter)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def log_lines() -> Iterator[list[str]]:
    """Every line the function logs during the test, formatted exactly as CloudWatch would receive it."""
    capture = _Capture(resender_logger.registered_formatter)
    previous = resender_logger.log_level
    resender_logger.addHandler(capture)
    resender_logger.setLevel("DEBUG")
    yield capture.lines
    # Powertools proxies removeHandler to its standard logger without declaring it: remove it there.
    logging.getLogger(resender_logger.name).removeHandler(capture)
    resender_logger.setLevel(previous)
