"""How the ``resender`` command ends: its exit codes, and the errors that choose them.

Exit codes: 0 done, 1 not found, 2 usage, configuration or AWS error (one line on stderr, no traceback);
resend only: 3 Capillary answered without resending, 4 Capillary was never reached, so nothing was sent.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from resender.errors import ResenderError

EXIT_OK: Final = 0
EXIT_NOT_FOUND: Final = 1
EXIT_USAGE: Final = 2
EXIT_NOT_RESENT: Final = 3
EXIT_UNREACHED: Final = 4
EXIT_INTERRUPTED: Final = 130


class OperatorError(ResenderError):
    """The command cannot do what was asked (configuration, AWS, a refusal); exit code 2."""


class NotFoundError(ResenderError):
    """Nothing is recorded for what was asked about; exit code 1."""

    def __init__(self, message: str, details: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.details = dict(details or {})


class RefusedError(OperatorError):
    """A resend the protocol refuses without ``--force``."""
