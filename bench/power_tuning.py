"""The power-tuning table: the function at Lambda's memory sizes, with the CPU share each one buys.

    python -m bench.power_tuning [--memory 128 256 512 1024 1769] [--processes 3] [--runs 3]
                                 [--latency-ms 100] [--json PATH]
    make bench BENCH_ARGS=--power-tuning

Lambda gives a function CPU in proportion to its memory: one vCPU at 1,769 MB. Each container here is a fresh
process (``bench.tuning_child``) confined from its first instruction to that share of one core by a cgroup v1
CPU quota (``cpu.cfs_quota_us = memory / 1769 * cpu.cfs_period_us``). The moto server and the Capillary stub
run unconfined in another process (``bench.servers``), as AWS and Capillary would.

Per memory size, for the resender and the Powertools baseline: the handler's import, the cold first batch
(import plus the first batch of 10), warm invocations of 1 and 10 messages, and the CPU per message, medians
over several containers. Both run with Lambda's environment variables, so the baseline's Tracer is live as in
Lambda; ``resender + X-Ray SDK`` is the resender with ``XRAY_SDK_TRACING=true``. Figures are printed and
targets marked MET or MISSED; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from bench import coldstart
from bench.harness import Servers, function_environment, machine, servers
from bench.workload import IdAllocator

ROOT: Final = Path(__file__).resolve().parent.parent
CGROUP_CPU: Final = Path("/sys/fs/cgroup/cpu")
#: Lambda's memory size with exactly one vCPU.
ONE_VCPU_MB: Final = 1769
PERIOD_US: Final = 100_000
MEMORY_SIZES: Final = (128, 256, 512, 1024, 1769)
TARGET_MEMORY: Final = 256
BATCH: Final = 10
XRAY_ROW: Final = "resender + X-Ray SDK"

#: Rows of the table: the handler module and what the row adds to the function's environment.
VARIANTS: Final[dict[str, tuple[str, dict[str, str]]]] = {
    "resender": (coldstart.HANDLERS["resender"], {}),
    "baseline": (coldstart.HANDLERS["baseline"], {}),
    XRAY_ROW: (coldstart.HANDLERS["resender"], {"XRAY_SDK_TRACING": "true"}),
}
#: Lambda puts a trace header in every sampled invocation's environment; the SDK tracers read it.
TRACE_HEADER: Final = "Root=1-67a0c1e2-5f2e8a1b3c4d5e6f7a8b9c0d;Parent=53995c3f42cd8ad8;Sampled=1"


# -- the CPU quota ------------------------------------------------------------------------------------


def quota_us(memory_mb: int) -> int:
    """The CFS quota per period that gives ``memory_mb``'s share of one core."""
    return round(memory_mb / ONE_VCPU_MB * PERIOD_US)


class CpuQuotas:
    """One cgroup v1 CPU group per memory size, created on entry and removed on exit."""

    def __init__(self, memory_sizes: list[int]) -> None:
        self._memory_sizes = memory_sizes
        self._groups: dict[int, Path] = {}
        self.unavailable: str | None = None

    def __enter__(self) -> CpuQuotas:
        if not CGROUP_CPU.is_dir():
            self.unavailable = f"{CGROUP_CPU} does not exist (no cgroup v1 CPU controller here)"
            return self
        try:
            for memory in self._memory_sizes:
                group = CGROUP_CPU / f"resender-power-tuning-{os.getpid()}-{memory}"
                group.mkdir(exist_ok=True)
                self._groups[memory] = group
                (group / "cpu.cfs_period_us").write_text(str(PERIOD_US), encoding="ascii")
                (group / "cpu.cfs_quota_us").write_text(str(quota_us(memory)), encoding="ascii")
        except OSError as error:
            self.unavailable = f"cgroups are not writable here ({error.strerror}: {error.filename})"
            self._remove()
        return self

    def __exit__(self, *_: object) -> None:
        self._remove()

    def _remove(self) -> None:
        for group in self._groups.values():
            try:
                group.rmdir()  # its processes have exited, so the kernel lets it go
            except OSError as error:
                print(f"  note: could not remove {group}: {error.strerror}", file=sys.stderr)
        self._groups.clear()

    def joiner(self, memory_mb: int) -> Callable[[], None] | None:
        """What the child runs between fork and exec to join its group, so it is confined from the start."""
        group = self._groups.get(memory_mb)
        if group is None:
            return None
        procs = group / "cgroup.procs"

        def join() -> None:
            procs.write_text(str(os.getpid()), encoding="ascii")

        return join


# -- one container ------------------------------------------------------------------------------------


@dataclass
class Container:
    import_s: float
    cold_s: float  # import + first batch of 10
    warm_one: list[float]
    warm_ten: list[float]
    warm_ten_cpu: list[float]
    failed: int
    messages: int
    emulator_cpu_s: float = 0.0  # CPU that moto and the stub spent on this container, in their own process


def child_environment(environment: dict[str, str], memory_mb: int, extra: dict[str, str]) -> dict[str, str]:
    env = coldstart._child_env({**environment, **extra}, in_lambda=True)
    env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"] = str(memory_mb)
    env["_X_AMZN_TRACE_ID"] = TRACE_HEADER
    # The SDK sends finished segments over UDP to the daemon; nothing listens there, as nothing needs to.
    env["AWS_XRAY_DAEMON_ADDRESS"] = "127.0.0.1:2000"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_child(
    module: str, env: dict[str, str], first_id: int, runs: int, join: Callable[[], None] | None
) -> dict[str, Any]:
    command = [sys.executable, "-m", "bench.tuning_child", module, "--first-id", str(first_id)]
    command += ["--runs", str(runs)]
    done = subprocess.run(
        command,
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        preexec_fn=join,  # one write to cgroup.procs between fork and exec
    )
    if done.returncode != 0:
        raise RuntimeError(f"{module} exited with {done.returncode}: {done.stderr.strip()[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def container(
    module: str, env: dict[str, str], ids: IdAllocator, runs: int, *, quotas: CpuQuotas, memory: int
) -> Container:
    raw = run_child(module, env, ids.block(BATCH + runs * (1 + BATCH)), runs, quotas.joiner(memory))
    return Container(
        import_s=raw["import_seconds"],
        cold_s=raw["import_seconds"] + raw["cold"]["wall"],
        warm_one=[run["wall"] for run in raw["warm_one"]],
        warm_ten=[run["wall"] for run in raw["warm_ten"]],
        warm_ten_cpu=[run["cpu"] for run in raw["warm_ten"]],
        failed=raw["cold"]["failed"] + sum(run["failed"] for run in raw["warm_one"] + raw["warm_ten"]),
        messages=BATCH + runs * (1 + BATCH),
    )


def compile_bytecode(environment: dict[str, str]) -> None:
    """One unconfined import of each row's handler writes the .pyc files, as a deployment package has them."""
    for module, extra in VARIANTS.values():
        env = child_environment(environment, ONE_VCPU_MB, extra)
        command = [sys.executable, "-m", "bench.tuning_child", module, "--first-id", "0", "--runs", "0"]
        subprocess.run([*command, "--import-only"], env=env, cwd=ROOT, check=True, capture_output=True)


# -- the table ----------------------------------------------------------------------------------------


@dataclass
class Cell:
    """One row at one memory size: medians over its containers."""

    memory_mb: int
    variant: str
    containers: list[Container]

    @property
    def import_ms(self) -> float:
        return statistics.median(c.import_s for c in self.containers) * 1000

    @property
    def cold_ms(self) -> float:
        return statistics.median(c.cold_s for c in self.containers) * 1000

    @property
    def one_ms(self) -> float:
        return statistics.median(s for c in self.containers for s in c.warm_one) * 1000

    @property
    def ten_ms(self) -> float:
        return statistics.median(s for c in self.containers for s in c.warm_ten) * 1000

    @property
    def cpu_ms_per_message(self) -> float:
        cpu = [s for c in self.containers for s in c.warm_ten_cpu]
        return sum(cpu) * 1000 / (BATCH * len(cpu)) if cpu else 0.0

    @property
    def emulator_cpu_ms_per_message(self) -> float:
        messages = sum(c.messages for c in self.containers)
        return sum(c.emulator_cpu_s for c in self.containers) * 1000 / messages

    @property
    def failed(self) -> int:
        return sum(c.failed for c in self.containers)

    def summary(self) -> dict[str, Any]:
        return {
            "memory_mb": self.memory_mb,
            "variant": self.variant,
            "import_ms": self.import_ms,
            "cold_first_batch_ms": self.cold_ms,
            "warm_one_ms": self.one_ms,
            "warm_ten_ms": self.ten_ms,
            "cpu_ms_per_message": self.cpu_ms_per_message,
            "emulator_cpu_ms_per_message": self.emulator_cpu_ms_per_message,
            "failed_records": self.failed,
            "import_samples_ms": [round(c.import_s * 1000, 1) for c in self.containers],
            "cold_samples_ms": [round(c.cold_s * 1000, 1) for c in self.containers],
        }


def measure(srv: Servers, memory_sizes: list[int], args: argparse.Namespace, quotas: CpuQuotas) -> list[Cell]:
    environment = function_environment(srv.ready)
    ids = IdAllocator()
    cells = []
    for memory in memory_sizes:
        rows = ["resender", "baseline"] + ([XRAY_ROW] if memory == TARGET_MEMORY else [])
        found: dict[str, list[Container]] = {row: [] for row in rows}
        # Rows take turns, container by container, so a burst of load on the machine hits them alike.
        for _ in range(args.processes):
            for row in rows:
                module, extra = VARIANTS[row]
                env = child_environment(environment, memory, extra)
                before = srv.stats()["cpu_seconds"]
                each = container(module, env, ids, args.runs, quotas=quotas, memory=memory)
                each.emulator_cpu_s = srv.stats()["cpu_seconds"] - before
                found[row].append(each)
        for row in rows:
            cells.append(Cell(memory, row, found[row]))
            print_row(cells[-1])
    return cells


def print_header(args: argparse.Namespace, quotas: CpuQuotas) -> None:

    host = machine()
    print(f"  {host['cpus']} CPU(s), {host['cpu_model']}, Python {host['python']}, {host['system']}")
    print(
        f"  load average {' / '.join(str(v) for v in host['load_average'])}; "
        f"calibration loop (2e6 additions) {host['calibration_cpu_ms']:.0f} ms CPU"
    )
    print(
        f"  stub latency {args.latency_ms:g} ms; {args.processes} containers per cell, "
        f"{args.runs} warm rounds of (1, 10) messages each"
    )
    if quotas.unavailable:
        print(f"  NOTE: {quotas.unavailable}.")
        print("  NOTE: every row runs UNCONFINED, with the machine's whole CPU: the memory sizes differ")
        print(
            "  NOTE: only in name, and the figures are not Lambda's. Run as root on cgroup v1 for the table."
        )
    else:
        print(f"  CPU quota: cgroup v1 {CGROUP_CPU}, period {PERIOD_US} us, quota memory/{ONE_VCPU_MB} of it")
    print()
    print(
        f"  {'memory':>7}{'quota':>8}  {'':<22}{'import':>9}{'cold 10':>10}{'warm 1':>9}{'warm 10':>10}"
        f"{'10 / 1':>8}{'CPU/msg':>10}{'emulators/msg':>15}",
        flush=True,
    )


def print_row(cell: Cell) -> None:
    quota = quota_us(cell.memory_mb) / PERIOD_US
    print(
        f"  {cell.memory_mb:>4} MB{quota:>7.3f}  {cell.variant:<22}{cell.import_ms:>6.0f} ms"
        f"{cell.cold_ms:>7.0f} ms{cell.one_ms:>6.0f} ms{cell.ten_ms:>7.0f} ms"
        f"{cell.ten_ms / cell.one_ms:>7.2f}x{cell.cpu_ms_per_message:>7.1f} ms"
        f"{cell.emulator_cpu_ms_per_message:>12.1f} ms"
        + (f"  ({cell.failed} records handed back)" if cell.failed else ""),
        flush=True,
    )


def targets(cells: list[Cell]) -> list[tuple[str, str, bool]]:
    at = {cell.variant: cell for cell in cells if cell.memory_mb == TARGET_MEMORY}
    if "resender" not in at or "baseline" not in at:
        return []
    ours, theirs = at["resender"], at["baseline"]
    import_ratio = ours.import_ms / theirs.import_ms
    batch_ratio = ours.ten_ms / ours.one_ms
    found = [
        (
            f"at {TARGET_MEMORY} MB, import <= 0.35 x the baseline's",
            f"{import_ratio:.2f}x ({ours.import_ms:.0f} vs {theirs.import_ms:.0f} ms)",
            import_ratio <= 0.35,
        ),
        (
            f"at {TARGET_MEMORY} MB, warm batch of 10 <= 1.5 x one message",
            f"{batch_ratio:.2f}x ({ours.ten_ms:.0f} vs {ours.one_ms:.0f} ms)",
            batch_ratio <= 1.5,
        ),
    ]
    if XRAY_ROW in at:
        with_sdk = at[XRAY_ROW]
        print(
            f"\n  X-Ray SDK at {TARGET_MEMORY} MB: import {ours.import_ms:.0f} ms without it, "
            f"{with_sdk.import_ms:.0f} ms with XRAY_SDK_TRACING=true "
            f"(+{with_sdk.import_ms - ours.import_ms:.0f} ms); cold first batch {ours.cold_ms:.0f} vs "
            f"{with_sdk.cold_ms:.0f} ms"
        )
    return found


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.power_tuning", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--memory", type=int, nargs="+", default=list(MEMORY_SIZES), help="sizes in MB")
    parser.add_argument("--processes", type=int, default=3, help="fresh containers per cell (3)")
    parser.add_argument("--runs", type=int, default=3, help="warm rounds of (1, 10) per container (3)")
    parser.add_argument("--latency-ms", type=float, default=100.0, help="stub delay per answer (100)")
    parser.add_argument("--json", type=Path, help="also write every figure to this file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    started = time.perf_counter()
    memory_sizes = sorted(set(args.memory))
    with CpuQuotas(memory_sizes) as quotas, servers(args.latency_ms) as srv:
        print_header(args, quotas)
        compile_bytecode(function_environment(srv.ready))
        cells = measure(srv, memory_sizes, args, quotas)
    found = targets(cells)
    if found:
        print()
    for label, value, ok in found:
        print(f"  {'MET   ' if ok else 'MISSED'}  {label:<50}{value}")
    print(
        "\n  import: `import <handler module>` in a fresh confined process, .pyc present, "
        "Lambda's variables set"
    )
    print("  cold 10: that import plus the container's first invocation, a batch of 10")
    print("  warm 1 / warm 10: later invocations of the same container; CPU/msg: process CPU over warm 10s")
    print("  emulators/msg: CPU of moto + the stub (unconfined, one process) per message of the container;")
    print("  moto serves one request at a time, so it puts a floor under a concurrent batch's wall time")
    elapsed = time.perf_counter() - started
    print(f"  whole run {elapsed:.0f} s", flush=True)
    if args.json:
        report = {
            "confined": quotas.unavailable is None,
            "note": quotas.unavailable,
            "arguments": {name: str(value) for name, value in vars(args).items()},
            "cells": [cell.summary() for cell in cells],
            "targets": [{"target": label, "value": value, "met": ok} for label, value, ok in found],
            "elapsed_seconds": elapsed,
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
