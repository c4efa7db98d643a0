"""What one run of the command was pointed at: its options, the environment it reads, and its AWS.

The function's own environment variables (``OUTCOMES_TABLE``, ``DEAD_LETTER_QUEUE_URL``...) mean the same
here; with ``--stack-name`` the deployed stack's values stand in for them. They are read from
:attr:`Context.environ`, never written to the process environment.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from resender.cli.errors import OperatorError

if TYPE_CHECKING:
    from resender.cli.target import AwsTarget
    from resender.store import OutcomeStore

#: Environment variables the command shares with the function (same names, same meaning).
TABLE_ENV: Final = "OUTCOMES_TABLE"
DEAD_LETTER_QUEUE_ENV: Final = "DEAD_LETTER_QUEUE_URL"
SECRET_ENV: Final = "CAPILLARY_SECRET_ID"  # noqa: S105 - a variable name, not a secret
#: Neither is in the function's environment (Lambda's event source mapping knows the source queue).
SOURCE_QUEUE_ENV: Final = "SOURCE_QUEUE_URL"
FAILURE_TOPIC_ENV: Final = "FAILURE_TOPIC_ARN"


@dataclass(frozen=True, slots=True)
class Context:
    args: argparse.Namespace
    environ: Mapping[str, str]
    #: Runs a whole command line, as the entry point does (the demo's tour of the commands uses it).
    run: Callable[[Sequence[str]], int] | None = None

    @classmethod
    def of(cls, args: argparse.Namespace, run: Callable[[Sequence[str]], int] | None = None) -> Context:
        """The process environment, with a deployed stack's values over it when ``--stack-name`` is given."""
        environ = dict(os.environ)
        if stack_name := getattr(args, "stack_name", None):
            from resender.cli.stack import stack_environment

            target = aws_target(args)
            environ.update(stack_environment(target.session(), stack_name, target.endpoint_url))
        return cls(args, environ, run)

    @property
    def target(self) -> AwsTarget:
        return aws_target(self.args)

    def option(self, value: str | None, env_name: str) -> str | None:
        """An option's value, else the environment variable the function uses for the same thing."""
        return (value or self.environ.get(env_name, "")).strip() or None

    def table_name(self) -> str:
        name = self.option(getattr(self.args, "table", None), TABLE_ENV)
        if not name:
            raise OperatorError(f"no outcomes table: pass --table or set {TABLE_ENV}")
        return name

    def store(self) -> OutcomeStore:
        from resender.store import OutcomeStore

        table = self.table_name()  # a missing name is reported before any AWS setting is looked at
        return OutcomeStore(self.target.dynamodb(), table)

    def aws_context(self, error: Exception) -> str:
        """The resources, region and endpoint a failed AWS call was aimed at, for its one-line report."""
        from resender.cli.target import aimed_at

        parts: list[str] = []
        for option, env_name, label in (
            ("table", TABLE_ENV, "table"),
            ("queue_url", SOURCE_QUEUE_ENV, "queue"),
            ("dlq_url", DEAD_LETTER_QUEUE_ENV, "dead-letter queue"),
        ):
            if hasattr(self.args, option) and (value := self.option(getattr(self.args, option), env_name)):
                parts.append(f"{label} {value}")
        if self.args.command == "resend" and (secret := self.environ.get(SECRET_ENV)):
            parts.append(f"secret {secret}")
        return aimed_at(parts, self.target, error)


def aws_target(args: argparse.Namespace) -> AwsTarget:
    from resender.cli.target import AwsTarget

    return AwsTarget(
        getattr(args, "profile", None), getattr(args, "region", None), getattr(args, "endpoint_url", None)
    )
