"""The ``resender`` command for operators: status, list, invoke, redrive, resend, submit, demo, local.

One idea per module: :mod:`~resender.cli.parser` (arguments and help), :mod:`~resender.cli.main` (entry
point and exit codes), :mod:`~resender.cli.commands` (one function per subcommand),
:mod:`~resender.cli.context` and :mod:`~resender.cli.target` (what a run was pointed at),
:mod:`~resender.cli.status`, :mod:`~resender.cli.listing`, :mod:`~resender.cli.invoke`,
:mod:`~resender.cli.redrive`, :mod:`~resender.cli.resend` and :mod:`~resender.cli.submit` (the operations),
:mod:`~resender.cli.stack` (``--stack-name``), :mod:`~resender.cli.rendering` (how results are shown) and
:mod:`~resender.cli.errors`. The Lambda function never imports this package.
"""

from resender.cli.main import main
from resender.cli.parser import build_parser

__all__ = ["build_parser", "main"]
