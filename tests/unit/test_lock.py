"""One lock: the requirement files CI installs and the Lambda artefact ships are exported from uv.lock."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
UV = Path(sys.executable).with_name("uv")


def declared(*extras: str) -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    texts = list(project["dependencies"])
    for extra in extras:
        texts += project["optional-dependencies"][extra]
    return {Requirement(text).name.lower().replace("_", "-") for text in texts}


def third_party_imports(paths: list[Path]) -> set[str]:
    modules: set[str] = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                modules.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                modules.add(node.module.split(".")[0])
    # Type stubs are imported under TYPE_CHECKING only; they never run.
    found = {
        module
        for module in modules
        if module not in sys.stdlib_module_names
        and module != "resender"
        and not module.startswith("mypy_boto3")
    }
    return {DISTRIBUTIONS.get(module, module).replace("_", "-") for module in found}


#: Import name → distribution name, where they differ.
DISTRIBUTIONS = {"aws_lambda_powertools": "aws-lambda-powertools", "aws_xray_sdk": "aws-xray-sdk"}


def test_every_package_the_function_imports_is_a_dependency() -> None:
    sys.path.insert(0, str(ROOT / "src"))
    import build_artifact

    runtime = [ROOT / "src" / path for path in build_artifact.runtime_modules()]
    needed = third_party_imports(runtime)

    assert needed <= declared(), needed - declared()


def test_every_package_the_operator_tool_and_local_stack_import_is_declared() -> None:
    needed = third_party_imports(list((ROOT / "src" / "resender").rglob("*.py")))

    assert needed <= declared("cli", "local"), needed - declared("cli", "local")


@pytest.mark.parametrize(
    ("arguments", "committed"),
    [
        (["--extra", "dev"], "requirements/dev.txt"),
        (["--no-dev"], "src/requirements.txt"),
    ],
)
def test_requirement_files_are_exported_from_the_lock(arguments: list[str], committed: str) -> None:
    exported = subprocess.run(
        [
            str(UV),
            "export",
            "--frozen",
            "--no-emit-project",
            "--no-header",
            "--format",
            "requirements-txt",
            *arguments,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout

    assert exported == (ROOT / committed).read_text(encoding="utf-8"), f"run make lock: {committed} is stale"


def test_every_pin_carries_hashes() -> None:
    for name in (
        "requirements/dev.txt",
        "src/requirements.txt",
        "requirements/sam.txt",
        "requirements/checkov.txt",
    ):
        text = (ROOT / name).read_text(encoding="utf-8")
        pins = [line for line in text.splitlines() if line and not line.startswith((" ", "#"))]
        assert pins, name
        assert all("==" in pin for pin in pins), name
        assert text.count("--hash=sha256:") >= len(pins), name


def test_the_lock_matches_pyproject() -> None:
    checked = subprocess.run(
        [str(UV), "lock", "--check"], cwd=ROOT, capture_output=True, text=True, check=False
    )

    assert checked.returncode == 0, checked.stderr
