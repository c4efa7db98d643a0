"""Cold-start figures, each from fresh Python processes: handler import time and peak RSS.

Run as a module, this is the child that reports peak RSS: it imports one handler, runs one batch against the
servers the parent started, and prints one JSON line. The parent side (:func:`import_seconds`,
:func:`peak_rss`) spawns those children with the function's environment.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any, Final

#: The handler module of each implementation.
HANDLERS: Final = {"resender": "resender.app", "baseline": "bench.baseline.app"}
ROOT: Final = Path(__file__).resolve().parent.parent

_IMPORT_PROBE: Final = (
    "import time; started = time.perf_counter(); import {module}; print(time.perf_counter() - started)"
)


def _child_env(environment: dict[str, str], *, in_lambda: bool) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith(("AWS_", "POWERTOOLS_"))}
    env.update(environment)
    env.pop("POWERTOOLS_TRACE_DISABLED", None)
    env["PYTHONPATH"] = str(ROOT)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    if in_lambda:
        # Lambda sets these: with them Powertools' Tracer is live and patches boto3 and requests at import,
        # and the X-Ray SDK (LAMBDA_TASK_ROOT) does not build the botocore client it samples with elsewhere.
        env["AWS_LAMBDA_FUNCTION_NAME"] = "resender-bench"
        env["AWS_EXECUTION_ENV"] = "AWS_Lambda_python3.11"
        env["LAMBDA_TASK_ROOT"] = str(ROOT)
    return env


def import_seconds(
    implementation: str, environment: dict[str, str], *, runs: int = 5, in_lambda: bool = False
) -> list[float]:
    """Seconds to import the handler module, once per fresh process (bytecode already compiled)."""
    code = _IMPORT_PROBE.format(module=HANDLERS[implementation])
    env = _child_env(environment, in_lambda=in_lambda)
    # One unmeasured run writes the .pyc files, as a deployment package would ship them.
    subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, check=True, capture_output=True)
    samples = []
    for _ in range(runs):
        done = subprocess.run(
            [sys.executable, "-c", code], env=env, cwd=ROOT, check=True, capture_output=True, text=True
        )
        samples.append(float(done.stdout.strip().splitlines()[-1]))
    return samples


def peak_rss(
    implementation: str, environment: dict[str, str], first_id: int, batch: int = 10
) -> dict[str, Any]:
    """Peak RSS of a fresh process that imports the handler and runs one batch (cold), with its timing."""
    env = _child_env(environment, in_lambda=False)
    command = [
        sys.executable,
        "-m",
        "bench.coldstart",
        implementation,
        "--first-id",
        str(first_id),
        "--batch",
        str(batch),
    ]
    done = subprocess.run(command, env=env, cwd=ROOT, check=True, capture_output=True, text=True)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def median(samples: list[float]) -> float:
    return statistics.median(samples)


def _child(implementation: str, first_id: int, batch: int) -> None:
    import importlib
    import resource
    import time

    from bench.workload import Context, failed_records, sqs_event

    started = time.perf_counter()
    module = importlib.import_module(HANDLERS[implementation])
    imported = time.perf_counter()
    response = module.lambda_handler(sqs_event(list(range(first_id, first_id + batch))), Context())
    finished = time.perf_counter()
    print(
        json.dumps(
            {
                "import_seconds": imported - started,
                "first_invocation_seconds": finished - imported,
                "failed_records": failed_records(response),
                "peak_rss_kib": _peak_rss_kib(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss),
            }
        )
    )


def _peak_rss_kib(ru_maxrss_kib: int) -> int:
    """This process's own peak RSS, in KiB.

    Linux carries ``ru_maxrss`` over ``execve``: a child spawned by the (larger) benchmark process reports the
    parent's peak if it never grows past it. ``VmHWM`` belongs to the new address space alone, so it is
    preferred where it exists.
    """
    try:
        for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return ru_maxrss_kib


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.coldstart")
    parser.add_argument("implementation", choices=sorted(HANDLERS))
    parser.add_argument("--first-id", type=int, required=True)
    parser.add_argument("--batch", type=int, default=10)
    args = parser.parse_args(argv)
    _child(args.implementation, args.first_id, args.batch)


if __name__ == "__main__":
    main()
