"""One Lambda container of the power-tuning table, run in a fresh process under a CPU quota.

    python -m bench.tuning_child MODULE --first-id N --runs R [--import-only]

It times the import of the handler module first, before anything else is imported, so that no module the
benchmark needs is already loaded when the handler asks for it. Then it runs the cold batch of 10 and
``runs`` warm rounds of (1 message, 10 messages) and prints one JSON line: the wall and CPU time of each.
Ids ``first_id`` to ``first_id + 10 + 11 * runs - 1`` are used, each once.
"""

import importlib
import sys
import time
from types import ModuleType


def _import_handler(module_name: str) -> tuple[ModuleType, float]:
    started = time.perf_counter()
    module = importlib.import_module(module_name)
    return module, time.perf_counter() - started


def main() -> None:
    # argparse is imported only after the handler: the handler may not need it, and the figure must not
    # include a module the benchmark loaded on its behalf.
    module_name = sys.argv[1]
    module, import_seconds = _import_handler(module_name)

    import argparse
    import contextlib
    import io
    import json

    from bench.workload import Context, failed_records, sqs_event

    parser = argparse.ArgumentParser(prog="python -m bench.tuning_child")
    parser.add_argument("module")
    parser.add_argument("--first-id", type=int, required=True)
    parser.add_argument("--runs", type=int, required=True)
    parser.add_argument("--import-only", action="store_true")
    args = parser.parse_args()
    if args.import_only:
        print(json.dumps({"import_seconds": import_seconds}))
        return

    handler = module.lambda_handler
    next_id = args.first_id

    def invoke(count: int) -> dict[str, float]:
        nonlocal next_id
        event = sqs_event(list(range(next_id, next_id + count)))  # built outside the timed span
        next_id += count
        wall, cpu = time.perf_counter(), time.process_time()
        # Powertools prints the baseline's ColdStart metric to stdout even with metrics disabled.
        with contextlib.redirect_stdout(io.StringIO()):
            response = handler(event, Context())
        return {
            "wall": time.perf_counter() - wall,
            "cpu": time.process_time() - cpu,
            "failed": failed_records(response),
        }

    cold = invoke(10)
    warm_one, warm_ten = [], []
    for _ in range(args.runs):
        warm_one.append(invoke(1))
        warm_ten.append(invoke(10))
    print(
        json.dumps(
            {
                "import_seconds": import_seconds,
                "cold": cold,
                "warm_one": warm_one,
                "warm_ten": warm_ten,
            }
        )
    )


if __name__ == "__main__":
    main()
