"""Run the Lambda handler on this machine, the way ``sam local invoke`` would, without a container."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext

from resender.local.aws import LocalResources, MotoServer, lambda_record, patched_environ, provision
from resender.local.stub import ORG_ID, CapillaryStub

#: Credentials the local stub accepts; the demo stores them in the emulated Secrets Manager.
DEMO_SECRET = {"authType": "basic", "username": "store.server", "password": "server123"}
#: The second org of the local stack: its own OAuth client, on a cluster (stub) of its own.
SECOND_ORG_ID = 200002
SECOND_ORG_SECRET = {"authType": "oauth", "clientKey": "org-200002-key", "clientSecret": "org-200002-secret"}
SECOND_ORG_FIRST_RESENT_ID = 1_748_900_000_000
#: What the local stack's function reads beyond the emulated resources: records that name no org belong to
#: the first org, and two of the sample events exercise rules that are off by default.
LOCAL_POLICY_ENV = {
    "ORG_ID_PATH": f"orgId || `{ORG_ID}`",
    "RESEND_CHANNELS": "SMS,EMAIL,WHATSAPP,PUSH",
    "SKIP_WHEN": "contains(tags || `[]`, 'no-resend')",
}
#: Capillary's own documentation uses this id for a message that does not exist (answer 4223).
DOCUMENTED_NOT_FOUND_ID = 174606165


@dataclass
class LocalContext:
    """The parts of Lambda's context object that the handler and Powertools read.

    The default timeout is the template's default ``FunctionTimeout``, so a local run is refused or accepted
    as the deployed function would be.
    """

    timeout_seconds: float = 180.0
    function_name: str = "resender-local"
    function_version: str = "$LATEST"
    memory_limit_in_mb: int = 256
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:resender-local"
    log_group_name: str = "/aws/lambda/resender-local"
    log_stream_name: str = "local"
    _started: float = field(default_factory=time.monotonic)

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.timeout_seconds - (time.monotonic() - self._started)) * 1000))


@dataclass(frozen=True, slots=True)
class Invocation:
    event_file: str
    response: dict[str, Any] | None
    error: str | None
    emitted: str  # what the handler printed (EMF metric blobs)


def load_event(path: Path, *, delivered_now: bool = True) -> dict[str, Any]:
    """An event file, by default as if delivered now (see :func:`as_delivered_now`)."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a UTF-8 text file") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error.msg} at line {error.lineno})") from None
    if not isinstance(document, dict):
        raise ValueError(f"{path}: an event file holds one JSON object")
    return as_delivered_now(document) if delivered_now else document


def as_delivered_now(event: dict[str, Any], now: float | None = None) -> dict[str, Any]:
    """A copy of ``event`` whose envelope times (SQS ``SentTimestamp``, SNS ``Timestamp``, EventBridge
    ``time``) are ``now``, as if the queue or topic had just delivered it.

    The sample files were captured long ago; replayed as they are, the resend policy's age rule would skip
    every one of them. A payload's own ``failedAt`` is left alone: that is the failure's time, not the
    delivery's.
    """
    moment = time.time() if now is None else now
    millis = str(int(moment * 1000))
    iso = datetime.fromtimestamp(moment, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    fresh = copy.deepcopy(event)
    for record in fresh.get("Records", []):
        if not isinstance(record, dict):
            continue
        attributes = record.get("attributes")
        if isinstance(attributes, dict):
            for name in ("SentTimestamp", "ApproximateFirstReceiveTimestamp"):
                if name in attributes:
                    attributes[name] = millis
        sns = record.get("Sns")
        if isinstance(sns, dict) and "Timestamp" in sns:
            sns["Timestamp"] = iso
        body = record.get("body")
        if isinstance(body, str):
            record["body"] = _restamped_body(body, iso)
    return fresh


def _restamped_body(body: str, iso: str) -> str:
    try:
        document = json.loads(body)
    except ValueError:
        return body  # poison samples stay byte for byte what they were
    if not isinstance(document, dict):
        return body
    if document.get("Type") == "Notification" and "Timestamp" in document:
        document["Timestamp"] = iso
    elif "detail-type" in document and "time" in document:
        document["time"] = iso
    else:
        return body
    return json.dumps(document)


def is_env_vars_file(document: dict[str, Any]) -> bool:
    """A ``sam local invoke --env-vars`` file (``{"Parameters": {...}}`` or ``{"<Function>": {...}}``).

    Such a file sits beside the events, so ``events/*.json`` names it too; it is no event to invoke.
    """
    return (
        "Records" not in document
        and bool(document)
        and all(isinstance(section, dict) for section in document.values())
    )


def sqs_event(messages: Sequence[Mapping[str, Any]], queue_arn: str) -> dict[str, Any]:
    """The event Lambda's SQS event source mapping would hand the function for ``messages`` (as
    ReceiveMessage returns them, with ``AttributeNames=["All"]``)."""
    return {"Records": [lambda_record(message, queue_arn) for message in messages]}


def invoke(event: dict[str, Any], event_file: str = "<event>", timeout_seconds: float = 180.0) -> Invocation:
    """Call the real handler once; a raised error is reported, as Lambda would report it."""
    from resender.app import lambda_handler

    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            # LocalContext has every attribute the handler and Powertools read from Lambda's context.
            response = lambda_handler(event, cast("LambdaContext", LocalContext(timeout_seconds)))
    except Exception as error:
        return Invocation(event_file, None, f"{type(error).__name__}: {error}", printed.getvalue())
    return Invocation(event_file, response, None, printed.getvalue())


@dataclass
class LocalStack:
    resources: LocalResources
    stub: CapillaryStub  # org 100737, at CAPILLARY_BASE_URL
    second_org: CapillaryStub  # org 200002, at the baseUrl the secret gives it
    #: The function's environment for this stack, as ``local_stack`` sets it for the in-process handler.
    environment: dict[str, str] = field(default_factory=dict)


def local_secret(second_org_base_url: str) -> dict[str, Any]:
    """A several-orgs secret: the first org on CAPILLARY_BASE_URL, the second on a cluster of its own."""
    return {
        "orgs": {
            str(ORG_ID): DEMO_SECRET,
            str(SECOND_ORG_ID): {**SECOND_ORG_SECRET, "baseUrl": second_org_base_url},
        }
    }


@contextmanager
def local_stack(latency_seconds: float = 0.0) -> Iterator[LocalStack]:
    """Emulated AWS and two orgs' Capillary stubs, with the function's environment pointed at them."""
    from resender.app import reset_container

    second = CapillaryStub(
        org_id=SECOND_ORG_ID,
        username="org-200002-till",
        password="org-200002-password",  # noqa: S106 - a local stub's credentials
        client_key=SECOND_ORG_SECRET["clientKey"],
        client_secret=SECOND_ORG_SECRET["clientSecret"],
        latency_seconds=latency_seconds,
        first_resent_id=SECOND_ORG_FIRST_RESENT_ID,
    )
    with MotoServer() as moto, CapillaryStub(latency_seconds=latency_seconds) as stub, second:
        stub.not_found_ids.add(DOCUMENTED_NOT_FOUND_ID)
        resources = provision(moto.endpoint_url, local_secret(second.base_url))
        environment = {**resources.environment(stub.base_url), **LOCAL_POLICY_ENV}
        # The handler runs in this process, and Lambda gives a handler its settings as its environment.
        with patched_environ(environment):
            reset_container()
            try:
                yield LocalStack(resources, stub, second, environment)
            finally:
                reset_container()
