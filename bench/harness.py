"""What every benchmark shares: the servers' child process (moto and the Capillary stub), the function's
environment for them, and a description of the machine the figures come from."""

from __future__ import annotations

import io
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Final

ROOT: Final = Path(__file__).resolve().parent.parent


# -- the servers' child process ------------------------------------------------------------------------


class Servers:
    """Client side of ``bench.servers``: one JSON command per line on its stdin, one answer on its stdout."""

    def __init__(self, process: subprocess.Popen[str], ready: dict[str, Any]) -> None:
        self._process = process
        self.ready = ready

    def _ask(self, command: dict[str, Any]) -> dict[str, Any]:
        stdin, stdout = _pipes(self._process)
        stdin.write(json.dumps(command) + "\n")
        stdin.flush()
        answer: dict[str, Any] = json.loads(stdout.readline())
        return answer

    def stats(self) -> dict[str, Any]:
        return self._ask({"cmd": "stats"})

    def set_latency(self, ms: float) -> None:
        self._ask({"cmd": "latency", "ms": ms})

    def command(self, cmd: str, **arguments: Any) -> dict[str, Any]:
        return self._ask({"cmd": cmd, **arguments})


def _pipes(process: subprocess.Popen[str]) -> tuple[IO[str], IO[str]]:
    if process.stdin is None or process.stdout is None:
        raise RuntimeError("the servers' process has no pipes")
    return process.stdin, process.stdout


@contextmanager
def servers(latency_ms: float) -> Iterator[Servers]:
    """Start moto and the stub in a child process; stop it on the way out, whatever happened."""
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.servers", "--latency-ms", str(latency_ms)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = _pipes(process)[1].readline()
        if not line:
            raise RuntimeError("bench.servers exited before it was ready")
        yield Servers(process, json.loads(line))
    finally:
        if process.stdin is not None:
            process.stdin.close()  # end of input: the child shuts its servers down and exits
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def function_environment(ready: dict[str, Any]) -> dict[str, str]:
    """What both functions see: the local stack's environment, plus the baseline's table name."""
    from resender.local.aws import LocalResources

    resources = LocalResources(
        endpoint_url=ready["endpoint_url"],
        table_name=ready["table_name"],
        secret_id=ready["secret_id"],
        queue_url=ready["queue_url"],
        queue_arn=ready["queue_arn"],
        dead_letter_queue_url=ready["dead_letter_queue_url"],
        dead_letter_queue_arn=ready["dead_letter_queue_arn"],
    )
    return {
        **resources.environment(ready["stub_url"]),
        "IDEMPOTENCY_TABLE": ready["baseline_table"],
        "POWERTOOLS_METRICS_DISABLED": "true",
        "POWERTOOLS_LOG_LEVEL": "WARNING",
    }


class Discard(io.TextIOBase):
    """A stream that takes what the handlers print and keeps none of it, however many lines they print."""

    def write(self, text: str) -> int:
        return len(text)


# -- machine -----------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0
    return {
        "cpus": cpus,
        "cpu_model": model,
        "python": platform.python_version(),
        "system": f"{platform.system()} {platform.release()} {platform.machine()}",
        "load_average": load_average(),
        "calibration_cpu_ms": calibration_ms(),
    }


def load_average() -> list[float]:
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except OSError:
        return []


def calibration_ms() -> float:
    """CPU time of a fixed pure-Python loop: a yardstick for the CPU figures, which scale with it."""
    started = time.process_time()
    total = 0
    for number in range(2_000_000):
        total += number
    return (time.process_time() - started) * 1000
