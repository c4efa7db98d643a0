"""Run the Lambda handler on this machine, the way ``sam local invoke`` would, without a container."""

from __future__ import annotations

import contextlib
import io
import json
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext

from resender.local.aws import LocalResources, MotoServer, patched_environ, provision
from resender.local.stub import CapillaryStub

#: Credentials the local stub accepts; the demo stores them in the emulated Secrets Manager.
DEMO_SECRET = {"authType": "basic", "username": "store.server", "password": "server123"}
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


def load_event(path: Path) -> dict[str, Any]:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a UTF-8 text file") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error.msg} at line {error.lineno})") from None
    if not isinstance(document, dict):
        raise ValueError(f"{path}: an event file holds one JSON object")
    return document


def is_env_vars_file(document: dict[str, Any]) -> bool:
    """A ``sam local invoke --env-vars`` file (``{"Parameters": {...}}`` or ``{"<Function>": {...}}``).

    Such a file sits beside the events, so ``events/*.json`` names it too; it is no event to invoke.
    """
    return (
        "Records" not in document
        and bool(document)
        and all(isinstance(section, dict) for section in document.values())
    )


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
    stub: CapillaryStub


@contextmanager
def local_stack(latency_seconds: float = 0.0) -> Iterator[LocalStack]:
    """Emulated AWS and a Capillary stub, with the function's environment pointed at both."""
    from resender.app import reset_container

    with MotoServer() as moto, CapillaryStub(latency_seconds=latency_seconds) as stub:
        stub.not_found_ids.add(DOCUMENTED_NOT_FOUND_ID)
        resources = provision(moto.endpoint_url, DEMO_SECRET)
        with patched_environ(resources.environment(stub.base_url)):
            reset_container()
            try:
                yield LocalStack(resources, stub)
            finally:
                reset_container()
