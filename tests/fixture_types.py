"""The types of the shared fixtures in ``tests/conftest.py``, for the annotations of the tests that use them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

#: ``outcome``: the outcome item stored for a messageId, as plain values; None if there is none.
ReadOutcome = Callable[[int], dict[str, Any] | None]
#: ``dead_letters``: every message now in the dead-letter queue, with its attributes.
DrainDeadLetters = Callable[[], list[dict[str, Any]]]
#: ``set_secret``: a new version of the Capillary secret, any JSON document (an org map nests objects).
SetSecret = Callable[[dict[str, Any]], None]


def stored(outcome: ReadOutcome, message_id: int) -> dict[str, Any]:
    """The outcome item of ``message_id``, which the test expects to exist."""
    item = outcome(message_id)
    assert item is not None, f"no outcome is stored for messageId {message_id}"
    return item
