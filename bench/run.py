"""Throughput, AWS requests, cold start and a soak, for the resender and for the textbook baseline.

    python -m bench.run [--latency-ms 100] [--runs 7] [--soak 10000] [--soak-latency-ms 0] [--json PATH]
    python -m bench.run --storm [--storm-messages 200] [--storm-pollers 5] [--storm-outage 15]
    python -m bench.run --power-tuning [options of bench.power_tuning]
    python -m bench.run --artefact [options of bench.artefact_import]

Everything talks real HTTP to a moto server and to the Capillary stub, both served by a child process
(``bench.servers``) so that the CPU time measured here is the function's alone. Figures are printed, and each
target is marked PASS or MISS; nothing is asserted, because wall times depend on the machine.

Both handlers run with ``POWERTOOLS_METRICS_DISABLED=true`` and ``POWERTOOLS_LOG_LEVEL=WARNING`` so that the
output stays readable; that spares both of them the same work (EMF and INFO lines on stdout).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

from bench import coldstart, counting, storm
from bench.harness import Discard, Servers, function_environment, load_average, machine, servers
from bench.workload import Context, IdAllocator, failed_records, sqs_event

Handler = Callable[[dict[str, Any], Any], Any]

ROOT: Final = Path(__file__).resolve().parent.parent
BATCH: Final = 10
SOAK_WINDOW: Final = 1000  # messages in the "first" and "last" slices of the soak
WARM_BATCHES: Final = 3  # invocations after the cold one when checking the warm path
COLD_PROCESSES: Final = 3  # fresh processes behind the first-batch and peak-RSS figures (median)
IMPLEMENTATIONS: Final = ("resender", "baseline")
SERIAL: Final = "resender, 1 worker"


# -- measurements ------------------------------------------------------------------------------------


@dataclass
class Invocation:
    wall: float
    cpu: float
    failed: int
    error: str | None = None


def invoke(handler: Handler, message_ids: list[int]) -> Invocation:
    event = sqs_event(message_ids)  # built outside the timed span
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        # Powertools prints the baseline's ColdStart metric even with metrics disabled; nothing else reaches
        # stdout. Loggers keep their own stream, so warnings and errors still show.
        with contextlib.redirect_stdout(Discard()):
            response = handler(event, Context())
    except Exception as error:
        return Invocation(
            time.perf_counter() - wall, time.process_time() - cpu, len(message_ids), repr(error)
        )
    return Invocation(time.perf_counter() - wall, time.process_time() - cpu, failed_records(response))


@dataclass
class Throughput:
    """One implementation's batch-of-1 and batch-of-10 runs, and the AWS requests they made."""

    cold: Invocation
    cold_requests: Counter[str]
    ones: list[Invocation] = field(default_factory=list)
    tens: list[Invocation] = field(default_factory=list)
    warm_requests: Counter[str] = field(default_factory=Counter)
    warm_messages: int = 0
    messages: int = 0
    resends: int = 0
    server_cpu_ms: float = 0.0  # CPU of moto and the stub per warm message, in their own process
    ten_server_cpu: list[float] = field(default_factory=list)  # the same, for each batch of 10

    @property
    def one_ms(self) -> float:
        return statistics.median(run.wall for run in self.ones) * 1000

    @property
    def ten_ms(self) -> float:
        return statistics.median(run.wall for run in self.tens) * 1000

    @property
    def ratio(self) -> float:
        return self.ten_ms / self.one_ms

    @property
    def cpu_ms_per_message(self) -> float:
        return sum(run.cpu for run in self.tens) * 1000 / (BATCH * len(self.tens))

    @property
    def ten_server_cpu_ms(self) -> float:
        """Median CPU the emulators spent on one batch of 10; moto serves one request at a time."""
        return statistics.median(self.ten_server_cpu) * 1000

    @property
    def failures(self) -> int:
        return sum(run.failed for run in [self.cold, *self.ones, *self.tens])

    def summary(self) -> dict[str, Any]:
        return {
            "one_message_ms": self.one_ms,
            "ten_messages_ms": self.ten_ms,
            "ratio": self.ratio,
            "cold_ten_messages_ms": self.cold.wall * 1000,
            "cpu_ms_per_message": self.cpu_ms_per_message,
            "server_cpu_ms_per_message": self.server_cpu_ms,
            "server_cpu_ms_per_batch_of_10": self.ten_server_cpu_ms,
            "messages": self.messages,
            "resends": self.resends,
            "failed_records": self.failures,
            "cold_requests": dict(self.cold_requests),
            "warm_requests_per_message": counting.per_message(self.warm_requests, self.warm_messages),
            "warm_write_units_per_message": self.warm_requests[counting.WRITE_UNITS] / self.warm_messages,
        }


def throughput(handler: Handler, ids: IdAllocator, runs: int, srv: Servers) -> Throughput:
    """A cold batch of 10, then ``runs`` warm rounds of (1 message, 10 messages), fresh ids every time."""
    stub_0 = srv.stats()
    before = counting.COUNTER.snapshot()
    cold = invoke(handler, ids.take(BATCH))
    after, stub_1 = counting.COUNTER.snapshot(), srv.stats()
    result = Throughput(cold, after - before)
    for _ in range(runs):
        result.ones.append(invoke(handler, ids.take(1)))
        before_ten = srv.stats()["cpu_seconds"]
        result.tens.append(invoke(handler, ids.take(BATCH)))
        result.ten_server_cpu.append(srv.stats()["cpu_seconds"] - before_ten)
    stub_2 = srv.stats()
    result.warm_requests = counting.COUNTER.snapshot() - after
    result.warm_messages = runs * (1 + BATCH)
    result.messages = BATCH + result.warm_messages
    result.resends = stub_2["resends_performed"] - stub_0["resends_performed"]
    result.server_cpu_ms = (stub_2["cpu_seconds"] - stub_1["cpu_seconds"]) * 1000 / result.warm_messages
    return result


@contextmanager
def resender_container(**settings: str) -> Iterator[None]:
    """A new resender container with ``settings`` in its environment; the old environment afterwards."""
    from resender import app
    from resender.local.aws import patched_environ

    with patched_environ(settings):
        app.reset_container()  # the next invocation builds a container from this environment: a cold one
        try:
            yield
        finally:
            app.reset_container()


@dataclass
class WarmPath:
    """Secrets Manager reads and token requests of the resender on an OAuth secret, cold then warm."""

    cold_secret_reads: int
    cold_token_requests: int
    warm_secret_reads: int
    warm_token_requests: int
    warm_invocations: int


def warm_path(ids: IdAllocator, srv: Servers, oauth_secret_id: str) -> WarmPath:
    from resender import app

    with resender_container(CAPILLARY_SECRET_ID=oauth_secret_id):
        requests_0, stub_0 = counting.COUNTER.snapshot(), srv.stats()
        invoke(app.lambda_handler, ids.take(BATCH))
        requests_1, stub_1 = counting.COUNTER.snapshot(), srv.stats()
        for _ in range(WARM_BATCHES):
            invoke(app.lambda_handler, ids.take(BATCH))
        requests_2, stub_2 = counting.COUNTER.snapshot(), srv.stats()
    return WarmPath(
        cold_secret_reads=counting.calls_to(requests_1 - requests_0, "secrets-manager"),
        cold_token_requests=stub_1["token_requests"] - stub_0["token_requests"],
        warm_secret_reads=counting.calls_to(requests_2 - requests_1, "secrets-manager"),
        warm_token_requests=stub_2["token_requests"] - stub_1["token_requests"],
        warm_invocations=WARM_BATCHES,
    )


@dataclass
class SoakSlice:
    messages: int
    wall: float
    cpu: float

    @property
    def per_second(self) -> float:
        return self.messages / self.wall

    @property
    def cpu_ms(self) -> float:
        return self.cpu * 1000 / self.messages

    def summary(self) -> dict[str, float]:
        return {"messages": self.messages, "msg_per_s": self.per_second, "cpu_ms_per_message": self.cpu_ms}


@dataclass
class Soak:
    messages: int
    latency_ms: float
    first: SoakSlice
    last: SoakSlice
    whole: SoakSlice
    errors: int
    failed_records: int
    resends: int
    requests: Counter[str]
    server_cpu_ms: float

    @property
    def drift(self) -> float:
        """Change of CPU per message from the first slice to the last, as a fraction."""
        return self.last.cpu_ms / self.first.cpu_ms - 1

    @property
    def throughput_drift(self) -> float:
        return self.last.per_second / self.first.per_second - 1

    @property
    def clean(self) -> bool:
        return not self.errors and not self.failed_records and self.resends == self.messages

    def summary(self) -> dict[str, Any]:
        return {
            "messages": self.messages,
            "stub_latency_ms": self.latency_ms,
            "first": self.first.summary(),
            "last": self.last.summary(),
            "whole": self.whole.summary(),
            "cpu_drift": self.drift,
            "throughput_drift": self.throughput_drift,
            "errors": self.errors,
            "failed_records": self.failed_records,
            "resends": self.resends,
            "server_cpu_ms_per_message": self.server_cpu_ms,
            "requests_per_message": counting.per_message(self.requests, self.messages),
        }


def soak(handler: Handler, ids: IdAllocator, srv: Servers, messages: int, latency_ms: float) -> Soak:
    srv.set_latency(latency_ms)
    invoke(handler, ids.take(BATCH))  # the container is warm before the first slice starts
    stub_0, requests_0 = srv.stats(), counting.COUNTER.snapshot()
    runs = [invoke(handler, ids.take(BATCH)) for _ in range(messages // BATCH)]
    stub_1, requests = srv.stats(), counting.COUNTER.snapshot() - requests_0

    def slice_of(part: list[Invocation]) -> SoakSlice:
        return SoakSlice(len(part) * BATCH, sum(r.wall for r in part), sum(r.cpu for r in part))

    window = max(1, min(SOAK_WINDOW, messages) // BATCH)
    done = len(runs) * BATCH
    return Soak(
        messages=done,
        latency_ms=latency_ms,
        first=slice_of(runs[:window]),
        last=slice_of(runs[-window:]),
        whole=slice_of(runs),
        errors=sum(1 for r in runs if r.error),
        failed_records=sum(r.failed for r in runs),
        resends=stub_1["resends_performed"] - stub_0["resends_performed"],
        requests=requests,
        server_cpu_ms=(stub_1["cpu_seconds"] - stub_0["cpu_seconds"]) * 1000 / max(1, done),
    )


@dataclass
class ColdStart:
    import_ms: float
    import_lambda_ms: float
    import_samples_ms: list[float]
    import_lambda_samples_ms: list[float]
    peak_rss_mib: float
    first_invocation_ms: float
    failed_records: int


def cold_start(implementation: str, environment: dict[str, str], ids: IdAllocator, runs: int) -> ColdStart:
    plain = coldstart.import_seconds(implementation, environment, runs=runs)
    in_lambda = coldstart.import_seconds(implementation, environment, runs=runs, in_lambda=True)
    children = [
        coldstart.peak_rss(implementation, environment, ids.block(BATCH), BATCH)
        for _ in range(COLD_PROCESSES)
    ]
    return ColdStart(
        import_ms=statistics.median(plain) * 1000,
        import_lambda_ms=statistics.median(in_lambda) * 1000,
        import_samples_ms=[round(s * 1000, 1) for s in plain],
        import_lambda_samples_ms=[round(s * 1000, 1) for s in in_lambda],
        peak_rss_mib=statistics.median(child["peak_rss_kib"] for child in children) / 1024,
        first_invocation_ms=statistics.median(child["first_invocation_seconds"] for child in children) * 1000,
        failed_records=sum(child["failed_records"] for child in children),
    )


# -- report ------------------------------------------------------------------------------------------


def section(title: str) -> None:
    print(f"\n== {title} " + "=" * max(0, 96 - len(title)), flush=True)


def print_machine(host: dict[str, Any], args: argparse.Namespace) -> None:
    section("Machine")
    print(f"  {host['cpus']} CPU(s), {host['cpu_model']}, Python {host['python']}, {host['system']}")
    print(
        f"  load average {' / '.join(str(v) for v in host['load_average'])}; "
        f"calibration loop (2e6 additions) {host['calibration_cpu_ms']:.0f} ms CPU"
    )
    print(
        f"  stub latency {args.latency_ms:g} ms; the moto server and the stub run in a separate process, "
        "so CPU figures are the function's"
    )
    print("  both handlers: POWERTOOLS_METRICS_DISABLED=true, POWERTOOLS_LOG_LEVEL=WARNING")


def print_throughput(figures: dict[str, Throughput], runs: int) -> float:
    section(f"Wall time of one invocation (median of {runs}, warm container)")
    ours, theirs = figures["resender"], figures["baseline"]
    print(
        f"  {'':<20}{'1 message':>11}{'10 messages':>13}{'10 / 1':>8}{'cold 10':>10}{'CPU/msg':>10}"
        f"{'emulators/10':>14}"
    )
    for name, each in figures.items():
        print(
            f"  {name:<20}{each.one_ms:>8.1f} ms{each.ten_ms:>10.1f} ms{each.ratio:>7.2f}x"
            f"{each.cold.wall * 1000:>7.0f} ms{each.cpu_ms_per_message:>7.2f} ms"
            f"{each.ten_server_cpu_ms:>11.0f} ms"
        )
    speedup = theirs.ten_ms / ours.ten_ms
    print(f"  batch of 10: the resender is {speedup:.1f}x faster than the baseline")
    print("  CPU/msg: time.process_time() of this (the function's) process over the warm batches of 10")
    print("  emulators/10: CPU that moto + the stub spent on one batch of 10, in their own process")
    print("  cold 10: the first invocation of a new container (modules already imported)")
    for name, each in figures.items():
        print(
            f"  {name}: {each.resends} resends for {each.messages} messages, {each.failures} record(s) "
            f"handed back"
        )
    if ours.ten_server_cpu_ms > ours.ten_ms / 2:
        # moto answers under one GIL and one write lock, so its CPU per batch is a floor under the wall time.
        print(
            f"  note: the emulators spent {ours.ten_server_cpu_ms:.0f} ms of CPU on each of the resender's\n"
            f"  batches of 10 ({ours.ten_server_cpu_ms / ours.ten_ms:.0%} of its wall time), in one process "
            "that serves one request at a time:\n"
            "  a floor no client can go under here, and one that DynamoDB, serving writes in parallel, "
            "does not have"
        )
    return speedup


def _requests_table(title: str, delta: Counter[str], messages: int) -> None:
    print(f"  {title}")
    if not delta:
        print("    (none)")
    for name, value in counting.per_message(delta, messages).items():
        print(f"    {name:<36}{value:>6.2f} per message  ({delta[name]} in {messages})")


def print_requests(figures: dict[str, Throughput]) -> None:
    section("AWS requests per message (botocore before-send hooks)")
    for name in IMPLEMENTATIONS:
        each = figures[name]
        print(f"  {name}")
        _requests_table(f"  cold invocation, {BATCH} messages", each.cold_requests, BATCH)
        _requests_table(
            f"  warm invocations, {each.warm_messages} messages", each.warm_requests, each.warm_messages
        )
        units = each.warm_requests[counting.WRITE_UNITS] / each.warm_messages
        print(f"    DynamoDB write request units (estimated, items <= 1 KB): {units:.2f} per message")


def print_warm_path(path: WarmPath) -> None:
    section("Warm path on an OAuth secret (resender, new container)")
    print(
        f"  cold invocation:        {path.cold_secret_reads} GetSecretValue, "
        f"{path.cold_token_requests} token request(s)"
    )
    print(
        f"  next {path.warm_invocations} invocations: {path.warm_secret_reads} GetSecretValue, "
        f"{path.warm_token_requests} token request(s)"
    )


def print_soak(soaked: Soak) -> None:
    section(f"Soak: {soaked.messages} messages in batches of {BATCH}, stub latency {soaked.latency_ms:g} ms")
    print(f"  {'':<14}{'messages':>10}{'msg/s':>10}{'CPU ms/msg':>12}")
    for label, part in (("first", soaked.first), ("last", soaked.last), ("whole run", soaked.whole)):
        print(f"  {label:<14}{part.messages:>10}{part.per_second:>10.0f}{part.cpu_ms:>12.3f}")
    print(
        f"  last vs first: CPU per message {soaked.drift * 100:+.1f}%, "
        f"throughput {soaked.throughput_drift * 100:+.1f}%"
    )
    print(
        f"  errors {soaked.errors}, records handed back {soaked.failed_records}, "
        f"resends {soaked.resends} of {soaked.messages}"
    )
    print("  CPU: time.process_time() of this process around each handler call (all threads, no waiting)")
    print(f"  moto + stub spent {soaked.server_cpu_ms:.2f} ms CPU per message in their own process")
    _requests_table("AWS requests during the soak", soaked.requests, soaked.messages)


def print_cold_start(starts: dict[str, ColdStart], runs: int) -> None:
    section(
        f"Cold start (fresh processes; import: median of {runs}, first batch and RSS: of {COLD_PROCESSES})"
    )
    print(f"  {'':<12}{'import':>10}{'import, Lambda env':>21}{'first batch of 10':>20}{'peak RSS':>12}")
    for name, start in starts.items():
        print(
            f"  {name:<12}{start.import_ms:>7.0f} ms{start.import_lambda_ms:>18.0f} ms"
            f"{start.first_invocation_ms:>17.0f} ms{start.peak_rss_mib:>8.1f} MiB"
        )
    print("  import: `import <handler module>` timed inside a fresh interpreter, .pyc files present;")
    print("  Lambda env: the same with Lambda's variables set: Powertools' Tracer is live and patches at")
    print("  import, and the X-Ray SDK skips the sampling client it builds outside Lambda;")
    print("  first batch and peak RSS: a fresh process that imports and runs one batch of 10 (RSS: VmHWM)")


def targets(
    figures: dict[str, Throughput],
    speedup: float,
    path: WarmPath,
    starts: dict[str, ColdStart],
    soaked: Soak | None,
) -> list[tuple[str, str, bool]]:
    ours, ours_cold, theirs_cold = figures["resender"], starts["resender"], starts["baseline"]
    writes = counting.dynamodb_writes(ours.warm_requests) / ours.warm_messages
    reads = counting.dynamodb_reads(ours.warm_requests) / ours.warm_messages
    secret_reads = counting.calls_to(ours.warm_requests, "secrets-manager") + path.warm_secret_reads
    found = [
        ("batch of 10 <= 1.5 x one message", f"{ours.ratio:.2f}x", ours.ratio <= 1.5),
        ("batch of 10 >= 5x faster than the baseline", f"{speedup:.1f}x", speedup >= 5),
        ("DynamoDB writes per resent message <= 2", f"{writes:.2f}", writes <= 2),
        ("DynamoDB reads per resent message = 0", f"{reads:.2f}", reads == 0),
        (
            "warm: 0 Secrets Manager / 0 token calls",
            f"{secret_reads} / {path.warm_token_requests}",
            secret_reads == 0 and path.warm_token_requests == 0,
        ),
        (
            "import time <= baseline's",
            f"{ours_cold.import_ms:.0f} vs {theirs_cold.import_ms:.0f} ms",
            ours_cold.import_ms <= theirs_cold.import_ms,
        ),
        (
            "import time, Lambda env, <= baseline's",
            f"{ours_cold.import_lambda_ms:.0f} vs {theirs_cold.import_lambda_ms:.0f} ms",
            ours_cold.import_lambda_ms <= theirs_cold.import_lambda_ms,
        ),
        (
            "peak RSS <= baseline's",
            f"{ours_cold.peak_rss_mib:.1f} vs {theirs_cold.peak_rss_mib:.1f} MiB",
            ours_cold.peak_rss_mib <= theirs_cold.peak_rss_mib,
        ),
    ]
    if soaked is not None:
        found += [
            ("CPU per message <= 2 ms (soak)", f"{soaked.whole.cpu_ms:.3f} ms", soaked.whole.cpu_ms <= 2),
            (
                "soak without error",
                f"{soaked.errors} errors, {soaked.failed_records} handed back",
                soaked.clean,
            ),
            (
                "soak: CPU/msg of last 1000 within 10% of first",
                f"{soaked.drift * 100:+.1f}%",
                abs(soaked.drift) <= 0.10,
            ),
        ]
    return found


def print_targets(found: list[tuple[str, str, bool]]) -> None:
    section("Targets")
    for label, value, ok in found:
        print(f"  {'PASS' if ok else 'MISS'}  {label:<48}{value}")


# -- entry point -------------------------------------------------------------------------------------


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--latency-ms", type=float, default=100.0, help="stub delay per answer (100)")
    parser.add_argument("--runs", type=int, default=7, help="timed rounds per batch size (7)")
    parser.add_argument("--import-runs", type=int, default=5, help="fresh processes per import figure (5)")
    parser.add_argument("--soak", type=int, default=10_000, help="messages in the soak, 0 to skip (10000)")
    parser.add_argument("--soak-latency-ms", type=float, default=0.0, help="stub delay during the soak (0)")
    parser.add_argument("--json", type=Path, help="also write every figure to this file")
    parser.add_argument("--storm", action="store_true", help="run only the outage storm (bench/storm.py)")
    parser.add_argument("--no-storm", action="store_true", help="skip the outage storm")
    parser.add_argument("--storm-messages", type=int, default=200, help="failures in the storm (200)")
    parser.add_argument("--storm-pollers", type=int, default=5, help="concurrent pollers (5)")
    parser.add_argument("--storm-outage", type=float, default=15.0, help="seconds Capillary refuses (15)")
    parser.add_argument("--storm-latency-ms", type=float, default=50.0, help="stub delay in the storm (50)")
    return parser.parse_args(argv)


def run_storm(args: argparse.Namespace, ids: IdAllocator) -> list[tuple[str, str, bool]]:
    """The outage storm on its own servers, so that its queues and counters start empty."""
    with servers(args.storm_latency_ms) as srv:
        environment = function_environment(srv.ready)
        os.environ.update(environment)
        os.environ.pop("AWS_PROFILE", None)
        results = storm.storm(srv, ids, args.storm_messages, args.storm_pollers, args.storm_outage)
    return storm.storm_targets(results)


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    if "--power-tuning" in arguments:
        from bench import power_tuning

        return power_tuning.main([word for word in arguments if word != "--power-tuning"])
    if "--artefact" in arguments:
        from bench import artefact_import

        return artefact_import.main([word for word in arguments if word != "--artefact"])
    args = parse_arguments(arguments)
    started = time.perf_counter()
    host = machine()
    print_machine(host, args)
    if args.storm:
        found = run_storm(args, IdAllocator())
        print_targets(found)
        print(f"\n  whole run {time.perf_counter() - started:.0f} s")
        return 0

    # Installed before either handler is imported, so every client either of them creates is counted.
    counting.install()
    ids = IdAllocator()
    soaked: Soak | None = None
    with servers(args.latency_ms) as srv:
        environment = function_environment(srv.ready)
        os.environ.update(environment)
        os.environ.pop("AWS_PROFILE", None)

        from bench.baseline import app as baseline
        from resender import app as resender

        handlers: dict[str, Handler] = {
            "resender": resender.lambda_handler,
            "baseline": baseline.lambda_handler,
        }
        figures = {name: throughput(handlers[name], ids, args.runs, srv) for name in IMPLEMENTATIONS}
        # The same function with a pool of one: what the concurrency buys, on the same emulators.
        with resender_container(RESEND_CONCURRENCY="1"):
            figures[SERIAL] = throughput(resender.lambda_handler, ids, args.runs, srv)
        speedup = print_throughput(figures, args.runs)
        print_requests(figures)

        path = warm_path(ids, srv, srv.ready["oauth_secret_id"])
        print_warm_path(path)

        if args.soak > 0:
            soaked = soak(resender.lambda_handler, ids, srv, args.soak, args.soak_latency_ms)
            srv.set_latency(args.latency_ms)
            print_soak(soaked)

        starts = {name: cold_start(name, environment, ids, args.import_runs) for name in IMPLEMENTATIONS}
        print_cold_start(starts, args.import_runs)

    found = targets(figures, speedup, path, starts, soaked)
    if not args.no_storm:
        found += run_storm(args, ids)
    print_targets(found)
    elapsed = time.perf_counter() - started
    host["load_average_at_end"] = load_average()
    print(f"\n  whole run {elapsed:.0f} s; load average at the end {host['load_average_at_end']}")

    if args.json:
        report = {
            "machine": host,
            "arguments": {name: str(value) for name, value in vars(args).items()},
            "throughput": {name: each.summary() for name, each in figures.items()},
            "speedup_batch_of_10": speedup,
            "warm_path": asdict(path),
            "soak": soaked.summary() if soaked else None,
            "cold_start": {name: asdict(start) for name, start in starts.items()},
            "targets": [{"target": label, "value": value, "pass": ok} for label, value, ok in found],
            "elapsed_seconds": elapsed,
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
