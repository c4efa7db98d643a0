"""The command line: subcommands, options, their checks, help texts and examples.

Only argparse and light modules are imported here, so ``resender --help`` answers without the AWS SDK.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, NoReturn

from resender.cli.errors import ExitCode
from resender.models import Status

DESCRIPTION: Final = (
    "The resender command: answer operators' questions, redrive the DLQ, resend by hand, run locally.\n"
    """
Exit codes: 0 done, 1 not found, 2 usage, configuration or AWS error (one line on stderr, no traceback);
resend only: 3 Capillary answered without resending (NOT_FOUND, REJECTED, UNCERTAIN, or a refusal to do it
now), 4 Capillary was never reached (credentials, network, circuit breaker), so nothing was sent.
AWS is chosen as the AWS CLI chooses it (--profile/--region/--endpoint-url, else AWS_PROFILE, AWS_REGION,
AWS_ENDPOINT_URL and the profile's settings); the table and queues come from options or the function's own
environment variables.
"""
)

LIST_LIMIT_MAX: Final = 1000


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(ExitCode.USAGE)


# -- argument types ------------------------------------------------------------------------------------


def _message_id(text: str) -> int:
    from resender.events import PoisonError, validate_message_id

    try:
        return validate_message_id(text.strip())
    except PoisonError:
        raise argparse.ArgumentTypeError(
            f"invalid message id {text!r}: expected a positive 64-bit integer"
        ) from None


def _org(text: str) -> int:
    from resender.cli.submit import SubmitError, parse_org

    try:
        return parse_org(text)
    except SubmitError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _status(text: str) -> Status:
    try:
        return Status(text.strip().upper())
    except ValueError:
        choices = ", ".join(Status)
        raise argparse.ArgumentTypeError(f"invalid status {text!r}: choose from {choices}") from None


def _since(text: str) -> str:
    from resender.cli.rendering import parse_since

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


# -- options shared by several subcommands ------------------------------------------------------------


def json_option(parser: argparse.ArgumentParser, instead_of: str) -> None:
    parser.add_argument(
        "--json", action="store_true", help=f"print one JSON document instead of {instead_of}"
    )


def progress_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: when stderr is a terminal)",
    )


def verbose_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--verbose", action="store_true", help="also print the function's JSON log lines")


# -- parser --------------------------------------------------------------------------------------------


def _aws_options() -> Parser:
    options = Parser(add_help=False)
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


def _table_option() -> Parser:
    options = Parser(add_help=False)
    options.add_argument("--table", help="outcomes table name (default: OUTCOMES_TABLE)")
    json_option(options, "a table")
    return options


def _queue_options() -> Parser:
    options = Parser(add_help=False)
    options.add_argument(
        "--queue-url",
        help="source queue the function consumes (default: SOURCE_QUEUE_URL, else the only queue "
        "whose redrive policy targets the DLQ)",
    )
    options.add_argument(
        "--dlq-url",
        help="dead-letter queue (default: DEAD_LETTER_QUEUE_URL, else the source queue's redrive target)",
    )
    json_option(options, "text")
    return options


#: Each subcommand's line in the top-level help, and the description its own --help opens with.
TEXTS: Final[dict[str, tuple[str, str]]] = {
    "status": (
        "the outcome of one messageId and its resend chain",
        (
            "Show the outcome recorded for MESSAGE_ID: status, attempts, resentMessageId, orgId, Capillary"
            " request id, error, times, and the resend chain (what it was a resend of, what its resend "
            "became). Exit 1 if no outcome is recorded."
        ),
    ),
    "list": (
        "recent outcomes, newest first",
        "List outcomes newest first (by updatedAt), a page at a time, from the table's byStatus index.",
    ),
    "invoke": (
        "run the Lambda handler on sam-local-invoke style event files, without a container",
        (
            "Run the real handler on each EVENT_FILE, as `sam local invoke` does but without Docker, "
            "against the configured AWS (real or emulated); print the batch response and the outcome "
            "recorded for each record. Envelope times (SQS SentTimestamp, SNS Timestamp) are set to now, "
            "as if just delivered, so the resend policy's age rule reads only a payload's own failedAt. "
            "Exit 1 if an invocation raised."
        ),
    ),
    "redrive": (
        "move messages from the dead-letter queue back to the source queue",
        (
            "Move messages from the DLQ back to the source queue, body and attributes unchanged. Each "
            "message is sent to the source queue first and deleted from the DLQ second, so an interrupted "
            "run loses nothing: at worst a message is in both queues, and the outcomes table turns its "
            "second delivery into an acknowledged duplicate, never a second resend. Rerun to finish. "
            "Poison messages (with a poisonReason attribute) stay in the DLQ unless --include-poison."
        ),
    ),
    "resend": (
        "resend one messageId by hand, through the same claim protocol",
        (
            "Resend MESSAGE_ID through the function's claim protocol and record the outcome. Refused (exit"
            " 2) when it is already RESENT, UNCERTAIN or otherwise settled, or being resent right now, "
            "unless --force; a forced resend is recorded on the item (forced, forcedFrom, forcedBy, "
            "forcedAt). Needs the function's settings: OUTCOMES_TABLE, CAPILLARY_SECRET_ID, "
            "CAPILLARY_BASE_URL. Exit 0 only when it was resent; 3 when Capillary answered without "
            "resending (NOT_FOUND, REJECTED, UNCERTAIN, or not now); 4 when Capillary was never reached "
            "(the secret, the network or the circuit breaker), so nothing was sent; 2 when refused."
        ),
    ),
    "submit": (
        "publish failed messages from CSV, JSON Lines or a list of ids to the function's feed",
        (
            "Read failed messages from each FILE (- for stdin) and from --ids, check every id as the "
            "function does, fold duplicates, and publish one notification per distinct messageId (see "
            "schema/failure-notification.schema.json) to the topic or queue, ten per request. Bad lines "
            "are reported with their file and line and never published. A rerun is safe: the function "
            "claims each messageId before resending, so a notification published twice causes one resend. "
            "Exit 0 when every valid id was published and none was invalid, 1 when some input was invalid "
            "(the valid ones are still published), 2 for usage, configuration or AWS errors."
        ),
    ),
    "demo": (
        "run every sample event against emulated AWS and a Capillary stub (make demo)",
        (
            "What make demo runs: every event file through the real handler against emulated AWS and a "
            "local Capillary stub, then a replay of every file to show no second resend."
        ),
    ),
    "local": (
        "the local stack: emulated AWS and the Capillary stub, in one command",
        (
            "Local runs without an AWS account. `resender local up` starts the emulated AWS and the "
            "Capillary stub on loopback ports, creates the table, queues and secret as template.yaml does,"
            " prints the URLs and the exact environment to use, and serves until Ctrl-C."
        ),
    ),
}


def _subcommand(commands: Any, name: str, *parents: Parser) -> Parser:
    summary, description = TEXTS[name]
    subcommand: Parser = commands.add_parser(
        name, parents=list(parents), help=summary, description=description
    )
    return subcommand


def _add_submit_parser(commands: Any, aws: Parser) -> None:
    submit = _subcommand(commands, "submit", aws)
    submit.add_argument("files", nargs="*", metavar="FILE", help="input files; - reads stdin")
    submit.add_argument("--ids", nargs="+", default=[], metavar="ID", help="message ids given inline")
    submit.add_argument(
        "--format",
        choices=["csv", "jsonl", "ids"],
        help="input format (default: from the file name: .csv, .jsonl/.ndjson; else from the first line)",
    )
    submit.add_argument(
        "--id-column",
        metavar="NAME",
        help="CSV column holding the message id (default: the first of messageId, message_id, id, "
        "nsadmin_id)",
    )
    submit.add_argument("--org", metavar="ORG", help="orgId for notifications whose input names none")
    target = submit.add_mutually_exclusive_group()
    target.add_argument("--topic-arn", help="SNS topic to publish to (default: FAILURE_TOPIC_ARN)")
    target.add_argument(
        "--queue-url", help="SQS queue to send to (default: SOURCE_QUEUE_URL when no topic is set)"
    )
    submit.add_argument("--dry-run", action="store_true", help="read and check everything; publish nothing")
    json_option(submit, "text")
    progress_option(submit)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="resender", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser, metavar="COMMAND")
    aws, table, queues = _aws_options(), _table_option(), _queue_options()

    status = _subcommand(commands, "status", table, aws)
    status.add_argument("message_id", type=_message_id, metavar="MESSAGE_ID")

    listing = _subcommand(commands, "list", table, aws)
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
    listing.add_argument("--org", type=_org, metavar="ORG", help="only outcomes recorded for this orgId")
    listing.add_argument(
        "--all",
        action="store_true",
        help="page through every matching outcome (pages of --limit) and print them all",
    )

    invoke = _subcommand(commands, "invoke", table, aws)
    invoke.add_argument("event_files", nargs="+", type=Path, metavar="EVENT_FILE")
    invoke.add_argument(
        "--local",
        action="store_true",
        help="start emulated AWS and the Capillary stub first, as make demo does (no AWS options then)",
    )
    invoke.add_argument("--env-vars", metavar="FILE", help="sam-style environment file, e.g. events/env.json")
    verbose_option(invoke)
    invoke.add_argument(
        "--yes",
        action="store_true",
        help="do not ask before invoking against a non-loopback AWS endpoint or Capillary host "
        "(required without a terminal)",
    )

    redrive = _subcommand(commands, "redrive", queues, aws)
    redrive.add_argument("--dry-run", action="store_true", help="count what would move; move nothing")
    redrive.add_argument("--max", type=_bounded(1), metavar="N", help="move at most N messages")
    redrive.add_argument(
        "--include-poison",
        action="store_true",
        help="move poison messages too (e.g. after fixing MESSAGE_ID_PATH); still-bad ones come back",
    )
    progress_option(redrive)

    resend = _subcommand(commands, "resend", table, aws)
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
    resend.add_argument(
        "--org",
        type=_org,
        metavar="ORG",
        help="the orgId whose credentials send it (default: the orgId recorded on the item); needed "
        "when the secret holds several orgs and the item names none",
    )
    verbose_option(resend)

    _add_submit_parser(commands, aws)

    demo = _subcommand(commands, "demo")
    demo.add_argument(
        "--events", type=Path, default=Path("events"), help="folder of event files (default: events)"
    )
    demo.add_argument(
        "--operator-commands",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="then run each operator subcommand once against a fresh emulated stack (default: yes)",
    )
    verbose_option(demo)
    local = _subcommand(commands, "local")
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
        "resender list --org 200002 --since 1d --stack-name resender-prod",
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
    "submit": (
        "resender submit messages-export.csv --stack-name resender-prod",
        "resender submit failures.jsonl --queue-url https://sqs.eu-west-1.amazonaws.com/123456789012/failures",
        "resender submit --ids 1746061653596 1746061653597 --org 100737 --dry-run --stack-name resender-prod",
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
