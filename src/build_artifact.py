"""Assemble the Lambda artefact: the modules the handler imports and the locked dependencies, nothing else.

``sam build`` runs it through ``src/Makefile`` (BuildMethod: makefile) with ``ARTIFACTS_DIR`` set. Which of
the project's modules ship is not a list to keep up to date: it is whatever ``resender.app`` imports, found by
following its imports (including those inside functions), so the operator tool, the local stack and the
emulator never ship, and a new runtime module never goes missing.
"""

from __future__ import annotations

import argparse
import modulefinder
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
HANDLER_MODULE = "resender.app"


def runtime_modules(source: Path = HERE) -> list[Path]:
    """The project's files the handler needs, relative to ``source``."""
    finder = modulefinder.ModuleFinder(path=[str(source), *sys.path])
    finder.run_script(str(source / "resender" / "app.py"))
    files = {Path(module.__file__) for name, module in finder.modules.items() if module.__file__} | {
        source / "resender" / "app.py"
    }
    ours = sorted(path.relative_to(source) for path in files if path.is_relative_to(source / "resender"))
    # A package's __init__ and its py.typed marker come with any module of it.
    packages = {parent / "__init__.py" for path in ours for parent in path.parents if parent.name}
    return sorted(set(ours) | {path for path in packages if (source / path).exists()})


def build(artifacts: Path, *, platform: str, python_version: str, source: Path = HERE) -> None:
    artifacts.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
            "--require-hashes", "--no-deps", "--only-binary=:all:", "--implementation", "cp",
            "--platform", platform, "--python-version", python_version,
            "--target", str(artifacts), "-r", str(source / "requirements.txt"),
        ],
        check=True,
    )  # fmt: skip
    for relative in runtime_modules(source):
        target = artifacts / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / relative, target)
    shutil.copy2(source / "resender" / "py.typed", artifacts / "resender" / "py.typed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("artifacts", type=Path, help="where sam build wants the artefact (ARTIFACTS_DIR)")
    parser.add_argument("--platform", default="manylinux2014_aarch64", help="wheel platform (arm64 Lambda)")
    parser.add_argument("--python-version", default="3.13", help="the function's runtime")
    args = parser.parse_args()
    build(args.artifacts, platform=args.platform, python_version=args.python_version)


if __name__ == "__main__":
    main()
