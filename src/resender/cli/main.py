"""The entry point: parse, check the optional dependencies, run the subcommand, turn errors into exit codes.

Every error ends as one line on stderr naming what to fix, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Final

from resender.cli.errors import ExitCode
from resender.cli.parser import build_parser

if TYPE_CHECKING:
    from resender.cli.context import Context

#: Subcommands that run the local stack, and so need the ``local`` extra (moto) besides the ``cli`` one.
LOCAL_COMMANDS: Final = frozenset({"demo", "local"})


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if missing := _missing_extra(args):
        return fail(missing)
    from botocore.exceptions import BotoCoreError, ClientError

    from resender.cli.commands import COMMANDS
    from resender.cli.context import Context
    from resender.cli.errors import NotFoundError
    from resender.cli.rendering import print_json
    from resender.cli.target import aws_failure
    from resender.errors import ResenderError
    from resender.queues import QueueError
    from resender.settings import ConfigurationError
    from resender.store import StoreError

    context: Context | None = None
    try:
        context = Context.of(args, run=main)
        with _function_logs(verbose=getattr(args, "verbose", False)):
            return COMMANDS[args.command](context)
    except NotFoundError as error:
        if getattr(args, "json", False):
            print_json(error.details)
        return fail(str(error), ExitCode.NOT_FOUND)
    except ConfigurationError as error:
        return fail(f"configuration error: {error}")
    except (StoreError, QueueError) as error:
        return fail(f"{error}{_aimed_at(context, args, error)}")
    except ResenderError as error:  # every other error of the project: one line naming what to fix
        return fail(str(error))
    except (BotoCoreError, ClientError) as error:
        return fail(f"{aws_failure(error)}{_aimed_at(context, args, error)}")
    except (OSError, ValueError) as error:
        return fail(str(error))
    except KeyboardInterrupt:
        return fail("interrupted", ExitCode.INTERRUPTED)


def _aimed_at(context: Context | None, args: argparse.Namespace, error: Exception) -> str:
    from resender.cli.context import Context

    # Reading the stack itself may be what failed: then no stack values were read to name.
    return (context or Context(args, {})).aws_context(error)


def fail(message: str, code: int = ExitCode.USAGE) -> int:
    print(f"resender: {' '.join(message.split())}", file=sys.stderr)
    return code


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


@contextmanager
def _function_logs(*, verbose: bool) -> Iterator[None]:
    """The function logs JSON to stdout; here results own stdout, so its logs go to stderr or nowhere."""
    from resender.observability import logger

    handler = logger.registered_handler
    level = logger.log_level
    stream = handler.stream if isinstance(handler, logging.StreamHandler) else None
    if verbose:
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
