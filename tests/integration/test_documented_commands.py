"""Every ``resender`` command shown in README.md and docs/ is valid as written, and the local ones run.

A command is *local* when it needs no AWS account: it brings its own emulated AWS and Capillary stub
(``--local``, ``demo``) or only prints (``--help``, ``--version``). Those run here, through the command's
entry point, after the shell has expanded their globs. Every other one is parsed exactly as written, so a
renamed option or subcommand in the documentation fails the build.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from resender import cli
from resender.local.aws import MotoServer

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_FENCE = re.compile(r"^```(?:sh|bash|shell|console)?\s*$")
_PROGRAM = re.compile(r"^(?:\.venv/bin/)?resender(?=\s|$)")


def documented_commands() -> list[tuple[str, int, str]]:
    """(document path, line number, command) for each ``resender`` line inside a shell code block."""
    found = []
    for document in DOCUMENTS:
        in_block = inside = False
        for number, line in enumerate(document.read_text(encoding="utf-8").splitlines(), start=1):
            if line.startswith("```"):
                in_block = not in_block
                inside = in_block and bool(_FENCE.match(line))  # a shell block, not JSON or YAML
                continue
            command = line.strip()
            if inside and _PROGRAM.match(command):
                found.append((str(document.relative_to(ROOT)), number, command))
    return found


def argv_of(command: str) -> list[str]:
    """The arguments of one command line: comments dropped, globs expanded as the shell would."""
    first = re.split(r"\s*(?:&&|\||;)\s*", command.split(" #", 1)[0])[0]
    words = shlex.split(first)[1:]
    expanded: list[str] = []
    for word in words:
        matches = sorted(ROOT.glob(word)) if any(c in word for c in "*?[") else []
        expanded += [str(match) for match in matches] or [word]
    return [str(ROOT / word) if (ROOT / word).is_file() and "/" in word else word for word in expanded]


def is_local(argv: list[str]) -> bool:
    return bool(argv) and ("--local" in argv or argv[0] in {"demo", "--version"} or "--help" in argv)


COMMANDS = documented_commands()
LOCAL = [(doc, line, command) for doc, line, command in COMMANDS if is_local(argv_of(command))]


def test_the_documents_show_commands_and_local_ones() -> None:
    assert len(COMMANDS) >= 20
    assert LOCAL


@pytest.mark.parametrize(("document", "line", "command"), COMMANDS, ids=[f"{d}:{n}" for d, n, _ in COMMANDS])
def test_every_documented_command_parses_as_written(document: str, line: int, command: str) -> None:
    argv = argv_of(command)
    try:
        cli.build_parser().parse_args(argv)
    except SystemExit as stop:
        assert stop.code == 0, f"{document}:{line}: {command}"


@pytest.fixture
def empty_emulator(moto_server: MotoServer) -> Iterator[None]:
    """The local commands start their own moto server in this process, which shares moto's state."""
    requests.post(f"{moto_server.endpoint_url}/moto-api/reset", timeout=10).raise_for_status()
    yield
    requests.post(f"{moto_server.endpoint_url}/moto-api/reset", timeout=10).raise_for_status()


@pytest.mark.parametrize(("document", "line", "command"), LOCAL, ids=[f"{d}:{n}" for d, n, _ in LOCAL])
def test_every_local_command_runs_as_written(
    document: str, line: int, command: str, empty_emulator: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    try:
        code = cli.main(argv_of(command))
    except SystemExit as stop:  # --help and --version end inside argparse
        code = int(stop.code or 0)

    assert code == 0, f"{document}:{line}: {command}"
