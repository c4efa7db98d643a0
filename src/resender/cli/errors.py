"""How the ``resender`` command ends: its exit codes, and the errors that choose them.

Exit codes: 0 done, 1 not found, 2 usage, configuration or AWS error (one line on stderr, no traceback);
resend only: 3 Capillary answered without resending, 4 Capillary was never reached, so nothing was sent.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import IntEnum
from typing import Any

from resender.errors import ResenderError


class ExitCode(IntEnum):
    OK = 0
    NOT_FOUND = 1
    USAGE = 2
    NOT_RESENT = 3
    UNREACHED = 4
    INTERRUPTED = 130


class OperatorError(ResenderError):
    """The command cannot do what was asked (configuration, AWS, a refusal); exit code 2."""


class NotFoundError(ResenderError):
    """Nothing is recorded for what was asked about; exit code 1."""

    def __init__(self, message: str, details: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.details = dict(details or {})


class RefusedError(OperatorError):
    """A resend the protocol refuses without ``--force``."""
