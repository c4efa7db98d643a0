"""``resender local up``: the whole local stack in one command, and exactly how to point things at it.

Starts the emulated AWS and the Capillary stub on fixed loopback ports, creates the table, queues and secret
as ``template.yaml`` does, prints the URLs and the environment to use (for ``resender`` itself, for
``sam local invoke`` on a machine with Docker, and for scripts), then serves until interrupted. The stub
can be told which ids are unknown, which are rejected and which misbehave, so that every status of the
runbook can be reproduced on a laptop.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, TextIO

from resender.local.aws import LocalResources, MotoServer, provision
from resender.local.runner import DEMO_SECRET, DOCUMENTED_NOT_FOUND_ID
from resender.local.stub import Behaviour, CapillaryStub

DEFAULT_AWS_PORT: Final = 5000
DEFAULT_CAPILLARY_PORT: Final = 8080
#: The function's logical id in template.yaml: ``sam local invoke --env-vars`` keys the settings by it.
FUNCTION_LOGICAL_ID: Final = "ResenderFunction"
# A faulty id answers the same way on every call of a local session, not only the first.
_SCRIPTED_CALLS: Final = 10_000


@dataclass(frozen=True, slots=True)
class StubFaults:
    """How the stub answers chosen ids: unknown (4223), rejected (400), or any scripted behaviour."""

    not_found: Sequence[int] = ()
    rejected: Sequence[int] = ()
    behaviours: Mapping[int, Behaviour] = field(default_factory=dict)
    fail_next: Sequence[Behaviour] = ()


@dataclass(frozen=True, slots=True)
class RunningStack:
    resources: LocalResources
    stub: CapillaryStub

    def environment(self) -> dict[str, str]:
        """The function's settings for this stack, dummy AWS credentials included (loopback only)."""
        return {**self.resources.environment(self.stub.base_url), "CAPILLARY_TIMEOUT_SECONDS": "5"}


def parse_fault(text: str) -> tuple[int, Behaviour]:
    """``ID=BEHAVIOUR`` as given to ``--fault``."""
    message_id, _, behaviour = text.partition("=")
    try:
        return int(message_id), Behaviour(behaviour.strip().lower())
    except ValueError:
        choices = ", ".join(sorted(item.value for item in Behaviour))
        raise ValueError(f"--fault {text!r}: expected ID=BEHAVIOUR, BEHAVIOUR one of {choices}") from None


@contextmanager
def running_stack(
    faults: StubFaults, *, aws_port: int = DEFAULT_AWS_PORT, capillary_port: int = DEFAULT_CAPILLARY_PORT
) -> Iterator[RunningStack]:
    with MotoServer(port=aws_port) as moto, CapillaryStub(port=capillary_port) as stub:
        stub.not_found_ids.update({DOCUMENTED_NOT_FOUND_ID, *faults.not_found})
        stub.rejected_ids.update(faults.rejected)
        for message_id, behaviour in faults.behaviours.items():
            stub.script(message_id, *([behaviour] * _SCRIPTED_CALLS))
        if faults.fail_next:
            stub.fail_next(*faults.fail_next)
        yield RunningStack(provision(moto.endpoint_url, DEMO_SECRET), stub)


def describe(stack: RunningStack, env_file: Path | None) -> str:
    """What an operator needs to use the stack: what runs where, what exists, and the environment."""
    resources, environment = stack.resources, stack.environment()
    lines = [
        "Started:",
        f"  emulated AWS (moto)   {resources.endpoint_url}",
        f"  Capillary stub        {stack.stub.base_url}   (basic auth store.server / server123,",
        "                        Capillary's published demo credentials)",
        "Created in the emulated AWS:",
        f"  table    {resources.table_name}",
        f"  queue    {resources.queue_url}",
        f"  DLQ      {resources.dead_letter_queue_url}",
        f"  secret   {resources.secret_id}",
        "",
        "Environment (dummy AWS credentials: the emulator accepts any, they reach no account):",
        *(f"  export {name}={value}" for name, value in environment.items()),
        "",
        "Then, in another shell with that environment:",
        "  resender invoke --yes events/sqs-plain.json",
        "  resender status 1746061653596",
    ]
    if env_file is not None:
        lines += [
            "",
            f"Wrote {env_file} for sam local invoke (on a machine with Docker):",
            f"  sam local invoke {FUNCTION_LOGICAL_ID} -e events/sqs-plain.json --env-vars {env_file} \\",
            "    --docker-network host",
            "  (Docker Desktop: replace 127.0.0.1 by host.docker.internal in that file)",
        ]
    lines += ["", "Ctrl-C stops both."]
    return "\n".join(lines)


def write_env_file(stack: RunningStack, path: Path) -> None:
    environment = stack.environment()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({FUNCTION_LOGICAL_ID: environment}, indent=2) + "\n", encoding="utf-8")


def serve(
    faults: StubFaults,
    *,
    out: TextIO,
    stop: threading.Event,
    aws_port: int = DEFAULT_AWS_PORT,
    capillary_port: int = DEFAULT_CAPILLARY_PORT,
    env_file: Path | None = None,
    on_ready: Callable[[RunningStack], None] | None = None,
) -> None:
    """Run the stack until ``stop`` is set (the command sets it on Ctrl-C or SIGTERM)."""
    with running_stack(faults, aws_port=aws_port, capillary_port=capillary_port) as stack:
        if env_file is not None:
            write_env_file(stack, env_file)
        print(describe(stack, env_file), file=out, flush=True)
        if on_ready is not None:
            on_ready(stack)
        stop.wait()
