"""The shared limiter, adaptive rate and breaker, against moto's in-process DynamoDB and a fake clock.

Two ``SharedPacer`` objects on one table stand for two containers: they share nothing but the table.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resender.local.aws import create_pacing_table
from resender.models import ResendResult, Verdict
from resender.pacing import (
    DEFAULT_ORG,
    UNAVAILABLE_RETRY_SECONDS,
    HoldReason,
    PacingConfig,
    Permit,
    Refusal,
    SharedPacer,
    is_outage,
    is_throttle,
)
from tests.clock import FakeClock

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

TABLE = "pacing"
ORG = DEFAULT_ORG


@pytest.fixture
def dynamodb(moto_dynamodb: DynamoDBClient) -> DynamoDBClient:
    create_pacing_table(moto_dynamodb, TABLE)
    return moto_dynamodb


def pacer(dynamodb: DynamoDBClient, clock: FakeClock, **config: Any) -> SharedPacer:
    return SharedPacer(dynamodb, TABLE, PacingConfig(**config), clock=clock, sleep=clock.sleep)


def counted(client: Any) -> Counter[str]:
    """Every DynamoDB operation ``client`` sends from now on."""
    calls: Counter[str] = Counter()

    def count(model: Any, **_: Any) -> None:
        calls[model.name] += 1

    client.meta.events.register("before-call.dynamodb", count)
    return calls


def granted(outcome: Permit | Refusal) -> Permit:
    assert isinstance(outcome, Permit), outcome
    return outcome


def refused(outcome: Permit | Refusal) -> Refusal:
    assert isinstance(outcome, Refusal), outcome
    return outcome


def full(limiter: SharedPacer) -> SharedPacer:
    """At one a second, the three slots a wait of 2 s reaches are taken: such a wait is refused next."""
    for _ in range(3):
        granted(limiter.acquire(ORG, 2))
    return limiter


RESENT = ResendResult(Verdict.RESENT, resent_message_id=1, http_status=200)
THROTTLED = ResendResult(Verdict.TRANSIENT, error_code=429, http_status=429, retry_after_seconds=2.0)
THROTTLED_NO_HINT = ResendResult(Verdict.TRANSIENT, error_code=429, http_status=429)
BUSY = ResendResult(Verdict.TRANSIENT, error_code=461, http_status=461)
REFUSED = ResendResult(Verdict.TRANSIENT, error_message="connection failed: the request was not sent")
DROPPED = ResendResult(Verdict.UNCERTAIN, error_message="the connection dropped after the request was sent")


# -- the bucket ------------------------------------------------------------------------------------------


def test_a_grant_is_one_conditional_write_and_a_success_writes_nothing(
    dynamodb: DynamoDBClient, clock: FakeClock
) -> None:
    limiter = pacer(dynamodb, clock, rate=60.0)
    granted(limiter.acquire(ORG, 10))  # the first grant creates the item
    calls = counted(dynamodb)

    for _ in range(5):
        permit = granted(limiter.acquire(ORG, 10))
        limiter.wait(permit)
        limiter.observe(permit, RESENT)

    assert calls == Counter({"UpdateItem": 5})


def test_slots_are_spaced_by_the_interval_and_callers_sleep_until_theirs(
    dynamodb: DynamoDBClient, clock: FakeClock
) -> None:
    limiter = pacer(dynamodb, clock, rate=60.0)  # one per second
    start = clock.now

    slots = [granted(limiter.acquire(ORG, 10)).go_at - start for _ in range(4)]

    assert slots == [0, 1, 2, 3]
    permit = granted(limiter.acquire(ORG, 10))
    assert limiter.wait(permit) == 4000
    assert clock.now == start + 4


def test_no_slot_within_the_wait_is_a_refusal_that_takes_nothing(
    dynamodb: DynamoDBClient, clock: FakeClock
) -> None:
    limiter = full(pacer(dynamodb, clock, rate=60.0))
    before = limiter.state(ORG)

    refusal = refused(limiter.acquire(ORG, 2))

    assert refusal.reason is HoldReason.LIMITED
    assert refusal.retry_at == clock.now + 3
    assert limiter.state(ORG) == before


def test_a_bucket_seen_full_a_moment_ago_refuses_without_a_request(
    dynamodb: DynamoDBClient, clock: FakeClock
) -> None:
    limiter = full(pacer(dynamodb, clock, rate=60.0))
    calls = counted(dynamodb)

    for _ in range(10):
        refused(limiter.acquire(ORG, 2))

    assert calls == Counter()  # tat only moves forward: a slot seen taken is still taken


def test_the_bucket_refills_continuously_not_at_the_top_of_the_minute(
    dynamodb: DynamoDBClient, clock: FakeClock
) -> None:
    limiter = pacer(dynamodb, clock, rate=6.0, burst=3)  # a slot every 15 s after a burst of 3
    for _ in range(3):
        assert granted(limiter.acquire(ORG, 0)).go_at == clock.now
    refused(limiter.acquire(ORG, 0))

    clock.advance(15)
    assert granted(limiter.acquire(ORG, 0)).go_at == clock.now
    refused(limiter.acquire(ORG, 0))


def test_a_second_container_reads_the_first_ones_grants_from_its_failed_condition(
    dynamodb: DynamoDBClient, clock: FakeClock
) -> None:
    first, second = pacer(dynamodb, clock, rate=60.0), pacer(dynamodb, clock, rate=60.0)
    granted(first.acquire(ORG, 10))
    granted(first.acquire(ORG, 10))

    permit = granted(second.acquire(ORG, 10))

    assert permit.go_at == clock.now + 2


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rate=st.integers(min_value=1, max_value=40),
    burst=st.integers(min_value=1, max_value=6),
    gaps=st.lists(st.floats(min_value=0, max_value=5), min_size=10, max_size=60),
)
def test_no_window_ever_holds_more_than_the_rate(
    dynamodb: DynamoDBClient, rate: int, burst: int, gaps: list[float]
) -> None:
    """Greedy callers at arbitrary times: in every window of 60 s, at most ``rate`` calls start."""
    burst = min(burst, rate)
    clock = FakeClock()
    org = f"org-{rate}-{burst}-{len(gaps)}-{hash(tuple(gaps))}"
    limiter = pacer(dynamodb, clock, rate=float(rate), burst=burst, window_seconds=60.0)
    starts: list[float] = []
    for gap in gaps:
        clock.advance(gap)
        outcome = limiter.acquire(org, 3600)
        starts.append(granted(outcome).go_at)
    starts.sort()
    for index, first in enumerate(starts):
        in_window = [s for s in starts[index:] if s < first + 60 - 0.001]
        assert len(in_window) <= rate


def test_a_configured_rate_lowered_since_the_item_was_written_applies_at_once(
    dynamodb: DynamoDBClient, clock: FakeClock
) -> None:
    granted(pacer(dynamodb, clock, rate=120.0).acquire(ORG, 10))
    clock.advance(10)

    permit = granted(pacer(dynamodb, clock, rate=30.0).acquire(ORG, 10))

    assert permit.rate_per_window == 30.0
    assert pacer(dynamodb, clock).state(ORG)["rate"] == 30


# -- adaptive rate ---------------------------------------------------------------------------------------


def test_throttling_lowers_the_shared_rate_once_per_window_and_holds_the_whole_org(
    dynamodb: DynamoDBClient, clock: FakeClock
) -> None:
    first, second = pacer(dynamodb, clock, start_rate=60.0), pacer(dynamodb, clock, start_rate=60.0)
    permit = granted(first.acquire(ORG, 10))

    first.observe(permit, THROTTLED)
    first.observe(permit, THROTTLED)  # the same congested window: one decrease

    state = first.state(ORG)
    # Retry-After 2 s of a 60 s window: 58 s of it went by at 60 per window, so the limit is about 58.
    assert state["ceiling"] == 58
    assert state["rate"] == pytest.approx(55.1)  # 95 % of it, in floating point
    # Retry-After: 2 s for every container, not only the one that was told.
    assert granted(second.acquire(ORG, 10)).go_at == clock.now + 2
    assert refused(second.acquire(ORG, 0)).reason is HoldReason.LIMITED


def test_the_limit_is_read_from_how_much_of_its_window_a_retry_after_leaves(
    dynamodb: DynamoDBClient, clock: FakeClock
) -> None:
    limiter = pacer(dynamodb, clock, start_rate=600.0, window_seconds=60.0)
    permit = granted(limiter.acquire(ORG, 10))
    # Capillary allows 100 a minute: at 600 a minute its window is full after 10 s, 50 s before it ends.
    limiter.observe(permit, ResendResult(Verdict.TRANSIENT, http_status=429, retry_after_seconds=50.0))

    state = limiter.state(ORG)
    assert state["ceiling"] == pytest.approx(100)
    assert state["rate"] == pytest.approx(95)


def test_without_a_retry_after_the_rate_halves_then_steps_back_gently(
    dynamodb: DynamoDBClient, clock: FakeClock
) -> None:
    limiter = pacer(dynamodb, clock, start_rate=80.0)
    limiter.observe(granted(limiter.acquire(ORG, 10)), THROTTLED_NO_HINT)
    assert limiter.state(ORG)["rate"] == 40  # the first throttle: halved
    clock.advance(61)
    limiter.observe(granted(limiter.acquire(ORG, 10)), THROTTLED_NO_HINT)
    assert limiter.state(ORG)["rate"] == 20  # throttled again in the next window: halved again
    clock.advance(200)
    limiter.observe(granted(limiter.acquire(ORG, 10)), THROTTLED_NO_HINT)
    assert limiter.state(ORG)["rate"] == 16  # a throttle after a quiet spell: 20 % less


def test_busy_answers_lower_the_rate_like_429s(dynamodb: DynamoDBClient, clock: FakeClock) -> None:
    limiter = pacer(dynamodb, clock, start_rate=40.0)
    limiter.observe(granted(limiter.acquire(ORG, 10)), BUSY)

    assert limiter.state(ORG)["rate"] == 20
    assert is_throttle(BUSY) and not is_outage(BUSY)


def test_a_permit_granted_before_a_retry_after_is_not_used(
    dynamodb: DynamoDBClient, clock: FakeClock
) -> None:
    limiter = pacer(dynamodb, clock, start_rate=60.0)
    early, late = granted(limiter.acquire(ORG, 10)), granted(limiter.acquire(ORG, 10))

    limiter.observe(early, THROTTLED)

    hold = limiter.still_valid(late)
    assert hold is not None and hold.retry_at == pytest.approx(clock.now + 2)


def test_a_hold_set_by_another_container_stops_a_permit_granted_before_it(
    dynamodb: DynamoDBClient, clock: FakeClock
) -> None:
    first, second = pacer(dynamodb, clock, start_rate=60.0), pacer(dynamodb, clock, start_rate=60.0)
    waiting = granted(second.acquire(ORG, 10))
    clock.advance(0.5)
    first.observe(granted(first.acquire(ORG, 10)), THROTTLED)
    clock.advance(1.0)  # what ``second`` saw is now older than its cache period

    hold = second.still_valid(waiting)

    assert hold is not None and hold.reason is HoldReason.LIMITED
    assert hold.retry_at == clock.now - 1.0 + 2.0


def test_checking_permits_before_their_calls_reads_at_most_once_per_cache_period(
    dynamodb: DynamoDBClient, clock: FakeClock
) -> None:
    limiter = pacer(dynamodb, clock, rate=600.0)
    permits = [granted(limiter.acquire(ORG, 10)) for _ in range(10)]
    clock.advance(5)
    calls = counted(dynamodb)

    assert all(limiter.still_valid(permit) is None for permit in permits)
    assert calls == Counter({"GetItem": 1})
    clock.advance(0.5)
    assert all(limiter.still_valid(permit) is None for permit in permits)
    assert calls == Counter({"GetItem": 1})


def test_sustained_success_raises_the_rate_towards_the_last_throttled_one_then_past_it(
    dynamodb: DynamoDBClient, clock: FakeClock
) -> None:
    limiter = pacer(dynamodb, clock, start_rate=100.0, period_seconds=30.0)
    limiter.observe(granted(limiter.acquire(ORG, 10)), THROTTLED_NO_HINT)  # 100 -> 50, ceiling 100
    rates = []
    for _ in range(12):
        clock.advance(31)
        granted(limiter.acquire(ORG, 60))
        granted(limiter.acquire(ORG, 60))  # busy: the rate is what holds calls back
        rates.append(limiter.state(ORG)["rate"])

    # Halfway back, stopping just short, then 1 % a period and on past it: a raised limit is found again.
    assert rates == [75, 87.5, 93.75, 95, 96, 97, 98, 99, 100, 101, 102, 103]


def test_an_idle_org_does_not_raise_its_rate(dynamodb: DynamoDBClient, clock: FakeClock) -> None:
    limiter = pacer(dynamodb, clock, start_rate=10.0, period_seconds=1.0)
    for _ in range(5):
        clock.advance(60)
        granted(limiter.acquire(ORG, 10))

    assert limiter.state(ORG)["rate"] == 10


def rates_over_busy_periods(
    limiter: SharedPacer, clock: FakeClock, *, periods: int, seconds: float
) -> list[float]:
    """The rate at the end of each period: ``seconds`` later, two grants keep the period busy."""
    seen: list[float] = []
    for _ in range(periods):
        clock.advance(seconds)
        granted(limiter.acquire(ORG, 60))
        granted(limiter.acquire(ORG, 60))
        seen.append(limiter.state(ORG)["rate"])
    return seen


def test_without_a_known_limit_the_rate_doubles_per_busy_period(
    dynamodb: DynamoDBClient, clock: FakeClock
) -> None:
    limiter = pacer(dynamodb, clock, start_rate=10.0, period_seconds=5.0)
    granted(limiter.acquire(ORG, 60))

    assert rates_over_busy_periods(limiter, clock, periods=3, seconds=5) == [20, 40, 80]


def test_the_rate_climbs_back_to_the_configured_one_and_never_past_it(
    dynamodb: DynamoDBClient, clock: FakeClock
) -> None:
    limiter = pacer(dynamodb, clock, rate=50.0, period_seconds=5.0)
    limiter.observe(granted(limiter.acquire(ORG, 60)), THROTTLED_NO_HINT)  # 50 -> 25

    seen = rates_over_busy_periods(limiter, clock, periods=10, seconds=6)

    assert seen == sorted(seen)
    assert max(seen) == 50
    assert seen[-1] == 50


# -- shared breaker --------------------------------------------------------------------------------------


def test_consecutive_outages_across_containers_open_the_breaker_for_everyone(
    dynamodb: DynamoDBClient, clock: FakeClock
) -> None:
    first = pacer(dynamodb, clock, rate=600.0, breaker_threshold=3, breaker_open_seconds=30.0)
    second = pacer(dynamodb, clock, rate=600.0, breaker_threshold=3, breaker_open_seconds=30.0)
    first.observe(granted(first.acquire(ORG, 10)), REFUSED)
    second.observe(granted(second.acquire(ORG, 10)), DROPPED)
    assert "openUntil" not in first.state(ORG)
    first.observe(granted(first.acquire(ORG, 10)), REFUSED)

    for container in (first, second):
        refusal = refused(container.acquire(ORG, 10))
        assert refusal.reason is HoldReason.BREAKER_OPEN
        assert refusal.retry_at == clock.now + 30


def test_a_success_between_failures_resets_the_count(dynamodb: DynamoDBClient, clock: FakeClock) -> None:
    limiter = pacer(dynamodb, clock, rate=600.0, breaker_threshold=2)
    limiter.observe(granted(limiter.acquire(ORG, 10)), REFUSED)
    limiter.observe(granted(limiter.acquire(ORG, 10)), RESENT)
    limiter.observe(granted(limiter.acquire(ORG, 10)), REFUSED)

    assert limiter.state(ORG)["failures"] == 1
    granted(limiter.acquire(ORG, 10))


def test_the_open_breaker_is_cached_for_a_second_then_read_again_by_the_grant(
    dynamodb: DynamoDBClient, clock: FakeClock
) -> None:
    limiter = pacer(dynamodb, clock, rate=600.0, breaker_threshold=1)
    limiter.observe(granted(limiter.acquire(ORG, 10)), REFUSED)
    calls = counted(dynamodb)

    for _ in range(20):
        refused(limiter.acquire(ORG, 10))
    assert calls == Counter()  # within the second: no request at all
    clock.advance(1.5)
    refused(limiter.acquire(ORG, 10))
    assert calls == Counter({"UpdateItem": 1})


def _opened(dynamodb: Any, clock: FakeClock) -> tuple[SharedPacer, SharedPacer]:
    containers = tuple(
        pacer(dynamodb, clock, rate=600.0, breaker_threshold=1, breaker_open_seconds=30.0) for _ in range(2)
    )
    first = containers[0]
    first.observe(granted(first.acquire(ORG, 10)), REFUSED)
    clock.advance(31)
    return containers[0], containers[1]


def test_one_probe_per_interval_across_containers_and_its_success_closes_the_breaker(
    dynamodb: DynamoDBClient, clock: FakeClock
) -> None:
    first, second = _opened(dynamodb, clock)

    probe = granted(second.acquire(ORG, 10))
    assert probe.probe
    assert refused(first.acquire(ORG, 10)).reason is HoldReason.BREAKER_OPEN
    assert refused(second.acquire(ORG, 10)).reason is HoldReason.BREAKER_OPEN

    second.observe(probe, RESENT)
    clock.advance(1.5)
    assert not granted(first.acquire(ORG, 10)).probe
    assert "openUntil" not in first.state(ORG)


def test_a_slot_reserved_before_the_breaker_opened_is_not_a_second_probe(
    dynamodb: DynamoDBClient, clock: FakeClock
) -> None:
    first = pacer(dynamodb, clock, rate=60.0, breaker_threshold=1, breaker_open_seconds=30.0)
    second = pacer(dynamodb, clock, rate=60.0, breaker_threshold=1, breaker_open_seconds=30.0)
    reserved = granted(second.acquire(ORG, 60))
    reserved_late = granted(second.acquire(ORG, 60))
    first.observe(granted(first.acquire(ORG, 60)), REFUSED)  # opens the breaker
    clock.advance(31)  # the interval is over: half-open, and nobody has probed yet

    for permit in (reserved, reserved_late):
        hold = second.still_valid(permit)
        assert hold is not None and hold.reason is HoldReason.BREAKER_OPEN
    probe = granted(first.acquire(ORG, 60))
    assert probe.probe
    assert first.still_valid(probe) is None


def test_opening_the_breaker_voids_reserved_slots_so_the_probe_does_not_queue_behind_them(
    dynamodb: DynamoDBClient, clock: FakeClock
) -> None:
    limiter = pacer(dynamodb, clock, rate=6.0, breaker_threshold=1, breaker_open_seconds=30.0)
    for _ in range(5):
        granted(limiter.acquire(ORG, 60))  # slots reserved up to 40 s ahead
    limiter.observe(granted(limiter.acquire(ORG, 60)), REFUSED)
    clock.advance(31)

    probe = granted(limiter.acquire(ORG, 60))

    assert probe.probe
    assert probe.go_at == clock.now


def test_the_probe_interval_starts_when_the_probe_calls(dynamodb: DynamoDBClient, clock: FakeClock) -> None:
    first, second = _opened(dynamodb, clock)
    probe = granted(first.acquire(ORG, 10))
    clock.advance(20)  # the probe's claim and wait took a while

    assert first.still_valid(probe) is None  # just before its call
    first.observe(probe, REFUSED)
    clock.advance(15)  # 35 s after the election, 15 s after the call

    assert refused(second.acquire(ORG, 10)).reason is HoldReason.BREAKER_OPEN


def test_a_failed_probe_keeps_the_breaker_open_for_another_interval(
    dynamodb: DynamoDBClient, clock: FakeClock
) -> None:
    first, second = _opened(dynamodb, clock)
    probe = granted(first.acquire(ORG, 10))

    first.observe(probe, REFUSED)

    clock.advance(29)
    assert refused(second.acquire(ORG, 10)).reason is HoldReason.BREAKER_OPEN
    clock.advance(2)
    assert granted(second.acquire(ORG, 10)).probe


# -- DynamoDB failing --------------------------------------------------------------------------------------


class FailingClient:
    """A DynamoDB client whose every request fails the way ``error`` says."""

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.calls = 0

    def update_item(self, **_: Any) -> Any:
        self.calls += 1
        raise self.error

    get_item = update_item


@pytest.mark.parametrize(
    "error",
    [
        ClientError({"Error": {"Code": "ProvisionedThroughputExceededException"}}, "UpdateItem"),
        ClientError({"Error": {"Code": "AccessDeniedException"}}, "UpdateItem"),
        EndpointConnectionError(endpoint_url="https://dynamodb.us-east-1.amazonaws.com"),
    ],
)
def test_dynamodb_failing_is_a_refusal_never_a_grant(clock: FakeClock, error: Exception) -> None:
    client = FailingClient(error)
    limiter = SharedPacer(client, TABLE, PacingConfig(rate=60.0), clock=clock, sleep=clock.sleep)  # type: ignore[arg-type]

    refusal = refused(limiter.acquire(ORG, 10))

    assert refusal.reason is HoldReason.UNAVAILABLE
    assert refusal.retry_at == clock.now + UNAVAILABLE_RETRY_SECONDS
    assert "Capillary was not called" in refusal.detail


def test_dynamodb_failing_after_the_call_is_swallowed(clock: FakeClock) -> None:
    client = FailingClient(ClientError({"Error": {"Code": "InternalServerError"}}, "UpdateItem"))
    limiter = SharedPacer(client, TABLE, PacingConfig(rate=60.0), clock=clock, sleep=clock.sleep)  # type: ignore[arg-type]
    permit = Permit(ORG, clock.now, clock.now, 60.0, probe=True)

    for result in (THROTTLED, REFUSED, RESENT):
        limiter.observe(permit, result)

    assert client.calls == 3  # one write per observation, each failing and none retried
