"""The emulated AWS and the Capillary stub, served from their own process.

The benchmark measures the CPU time of the process that runs the handler. A moto server and a stub in that
same process would add their own CPU to every figure, so they live here, in a child process, and the parent
drives them over stdin/stdout with one JSON line per command:

    {"cmd": "stats"}                -> counters of the stub and the CPU time of this process
    {"cmd": "latency", "ms": 100}   -> the stub's delay before every answer
    end of input                    -> shut down (so the servers go away even when the parent crashes)

The first line written is the ready message with every URL and name the function needs.

Two things bring the emulator closer to AWS, so that its own costs do not pass for the function's: moto is
served with keep-alive connections (:mod:`bench.moto_http`), and a failed transaction is rolled back from the
items it touched rather than from a copy of the whole table (:func:`backup_touched_items_only`).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any, Final

import boto3

from bench.moto_http import KeepAliveMotoServer
from resender.local.aws import provision
from resender.local.runner import DEMO_SECRET
from resender.local.stub import CapillaryStub

#: The baseline's idempotency table: Powertools' documented schema (key ``id``, TTL ``expiration``).
BASELINE_TABLE: Final = "baseline-idempotency"
#: A second secret in the OAuth shape, to show the token is fetched once per container too.
OAUTH_SECRET_ID: Final = "capillary/resender-oauth"
OAUTH_SECRET: Final = {
    "authType": "oauth",
    "clientKey": "demo-client-key",
    "clientSecret": "demo-client-secret",
}


def backup_touched_items_only() -> None:
    """Make moto's TransactWriteItems cost what DynamoDB's does: proportional to the items it touches.

    moto backs up every table a transaction names with ``copy.deepcopy`` before applying it, so each
    TransactWriteItems costs time proportional to the whole table. The resender records every resend with
    one, so over a 10,000-message soak the emulator slows down quadratically, times requests out, and the
    soak measures moto instead of the function. Here the whole-table copy becomes a no-op and the rollback is
    done from copies of the touched items alone; what a client sees (all or nothing) is unchanged. Must run
    before the moto server is built, so that its write lock wraps this method too.
    """
    from moto.dynamodb import models
    from moto.dynamodb.models import DynamoDBBackend
    from moto.dynamodb.models.dynamo_type import DynamoType
    from moto.dynamodb.models.table import Table

    def deepcopy(value: Any, memo: dict[int, Any] | None = None) -> Any:
        return value if isinstance(value, Table) else copy.deepcopy(value, memo)

    # Only the module's own name "copy" is replaced; the rest of the process keeps the real module.
    models.copy = SimpleNamespace(deepcopy=deepcopy)  # type: ignore[attr-defined,assignment]
    original: Callable[..., Any] = DynamoDBBackend.transact_write_items

    def transact_write_items(self: Any, transact_items: list[dict[str, Any]]) -> Any:
        saved: list[tuple[Any, Any, Any, Any]] = []
        for entry in transact_items:
            operation: dict[str, Any] = next(iter(entry.values()), {})
            table = self.tables.get(operation.get("TableName"))
            key = operation.get("Key") or operation.get("Item")
            if table is None or not isinstance(key, dict) or table.hash_key_attr not in key:
                continue  # moto rejects it before writing anything
            hash_value = DynamoType(key[table.hash_key_attr])
            range_value = DynamoType(key[table.range_key_attr]) if table.range_key_attr in key else None
            item = table.get_item(hash_value, range_value) if range_value or not table.has_range_key else None
            saved.append((table, hash_value, range_value, copy.deepcopy(item)))
        try:
            return original(self, transact_items)
        except Exception:
            for table, hash_value, range_value, item in reversed(saved):
                _restore(table, hash_value, range_value, item)
            raise

    DynamoDBBackend.transact_write_items = transact_write_items  # type: ignore[method-assign]


def _restore(table: Any, hash_value: Any, range_value: Any, item: Any) -> None:
    if range_value is None:
        if item is None:
            table.items.pop(hash_value, None)
        else:
            table.items[hash_value] = item
    elif item is None:
        table.items.get(hash_value, {}).pop(range_value, None)
    else:
        table.items[hash_value][range_value] = item


def provision_bench(endpoint_url: str) -> dict[str, Any]:
    """Everything ``provision`` creates, plus the baseline's table and the OAuth secret."""
    resources = provision(endpoint_url, DEMO_SECRET)
    # Emulator-only credentials, the same that provision() uses.
    session = boto3.session.Session(
        aws_access_key_id="testing",
        aws_secret_access_key="testing",  # noqa: S106
        region_name="us-east-1",
    )
    dynamodb = session.client("dynamodb", endpoint_url=endpoint_url)
    dynamodb.create_table(
        TableName=BASELINE_TABLE,
        BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
    )
    dynamodb.update_time_to_live(
        TableName=BASELINE_TABLE,
        TimeToLiveSpecification={"Enabled": True, "AttributeName": "expiration"},
    )
    secrets = session.client("secretsmanager", endpoint_url=endpoint_url)
    secrets.create_secret(Name=OAUTH_SECRET_ID, SecretString=json.dumps(OAUTH_SECRET))
    return {
        "endpoint_url": resources.endpoint_url,
        "table_name": resources.table_name,
        "secret_id": resources.secret_id,
        "queue_url": resources.queue_url,
        "queue_arn": resources.queue_arn,
        "dead_letter_queue_url": resources.dead_letter_queue_url,
        "dead_letter_queue_arn": resources.dead_letter_queue_arn,
        "baseline_table": BASELINE_TABLE,
        "oauth_secret_id": OAUTH_SECRET_ID,
    }


def _answer(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def serve(latency_ms: float) -> None:
    backup_touched_items_only()
    with KeepAliveMotoServer() as moto, CapillaryStub(latency_seconds=latency_ms / 1000) as stub:
        ready = provision_bench(moto.endpoint_url)
        _answer({"ready": True, "stub_url": stub.base_url, **ready})
        for line in sys.stdin:
            command = json.loads(line)
            if command["cmd"] == "latency":
                stub.latency_seconds = float(command["ms"]) / 1000
                _answer({"latency_ms": float(command["ms"])})
            elif command["cmd"] == "stats":
                calls = stub.resend_calls
                _answer(
                    {
                        "resend_calls": len(calls),
                        "resends_performed": sum(1 for call in calls if call.performed),
                        "token_requests": stub.token_requests,
                        "cpu_seconds": time.process_time(),
                    }
                )
            elif command["cmd"] == "window_limit":
                calls, seconds = command.get("calls"), command.get("seconds")
                stub.window_limit = (int(calls), float(seconds)) if calls else None
                _answer({"window_limit": stub.window_limit})
            elif command["cmd"] == "outage":
                # Capillary refusing connections: nothing listens on its port until the outage ends.
                if command["on"]:
                    stub.stop()
                else:
                    stub.start()
                _answer({"outage": bool(command["on"])})
            elif command["cmd"] == "reset":
                stub.reset()
                _answer({"reset": True})
            elif command["cmd"] == "storm_stats":
                _answer(storm_stats(stub))
            else:
                _answer({"error": f"unknown command {command['cmd']!r}"})


def storm_stats(stub: CapillaryStub) -> dict[str, Any]:
    """What the storm benchmark reads off the stub: resends per message id and 429s."""
    performed: dict[int, int] = {}
    for call in stub.resend_calls:
        if call.performed and call.message_id is not None:
            performed[call.message_id] = performed.get(call.message_id, 0) + 1
    return {
        "resend_calls": len(stub.resend_calls),
        "resent": len(performed),
        "double_resends": sum(count - 1 for count in performed.values()),
        "throttled": stub.throttled,
        "calls_per_window": {str(k): v for k, v in stub.calls_per_window(2.0).items()},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.servers")
    parser.add_argument("--latency-ms", type=float, default=100.0)
    args = parser.parse_args(argv)
    serve(args.latency_ms)


if __name__ == "__main__":
    main()
