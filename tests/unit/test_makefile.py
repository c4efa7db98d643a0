"""The Makefile is the front door: ``make help`` must list every target a developer can run."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def phony_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    declared = re.search(r"^\.PHONY:(.*)$", text, re.MULTILINE)
    assert declared is not None
    return set(declared.group(1).split())


def test_make_help_lists_every_phony_target_with_a_description() -> None:
    shown = subprocess.run(
        ["make", "--no-print-directory", "-C", str(ROOT), "help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    described = {
        match.group(1): match.group(2) for match in re.finditer(r"^make (\S+)\s+(\S.*)$", shown, re.MULTILINE)
    }
    assert set(described) == phony_targets()
