"""One function per subcommand: read what it was given, call the operation, show the result, exit code.

Each imports what it needs when it runs, so ``resender --help`` and a missing optional dependency are
answered before the AWS SDK or the local stack is loaded.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from resender.cli.context import (
    DEAD_LETTER_QUEUE_ENV,
    FAILURE_TOPIC_ENV,
    SOURCE_QUEUE_ENV,
    TABLE_ENV,
    Context,
)
from resender.cli.errors import ExitCode, OperatorError
from resender.cli.rendering import OUTCOME_COLUMNS, ProgressBar, outcome_rows, print_json, render_table
from resender.models import Status

if TYPE_CHECKING:
    from resender.cli.submit import ReadResult

Command = Callable[[Context], int]


def status(context: Context) -> int:
    from resender.cli.status import read_status, status_lines

    report = read_status(context.store(), context.args.message_id)
    if context.args.json:
        print_json(report.to_json())
        return ExitCode.OK
    print("\n".join(status_lines(report)))
    return ExitCode.OK


def listing(context: Context) -> int:
    from resender.cli.listing import Query, list_all, list_outcomes

    args = context.args
    query = Query([args.status] if args.status else list(Status), args.since, args.limit, args.org)
    page = (list_all if args.all else list_outcomes)(context.store(), query, args.page_token)
    if args.json:
        print_json(page.to_json())
        return ExitCode.OK
    print(render_table(outcome_rows(page.items), OUTCOME_COLUMNS))
    print(f"{len(page.items)} outcome(s)")
    if page.next_page_token:
        print(f"more: add --page-token {page.next_page_token}")
    return ExitCode.OK


def invoke(context: Context) -> int:
    from resender.cli.invoke import confirm_real_resends, invoke_files, load_env_vars
    from resender.cli.target import AwsTarget
    from resender.local.runner import is_env_vars_file, load_event

    args = context.args
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
            environ = {**context.environ, **stack.environment}
            documents, failed = invoke_files(events, environ, AwsTarget.from_environment(environ))
            _show_invocations(documents, as_json=args.json)
            performed = stack.stub.resends_performed()
            print(
                f"The Capillary stub performed {performed} resend(s).",
                file=sys.stderr if args.json else sys.stdout,
            )
            return ExitCode.NOT_FOUND if failed else ExitCode.OK
    environ = {**context.environ, **(load_env_vars(args.env_vars) if args.env_vars else {})}
    if args.table:
        environ[TABLE_ENV] = args.table
    target = AwsTarget.from_environment(environ, over=context.target)
    from resender.settings import Settings

    Settings.from_env(environ)  # a configuration error is reported before anyone is asked anything
    confirm_real_resends(target, environ, assume_yes=args.yes)
    documents, failed = invoke_files(events, environ, target)
    _show_invocations(documents, as_json=args.json)
    return ExitCode.NOT_FOUND if failed else ExitCode.OK


def _show_invocations(documents: list[dict[str, Any]], *, as_json: bool) -> None:
    from resender.cli.invoke import invocation_lines

    if as_json:
        print_json({"invocations": documents})
    else:
        print("\n".join(invocation_lines(documents)))


def redrive(context: Context) -> int:
    from resender.cli.redrive import RedriveResult, queue_urls
    from resender.cli.redrive import redrive as move_back

    args = context.args
    sqs = context.target.sqs()
    queue_url, dlq_url = queue_urls(
        sqs,
        context.option(args.queue_url, SOURCE_QUEUE_ENV),
        context.option(args.dlq_url, DEAD_LETTER_QUEUE_ENV),
    )
    bar = _progress_bar(args.progress)

    def show(progress: RedriveResult) -> None:
        if bar:
            bar.draw(*progress.progress(args.max))

    try:
        result = move_back(
            sqs,
            queue_url=queue_url,
            dlq_url=dlq_url,
            dry_run=args.dry_run,
            max_moves=args.max,
            include_poison=args.include_poison,
            on_progress=show if bar else None,
        )
    finally:
        if bar:
            bar.finish()
    if args.json:
        print_json({**result.to_json(), "queueUrl": queue_url, "deadLetterQueueUrl": dlq_url})
    else:
        print("\n".join(result.summary(queue_url)))
    return ExitCode.OK


def resend(context: Context) -> int:
    from resender.cli.resend import manual_resend, operator_container, operator_name

    args = context.args
    target = context.target
    container = operator_container(context.environ, args.table, target)
    report = manual_resend(
        container,
        args.message_id,
        force=args.force,
        operator=operator_name(args.operator, target) if args.force else "",
        reason=args.reason,
        org_id=args.org,
    )
    if args.json:
        print_json(report.to_json())
        return report.exit_code
    print("\n".join(report.summary()))
    if advice := report.advice():
        print(advice, file=sys.stderr)
    return report.exit_code


def submit(context: Context) -> int:
    from resender.cli.submit import Publisher, QueuePublisher, SubmitError, TopicPublisher, parse_org, publish

    args = context.args
    if not args.files and not args.ids:
        raise SubmitError("nothing to submit: give FILE(s), - for stdin, or --ids")
    if args.files.count("-") > 1:
        raise SubmitError("stdin (-) can be read only once")
    org_id = parse_org(args.org) if args.org is not None else None
    topic_arn = args.topic_arn or (None if args.queue_url else context.environ.get(FAILURE_TOPIC_ENV))
    queue_url = args.queue_url or (None if topic_arn else context.environ.get(SOURCE_QUEUE_ENV))
    if not topic_arn and not queue_url and not args.dry_run:
        raise SubmitError(
            f"no target: pass --topic-arn or --queue-url (or set {FAILURE_TOPIC_ENV} or {SOURCE_QUEUE_ENV})"
        )
    read = _submit_inputs(context, org_id)
    publisher: Publisher | None = None
    if topic_arn:
        publisher = TopicPublisher(context.target.sns(), topic_arn)
    elif queue_url:
        publisher = QueuePublisher(context.target.sqs(), queue_url)
    published, failed = 0, []
    if publisher and not args.dry_run and read.notifications:
        bar = _progress_bar(args.progress)
        try:
            outcome = publish(
                read.notifications,
                publisher,
                (lambda done, total: bar.draw(done, total, "published")) if bar else None,
            )
        finally:
            if bar:
                bar.finish()
        published, failed = outcome.published, outcome.failed
    code = ExitCode.USAGE if failed else (ExitCode.NOT_FOUND if read.invalid else ExitCode.OK)
    if args.json:
        print_json(
            {
                "target": publisher.target if publisher else None,
                "dryRun": args.dry_run,
                "distinct": len(read.notifications),
                "published": published,
                "duplicates": read.duplicates,
                "invalid": [line.to_json() for line in read.invalid],
                "failed": [
                    {"messageId": item.message_id, "origin": item.origin, "reason": reason}
                    for item, reason in failed
                ],
                "exitCode": code,
            }
        )
        return code
    for line in read.invalid:
        print(f"{line.file}:{line.line}: {line.reason}", file=sys.stderr)
    for item, reason in failed:
        print(f"{item.origin}: messageId {item.message_id} not published: {reason}", file=sys.stderr)
    target = publisher.target if publisher else "(no target: a dry run only checks the input)"
    if args.dry_run:
        print(f"Dry run: would publish {len(read.notifications)} notification(s) to {target}.")
    else:
        print(f"Published {published} notification(s) to {target}.")
    print(f"{read.duplicates} duplicate(s) folded, {len(read.invalid)} invalid line(s).")
    if failed:
        print(f"{len(failed)} not published; rerunning is safe: a messageId is resent at most once.")
    return code


def _submit_inputs(context: Context, org_id: int | None) -> ReadResult:
    from resender.cli.submit import InputFormat, Source, SubmitError, read_inputs

    args = context.args
    sources: list[Source] = []
    try:
        for name in args.files:
            stream = sys.stdin if name == "-" else Path(name).open(encoding="utf-8-sig", newline="")  # noqa: SIM115
            sources.append(Source(name, stream))
        if args.ids:
            sources.append(Source("--ids", io.StringIO("\n".join(args.ids)), InputFormat.IDS))
        return read_inputs(
            sources,
            input_format=InputFormat(args.format) if args.format else None,
            id_column=args.id_column,
            org_id=org_id,
        )
    except UnicodeDecodeError as error:
        raise SubmitError(f"input is not UTF-8 text ({error.reason})") from None
    finally:
        for source in sources:
            if source.stream is not sys.stdin:
                source.stream.close()


def _progress_bar(option: bool | None) -> ProgressBar | None:
    show = sys.stderr.isatty() if option is None else option
    return ProgressBar(sys.stderr) if show else None


def demo(context: Context) -> int:
    from resender.local.demo import run_demo
    from resender.local.tour import operator_tour

    code = run_demo(context.args.events)
    if code != ExitCode.OK or not context.args.operator_commands:
        return code
    print()
    print("Operator commands, against a fresh emulated stack fed with the same files:")
    if context.run is None:
        raise OperatorError("the operator tour needs the command's entry point")
    return operator_tour(context.args.events, context.run)


def local(context: Context) -> int:
    import signal
    import threading

    from resender.local.stub import Behaviour
    from resender.local.up import StubFaults, parse_fault, serve

    args = context.args
    try:
        behaviours = dict(parse_fault(text) for text in args.fault)
        fail_next = [Behaviour(text.strip().lower()) for text in args.fail_next]
    except ValueError as error:
        raise OperatorError(str(error)) from None
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
    return ExitCode.OK


COMMANDS: dict[str, Command] = {
    "status": status,
    "list": listing,
    "invoke": invoke,
    "redrive": redrive,
    "resend": resend,
    "submit": submit,
    "demo": demo,
    "local": local,
}
