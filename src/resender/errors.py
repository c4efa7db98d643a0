"""The one base of every error this project raises, so a caller can catch the project's errors as one type.

Each error says what went wrong in words an operator can act on, naming settings and resources but never a
secret. The subclasses live beside the outside system they describe (``store.StoreError``,
``queues.QueueError``, ``credentials.SecretError``, ...).
"""

from __future__ import annotations


class ResenderError(Exception):
    """Raised by the resender: the function, the operator tool or the local stack."""
