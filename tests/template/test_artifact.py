"""What the Lambda artefact holds: the handler's modules and the locked dependencies, nothing else."""

from __future__ import annotations

import json
import platform
import re
import subprocess
import sys
from pathlib import Path

import pytest
from cfnlint.decode import cfn_yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))
import build_artifact  # noqa: E402 - the build script beside the package, not part of it

NEVER_SHIPPED = ("resender/cli/", "resender/local/")


def host_platform() -> str:
    return f"manylinux2014_{platform.machine()}"


@pytest.fixture(scope="module")
def artefact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built for this machine, so that it can also be imported here; the template's build targets arm64."""
    target = tmp_path_factory.mktemp("artefact")
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    build_artifact.build(target, platform=host_platform(), python_version=version)
    return target


def pinned() -> dict[str, str]:
    text = (ROOT / "src" / "requirements.txt").read_text(encoding="utf-8")
    return {
        match.group(1).lower().replace("_", "-"): match.group(2)
        for match in re.finditer(r"^([A-Za-z0-9_.-]+)==([^\s;\\]+)", text, re.MULTILINE)
    }


def test_the_artefact_ships_no_operator_tool_stub_emulator_or_tests(artefact: Path) -> None:
    shipped = {str(path.relative_to(artefact)) for path in artefact.rglob("*") if path.is_file()}

    assert "resender/app.py" in shipped
    for excluded in NEVER_SHIPPED:
        assert not any(path.startswith(excluded) for path in shipped), excluded
    assert not any(
        path.startswith(("tests/", "bench/", "moto/", "build_artifact", "Makefile")) for path in shipped
    )


def test_the_artefact_holds_exactly_the_locked_dependencies(artefact: Path) -> None:
    installed = {}
    for info in artefact.glob("*.dist-info"):
        name, version = info.name.removesuffix(".dist-info").rsplit("-", 1)
        installed[name.lower().replace("_", "-")] = version

    assert installed == pinned()


def test_the_handler_imports_from_the_artefact_alone(artefact: Path) -> None:
    probe = (
        "import json, sys; sys.path[:0] = [sys.argv[1]]; import resender.app; "
        "print(json.dumps({n: getattr(m, '__file__', None) for n, m in sys.modules.items()}))"
    )
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", probe, str(artefact)], capture_output=True, text=True, check=True
    )
    modules = json.loads(done.stdout)
    site_packages = [path for path in sys.path if path.endswith("site-packages")]

    from_outside = [
        name
        for name, file in modules.items()
        if file and any(file.startswith(path) for path in site_packages)
    ]
    assert from_outside == []
    assert modules["resender.app"].startswith(str(artefact))


def test_every_module_ships_with_unchecked_bytecode_of_the_runtime_python(artefact: Path) -> None:
    import importlib.util

    tag = sys.implementation.cache_tag  # the fixture builds for this interpreter's version
    sources = [path for path in artefact.rglob("*.py") if "__pycache__" not in path.parts]
    compiled = set(artefact.rglob("*.pyc"))

    expected = {Path(importlib.util.cache_from_source(str(path))) for path in sources}
    assert len(sources) > 100
    assert compiled == expected  # one .pyc per source, all of this version: none of another
    for pyc in sorted(compiled)[:: max(1, len(compiled) // 50)]:
        flags = int.from_bytes(pyc.read_bytes()[4:8], "little")
        assert flags == 0b01, pyc  # hash-based, not checked against the source (PEP 552)
    assert all(tag in pyc.name for pyc in compiled)


def test_the_handler_imports_without_compiling_anything(artefact: Path) -> None:
    """Lambda's /var/task is read-only: a module without usable bytecode is compiled again at every cold start."""
    probe = (
        "import importlib.machinery as m, json, sys; sys.path[:0] = [sys.argv[1]]; compiled = []; "
        "original = m.SourceFileLoader.source_to_code; "
        "m.SourceFileLoader.source_to_code = "
        "lambda self, data, path, **kw: compiled.append(path) or original(self, data, path, **kw); "
        "import resender.app; print(json.dumps(compiled))"
    )
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-B", "-c", probe, str(artefact)],
        capture_output=True,
        text=True,
        check=True,
    )

    assert json.loads(done.stdout) == []


def test_a_build_for_another_python_needs_that_python_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")

    with pytest.raises(build_artifact.BuildError, match=r"no working python3\.99 on PATH"):
        build_artifact.runtime_interpreter("3.99")


def test_a_python_on_path_that_does_not_run_that_version_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shim = tmp_path / "python3.99"  # what a version manager's shim does without that version installed
    shim.write_text("#!/bin/sh\necho 'python3.99: command not found' >&2\nexit 127\n", encoding="utf-8")
    shim.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))

    with pytest.raises(build_artifact.BuildError, match=r"no working python3\.99 on PATH"):
        build_artifact.runtime_interpreter("3.99")


def test_the_function_is_built_by_the_makefile_target_sam_calls() -> None:
    template = cfn_yaml.load(str(ROOT / "template.yaml"))
    functions = {
        name
        for name, resource in template["Resources"].items()
        if resource["Type"] == "AWS::Serverless::Function"
    }
    makefile = (ROOT / "src" / "Makefile").read_text(encoding="utf-8")

    for name in functions:
        assert template["Resources"][name]["Metadata"]["BuildMethod"] == "makefile"
        assert re.search(rf"^build-{name}:", makefile, re.MULTILINE), name
