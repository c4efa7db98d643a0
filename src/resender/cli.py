"""The resender command: answer operators' questions, redrive the DLQ, resend by hand, run locally.

Exit codes: 0 done, 1 not found, 2 usage, configuration or AWS error (one line on stderr, no traceback);
resend only: 3 Capillary answered without resending (NOT_FOUND, REJECTED, UNCERTAIN, or a refusal to do it
now), 4 Capillary was never reached (credentials, network, circuit breaker), so nothing was sent.
AWS is chosen as the AWS CLI chooses it (--profile/--region/--endpoint-url, else AWS_PROFILE, AWS_REGION,
AWS_ENDPOINT_URL and the profile's settings); the table and queues come from options or the function's own
environment variables.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, NoReturn, TextIO

from resender.models import Status

if TYPE_CHECKING:
    from resender.operations import AwsTarget, ChainLink, RedriveResult, StatusReport
    from resender.store import OutcomeStore

EXIT_OK = 0
EXIT_NOT_FOUND = 1
EXIT_USAGE = 2
EXIT_NOT_RESENT = 3
EXIT_UNREACHED = 4
EXIT_INTERRUPTED = 130

LIST_LIMIT_MAX = 1000
CELL_WIDTH = 60


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


# -- argument types ------------------------------------------------------------------------------------


def _message_id(text: str) -> int:
    from resender.events import PoisonError, validate_message_id

    try:
        return validate_message_id(text.strip())
    except PoisonError:
        raise argparse.ArgumentTypeError(
            f"invalid message id {text!r}: expected a positive 64-bit integer"
        ) from None


def _status(text: str) -> Status:
    try:
        return Status(text.strip().upper())
    except ValueError:
        choices = ", ".join(Status)
        raise argparse.ArgumentTypeError(f"invalid status {text!r}: choose from {choices}") from None


def _since(text: str) -> str:
    from resender.operations import parse_since

    try:
        return parse_since(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _bounded(low: int, high: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid number {text!r}") from None
        if value < low or (high is not None and value > high):
            bound = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"{value} is out of range: must be {bound}")
        return value

    return parse


# -- parser --------------------------------------------------------------------------------------------


def _aws_options() -> _Parser:
    options = _Parser(add_help=False)
    group = options.add_argument_group("AWS (as the AWS CLI resolves them)")
    group.add_argument("--profile", help="named profile (default: AWS_PROFILE or the default profile)")
    group.add_argument("--region", help="region (default: AWS_REGION / AWS_DEFAULT_REGION or the profile's)")
    group.add_argument(
        "--endpoint-url", help="AWS endpoint, e.g. a local emulator (default: AWS_ENDPOINT_URL)"
    )
    group.add_argument(
        "--stack-name",
        help="read the table, queues, secret and the function's settings from this deployed stack "
        "(its outputs and its function's configuration; read-only); options still win",
    )
    return options


def _table_option() -> _Parser:
    options = _Parser(add_help=False)
    options.add_argument("--table", help="outcomes table name (default: OUTCOMES_TABLE)")
    options.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    return options


def _queue_options() -> _Parser:
    options = _Parser(add_help=False)
    options.add_argument(
        "--queue-url",
        help="source queue the function consumes (default: SOURCE_QUEUE_URL, else the only queue "
        "whose redrive policy targets the DLQ)",
    )
    options.add_argument(
        "--dlq-url",
        help="dead-letter queue (default: DEAD_LETTER_QUEUE_URL, else the source queue's redrive target)",
    )
    options.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    return options


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="resender", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND")
    aws, table, queues = _aws_options(), _table_option(), _queue_options()

    status = commands.add_parser(
        "status",
        parents=[table, aws],
        help="the outcome of one messageId and its resend chain",
        description="Show the outcome recorded for MESSAGE_ID: status, attempts, resentMessageId, orgId, "
        "Capillary request id, error, times, and the resend chain (what it was a resend of, what its "
        "resend became). Exit 1 if no outcome is recorded.",
    )
    status.add_argument("message_id", type=_message_id, metavar="MESSAGE_ID")

    listing = commands.add_parser(
        "list",
        parents=[table, aws],
        help="recent outcomes, newest first",
        description="List outcomes newest first (by updatedAt), a page at a time, from the table's "
        "byStatus index.",
    )
    listing.add_argument("--status", type=_status, help=f"only this status ({', '.join(Status)})")
    listing.add_argument(
        "--since", type=_since, help="only outcomes updated since: 30m, 1h, 2d, 1w or an ISO 8601 time"
    )
    listing.add_argument(
        "--limit",
        type=_bounded(1, LIST_LIMIT_MAX),
        default=20,
        help=f"outcomes per page (default 20, at most {LIST_LIMIT_MAX})",
    )
    listing.add_argument("--page-token", help="the nextPageToken printed by the previous page")
    listing.add_argument(
        "--all",
        action="store_true",
        help="page through every matching outcome (pages of --limit) and print them all",
    )

    invoke = commands.add_parser(
        "invoke",
        parents=[table, aws],
        help="run the Lambda handler on sam-local-invoke style event files, without a container",
        description="Run the real handler on each EVENT_FILE, as `sam local invoke` does but without "
        "Docker, against the configured AWS (real or emulated); print the batch response and the "
        "outcome recorded for each record. Exit 1 if an invocation raised.",
    )
    invoke.add_argument("event_files", nargs="+", type=Path, metavar="EVENT_FILE")
    invoke.add_argument(
        "--local",
        action="store_true",
        help="start emulated AWS and the Capillary stub first, as make demo does (no AWS options then)",
    )
    invoke.add_argument("--env-vars", metavar="FILE", help="sam-style environment file, e.g. events/env.json")
    invoke.add_argument("--verbose", action="store_true", help="also print the function's JSON log lines")
    invoke.add_argument(
        "--yes",
        action="store_true",
        help="do not ask before invoking against a non-loopback AWS endpoint or Capillary host "
        "(required without a terminal)",
    )

    redrive = commands.add_parser(
        "redrive",
        parents=[queues, aws],
        help="move messages from the dead-letter queue back to the source queue",
        description="Move messages from the DLQ back to the source queue, body and attributes unchanged. "
        "Each message is sent to the source queue first and deleted from the DLQ second, so an "
        "interrupted run loses nothing: at worst a message is in both queues, and the outcomes table "
        "turns its second delivery into an acknowledged duplicate, never a second resend. Rerun to "
        "finish. Poison messages (with a poisonReason attribute) stay in the DLQ unless "
        "--include-poison.",
    )
    redrive.add_argument("--dry-run", action="store_true", help="count what would move; move nothing")
    redrive.add_argument("--max", type=_bounded(1), metavar="N", help="move at most N messages")
    redrive.add_argument(
        "--include-poison",
        action="store_true",
        help="move poison messages too (e.g. after fixing MESSAGE_ID_PATH); still-bad ones come back",
    )
    redrive.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: when stderr is a terminal)",
    )

    resend = commands.add_parser(
        "resend",
        parents=[table, aws],
        help="resend one messageId by hand, through the same claim protocol",
        description="Resend MESSAGE_ID through the function's claim protocol and record the outcome. "
        "Refused (exit 2) when it is already RESENT, UNCERTAIN or otherwise settled, or being resent "
        "right now, unless --force; a forced resend is recorded on the item (forced, forcedFrom, "
        "forcedBy, forcedAt). Needs the function's settings: OUTCOMES_TABLE, CAPILLARY_SECRET_ID, "
        "CAPILLARY_BASE_URL. Exit 0 only when it was resent; 3 when Capillary answered without "
        "resending (NOT_FOUND, REJECTED, UNCERTAIN, or not now); 4 when Capillary was never reached "
        "(the secret, the network or the circuit breaker), so nothing was sent; 2 when refused.",
    )
    resend.add_argument("message_id", type=_message_id, metavar="MESSAGE_ID")
    resend.add_argument(
        "--force",
        action="store_true",
        help="resend even if settled or in progress (changes nothing when the protocol would resend anyway)",
    )
    resend.add_argument(
        "--operator",
        help="who forces it (default: the caller identity's ARN from STS, else the local user name)",
    )
    resend.add_argument("--reason", help="why it is forced, stored on the item")
    resend.add_argument("--verbose", action="store_true", help="also print the function's JSON log lines")

    demo = commands.add_parser(
        "demo",
        help="run every sample event against emulated AWS and a Capillary stub (make demo)",
        description="What make demo runs: every event file through the real handler against emulated AWS "
        "and a local Capillary stub, then a replay of every file to show no second resend.",
    )
    demo.add_argument(
        "--events", type=Path, default=Path("events"), help="folder of event files (default: events)"
    )
    demo.add_argument(
        "--operator-commands",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="then run each operator subcommand once against a fresh emulated stack (default: yes)",
    )
    demo.add_argument("--verbose", action="store_true", help="also print the function's JSON log lines")
    local = commands.add_parser(
        "local",
        help="the local stack: emulated AWS and the Capillary stub, in one command",
        description="Local runs without an AWS account. `resender local up` starts the emulated AWS and "
        "the Capillary stub on loopback ports, creates the table, queues and secret as template.yaml "
        "does, prints the URLs and the exact environment to use, and serves until Ctrl-C.",
    )
    local_commands = local.add_subparsers(dest="local_command", required=True, metavar="ACTION")
    up = local_commands.add_parser("up", help="start and provision the local stack, then serve")
    up.add_argument("--aws-port", type=_bounded(0, 65535), default=5000, help="emulated AWS port (5000)")
    up.add_argument(
        "--capillary-port", type=_bounded(0, 65535), default=8080, help="Capillary stub port (8080)"
    )
    up.add_argument(
        "--not-found", type=_message_id, action="append", default=[], metavar="ID", help="answer 4223"
    )
    up.add_argument(
        "--rejected", type=_message_id, action="append", default=[], metavar="ID", help="answer 400"
    )
    up.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="ID=BEHAVIOUR",
        help="answer ID with BEHAVIOUR on every call, e.g. 1746061653596=throttled; see the stub's "
        "behaviours: " + ", ".join(sorted(_behaviours())),
    )
    up.add_argument(
        "--fail-next",
        action="append",
        default=[],
        metavar="BEHAVIOUR",
        help="the next call for any id gets BEHAVIOUR (repeat for several calls)",
    )
    up.add_argument("--env-file", type=Path, help="also write a sam --env-vars file there")
    for name, subcommand in commands.choices.items():
        subcommand.formatter_class = argparse.RawDescriptionHelpFormatter
        subcommand.epilog = "examples:\n" + "\n".join(f"  {line}" for line in EXAMPLES.get(name, ()))
    return parser


#: Shown at the foot of each subcommand's --help: the commands an operator types most.
EXAMPLES: Final[dict[str, tuple[str, ...]]] = {
    "status": (
        "resender status 1746061653596 --stack-name resender-prod",
        "resender status 1746061653596 --table resender-outcomes --region eu-west-1 --json",
    ),
    "list": (
        "resender list --status UNCERTAIN --since 1d --stack-name resender-prod",
        "resender list --status RETRYING --all --json | jq '.items | length'",
    ),
    "invoke": (
        "resender invoke --local events/*.json",
        "resender invoke --env-vars events/env.json events/sqs-plain.json",
    ),
    "redrive": (
        "resender redrive --dry-run --stack-name resender-prod",
        "resender redrive --max 100 --stack-name resender-prod",
    ),
    "resend": (
        "resender resend 1746061653596 --stack-name resender-prod",
        'resender resend 1746061653596 --force --reason "checked in Capillary" --stack-name resender-prod',
    ),
    "demo": ("resender demo", "resender demo --no-operator-commands"),
    "local": (
        "resender local up",
        "resender local up --env-file .local/env.json --not-found 1746061653597 "
        "--fault 1746061653598=hang_after_resend",
    ),
}


def _behaviours() -> list[str]:
    try:
        from resender.local.stub import Behaviour
    except ImportError:  # the local stack is not installed
        return []
    return [behaviour.value for behaviour in Behaviour]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("communication-resender")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


# -- entry point ---------------------------------------------------------------------------------------


#: Subcommands that run the local stack, and so need the ``local`` extra (moto) besides the ``cli`` one.
LOCAL_COMMANDS = frozenset({"demo", "local"})


def _missing_extra(args: argparse.Namespace) -> str | None:
    """A one-line hint when an optional dependency of this subcommand is not installed."""
    import importlib

    needs_local = args.command in LOCAL_COMMANDS or getattr(args, "local", False)
    for module, extra in (("boto3", "cli"), *((("moto", "local"),) if needs_local else ())):
        try:
            importlib.import_module(module)
        except ImportError:
            return (
                f"resender {args.command} needs {module}, which is not installed: "
                f"pip install 'communication-resender[{extra}]'"
            )
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if missing := _missing_extra(args):
        return _fail(missing)
    from botocore.exceptions import BotoCoreError, ClientError

    from resender.errors import ResenderError
    from resender.operations import NotFoundError, aws_failure
    from resender.queues import QueueError
    from resender.settings import ConfigurationError
    from resender.store import StoreError

    handlers: dict[str, Callable[[argparse.Namespace], int]] = {
        "status": _status_command,
        "list": _list_command,
        "invoke": _invoke_command,
        "redrive": _redrive_command,
        "resend": _resend_command,
        "demo": _demo_command,
        "local": _local_command,
    }
    try:
        with _stack_settings(args), _function_logs(args):
            return handlers[args.command](args)
    except NotFoundError as error:
        if getattr(args, "json", False):
            _print_json(error.details)
        return _fail(str(error), EXIT_NOT_FOUND)
    except ConfigurationError as error:
        return _fail(f"configuration error: {error}")
    except (StoreError, QueueError) as error:
        return _fail(f"{error}{_aws_context(args, error)}")
    except ResenderError as error:  # every other error of the project: one line naming what to fix
        return _fail(str(error))
    except (BotoCoreError, ClientError) as error:
        return _fail(f"{aws_failure(error)}{_aws_context(args, error)}")
    except (OSError, ValueError) as error:
        return _fail(str(error))
    except KeyboardInterrupt:
        return _fail("interrupted", EXIT_INTERRUPTED)


@contextmanager
def _stack_settings(args: argparse.Namespace) -> Iterator[None]:
    """With ``--stack-name``, the stack's values stand in for the environment variables they replace."""
    stack_name = getattr(args, "stack_name", None)
    if not stack_name:
        yield
        return
    from resender.local.aws import patched_environ
    from resender.stack_outputs import stack_environment

    target = _target(args)
    values = stack_environment(target.session(), stack_name, target.endpoint_url)
    with patched_environ(values):
        yield


#: What the AWS CLI says when it finds no credentials, so an operator gets the fix they already know.
NO_CREDENTIALS_HINT = (
    'Unable to locate credentials. You can configure credentials by running "aws configure".'
)


def _aws_context(args: argparse.Namespace, error: Exception) -> str:
    """Which resources, region and endpoint a failed AWS call was aimed at: what an operator checks first."""
    import os

    from resender.operations import OperatorError, resolve

    parts: list[str] = []
    for option, env_name, label in (
        ("table", "OUTCOMES_TABLE", "table"),
        ("queue_url", "SOURCE_QUEUE_URL", "queue"),
        ("dlq_url", "DEAD_LETTER_QUEUE_URL", "dead-letter queue"),
    ):
        if hasattr(args, option) and (value := resolve(getattr(args, option), env_name)):
            parts.append(f"{label} {value}")
    if args.command == "resend" and (secret := os.environ.get("CAPILLARY_SECRET_ID")):
        parts.append(f"secret {secret}")
    try:
        client = _target(args).dynamodb()
        parts.append(f"region {client.meta.region_name or 'unset'}")
        parts.append(f"endpoint {client.meta.endpoint_url}")
    except OperatorError as unresolved:
        parts.append(str(unresolved))
    except Exception:
        parts.append("region unknown")
    context = f" [{', '.join(parts)}]" if parts else ""
    if "NoCredentials" in f"{type(error).__name__} {error}":
        context += f" {NO_CREDENTIALS_HINT}"
    return context


def _fail(message: str, code: int = EXIT_USAGE) -> int:
    print(f"resender: {' '.join(message.split())}", file=sys.stderr)
    return code


def _print_json(document: object) -> None:
    print(json.dumps(document, indent=2, default=str))


def _target(args: argparse.Namespace) -> AwsTarget:
    from resender.operations import AwsTarget

    return AwsTarget(args.profile, args.region, args.endpoint_url)


def _store(args: argparse.Namespace) -> OutcomeStore:
    from resender.operations import table_name
    from resender.store import OutcomeStore

    table = table_name(args.table)  # a missing name is reported before any AWS setting is looked at
    return OutcomeStore(_target(args).dynamodb(), table)


# -- status --------------------------------------------------------------------------------------------


def _status_command(args: argparse.Namespace) -> int:
    from resender.operations import read_status

    report = read_status(_store(args), args.message_id)
    document = report.to_json()
    if args.json:
        _print_json(document)
        return EXIT_OK
    rows = [
        ("messageId", str(report.message_id)),
        ("status", document["status"]),
        ("attempts", _cell(document.get("attempts"))),
        ("resentMessageId", _cell(document.get("resentMessageId"))),
        ("orgId", _cell(document.get("orgId"))),
        ("requestId", _cell(document.get("requestId"))),
        ("error", _error_cell(document)),
        ("httpStatus", _cell(document.get("httpStatus"))),
        ("createdAt", _cell(document.get("createdAt"))),
        ("updatedAt", _cell(document.get("updatedAt"))),
        ("expiresAt", _cell(document.get("expiresAtIso"))),
    ]
    if document.get("deferrals"):
        rows.append(("deferrals", f"{document['deferrals']} (held back by pacing; no delivery spent)"))
    if document.get("nextAttemptAt") and document["status"] == Status.RETRYING:
        rows.append(("nextAttemptAt", str(document["nextAttemptAt"])))
    if document["status"] == Status.IN_PROGRESS:
        live = float(document.get("leaseExpiresAt", 0)) > time.time()
        state = "live: being resent now" if live else "expired: the next delivery records UNCERTAIN"
        rows.append(("leaseExpiresAt", f"{_cell(document.get('leaseExpiresAtIso'))} ({state})"))
    if document.get("forced"):
        forced = (
            f"from {document.get('forcedFrom')} by {document.get('forcedBy')} at {document.get('forcedAt')}"
        )
        if document.get("forceReason"):
            forced += f" ({document['forceReason']})"
        rows.append(("forced", forced))
    if document.get("previousResentMessageId") is not None:
        rows.append(("previously resent as", str(document["previousResentMessageId"])))
    chain = document["chain"]
    rows.append(("resendOf", _cell(chain["resendOf"])))
    rows.append(("chain", _chain_line(report)))
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name.ljust(width)}  {value}")
    return EXIT_OK


def _chain_line(report: StatusReport) -> str:
    def shown(link: ChainLink) -> str:
        return f"{link.message_id} ({link.status or 'no outcome'})"

    parts = [shown(link) for link in report.ancestors]
    parts.append(f"[{report.message_id} ({report.item['status']})]")
    parts.extend(shown(link) for link in report.descendants)
    return " -> ".join(parts)


# -- list ----------------------------------------------------------------------------------------------


def _list_command(args: argparse.Namespace) -> int:
    from resender.operations import Page, list_outcomes

    statuses = [args.status] if args.status else list(Status)
    store = _store(args)
    page = list_outcomes(store, statuses, since=args.since, limit=args.limit, page_token=args.page_token)
    while args.all and page.next_page_token:
        following = list_outcomes(
            store, statuses, since=args.since, limit=args.limit, page_token=page.next_page_token
        )
        page = Page([*page.items, *following.items], following.next_page_token)
    if args.json:
        _print_json(page.to_json())
        return EXIT_OK
    header = ("updatedAt", "messageId", "status", "attempts", "resentMessageId", "error")
    rows = [
        (
            _cell(item.get("updatedAt")),
            _cell(item.get("messageId")),
            _cell(item.get("status")),
            _cell(item.get("attempts")),
            _cell(item.get("resentMessageId")),
            _error_cell(item),
        )
        for item in page.items
    ]
    print(render_table(rows, header))
    print(f"{len(rows)} outcome(s)")
    if page.next_page_token:
        print(f"more: add --page-token {page.next_page_token}")
    return EXIT_OK


# -- invoke --------------------------------------------------------------------------------------------


def _invoke_command(args: argparse.Namespace) -> int:
    from resender.local.aws import patched_environ
    from resender.local.runner import is_env_vars_file, load_event
    from resender.operations import AwsTarget, OperatorError, load_env_vars

    events: list[tuple[str, dict[str, Any]]] = []
    skipped: list[Path] = []
    for path in args.event_files:
        document = load_event(path)
        if is_env_vars_file(document):
            skipped.append(path)
        else:
            events.append((path.name, document))
    if not events:
        raise OperatorError("no event files to invoke (every file given is an --env-vars file)")
    for path in skipped:
        print(f"resender: skipped {path}: an --env-vars file, not an event", file=sys.stderr)
    if args.local:
        chosen = [
            flag for flag in ("table", "profile", "region", "endpoint_url", "env_vars") if getattr(args, flag)
        ]
        if chosen:
            raise OperatorError(f"--local provides its own AWS; drop --{chosen[0].replace('_', '-')}")
        from resender.local.runner import local_stack

        with local_stack() as stack:
            code = _invocations(events, AwsTarget(), as_json=args.json)
            performed = stack.stub.resends_performed()
            print(
                f"The Capillary stub performed {performed} resend(s).",
                file=sys.stderr if args.json else sys.stdout,
            )
            return code
    overrides = load_env_vars(args.env_vars) if args.env_vars else {}
    target = _target(args)
    overrides.update(target.environment())
    if args.table:
        overrides["OUTCOMES_TABLE"] = args.table
    with patched_environ(overrides):
        from resender.settings import Settings

        Settings.from_env()  # a configuration error is reported before anyone is asked anything
        _confirm_real_resends(target, assume_yes=args.yes)
        return _invocations(events, target, as_json=args.json)


def _confirm_real_resends(target: AwsTarget, *, assume_yes: bool) -> None:
    """Invoking against real AWS or a real Capillary sends real messages to customers: ask first."""
    import os
    from urllib.parse import urlsplit

    from resender.operations import OperatorError
    from resender.settings import LOOPBACK_HOSTS

    aws_endpoint = target.endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or ""
    capillary = os.environ.get("CAPILLARY_BASE_URL") or ""
    remote = [
        f"{what} {url or 'the real AWS'}"
        for what, url in (("AWS", aws_endpoint), ("Capillary", capillary))
        if (urlsplit(url).hostname or "").lower() not in LOOPBACK_HOSTS
    ]
    if not remote or assume_yes:
        return
    question = f"This invocation talks to {' and '.join(remote)} and may resend real messages."
    if not sys.stdin.isatty():
        raise OperatorError(f"{question} Pass --yes to go ahead without a terminal to confirm on.")
    answer = input(f"{question} Continue? [y/N] ")
    if answer.strip().lower() not in ("y", "yes"):
        raise OperatorError("not confirmed; nothing was invoked")


def _invocations(events: Sequence[tuple[str, dict[str, Any]]], target: AwsTarget, *, as_json: bool) -> int:
    import os
    from datetime import UTC, datetime, timedelta

    from resender.app import reset_container
    from resender.local.runner import invoke
    from resender.operations import iso, record_outcomes, table_name
    from resender.settings import Settings
    from resender.store import OutcomeStore

    Settings.from_env()  # a configuration error is the command's, not each invocation's
    store = OutcomeStore(target.dynamodb(), table_name(None))
    message_id_path = os.environ.get("MESSAGE_ID_PATH") or "messageId"
    reset_container()  # the function's wiring must see this environment, not an earlier one
    results = []
    try:
        for name, event in events:
            # Outcomes written from now on are this invocation's; older ones were found, not made.
            invoked_at = iso(datetime.now(UTC) - timedelta(milliseconds=1))
            results.append((invoke(event, name), event, invoked_at))
    finally:
        reset_container()
    documents: list[dict[str, Any]] = [
        {
            "eventFile": invocation.event_file,
            "response": invocation.response,
            "error": invocation.error,
            # A failed invocation produced no outcome: whatever the table holds came from elsewhere.
            "outcomes": []
            if invocation.error
            else [
                row.to_json() for row in record_outcomes(event, store, message_id_path, invoked_at=invoked_at)
            ],
        }
        for invocation, event, invoked_at in results
    ]
    failed = any(invocation.error for invocation, _, _ in results)
    if as_json:
        _print_json({"invocations": documents})
        return EXIT_NOT_FOUND if failed else EXIT_OK
    for document in documents:
        shown = json.dumps(document["response"]) if document["error"] is None else document["error"]
        print(f"{document['eventFile']}: {shown}")
    print()
    header = ("event file", "messageId", "status", "resentMessageId", "detail")
    rows = [
        (
            document["eventFile"],
            _cell(row["messageId"]),
            _cell(f"{row['status']} ({row['foundStatus']})" if row["foundStatus"] else row["status"]),
            _cell(row["resentMessageId"]),
            _cell(row["detail"]),
        )
        for document in documents
        for row in document["outcomes"]
    ]
    print(render_table(rows, header))
    return EXIT_NOT_FOUND if failed else EXIT_OK


# -- redrive -------------------------------------------------------------------------------------------


class ProgressBar:
    """A one-line text bar redrawn in place on a terminal."""

    def __init__(self, stream: TextIO, width: int = 30) -> None:
        self._stream = stream
        self._width = width
        self._drawn = False

    def update(self, result: RedriveResult, max_moves: int | None = None) -> None:
        done = result.moved + result.skipped_poison
        total = result.total_estimate
        if max_moves is not None:
            total = min(total, max_moves + result.skipped_poison)
        total = max(total, done, 1)
        filled = self._width * done // total
        verb = "would move" if result.dry_run else "moved"
        self._stream.write(
            f"\r[{'#' * filled}{'.' * (self._width - filled)}] {done}/{total}  "
            f"{verb} {result.moved}  skipped {result.skipped_poison}"
        )
        self._stream.flush()
        self._drawn = True

    def finish(self) -> None:
        if self._drawn:
            self._stream.write("\n")
            self._stream.flush()


def _redrive_command(args: argparse.Namespace) -> int:
    from resender.operations import (
        DEAD_LETTER_QUEUE_ENV,
        SOURCE_QUEUE_ENV,
        queue_urls,
        redrive,
        resolve,
    )

    sqs = _target(args).sqs()
    queue_url, dlq_url = queue_urls(
        sqs, resolve(args.queue_url, SOURCE_QUEUE_ENV), resolve(args.dlq_url, DEAD_LETTER_QUEUE_ENV)
    )
    show_progress = sys.stderr.isatty() if args.progress is None else args.progress
    bar = ProgressBar(sys.stderr) if show_progress else None
    try:
        result = redrive(
            sqs,
            queue_url=queue_url,
            dlq_url=dlq_url,
            dry_run=args.dry_run,
            max_moves=args.max,
            include_poison=args.include_poison,
            on_progress=(lambda progress: bar.update(progress, args.max)) if bar else None,
        )
    finally:
        if bar:
            bar.finish()
    if args.json:
        _print_json({**result.to_json(), "queueUrl": queue_url, "deadLetterQueueUrl": dlq_url})
        return EXIT_OK
    if result.moved == 0 and result.skipped_poison == 0:
        print("The dead-letter queue is empty: nothing to move.")
        return EXIT_OK
    verb = "Would move" if result.dry_run else "Moved"
    line = f"{verb} {result.moved} message(s) to {queue_url}"
    if result.moved_poison:
        line += f" ({result.moved_poison} of them poison)"
    print(line + ".")
    if result.skipped_poison:
        print(
            f"Skipped {result.skipped_poison} poison message(s): left in the dead-letter queue "
            "(--include-poison moves them too)."
        )
    if result.dry_run:
        print("Dry run: nothing was moved.")
    return EXIT_OK


# -- resend --------------------------------------------------------------------------------------------


def _resend_command(args: argparse.Namespace) -> int:
    from resender.operations import build_operator_container, manual_resend, operator_name

    container = build_operator_container(args.table, _target(args))
    report = manual_resend(
        container,
        args.message_id,
        force=args.force,
        operator=operator_name(args.operator, _target(args)) if args.force else "",
        reason=args.reason,
    )
    code = resend_exit_code(report.status, reached=report.reached_capillary)
    if args.json:
        _print_json(report.to_json())
        return code
    forced = " (forced)" if report.forced else ""
    print(
        f"messageId {report.message_id}: {report.previous_status or 'no outcome'} -> {report.status}{forced}"
    )
    print(report.reason)
    if report.resent_message_id is not None:
        print(f"resentMessageId {report.resent_message_id}")
    if code == EXIT_UNREACHED:
        print(
            f"Capillary was not reached, so nothing was sent; fix the cause above, then run "
            f"resender resend {report.message_id} again.",
            file=sys.stderr,
        )
    elif report.status == Status.RETRYING:
        print(
            f"Capillary answered that it did not resend it now; run resender resend {report.message_id} "
            "again later.",
            file=sys.stderr,
        )
    return code


def resend_exit_code(status: str, *, reached: bool) -> int:
    """0 only for a resend; 3 when Capillary answered without resending; 4 when it was never reached."""
    if status == Status.RESENT:
        return EXIT_OK
    return EXIT_NOT_RESENT if reached else EXIT_UNREACHED


# -- local ---------------------------------------------------------------------------------------------


def _local_command(args: argparse.Namespace) -> int:
    import signal
    import threading

    from resender.local.stub import Behaviour
    from resender.local.up import StubFaults, parse_fault, serve

    try:
        behaviours = dict(parse_fault(text) for text in args.fault)
        fail_next = [Behaviour(text.strip().lower()) for text in args.fail_next]
    except ValueError as error:
        return _fail(str(error))
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    serve(
        StubFaults(args.not_found, args.rejected, behaviours, fail_next),
        out=sys.stdout,
        stop=stop,
        aws_port=args.aws_port,
        capillary_port=args.capillary_port,
        env_file=args.env_file,
    )
    return EXIT_OK


# -- demo ----------------------------------------------------------------------------------------------


#: Failures that exhausted their retries in the demo's dead-letter queue, as SQS would have moved them there.
DEMO_DLQ_IDS = (1746061653700, 1746061653701)


def _demo_command(args: argparse.Namespace) -> int:
    from resender.local.demo import run_demo

    code = run_demo(args.events)
    if code != EXIT_OK or not args.operator_commands:
        return code
    print()
    print("Operator commands, against a fresh emulated stack fed with the same files:")
    return _operator_tour(args.events)


def _operator_tour(events_dir: Path) -> int:
    """Each operator subcommand once, with the exit code it is expected to give."""
    from resender.local.demo import event_files
    from resender.local.runner import invoke, load_event, local_stack
    from resender.operations import AwsTarget, list_outcomes
    from resender.store import OutcomeStore

    _reset_emulator()
    with local_stack() as stack:
        for path in event_files(events_dir):
            invoke(load_event(path), path.name)
        target = AwsTarget()
        sqs = target.sqs()
        for message_id in DEMO_DLQ_IDS:
            body = json.dumps({"messageId": message_id, "channel": "SMS", "reason": "undelivered"})
            sqs.send_message(QueueUrl=stack.resources.dead_letter_queue_url, MessageBody=body)
        store = OutcomeStore(target.dynamodb(), stack.resources.table_name)
        resent = list_outcomes(store, [Status.RESENT], limit=1).items[0]["messageId"]
        steps: list[tuple[list[str], int]] = [
            (["list", "--limit", "5"], EXIT_OK),
            (["status", str(resent)], EXIT_OK),
            (["status", "42"], EXIT_NOT_FOUND),
            (["resend", str(resent)], EXIT_USAGE),  # refused: already RESENT, and --force exists
            (["redrive", "--dry-run"], EXIT_OK),
            (["redrive", "--max", "1"], EXIT_OK),
            (["resend", str(DEMO_DLQ_IDS[1])], EXIT_OK),
            (["list", "--status", "NOT_FOUND", "--json"], EXIT_OK),
        ]
        unexpected = 0
        for argv, expected in steps:
            print(f"\n$ resender {' '.join(argv)}", flush=True)
            code = main(argv)
            sys.stderr.flush()
            print(f"(exit {code})", flush=True)
            unexpected += code != expected
    if unexpected:
        print(f"{unexpected} operator command(s) gave an unexpected exit code")
        return EXIT_NOT_FOUND
    return EXIT_OK


def _reset_emulator() -> None:
    # moto keeps its state per process, not per server: the stack of the first part is still there.
    import requests

    from resender.local.aws import MotoServer

    with MotoServer() as moto:
        requests.post(f"{moto.endpoint_url}/moto-api/reset", timeout=10).raise_for_status()


# -- output helpers ------------------------------------------------------------------------------------


def render_table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    """Aligned columns, cells clipped to a readable width."""
    clipped = [[_clip(cell) for cell in row] for row in rows]
    widths = [max(len(cell) for cell in column) for column in zip(header, *clipped, strict=False)]
    lines = ["  ".join(cell.ljust(size) for cell, size in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * size for size in widths))
    lines.extend(
        "  ".join(cell.ljust(size) for cell, size in zip(row, widths, strict=True)) for row in clipped
    )
    return "\n".join(line.rstrip() for line in lines)


def _clip(cell: str) -> str:
    cell = " ".join(cell.split())
    return cell if len(cell) <= CELL_WIDTH else cell[: CELL_WIDTH - 3] + "..."


def _cell(value: object) -> str:
    return "-" if value is None or value == "" else str(value)


def _error_cell(item: Mapping[str, Any]) -> str:
    code, message = item.get("errorCode"), item.get("errorMessage")
    if code is None and not message:
        return "-"
    return f"{code}: {message}" if code is not None else str(message)


@contextmanager
def _function_logs(args: argparse.Namespace) -> Iterator[None]:
    """The function logs JSON to stdout; here results own stdout, so its logs go to stderr or nowhere."""
    from resender.observability import logger

    handler = logger.registered_handler
    level = logger.log_level
    stream = handler.stream if isinstance(handler, logging.StreamHandler) else None
    if getattr(args, "verbose", False):
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(sys.stderr)
    else:
        logger.setLevel("CRITICAL")
    try:
        yield
    finally:
        logger.setLevel(level)
        if stream is not None and isinstance(handler, logging.StreamHandler):
            handler.setStream(stream)


if __name__ == "__main__":
    raise SystemExit(main())
