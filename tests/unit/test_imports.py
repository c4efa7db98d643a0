"""The handler imports only what an invocation uses: no X-Ray SDK unless asked for, no boto3 (s3transfer)."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PROBE = "import json, sys; import resender.app; print(json.dumps(sorted(sys.modules)))"


def modules_after_importing_the_handler(**environment: str) -> set[str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("XRAY_")}
    env.update(environment)
    done = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True, timeout=120
    )
    return set(json.loads(done.stdout))


def test_the_handler_does_not_import_the_xray_sdk_or_boto3_by_default() -> None:
    loaded = modules_after_importing_the_handler()

    assert "resender.app" in loaded
    assert not {name for name in loaded if name.startswith(("aws_xray_sdk", "boto3", "s3transfer"))}


@pytest.mark.parametrize("value", ["true", "TRUE", " true "])
def test_sdk_tracing_is_opt_in(value: str) -> None:
    loaded = modules_after_importing_the_handler(XRAY_SDK_TRACING=value)

    assert "aws_xray_sdk.core" in loaded


def test_the_operator_tool_and_the_local_stack_are_not_imported_by_the_handler() -> None:
    loaded = modules_after_importing_the_handler()

    assert not {name for name in loaded if name.startswith(("resender.local", "resender.cli", "moto"))}


SOURCE = Path(__file__).resolve().parents[2] / "src" / "resender"
#: The function core may import neither; the local stack serves the operator tool, not the other way round.
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "core": ("resender.cli", "resender.local"),
    "local": ("resender.cli",),
    "cli": (),
}


def layer_of(relative: Path) -> str:
    top = relative.parts[0]
    return top if top in ("cli", "local") else "core"


def module_name(relative: Path) -> str:
    parts = ("resender", *relative.with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, relative: Path) -> set[str]:
    """Every module ``path`` imports, at the top, inside functions or under TYPE_CHECKING alike."""
    names: set[str] = set()
    name = module_name(relative)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            # ``from resender import cli`` imports the module resender.cli.
            names.update([base, *(f"{base}.{alias.name}" for alias in node.names)])
    return names


def layering_violations(source: Path = SOURCE) -> list[str]:
    violations = []
    for path in sorted(source.rglob("*.py")):
        relative = path.relative_to(source)
        forbidden = FORBIDDEN[layer_of(relative)]
        for name in sorted(imported_modules(path, relative)):
            if any(name == prefix or name.startswith(prefix + ".") for prefix in forbidden):
                violations.append(f"{relative} imports {name}")
    return violations


def test_the_function_core_imports_neither_the_operator_tool_nor_the_local_stack() -> None:
    assert layering_violations() == []


@pytest.mark.parametrize(
    ("module", "statement", "forbidden"),
    [
        ("processor.py", "from resender.cli.errors import OperatorError", "resender.cli.errors"),
        ("queues.py", "from resender import local", "resender.local"),
        ("app.py", "import resender.local.runner", "resender.local.runner"),
        ("local/runner.py", "from resender.cli import main", "resender.cli"),
        ("local/demo.py", "from ..cli import target", "resender.cli"),
    ],
)
def test_the_layering_check_finds_an_import_across_a_layer(
    tmp_path: Path, module: str, statement: str, forbidden: str
) -> None:
    copy = tmp_path / "resender"
    shutil.copytree(SOURCE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    path = copy / module
    # Inside a function, where a late import would hide from a check of the top of the file only.
    path.write_text(
        path.read_text(encoding="utf-8") + f"\n\ndef _late() -> None:\n    {statement}\n", encoding="utf-8"
    )

    assert any(forbidden in violation for violation in layering_violations(copy))
