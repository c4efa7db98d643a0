"""How the command shows things: times as the table stores them, aligned tables, JSON, progress bars."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final, TextIO

from resender.store import timestamp

CELL_WIDTH: Final = 60

_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$", re.IGNORECASE)
_UNIT_SECONDS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
# A claim token lets its holder settle the item; it is nobody else's business, so it is never shown.
_HIDDEN_ATTRIBUTES: Final = frozenset({"claimToken"})


# -- times -------------------------------------------------------------------------------------------------


def iso(moment: datetime) -> str:
    """The format of ``createdAt``/``updatedAt`` in the table (UTC, milliseconds, ``Z``)."""
    return timestamp(moment.timestamp())


def parse_since(text: str, now: datetime | None = None) -> str:
    """``30m``, ``1h``, ``2d``, ``1w`` ago, or an ISO 8601 time (UTC if it names no offset)."""
    now = now or datetime.now(UTC)
    match = _DURATION.match(text)
    if match:
        amount, unit = int(match.group(1)), match.group(2).lower()
        return iso(now - timedelta(seconds=amount * _UNIT_SECONDS[unit]))
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"invalid time {text!r}: use a duration such as 30m, 1h, 2d or an ISO time"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return iso(moment)


def epoch_to_iso(value: object) -> str | None:
    return iso(datetime.fromtimestamp(value, UTC)) if isinstance(value, int) else None


# -- documents ---------------------------------------------------------------------------------------------


def public(item: Mapping[str, Any]) -> dict[str, Any]:
    """An item as it may be shown: sorted, without the attributes that are nobody else's business."""
    return {name: value for name, value in sorted(item.items()) if name not in _HIDDEN_ATTRIBUTES}


def print_json(document: object) -> None:
    print(json.dumps(document, indent=2, default=str))


# -- tables ------------------------------------------------------------------------------------------------


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


def cell(value: object) -> str:
    return "-" if value is None or value == "" else str(value)


def error_cell(item: Mapping[str, Any]) -> str:
    code, message = item.get("errorCode"), item.get("errorMessage")
    if code is None and not message:
        return "-"
    return f"{code}: {message}" if code is not None else str(message)


def outcome_rows(items: Sequence[Mapping[str, Any]]) -> list[tuple[str, ...]]:
    """One row per outcome, in the columns of :data:`OUTCOME_COLUMNS`."""
    return [
        (
            cell(item.get("updatedAt")),
            cell(item.get("messageId")),
            cell(item.get("orgId")),
            cell(item.get("status")),
            cell(item.get("attempts")),
            cell(item.get("resentMessageId")),
            error_cell(item),
        )
        for item in items
    ]


OUTCOME_COLUMNS: Final = ("updatedAt", "messageId", "orgId", "status", "attempts", "resentMessageId", "error")


# -- progress ----------------------------------------------------------------------------------------------


class ProgressBar:
    """A one-line ``done/total`` bar redrawn in place on a terminal, with a few words after it."""

    def __init__(self, stream: TextIO, width: int = 30) -> None:
        self._stream, self._width = stream, width
        self._drawn = False

    def draw(self, done: int, total: int, words: str) -> None:
        filled = self._width * done // max(total, 1)
        self._stream.write(f"\r[{'#' * filled}{'.' * (self._width - filled)}] {done}/{total} {words}")
        self._stream.flush()
        self._drawn = True

    def finish(self) -> None:
        if self._drawn:
            self._stream.write("\n")
            self._stream.flush()
