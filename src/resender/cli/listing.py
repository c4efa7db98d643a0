"""``resender list``: outcomes newest first, merged across statuses, a page at a time."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from resender.cli.rendering import public
from resender.models import Status
from resender.store import OutcomeStore

_UNREADABLE_PAGE = "invalid page token: pass the nextPageToken of an earlier list"


@dataclass(frozen=True, slots=True)
class Page:
    items: list[dict[str, Any]]
    next_page_token: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "items": [public(item) for item in self.items],
            "count": len(self.items),
            "nextPageToken": self.next_page_token,
        }


def encode_page_token(item: Mapping[str, Any]) -> str:
    cursor = json.dumps({"u": item["updatedAt"], "m": item["messageId"]}, separators=(",", ":"))
    return base64.urlsafe_b64encode(cursor.encode()).decode().rstrip("=")


def decode_page_token(token: str) -> tuple[str, int]:
    try:
        padded = token + "=" * (-len(token) % 4)
        cursor = json.loads(base64.urlsafe_b64decode(padded.encode()))
        updated_at, message_id = cursor["u"], cursor["m"]
    except (ValueError, TypeError, KeyError, binascii.Error):
        raise ValueError(_UNREADABLE_PAGE) from None
    if not isinstance(updated_at, str) or not isinstance(message_id, int):
        raise ValueError(_UNREADABLE_PAGE)
    return updated_at, message_id


@dataclass(frozen=True, slots=True)
class Query:
    """Which outcomes to list: of these statuses, updated since ``since``, of ``org_id``, ``limit`` a page."""

    statuses: Sequence[Status]
    since: str | None = None
    limit: int = 20
    org_id: int | None = None


def list_outcomes(store: OutcomeStore, query: Query, page_token: str | None = None) -> Page:
    """Outcomes newest first (by ``updatedAt``, then ``messageId``), one page of ``query.limit``.

    Each status is one partition of the ``byStatus`` index, already sorted by time; the page merges them.
    The page token is the position of the last item shown, not a DynamoDB key, because one page spans
    several partitions. Reading ``limit + 1`` items per status tells whether another page exists.
    """
    cursor = decode_page_token(page_token) if page_token else None
    wanted = query.limit + 1
    candidates: list[dict[str, Any]] = []
    for status in query.statuses:
        taken: list[dict[str, Any]] = []
        for item in _newest_first(store, status, query.since, cursor[0] if cursor else None, wanted):
            if "status" not in item or not _before(item, cursor):
                continue
            # The index has no org key: other orgs' items are read and passed over, pages stay full.
            if query.org_id is not None and item.get("orgId") != query.org_id:
                continue
            # Items sharing one updatedAt come in no particular order, so a tie is read to its end.
            if len(taken) >= wanted and item["updatedAt"] != taken[-1]["updatedAt"]:
                break
            taken.append(item)
        candidates.extend(taken)
    candidates.sort(key=_order, reverse=True)
    page = candidates[: query.limit]
    more = len(candidates) > query.limit
    return Page(page, encode_page_token(page[-1]) if more and page else None)


def list_all(store: OutcomeStore, query: Query, page_token: str | None = None) -> Page:
    """Every page from ``page_token`` on, read ``query.limit`` at a time, as one page."""
    page = list_outcomes(store, query, page_token)
    while page.next_page_token:
        following = list_outcomes(store, query, page.next_page_token)
        page = Page([*page.items, *following.items], following.next_page_token)
    return page


def _newest_first(
    store: OutcomeStore, status: Status, since: str | None, until: str | None, page_size: int
) -> Iterator[dict[str, Any]]:
    token: dict[str, Any] | None = None
    while True:
        items, token = store.list_recent(status, since=since, until=until, limit=page_size, page_token=token)
        yield from items
        if token is None:
            return


def _order(item: Mapping[str, Any]) -> tuple[str, int]:
    return str(item.get("updatedAt", "")), int(item.get("messageId", 0))


def _before(item: Mapping[str, Any], cursor: tuple[str, int] | None) -> bool:
    return cursor is None or _order(item) < cursor
