"""The one fake clock of the tests: time moves only when a test advances it or the code under test sleeps."""

from __future__ import annotations

import threading

# A fixed instant in 2027, so that epoch seconds, ISO timestamps and DynamoDB's TTLs all look real.
DEFAULT_NOW = 1_800_000_000.0


class FakeClock:
    """Stands in for ``time.time`` and ``time.monotonic`` alike: the code under test takes a plain callable.

    Calling it reads the time; ``advance`` and ``sleep`` move it. Where the code under test reads the ``time``
    module itself, the clock takes the module's place: ``time``, ``monotonic`` and ``sleep`` are its own, and
    ``sleeps`` keeps each pause asked for. Reads and moves hold a lock, because the credentials cache and the
    processor's workers read it from several threads at once.
    """

    def __init__(self, now: float = DEFAULT_NOW) -> None:
        self._lock = threading.Lock()
        self._now = now
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        with self._lock:
            return self._now

    @property
    def now(self) -> float:
        return self()

    def time(self) -> float:
        return self()

    def monotonic(self) -> float:
        return self()

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock does not go back")
        with self._lock:
            self._now += seconds

    def sleep(self, seconds: float) -> None:
        """What the code under test calls instead of ``time.sleep``: the clock moves on at once."""
        if seconds < 0:
            raise ValueError("sleep length must be non-negative")  # what time.sleep says
        with self._lock:
            self.sleeps.append(seconds)
            self._now += seconds
