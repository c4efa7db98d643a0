"""The ``resender`` command: run the function locally and answer operators' questions."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

EXIT_OK = 0
EXIT_NOT_FOUND = 1
EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="resender", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    demo = commands.add_parser(
        "demo", help="run every sample event against emulated AWS and a Capillary stub"
    )
    demo.add_argument(
        "--events", type=Path, default=Path("events"), help="folder of event files (default: events)"
    )
    demo.add_argument("--verbose", action="store_true", help="also print the function's JSON log lines")

    invoke = commands.add_parser(
        "invoke", help="run the Lambda handler on sam-local-invoke style event files, without a container"
    )
    invoke.add_argument("event_files", nargs="+", type=Path, metavar="EVENT_FILE")
    invoke.add_argument(
        "--local", action="store_true", help="start emulated AWS and the Capillary stub first"
    )
    invoke.add_argument("--json", action="store_true", help="print results as JSON")
    invoke.add_argument("--verbose", action="store_true", help="also print the function's JSON log lines")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from resender.settings import ConfigurationError

    try:
        if args.command == "demo":
            _quiet(args.verbose)
            from resender.local.demo import run_demo

            return run_demo(args.events)
        if args.command == "invoke":
            _quiet(args.verbose)
            return _invoke(args.event_files, local=args.local, as_json=args.json)
    except ConfigurationError as error:
        print(f"resender: configuration error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except (OSError, ValueError) as error:
        print(f"resender: {error}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_USAGE


def _invoke(files: Sequence[Path], *, local: bool, as_json: bool) -> int:
    from resender.local.runner import invoke, load_event, local_stack

    events = [(path.name, load_event(path)) for path in files]
    if local:
        from resender.local.demo import outcome_rows, render_table

        with local_stack() as stack:
            invocations = [(invoke(event, name), event) for name, event in events]
            rows = [
                row for invocation, event in invocations for row in outcome_rows(stack, invocation, event)
            ]
        results = [invocation for invocation, _ in invocations]
        if not as_json:
            print(render_table(rows))
    else:
        results = [invoke(event, name) for name, event in events]
    for result in results:
        if as_json:
            print(
                json.dumps(
                    {"eventFile": result.event_file, "response": result.response, "error": result.error}
                )
            )
        else:
            shown = json.dumps(result.response) if result.error is None else result.error
            print(f"{result.event_file}: {shown}")
    return EXIT_OK if all(result.error is None for result in results) else EXIT_NOT_FOUND


def _quiet(verbose: bool) -> None:
    if not verbose:
        from resender.observability import logger

        logger.setLevel("CRITICAL")


if __name__ == "__main__":
    raise SystemExit(main())
