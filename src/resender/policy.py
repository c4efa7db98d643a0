"""Which failures deserve a resend: the rules applied after parsing and before the claim.

A resend of a hard bounce, a DND-blocked number or an unsubscribed customer fails again, costs credits and
can break the regulator's rules; a resend of yesterday's OTP is worse than useless. Each rule reads one
place of the failure payload (a JMESPath expression from the settings). A record a rule refuses is
recorded ``SKIPPED`` with an ``errorMessage`` that begins ``policy:`` and names the rule, and is never sent.

Missing information never refuses a record: a failure without a reason, a channel or a time is resent,
because the feed's producer is the one who knows, and a resend wrongly skipped is a message lost.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

import jmespath
from jmespath.exceptions import JMESPathError
from jmespath.parser import ParsedResult

from resender.events import Notice, parse_time
from resender.observability import logger
from resender.settings import Settings, compile_jmespath

#: How far ahead of this clock a failure time may be before it is logged as "in the future".
CLOCK_SKEW_SECONDS: Final = 60.0
_SEPARATORS = re.compile(r"[\s_-]+")


class PolicyRule(StrEnum):
    """The item attribute ``policy`` of a record a rule refused (contract)."""

    REASON = "reason"
    CHANNEL = "channel"
    AGE = "age"
    SKIP_WHEN = "skipWhen"
    LOOP_GUARD = "loopGuard"


@dataclass(frozen=True, slots=True)
class Skip:
    rule: PolicyRule
    detail: str

    @property
    def message(self) -> str:
        """The ``errorMessage`` of the SKIPPED item: ``policy: <rule>: <why>``."""
        return f"policy: {self.rule}: {self.detail}"


def normalise_reason(text: str) -> str:
    """Case folded, with runs of spaces, hyphens and underscores read as one underscore."""
    return _SEPARATORS.sub("_", text.strip()).strip("_").casefold()


def loop_guard(depth: int, limit: int, resend_of: int | None, root: int) -> Skip:
    return Skip(
        PolicyRule.LOOP_GUARD,
        f"resend chain depth {depth} reached MAX_RESEND_DEPTH={limit} "
        f"(resend of {resend_of}, chain root {root})",
    )


class ResendPolicy:
    """The rules of the settings, compiled once per container."""

    def __init__(
        self,
        *,
        reason_path: str = "reason",
        skip_reasons: tuple[str, ...] = (),
        channel_path: str = "channel",
        resend_channels: tuple[str, ...] = (),
        failed_at_path: str = "failedAt",
        max_age_seconds: int = 0,
        skip_when: str = "",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._reason_path = _compile("REASON_PATH", reason_path)
        self._skip_reasons = {normalise_reason(reason): reason for reason in skip_reasons}
        self._channel_path = _compile("CHANNEL_PATH", channel_path)
        self._channels = frozenset(channel.strip().casefold() for channel in resend_channels)
        self._failed_at_path = _compile("FAILED_AT_PATH", failed_at_path)
        self._failed_at_text = failed_at_path
        self._max_age = max_age_seconds
        self._skip_when_text = skip_when
        self._skip_when = _compile("SKIP_WHEN", skip_when) if skip_when else None
        self._clock = clock

    @classmethod
    def from_settings(cls, settings: Settings, clock: Callable[[], float] = time.time) -> ResendPolicy:
        return cls(
            reason_path=settings.reason_path,
            skip_reasons=settings.skip_reasons,
            channel_path=settings.channel_path,
            resend_channels=settings.resend_channels,
            failed_at_path=settings.failed_at_path,
            max_age_seconds=settings.resend_max_age_seconds,
            skip_when=settings.skip_when,
            clock=clock,
        )

    def evaluate(self, notice: Notice) -> Skip | None:
        """The first rule that refuses this record, or None to resend it."""
        payload = notice.payload
        for rule in (self._reason, self._channel, self._age, self._expression):
            skip = rule(payload, notice.envelope_time)
            if skip is not None:
                return skip
        return None

    def _reason(self, payload: Any, _: float | None) -> Skip | None:
        reason = _search(self._reason_path, payload)
        if isinstance(reason, int) and not isinstance(reason, bool):
            reason = str(reason)
        if not isinstance(reason, str) or not self._skip_reasons:
            return None
        matched = self._skip_reasons.get(normalise_reason(reason))
        if matched is None:
            return None
        return Skip(PolicyRule.REASON, f"{_quote(reason)} is {matched}, one of SKIP_REASONS")

    def _channel(self, payload: Any, _: float | None) -> Skip | None:
        channel = _search(self._channel_path, payload)
        if not self._channels or not isinstance(channel, str) or not channel.strip():
            return None
        if channel.strip().casefold() in self._channels:
            return None
        allowed = ",".join(sorted(self._channels)).upper()
        return Skip(PolicyRule.CHANNEL, f"{_quote(channel)} is not in RESEND_CHANNELS={allowed}")

    def _age(self, payload: Any, envelope_time: float | None) -> Skip | None:
        if self._max_age <= 0:
            return None
        found = _search(self._failed_at_path, payload)
        source = f"{self._failed_at_text} in the payload"
        if found is not None:
            failed_at = parse_time(found)
            if failed_at is None:
                logger.warning(
                    "failure time is unreadable: the age rule does not apply",
                    extra={"failedAtPath": self._failed_at_text, "failedAt": _quote(str(found))},
                )
                return None
        elif envelope_time is not None:
            failed_at, source = envelope_time, "the envelope's time"
        else:
            return None
        age = self._clock() - failed_at
        if age < -CLOCK_SKEW_SECONDS:
            logger.warning(
                "failure time is in the future: the age rule does not apply",
                extra={"secondsAhead": round(-age), "source": source},
            )
            return None
        if age <= self._max_age:
            return None
        return Skip(
            PolicyRule.AGE,
            f"failed {int(age)} s ago ({source}), older than RESEND_MAX_AGE_SECONDS={self._max_age}",
        )

    def _expression(self, payload: Any, _: float | None) -> Skip | None:
        if self._skip_when is None:
            return None
        try:
            verdict = self._skip_when.search(payload)
        except (JMESPathError, TypeError, ValueError) as error:
            logger.warning(
                "SKIP_WHEN could not be evaluated on this payload: not skipped",
                extra={"error": type(error).__name__},
            )
            return None
        if verdict is not True:
            return None
        return Skip(PolicyRule.SKIP_WHEN, f"SKIP_WHEN {self._skip_when_text!r} is true")


def _compile(name: str, expression: str) -> ParsedResult:
    return jmespath.compile(compile_jmespath(name, expression))


def _search(path: ParsedResult, payload: Any) -> Any:
    try:
        return path.search(payload)
    except (JMESPathError, TypeError, ValueError):
        return None


def _quote(text: str, limit: int = 64) -> str:
    # A payload value lands in the item, the log and maybe SQS attributes: printable and short only.
    clipped = "".join(char if char.isprintable() else "?" for char in text[: limit + 1])
    return repr(clipped if len(clipped) <= limit else clipped[:limit] + "...")
