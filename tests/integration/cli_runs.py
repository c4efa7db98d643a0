"""Running the ``resender`` command in this process, the way an operator's shell would, and what it printed."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import pytest

from resender import cli


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


class RunCommand(Protocol):
    def __call__(self, *argv: str) -> Run: ...


def run_command(capsys: pytest.CaptureFixture[str], argv: Sequence[str]) -> Run:
    """The exit code and what went to stdout and stderr; ``--help`` and usage errors end in argparse."""
    capsys.readouterr()
    try:
        code = cli.main(list(argv))
    except SystemExit as stop:
        code = int(stop.code or 0)
    captured = capsys.readouterr()
    return Run(code, captured.out, captured.err)
