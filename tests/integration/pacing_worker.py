"""A container of its own for the shared-limiter test: threads that resend as fast as the limiter lets them.

    python -m tests.integration.pacing_worker ENDPOINT TABLE STUB_URL RATE WINDOW SECONDS THREADS

Prints the number of calls made. Run as a child process, so that it shares nothing with the test but the
pacing table in the moto server and the stub.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable

import boto3
import requests

from resender.local.stub import basic_auth_header
from resender.pacing import DEFAULT_ORG, PacingConfig, Permit, SharedPacer

AUTHORIZATION = basic_auth_header("store.server", "server123")


def resend_loop(pacer: SharedPacer, stub_url: str, going: Callable[[], bool], made: list[int]) -> None:
    """Acquire, wait for the slot, call; after a refusal, ask again when the limiter says a slot is near."""
    session = requests.Session()
    while going():
        outcome = pacer.acquire(DEFAULT_ORG, 1.0)
        if not isinstance(outcome, Permit):
            time.sleep(min(0.05, max(0.0, outcome.retry_at - time.time())))  # the limiter's own pause
            continue
        pacer.wait(outcome)
        session.post(
            f"{stub_url}/v2/communications/resend",
            json={"messageId": 9_000_000_000_000 + len(made)},
            headers={"Authorization": AUTHORIZATION},
            timeout=5,
        ).raise_for_status()
        made.append(1)


def run(pacer: SharedPacer, stub_url: str, threads: int, going: Callable[[], bool]) -> int:
    """Resend from ``threads`` threads while ``going()``; the number of calls made."""
    made: list[int] = []
    workers = [
        threading.Thread(target=resend_loop, args=(pacer, stub_url, going, made)) for _ in range(threads)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return len(made)


def main(argv: list[str]) -> None:
    endpoint, table, stub_url, rate, window, seconds, threads = argv
    client = boto3.client("dynamodb", endpoint_url=endpoint, region_name="us-east-1")
    pacer = SharedPacer(client, table, PacingConfig(window_seconds=float(window), rate=float(rate)))
    until = time.monotonic() + float(seconds)
    print(run(pacer, stub_url, int(threads), lambda: time.monotonic() < until), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
