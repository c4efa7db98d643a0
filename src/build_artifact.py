"""Assemble the Lambda artefact: the modules the handler imports and the locked dependencies, nothing else.

``sam build`` runs it through ``src/Makefile`` (BuildMethod: makefile) with ``ARTIFACTS_DIR`` set. Which of
the project's modules ship is not a list to keep up to date: it is whatever ``resender.app`` imports, found by
following its imports (including those inside functions), so the operator tool, the local stack and the
emulator never ship, and a new runtime module never goes missing.

The artefact carries its bytecode, compiled by an interpreter of the runtime's version: Lambda's ``/var/task``
is read-only, so without it every cold start compiles every imported module from source again (and a
``.pyc`` of another Python version is ignored). The bytecode is hash-based and unchecked, so the build is
reproducible and the runtime never compares it against the sources' timestamps, which zipping changes.
"""

from __future__ import annotations

import argparse
import modulefinder
import shutil
import subprocess
import sys
from pathlib import Path


class BuildError(Exception):
    """The artefact cannot be built as asked; the message says what to install or pass."""


HERE = Path(__file__).resolve().parent


def runtime_modules(source: Path = HERE) -> list[Path]:
    """The project's files the handler needs, relative to ``source``."""
    finder = modulefinder.ModuleFinder(path=[str(source), *sys.path])
    finder.run_script(str(source / "resender" / "app.py"))
    # modulefinder's Module records the file as __file__, which typeshed does not declare.
    found = (getattr(module, "__file__", None) for module in finder.modules.values())
    files = {Path(file) for file in found if file} | {source / "resender" / "app.py"}
    ours = sorted(path.relative_to(source) for path in files if path.is_relative_to(source / "resender"))
    # A package's __init__ and its py.typed marker come with any module of it.
    packages = {parent / "__init__.py" for path in ours for parent in path.parents if parent.name}
    return sorted(set(ours) | {path for path in packages if (source / path).exists()})


def runtime_interpreter(python_version: str) -> str:
    """An interpreter of the runtime's version for the bytecode: this one, or a working pythonX.Y on PATH."""
    if f"{sys.version_info.major}.{sys.version_info.minor}" == python_version:
        return sys.executable
    found = shutil.which(f"python{python_version}")
    # A version manager's shim is on PATH even when it has no such version to run.
    probe = "import sys; print('%d.%d' % sys.version_info[:2])"
    if found is not None:
        answer = subprocess.run([found, "-c", probe], capture_output=True, text=True, check=False)
        if answer.returncode == 0 and answer.stdout.strip() == python_version:
            return found
    raise BuildError(
        f"no working python{python_version} on PATH to compile the artefact's bytecode with "
        "(make build puts the runtime's Python there; or pass --bytecode-python)"
    )


def build(
    artifacts: Path,
    *,
    platform: str,
    python_version: str,
    source: Path = HERE,
    bytecode: bool = True,
    bytecode_python: str | None = None,
) -> None:
    """``bytecode_python``, of the runtime's version, compiles the bytecode (default: found on PATH)."""
    interpreter = (bytecode_python or runtime_interpreter(python_version)) if bytecode else None
    artifacts.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-compile",
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
    if interpreter is not None:
        compile_bytecode(artifacts, interpreter)


def compile_bytecode(artifacts: Path, interpreter: str) -> None:
    for stale in artifacts.rglob("__pycache__"):
        shutil.rmtree(stale)  # left by a build of another Python version into the same directory
    subprocess.run(
        [
            interpreter, "-m", "compileall", "-q", "-j", "0", "--invalidation-mode", "unchecked-hash",
            str(artifacts),
        ],
        check=True,
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("artifacts", type=Path, help="where sam build wants the artefact (ARTIFACTS_DIR)")
    parser.add_argument("--platform", default="manylinux2014_aarch64", help="wheel platform (arm64 Lambda)")
    parser.add_argument("--python-version", default="3.13", help="the function's runtime")
    parser.add_argument("--bytecode-python", help="an interpreter of that version (default: found on PATH)")
    args = parser.parse_args()
    try:
        build(
            args.artifacts,
            platform=args.platform,
            python_version=args.python_version,
            bytecode_python=args.bytecode_python,
        )
    except BuildError as error:
        raise SystemExit(f"build_artifact: {error}") from None


if __name__ == "__main__":
    main()
