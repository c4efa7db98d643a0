"""One shared resend rate per Capillary org, adaptive to throttling, and a shared circuit breaker.

Every container of the function paces its calls through one DynamoDB item per org (table ``PACING_TABLE``,
key ``org``). The item holds a token bucket in its "virtual scheduling" form (GCRA): ``tat`` is the
theoretical arrival time of the next call, in epoch milliseconds. A call at ``now`` may go at
``max(now, tat - tolerance)`` and moves ``tat`` on by one interval. That rule needs no read: it is one
conditional ``UpdateItem`` whose arithmetic (``tat = tat + :interval``) DynamoDB does itself, so concurrent
containers never overwrite each other's grants and never retry on each other's writes. A caller may reserve a
slot up to ``max_wait`` ahead and sleep until it, so a busy org costs one write per resend, not a storm of
failed attempts at the top of each interval.

The interval is ``window / (rate - burst + 1)``: then no window of ``RATE_WINDOW_SECONDS`` (60) ever holds
more than ``rate`` calls, wherever Capillary's own fixed minute starts, and after an idle period ``burst``
calls may go at once. The refill is continuous: there is no burst of a whole minute at the top of the minute.

The same item carries the adaptive rate (``rate``, ``ceiling``, ``changedAt``, ``decreasedAt``) and the
shared breaker (``failures``, ``openUntil``); the grant's condition checks both in the same write, so the
happy path reads nothing. Additive increases ride on a grant's write; decreases, holds and breaker changes are
written only when Capillary throttles or fails. Items carry no TTL: an org's pacing state must not vanish
while it is being paced.

Whatever goes wrong here (DynamoDB throttled, unreachable, refusing) is a :class:`Refusal`: a call is never
made without a grant.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Final, Protocol

from botocore.exceptions import BotoCoreError, ClientError

from resender.aws import error_name
from resender.dynamodb_codec import item_numbers
from resender.models import ResendResult, Verdict

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

#: Key of the pacing item until each record names its own org.
DEFAULT_ORG: Final = "default"
#: Capillary's answers that mean "slow down": throttled, search engine busy, customer busy.
THROTTLE_CODES: Final = frozenset({429, 461, 521})
# How long a container trusts what it last saw of an org's item: about a second of Capillary's minute.
CACHE_FRACTION_OF_WINDOW: Final = 1 / 60
# Attempts of one grant when other containers changed the rate or the breaker in between.
GRANT_ATTEMPTS: Final = 4
# Multiplicative decrease: before the first throttle the rate was doubling, so halve it (as TCP leaves slow
# start); afterwards the limit is known to be near, so step back gently and stay close to it.
FIRST_DECREASE: Final = 0.5
DECREASE: Final = 0.8
# The adaptive rate settles this far below the limit it found, and probes past it by this much per period.
NEAR_CEILING: Final = 0.95
PROBE_STEP: Final = 0.01
# A refusal by DynamoDB itself: try again after this long.
UNAVAILABLE_RETRY_SECONDS: Final = 5.0


class HoldReason(StrEnum):
    LIMITED = "limited"  # no slot within the wait allowed
    BREAKER_OPEN = "breaker open"  # the org's shared breaker is open
    UNAVAILABLE = "pacing unavailable"  # the pacing table could not be written


@dataclass(frozen=True, slots=True)
class Permit:
    """A granted slot: the call may start at ``go_at`` (epoch seconds), not before."""

    org: str
    go_at: float
    granted_at: float
    rate_per_window: float
    probe: bool = False  # the one call of this breaker interval that tests a half-open breaker


@dataclass(frozen=True, slots=True)
class Refusal:
    """No slot: the record must be held back until ``retry_at`` (epoch seconds) without calling."""

    org: str
    reason: HoldReason
    retry_at: float
    detail: str


class Pacer(Protocol):
    def acquire(self, org: str, max_wait_seconds: float) -> Permit | Refusal: ...

    def wait(self, permit: Permit) -> float:
        """Sleep until the permit's slot; the milliseconds waited."""
        ...

    def still_valid(self, permit: Permit) -> Refusal | None:
        """A hold this container learnt of after the grant (a Retry-After, an opened breaker), if any."""
        ...

    def observe(self, permit: Permit, result: ResendResult) -> None: ...


def is_throttle(result: ResendResult) -> bool:
    return result.verdict is Verdict.TRANSIENT and (
        result.http_status in THROTTLE_CODES or result.error_code in THROTTLE_CODES
    )


def is_outage(result: ResendResult) -> bool:
    """A failure that says Capillary (or the way to it) is down: what the shared breaker counts."""
    if result.verdict is Verdict.TRANSIENT:
        return not is_throttle(result)
    # A timeout or a dropped connection after sending: no HTTP answer came back at all.
    return result.verdict is Verdict.UNCERTAIN and result.http_status is None


def proves_up(result: ResendResult) -> bool:
    return result.verdict in (Verdict.RESENT, Verdict.NOT_FOUND, Verdict.REJECTED)


class Unpaced:
    """Pacing off (no ``PACING_TABLE``): every call is granted at once, nothing is written."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock

    def acquire(self, org: str, max_wait_seconds: float) -> Permit | Refusal:
        now = self._clock()
        return Permit(org, now, now, math.inf)

    def wait(self, permit: Permit) -> float:
        return 0.0

    def still_valid(self, permit: Permit) -> Refusal | None:
        return None

    def observe(self, permit: Permit, result: ResendResult) -> None:
        return None


@dataclass(frozen=True, slots=True)
class PacingConfig:
    window_seconds: float = 60.0
    rate: float | None = None  # RESEND_RATE_PER_MINUTE, per window; None: adaptive only
    burst: int = 1
    start_rate: float = 60.0
    min_rate: float = 6.0
    period_seconds: float = 30.0  # additive increase at most once per period
    breaker_threshold: int = 5
    breaker_open_seconds: float = 30.0

    @property
    def cache_seconds(self) -> float:
        return min(1.0, self.window_seconds * CACHE_FRACTION_OF_WINDOW)

    @property
    def initial_rate(self) -> float:
        return self.rate if self.rate is not None else self.start_rate

    def interval_ms(self, rate: float) -> tuple[int, int]:
        """(interval, tolerance) in milliseconds for ``rate`` calls per window."""
        burst = max(1, min(self.burst, math.floor(rate)))
        interval = self.window_seconds * 1000 / max(rate - burst + 1, 1e-9)
        return max(1, math.ceil(interval)), math.ceil((burst - 1) * interval)

    def increased(self, rate: float, ceiling: float | None) -> float:
        """The rate one period of success later."""
        if ceiling is None:
            raised = rate * 2  # the limit is unknown: find it fast
        elif rate < ceiling * NEAR_CEILING:
            # Back towards the limit last found: halfway a period (at least 5 % of it), stopping just short.
            raised = min(ceiling * NEAR_CEILING, rate + max((ceiling - rate) / 2, ceiling * 0.05))
        else:
            raised = rate + ceiling * PROBE_STEP  # past it, slowly: a raised limit is found again
        return min(raised, self.rate) if self.rate is not None else raised


@dataclass(slots=True)
class _Seen:
    """The last state of an org's item this container saw, and when."""

    item: dict[str, float]
    at: float
    hold_until: float = 0.0  # a hold learnt by this container (epoch seconds)


class SharedPacer:
    """The DynamoDB-backed limiter, adaptive rate and breaker, shared by every container."""

    def __init__(
        self,
        client: DynamoDBClient,
        table_name: str,
        config: PacingConfig,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._client = client
        self._table = table_name
        self._config = config
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._refresh_lock = threading.Lock()
        self._seen: dict[str, _Seen] = {}

    # -- grants --------------------------------------------------------------------------------------

    def acquire(self, org: str, max_wait_seconds: float) -> Permit | Refusal:
        for _ in range(GRANT_ATTEMPTS):
            now = self._clock()
            seen = self._snapshot(org)
            held = self._held(org, seen, now, max(0.0, max_wait_seconds))
            if held is not None:
                return held
            outcome = self._try_grant(org, seen.item if seen else {}, now, max(0.0, max_wait_seconds))
            if outcome is not None:
                return outcome
        now = self._clock()
        return Refusal(org, HoldReason.LIMITED, now + 1.0, "the pacing item kept changing under contention")

    def _held(self, org: str, seen: _Seen | None, now: float, max_wait: float) -> Refusal | None:
        if seen is None:
            return None
        hold = max(seen.hold_until, seen.item.get("holdUntil", 0) / 1000)
        if hold - now > max_wait:
            return Refusal(org, HoldReason.LIMITED, hold, "Capillary asked to wait (Retry-After)")
        if now - seen.at >= self._config.cache_seconds:
            return None
        # An open breaker or a taken slot seen a moment ago still holds (tat only moves forward): no write.
        return self._refusal_from(org, seen.item, now, max_wait)

    def _try_grant(
        self, org: str, item: Mapping[str, float], now: float, max_wait: float
    ) -> Permit | Refusal | None:
        """One conditional write; a Permit, a Refusal, or None to try again with fresher state."""
        plan = plan_grant(self._config, item, now, max_wait)
        try:
            response = self._client.update_item(
                TableName=self._table,
                Key={"org": {"S": org}},
                UpdateExpression="SET " + ", ".join(plan.sets),
                ConditionExpression=" AND ".join(plan.conditions),
                ExpressionAttributeNames={"#rate": "rate"},
                ExpressionAttributeValues=plan.values,
                ReturnValues="ALL_NEW",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as error:
            if error_name(error) != "ConditionalCheckFailedException":
                return self._unavailable(org, now, error_name(error))
            old = item_numbers(error.response.get("Item") or {})  # type: ignore[arg-type]
            self._remember(org, old, now)
            return self._refusal_from(org, old, now, max_wait)
        except BotoCoreError as error:
            return self._unavailable(org, now, type(error).__name__)
        new = item_numbers(response.get("Attributes", {}))
        self._remember(org, new, now)
        # The tat this grant started from; its slot opens one tolerance before it.
        reserved_ms = new.get("tat", now * 1000 + plan.interval_ms) - plan.interval_ms
        go_at = max(now, (reserved_ms - plan.tolerance_ms) / 1000)
        return Permit(org, go_at, now, plan.rate, probe=plan.probe)

    def _refusal_from(
        self, org: str, old: Mapping[str, float], now: float, max_wait: float
    ) -> Refusal | None:
        open_until = old.get("openUntil")
        if open_until is not None and open_until / 1000 > now:
            return _open(org, open_until)
        tat = old.get("tat")
        if tat is not None:
            _, tolerance = self._config.interval_ms(old.get("rate", self._config.initial_rate))
            slot = (tat - tolerance) / 1000
            if slot - now > max_wait:
                return Refusal(org, HoldReason.LIMITED, slot, "no resend slot free within the wait allowed")
        return None  # the item changed (rate, breaker, a grant in between): try again with what came back

    def _unavailable(self, org: str, now: float, code: str) -> Refusal:
        return Refusal(
            org,
            HoldReason.UNAVAILABLE,
            now + UNAVAILABLE_RETRY_SECONDS,
            f"the pacing table could not be written ({code}); Capillary was not called",
        )

    def wait(self, permit: Permit) -> float:
        delay = permit.go_at - self._clock()
        if delay <= 0:
            return 0.0
        self._sleep(delay)
        return delay * 1000

    def still_valid(self, permit: Permit) -> Refusal | None:
        """Check, just before the call, that no container was told to hold back since the grant.

        A permit may be a few seconds old when its slot comes. What the container saw is trusted for about a
        second; older than that, one consistent read refreshes it for every thread of the container, so the
        whole fleet stops within a second of a 429 or of the breaker opening, at no more than one read per
        container per second.
        """
        now = self._clock()
        seen = self._snapshot(permit.org)
        if seen is None or now - seen.at >= self._config.cache_seconds:
            seen = self._refresh(permit.org, now)
        if seen is None:
            return None
        hold = max(seen.hold_until, seen.item.get("holdUntil", 0) / 1000)
        if hold > now:
            return Refusal(permit.org, HoldReason.LIMITED, hold, "Capillary asked to wait (Retry-After)")
        open_until = seen.item.get("openUntil")
        if not permit.probe and open_until is not None:
            # Open, or half-open with its one probe elsewhere: a slot reserved earlier is not a probe.
            return _open(permit.org, max(open_until, now * 1000 + 1000))
        if permit.probe:
            self._rearm(permit.org, now)
        return None

    def _rearm(self, org: str, now: float) -> None:
        """Start the probe's interval when its call goes out, not when it was elected.

        Between the election and the call lie the claim and the wait for the slot; counted from the election,
        the next interval's probe could follow this one by less than an interval.
        """
        try:
            self._conditional(
                org,
                "SET openUntil = :until",
                "attribute_exists(openUntil) AND openUntil < :until",
                {":until": _n(int((now + self._config.breaker_open_seconds) * 1000))},
            )
        except (ClientError, BotoCoreError):
            return  # the interval counted from the election still holds

    def _refresh(self, org: str, now: float) -> _Seen | None:
        with self._refresh_lock:
            seen = self._snapshot(org)
            if seen is not None and now - seen.at < self._config.cache_seconds:
                return seen  # another thread of this container read it meanwhile
            try:
                response = self._client.get_item(
                    TableName=self._table, Key={"org": {"S": org}}, ConsistentRead=True
                )
            except (ClientError, BotoCoreError):
                return seen  # the grant stands; what was known of holds still applies
            self._remember(org, item_numbers(response.get("Item", {})), self._clock())
            return self._snapshot(org)

    # -- what Capillary answered ---------------------------------------------------------------------

    def observe(self, permit: Permit, result: ResendResult) -> None:
        """Feed an answer back: throttling lowers the rate, outages count toward the breaker."""
        try:
            if is_throttle(result):
                self._throttled(permit, result.retry_after_seconds)
            elif is_outage(result):
                self._failed(permit.org)
            elif proves_up(result):
                self._succeeded(permit)
        except (ClientError, BotoCoreError):
            # Pacing state is advisory past the grant: a lost update costs accuracy, never a double call.
            return

    def _throttled(self, permit: Permit, retry_after: float | None) -> None:
        config = self._config
        now = self._clock()
        now_ms = int(now * 1000)
        if retry_after:
            hold = now + retry_after
            with self._lock:
                seen = self._seen.get(permit.org)
                if seen is not None:
                    seen.hold_until = max(seen.hold_until, hold)
            # Holds every container: slots already granted are checked against holdUntil before their call,
            # and nothing new is granted before the hold ends.
            hold_ms = _n(int(hold * 1000))
            self._conditional(
                permit.org,
                "SET holdUntil = :hold",
                "attribute_not_exists(holdUntil) OR holdUntil < :hold",
                {":hold": hold_ms},
            )
            self._conditional(
                permit.org, "SET tat = :hold", "attribute_not_exists(tat) OR tat < :hold", {":hold": hold_ms}
            )
        seen_item = self._snapshot(permit.org)
        item = seen_item.item if seen_item else {}
        window_ms = config.window_seconds * 1000
        decreased_at = item.get("decreasedAt")
        if decreased_at is not None and now_ms - decreased_at < window_ms:
            return  # one decrease per window: the answers of one congested window are one signal
        ceiling, lowered = self._lowered(permit.rate_per_window, retry_after, item, now_ms)
        self._conditional(
            permit.org,
            "SET #rate = :rate, ceiling = :ceiling, changedAt = :now, decreasedAt = :now",
            "attribute_not_exists(decreasedAt) OR decreasedAt < :cooled",
            {
                ":rate": _n(lowered),
                ":ceiling": _n(ceiling),
                ":now": _n(now_ms),
                ":cooled": _n(now_ms - int(config.window_seconds * 1000)),
            },
            names={"#rate": "rate"},
        )

    def _lowered(
        self, rate: float, retry_after: float | None, item: Mapping[str, float], now_ms: int
    ) -> tuple[float, float]:
        """(the limit this throttle suggests, the rate to go on with)."""
        config = self._config
        window = config.window_seconds
        if retry_after is not None and 0 < retry_after < window:
            # A fixed-window limiter says how long its window still runs: what went through since it began is
            # about the limit. Calls went out at ``rate`` per window, so the limit is the share already used.
            limit = max(config.min_rate, rate * (window - retry_after) / window)
            return limit, max(config.min_rate, limit * NEAR_CEILING)
        # No usable Retry-After: multiplicative decrease, halving while throttles come window after window.
        decreased_at = item.get("decreasedAt")
        again = decreased_at is not None and now_ms - decreased_at < 2 * window * 1000
        factor = FIRST_DECREASE if "ceiling" not in item or again else DECREASE
        return rate, max(config.min_rate, rate * factor)

    def _failed(self, org: str) -> None:
        config = self._config
        now_ms = int(self._clock() * 1000)
        response = self._client.update_item(
            TableName=self._table,
            Key={"org": {"S": org}},
            UpdateExpression="ADD failures :one",
            ExpressionAttributeValues={":one": _n(1)},
            ReturnValues="ALL_NEW",
        )
        item = item_numbers(response.get("Attributes", {}))
        self._remember(org, item, now_ms / 1000)
        if item.get("failures", 0) < config.breaker_threshold or item.get("openUntil", 0) > now_ms:
            return
        # Slots reserved before the breaker opened are void (their callers re-check before calling), so the
        # bucket restarts where the interval ends and the probe after it does not queue behind dead slots.
        self._conditional(
            org,
            "SET openUntil = :until, tat = :until",
            "failures >= :threshold AND (attribute_not_exists(openUntil) OR openUntil <= :now)",
            {
                ":until": _n(now_ms + int(config.breaker_open_seconds * 1000)),
                ":threshold": _n(config.breaker_threshold),
                ":now": _n(now_ms),
            },
        )

    def _succeeded(self, permit: Permit) -> None:
        seen = self._snapshot(permit.org)
        item = seen.item if seen else {}
        if not permit.probe and not item.get("failures") and "openUntil" not in item:
            return  # nothing to reset: the happy path writes nothing here
        response = self._client.update_item(
            TableName=self._table,
            Key={"org": {"S": permit.org}},
            UpdateExpression="SET failures = :zero REMOVE openUntil",
            ExpressionAttributeValues={":zero": _n(0)},
            ReturnValues="ALL_NEW",
        )
        self._remember(permit.org, item_numbers(response.get("Attributes", {})), self._clock())

    def _conditional(
        self,
        org: str,
        update: str,
        condition: str,
        values: dict[str, Any],
        names: dict[str, str] | None = None,
    ) -> None:
        request: dict[str, Any] = {
            "TableName": self._table,
            "Key": {"org": {"S": org}},
            "UpdateExpression": update,
            "ConditionExpression": condition,
            "ExpressionAttributeValues": values,
            "ReturnValues": "ALL_NEW",
        }
        if names:
            request["ExpressionAttributeNames"] = names
        try:
            response = self._client.update_item(**request)
        except ClientError as error:
            if error_name(error) == "ConditionalCheckFailedException":
                return  # another container wrote the same news first
            raise
        self._remember(org, item_numbers(response.get("Attributes", {})), self._clock())

    # -- what this container saw ---------------------------------------------------------------------

    def _snapshot(self, org: str) -> _Seen | None:
        with self._lock:
            seen = self._seen.get(org)
            return _Seen(dict(seen.item), seen.at, seen.hold_until) if seen else None

    def _remember(self, org: str, item: dict[str, float], at: float) -> None:
        with self._lock:
            previous = self._seen.get(org)
            hold = previous.hold_until if previous else 0.0
            self._seen[org] = _Seen(item, at, hold)

    def state(self, org: str) -> dict[str, float]:
        """The org's item as it is now in DynamoDB (for operators and tests)."""
        response = self._client.get_item(TableName=self._table, Key={"org": {"S": org}}, ConsistentRead=True)
        return item_numbers(response.get("Item", {}))


@dataclass(frozen=True, slots=True)
class GrantPlan:
    """The conditional write that takes one slot, given what was last seen of the org's item."""

    sets: list[str]
    conditions: list[str]
    values: dict[str, Any]
    rate: float
    interval_ms: int
    tolerance_ms: int
    probe: bool


def plan_grant(config: PacingConfig, item: Mapping[str, float], now: float, max_wait: float) -> GrantPlan:
    now_ms = int(now * 1000)
    rate = item.get("rate", config.initial_rate)
    values: dict[str, Any] = {":now": _n(now_ms)}
    conditions: list[str] = []
    sets: list[str] = []
    new_rate = rate
    tat = item.get("tat")
    busy = tat is not None and tat > now_ms
    if "rate" in item:
        conditions.append("#rate = :seenRate")
        values[":seenRate"] = _n(rate)
        changed_at = item.get("changedAt", 0)
        # Raised only while the rate is what holds calls back (the bucket is busy), never while idle.
        if busy and now_ms - changed_at >= config.period_seconds * 1000:
            new_rate = config.increased(rate, item.get("ceiling"))
        if config.rate is not None and new_rate > config.rate:
            new_rate = config.rate  # RESEND_RATE_PER_MINUTE was lowered since the item was written
        if new_rate != rate:
            # One container raises the rate per period: the others' writes fail this and re-read.
            conditions.append("changedAt = :seenChanged")
            values[":seenChanged"] = _n(changed_at)
            sets.append("changedAt = :now")
    else:
        conditions.append("attribute_not_exists(#rate)")
        sets.append("changedAt = :now")
    sets.append("#rate = :rate")
    values[":rate"] = _n(new_rate)
    interval, tolerance = config.interval_ms(new_rate)

    open_until = item.get("openUntil")
    probe = open_until is not None and open_until <= now_ms
    if open_until is not None and probe:
        # Half-open: the first container to move openUntil on is the one probe of this interval.
        conditions.append("openUntil = :seenOpen")
        values[":seenOpen"] = _n(open_until)
        sets.append("openUntil = :reopen")
        values[":reopen"] = _n(now_ms + int(config.breaker_open_seconds * 1000))
    else:
        conditions.append("attribute_not_exists(openUntil)")

    if busy:
        conditions.append("tat > :now AND tat <= :horizon")
        values[":horizon"] = _n(now_ms + tolerance + int(max_wait * 1000))
        values[":interval"] = _n(interval)
        sets.append("tat = tat + :interval")  # DynamoDB adds: concurrent grants never collide
    else:
        conditions.append("(attribute_not_exists(tat) OR tat <= :now)")
        values[":next"] = _n(now_ms + interval)
        sets.append("tat = :next")
    return GrantPlan(sets, conditions, values, new_rate, interval, tolerance, probe)


def _open(org: str, open_until_ms: float) -> Refusal:
    return Refusal(
        org,
        HoldReason.BREAKER_OPEN,
        open_until_ms / 1000,
        "circuit open: Capillary failed repeatedly across containers",
    )


def _n(value: float) -> dict[str, str]:
    if isinstance(value, int) or float(value).is_integer():
        return {"N": str(int(value))}
    return {"N": f"{value:.6f}".rstrip("0")}
