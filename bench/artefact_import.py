"""The handler's import from the built artefact, with and without its bytecode, at Lambda's CPU shares.

    python -m bench.artefact_import [--memory 128 256 512 1024 1769] [--runs 3] [--json PATH]
    make bench BENCH_ARGS=--artefact

Lambda's ``/var/task`` is read-only, so Python cannot cache what it compiles there: a module shipped without
bytecode of the runtime's version is compiled from source at every cold start. This builds the artefact twice
with ``src/build_artifact.py`` (for this machine's platform and the runtime's Python, found as ``make build``
finds it), once as shipped (hash-based bytecode) and once without bytecode, then imports
``resender.app`` from each in fresh processes confined to each memory size's CPU share (the cgroup quotas
of ``bench.power_tuning``), with ``-I -S -B``: nothing outside the artefact is used and nothing is written.
Figures are printed, nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Final

from bench.power_tuning import MEMORY_SIZES, ONE_VCPU_MB, ROOT, CpuQuotas

sys.path.insert(0, str(ROOT / "src"))
import build_artifact  # the build script beside the package, not part of it

VARIANTS: Final = ("with bytecode", "without bytecode")
PROBE: Final = (
    "import sys, time; sys.path[:0] = [sys.argv[1]]; started = time.perf_counter(); import resender.app; "
    "print(time.perf_counter() - started)"
)


def runtime_python() -> tuple[str, str]:
    """(interpreter, version): the template's runtime if this machine has it, else this interpreter."""
    template = (ROOT / "template.yaml").read_text(encoding="utf-8")
    version = next(
        line.split("python", 1)[1].strip()
        for line in template.splitlines()
        if line.strip().startswith("Runtime: python")
    )
    found = subprocess.run(
        ["bash", str(ROOT / "tools" / "find-python.sh"), version], capture_output=True, text=True, check=False
    )
    if found.returncode == 0:
        return found.stdout.strip(), version
    return sys.executable, f"{sys.version_info.major}.{sys.version_info.minor}"


def import_seconds(interpreter: str, artefact: Path, join: Callable[[], None] | None) -> float:
    done = subprocess.run(
        [interpreter, "-I", "-S", "-B", "-c", PROBE, str(artefact)],
        capture_output=True,
        text=True,
        check=True,
        preexec_fn=join,  # confined from its first instruction
    )
    return float(done.stdout.strip())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.artefact_import", description=__doc__)
    parser.add_argument("--memory", type=int, nargs="+", default=list(MEMORY_SIZES), help="memory sizes, MB")
    parser.add_argument("--runs", type=int, default=3, help="fresh processes per figure (3)")
    parser.add_argument("--json", type=Path, help="also write every sample to this file")
    args = parser.parse_args(argv)

    interpreter, version = runtime_python()
    wheel_platform = f"manylinux2014_{platform.machine()}"
    print(f"artefact import: Python {version} ({interpreter}), {wheel_platform}, {args.runs} runs per figure")
    samples: dict[str, dict[int, list[float]]] = {variant: {} for variant in VARIANTS}
    with (
        tempfile.TemporaryDirectory(prefix="resender-artefact-") as scratch,
        CpuQuotas(args.memory) as quotas,
    ):
        if quotas.unavailable:
            print(f"  note: {quotas.unavailable}; the figures are unconfined")
        artefacts = {variant: Path(scratch) / variant.replace(" ", "-") for variant in VARIANTS}
        for variant, target in artefacts.items():
            build_artifact.build(
                target,
                platform=wheel_platform,
                python_version=version,
                bytecode=variant == "with bytecode",
                bytecode_python=interpreter,
            )
        for memory in args.memory:
            for variant, target in artefacts.items():
                samples[variant][memory] = [
                    import_seconds(interpreter, target, quotas.joiner(memory)) for _ in range(args.runs)
                ]

    print()
    print("| memory | CPU share | import, as shipped (bytecode) | import, without bytecode | saved |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for memory in args.memory:
        shipped = statistics.median(samples["with bytecode"][memory]) * 1000
        bare = statistics.median(samples["without bytecode"][memory]) * 1000
        share = memory / ONE_VCPU_MB
        print(f"| {memory} MB | {share:.3f} | {shipped:.0f} ms | {bare:.0f} ms | {bare - shipped:.0f} ms |")
    if args.json:
        args.json.write_text(json.dumps({"python": version, "samples": samples}, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
