"""AWS requests counted with botocore event hooks, per ``service.Operation``.

The two implementations create their clients at different moments (the baseline at import and on its first
secret read, the resender on its first invocation), and the first invocation must be counted too. So the
hook is attached to every client the process creates from the moment :func:`install` runs, by wrapping
botocore's ``Session.create_client``. The hook is ``before-send``: it fires once per HTTP request, so an SDK
retry counts as the extra request it is.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from typing import Any, Final

import botocore.session

DYNAMODB_WRITES: Final = frozenset(
    {"PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem", "TransactWriteItems"}
)
DYNAMODB_READS: Final = frozenset(
    {"GetItem", "BatchGetItem", "Query", "Scan", "TransactGetItems", "ExecuteStatement"}
)


#: Key under which the estimated DynamoDB write request units are tallied, next to the operations.
WRITE_UNITS: Final = "units:dynamodb-write"


def write_units(operation: str, body: object) -> int:
    """On-demand write request units of one request, for items up to 1 KB (all items here are smaller).

    A transactional write bills two units per item; a batch write one per item.
    """
    if operation in ("PutItem", "UpdateItem", "DeleteItem"):
        return 1
    if operation not in ("TransactWriteItems", "BatchWriteItem"):
        return 0
    try:
        document = json.loads(body) if isinstance(body, bytes | str) else {}
    except ValueError:
        return 0
    if operation == "TransactWriteItems":
        return 2 * len(document.get("TransactItems", []))
    return sum(len(requests) for requests in document.get("RequestItems", {}).values())


class RequestCounter:
    """Thread-safe tally of AWS requests, read as differences between snapshots."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def on_send(self, event_name: str, request: Any = None, **_kwargs: Any) -> None:
        # event_name is "before-send.<service>.<Operation>", e.g. "before-send.dynamodb.UpdateItem".
        _, service, operation = event_name.split(".", 2)
        units = write_units(operation, getattr(request, "body", None)) if service == "dynamodb" else 0
        with self._lock:
            self._counts[f"{service}.{operation}"] += 1
            self._counts[WRITE_UNITS] += units

    def snapshot(self) -> Counter[str]:
        with self._lock:
            return Counter(self._counts)


COUNTER: Final = RequestCounter()
_installed = False


def install() -> RequestCounter:
    """Count the requests of every botocore client created in this process from now on."""
    global _installed  # noqa: PLW0603 - the wrapper must be installed once per process
    if not _installed:
        original = botocore.session.Session.create_client

        def create_client(self: botocore.session.Session, *args: Any, **kwargs: Any) -> Any:
            client = original(self, *args, **kwargs)
            client.meta.events.register("before-send", COUNTER.on_send)
            return client

        botocore.session.Session.create_client = create_client  # type: ignore[method-assign]
        _installed = True
    return COUNTER


def per_message(delta: Counter[str], messages: int) -> dict[str, float]:
    """Requests per message for each ``service.Operation`` (the write-unit tally is left out)."""
    if not messages:
        return {}
    return {name: count / messages for name, count in sorted(delta.items()) if name != WRITE_UNITS}


def dynamodb_writes(delta: Counter[str]) -> int:
    return sum(count for name, count in delta.items() if _dynamodb_op(name) in DYNAMODB_WRITES)


def dynamodb_reads(delta: Counter[str]) -> int:
    return sum(count for name, count in delta.items() if _dynamodb_op(name) in DYNAMODB_READS)


def calls_to(delta: Counter[str], service: str) -> int:
    return sum(count for name, count in delta.items() if name.split(".", 1)[0] == service)


def _dynamodb_op(name: str) -> str | None:
    service, _, operation = name.partition(".")
    return operation if service == "dynamodb" else None
