"""Configuration read once per container from the environment.

Every setting has a safe default except the three that name outside resources. The Capillary base URL comes
from here and nowhere else: an event can never redirect the credentials to another host.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Final, TypeVar
from urllib.parse import urlsplit

from resender.errors import ResenderError

N = TypeVar("N", int, float)

LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})

#: Capillary delivery statuses (Insights+ ``veneno_status_label``) for which a resend fails again, costs
#: credits or breaks the regulator's rules: the default of ``SKIP_REASONS``.
DEFAULT_SKIP_REASONS: Final = (
    "HARD_BOUNCED",
    "DND_BLOCKED",
    "NDNC_BLOCKED",
    "MARKED_UNSUBSCRIBED",
    "MARKED_SPAM",
    "INVALID",
    "MOBILE_WHITELISTED_BLOCKED",
    "ORG_DISABLED",
    "BLOCKED",
)
#: Connection attempts of one request to Capillary: the first and urllib3's connect retries
#: (``resender.capillary.build_session``: ``Retry(connect=2)``). A connect timeout may end each one.
CAPILLARY_CONNECT_ATTEMPTS: Final = 3
#: urllib3's pauses between those attempts (backoff factor 0.1: 0 s, then 0.2 s).
CAPILLARY_CONNECT_BACKOFF_SECONDS: Final = 0.2
#: Time kept after the call to write the outcome (a few DynamoDB attempts) and return the batch response.
RECORDING_MARGIN_SECONDS: Final = 2.0


class ConfigurationError(ResenderError):
    """A setting is missing or invalid; the message names the setting, never a secret."""


class ConfigurationRefusedError(ConfigurationError):
    """The settings are valid one by one but together leave no room for a single resend."""


# While Settings are read, each bad setting is noted and a stand-in used, so that one message names them all:
# an operator fixing a deployment should not discover the second missing variable on the second run.
_problems: ContextVar[list[str] | None] = ContextVar("settings_problems", default=None)


@contextmanager
def _all_problems_at_once() -> Iterator[None]:
    problems: list[str] = []
    token = _problems.set(problems)
    try:
        yield
    except ConfigurationError as error:
        problems.append(str(error))  # a check across settings, made once the values were read
    finally:
        _problems.reset(token)
    if problems:
        raise ConfigurationError("; ".join(dict.fromkeys(problems)))


def _problem(message: str) -> None:
    """Report one bad setting: noted while Settings are read, raised at once otherwise."""
    problems = _problems.get()
    if problems is None:
        raise ConfigurationError(message)
    problems.append(message)


@dataclass(frozen=True, slots=True)
class Settings:
    outcomes_table: str
    capillary_secret_id: str
    capillary_base_url: str
    capillary_timeout_seconds: float = 10.0
    dead_letter_queue_url: str | None = None
    max_resend_depth: int = 2
    message_id_path: str = "messageId"
    idempotency_ttl_seconds: int = 7 * 24 * 3600
    secret_max_age_seconds: int = 300
    resend_concurrency: int = 10
    claim_margin_seconds: int = 60
    default_claim_lease_seconds: int = 900
    circuit_breaker_threshold: int = 3
    retry_base_seconds: int = 30
    retry_cap_seconds: int = 900
    max_body_bytes: int = 256 * 1024
    max_text_chars: int = 512
    # Resend policy (see resender.policy); each default is the contract's.
    reason_path: str = "reason"
    skip_reasons: tuple[str, ...] = DEFAULT_SKIP_REASONS
    channel_path: str = "channel"
    resend_channels: tuple[str, ...] = ()
    failed_at_path: str = "failedAt"
    resend_max_age_seconds: int = 86_400
    skip_when: str = ""
    # Several orgs: where the org id sits in the payload; empty means one org per deployment.
    org_id_path: str = ""
    # Pacing (see docs/pacing.md): off unless PACING_TABLE names the table of the shared limiter.
    pacing_table: str | None = None
    resend_rate_per_minute: float | None = None
    resend_burst: int = 1
    rate_window_seconds: float = 60.0
    pacing_max_wait_seconds: float = 10.0
    adaptive_start_per_minute: float = 60.0
    adaptive_min_per_minute: float = 6.0
    adaptive_period_seconds: float = 30.0
    shared_breaker_threshold: int = 5
    shared_breaker_open_seconds: float = 30.0
    deferral_max_age_seconds: int = 24 * 3600

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        with _all_problems_at_once():
            return cls._from_env(os.environ if environ is None else environ)

    @classmethod
    def _from_env(cls, env: Mapping[str, str]) -> Settings:
        settings = cls(
            outcomes_table=_required(env, "OUTCOMES_TABLE"),
            capillary_secret_id=_required(env, "CAPILLARY_SECRET_ID"),
            capillary_base_url=_base_url(env),
            capillary_timeout_seconds=_number(env, "CAPILLARY_TIMEOUT_SECONDS", 10.0, float),
            dead_letter_queue_url=env.get("DEAD_LETTER_QUEUE_URL") or None,
            max_resend_depth=_number(env, "MAX_RESEND_DEPTH", 2, int, minimum=0),
            message_id_path=env.get("MESSAGE_ID_PATH") or "messageId",
            idempotency_ttl_seconds=_number(env, "IDEMPOTENCY_TTL_SECONDS", 7 * 24 * 3600, int, minimum=1),
            secret_max_age_seconds=_number(env, "SECRET_MAX_AGE_SECONDS", 300, int, minimum=0),
            resend_concurrency=_number(env, "RESEND_CONCURRENCY", 10, int, minimum=1),
            claim_margin_seconds=_number(env, "CLAIM_MARGIN_SECONDS", 60, int, minimum=0),
            default_claim_lease_seconds=_number(env, "CLAIM_LEASE_SECONDS", 900, int, minimum=1),
            circuit_breaker_threshold=_number(env, "CIRCUIT_BREAKER_THRESHOLD", 3, int, minimum=1),
            retry_base_seconds=_number(env, "RETRY_BASE_SECONDS", 30, int, minimum=0),
            retry_cap_seconds=_number(env, "RETRY_CAP_SECONDS", 900, int, minimum=0),
            max_body_bytes=_number(env, "MAX_BODY_BYTES", 256 * 1024, int, minimum=1),
            max_text_chars=_number(env, "MAX_TEXT_CHARS", 512, int, minimum=64),
            reason_path=_path(env, "REASON_PATH", "reason"),
            skip_reasons=_list(env, "SKIP_REASONS", DEFAULT_SKIP_REASONS),
            channel_path=_path(env, "CHANNEL_PATH", "channel"),
            resend_channels=_list(env, "RESEND_CHANNELS", ()),
            failed_at_path=_path(env, "FAILED_AT_PATH", "failedAt"),
            resend_max_age_seconds=_number(env, "RESEND_MAX_AGE_SECONDS", 86_400, int, minimum=0),
            skip_when=_optional_path(env, "SKIP_WHEN"),
            org_id_path=_optional_path(env, "ORG_ID_PATH"),
            pacing_table=env.get("PACING_TABLE", "").strip() or None,
            resend_rate_per_minute=_optional_rate(env, "RESEND_RATE_PER_MINUTE"),
            resend_burst=_number(env, "RESEND_BURST", 1, int, minimum=1),
            rate_window_seconds=_number(env, "RATE_WINDOW_SECONDS", 60.0, float, minimum=0.1),
            pacing_max_wait_seconds=_number(env, "PACING_MAX_WAIT_SECONDS", 10.0, float, minimum=0.0),
            adaptive_start_per_minute=_number(env, "ADAPTIVE_START_PER_MINUTE", 60.0, float, minimum=1.0),
            adaptive_min_per_minute=_number(env, "ADAPTIVE_MIN_PER_MINUTE", 6.0, float, minimum=0.1),
            adaptive_period_seconds=_number(env, "ADAPTIVE_PERIOD_SECONDS", 30.0, float, minimum=0.1),
            shared_breaker_threshold=_number(env, "SHARED_BREAKER_THRESHOLD", 5, int, minimum=1),
            shared_breaker_open_seconds=_number(env, "SHARED_BREAKER_OPEN_SECONDS", 30.0, float, minimum=0.1),
            deferral_max_age_seconds=_number(env, "DEFERRAL_MAX_AGE_SECONDS", 24 * 3600, int, minimum=60),
        )
        if settings.capillary_timeout_seconds <= 0:
            _problem("CAPILLARY_TIMEOUT_SECONDS must be greater than 0")
        if settings.retry_cap_seconds > 43_200:
            _problem("RETRY_CAP_SECONDS must be at most 43200 (the SQS visibility limit)")
        rate = settings.resend_rate_per_minute
        if rate is not None and rate < settings.resend_burst:
            _problem("RESEND_BURST must not be larger than RESEND_RATE_PER_MINUTE")
        return settings


def minimum_resend_seconds(settings: Settings) -> float:
    """The longest one resend may take, from the claim to the recorded outcome.

    Each request to Capillary may spend every connect attempt on a connect timeout and then a whole read
    timeout. A resend is at most two such requests (a second attempt after an auth failure) plus one OAuth
    token request, then the recording margin. This is more cautious than the Capillary client's own budget
    (``CapillaryClient.worst_case_seconds``, which it enforces: connect attempts of at most 1 s, the token
    request and the second attempt sharing two requests' time), so a configuration that passes can always
    claim at the start of an invocation.
    """
    timeout = settings.capillary_timeout_seconds
    one_request = CAPILLARY_CONNECT_ATTEMPTS * timeout + CAPILLARY_CONNECT_BACKOFF_SECONDS + timeout
    return 2 * one_request + one_request + RECORDING_MARGIN_SECONDS


def refusal(settings: Settings, remaining_seconds: float) -> str | None:
    """Why an invocation with ``remaining_seconds`` left can never make a resend, or None if it can."""
    needed = minimum_resend_seconds(settings)
    if remaining_seconds >= needed:
        return None
    return (
        f"configuration refused: one resend may take {needed:g} s at CAPILLARY_TIMEOUT_SECONDS="
        f"{settings.capillary_timeout_seconds:g}, but the invocation has {remaining_seconds:.1f} s; raise "
        "the function timeout (FunctionTimeout) or lower CAPILLARY_TIMEOUT_SECONDS (CapillaryTimeoutSeconds)"
    )


class StartupCheck:
    """Refuses, once per container and from then on, settings under which no resend can ever be made.

    Checked at the first invocation, whose remaining time is the function's timeout: a timeout too short
    for one resend stays too short, so the verdict is kept for the container's life.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self._checked = False
        self._refusal: str | None = None

    def check(self, remaining_seconds: float) -> None:
        with self._lock:
            if not self._checked:
                self._refusal = refusal(self._settings, remaining_seconds)
                self._checked = True
            found = self._refusal
        if found is not None:
            raise ConfigurationRefusedError(found)


def validate_base_url(url: str) -> str:
    """Accept https, or http only towards a loopback host (local runs and tests)."""
    parts = urlsplit(url.strip())
    host = (parts.hostname or "").lower()
    if not host:
        raise ConfigurationError("CAPILLARY_BASE_URL must be an absolute URL with a host")
    try:
        parts.port  # noqa: B018 - urlsplit checks the port only when it is read
    except ValueError:
        raise ConfigurationError("CAPILLARY_BASE_URL has an invalid port") from None
    if parts.scheme == "https" or (parts.scheme == "http" and host in LOOPBACK_HOSTS):
        if parts.query or parts.fragment or parts.username or parts.password:
            raise ConfigurationError("CAPILLARY_BASE_URL must not carry credentials, a query or a fragment")
        return url.strip().rstrip("/")
    raise ConfigurationError(
        "CAPILLARY_BASE_URL must use https (plain http is allowed only for loopback hosts)"
    )


def _base_url(env: Mapping[str, str]) -> str:
    raw = _required(env, "CAPILLARY_BASE_URL")
    if raw.startswith("<"):  # unset, and already reported
        return raw
    try:
        return validate_base_url(raw)
    except ConfigurationError as error:
        _problem(str(error))
        return raw


def _required(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "").strip()
    if not value:
        _problem(f"{name} is not set")
        return f"<{name} unset>"
    return value


def _optional_rate(env: Mapping[str, str], name: str) -> float | None:
    """A rate of at least 1, or None when the setting is empty (no fixed ceiling)."""
    if not env.get(name, "").strip():
        return None
    return _number(env, name, 1.0, float, minimum=1.0)


def _number(env: Mapping[str, str], name: str, default: N, kind: type[N], minimum: N | None = None) -> N:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        _problem(f"{name} must be a number, got {raw[:32]!r}")
        return default
    if isinstance(value, float) and not math.isfinite(value):
        _problem(f"{name} must be a finite number, got {raw[:32]!r}")
        return default
    if minimum is not None and value < minimum:
        _problem(f"{name} must be at least {minimum}")
        return default
    return value


def _list(env: Mapping[str, str], name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    """A comma-separated list; unset means ``default``, set to the empty string means no entries."""
    raw = env.get(name)
    if raw is None:
        return default
    return tuple(entry.strip() for entry in raw.split(",") if entry.strip())


def _path(env: Mapping[str, str], name: str, default: str) -> str:
    return _valid_path(name, env.get(name, "").strip() or default, default)


def _optional_path(env: Mapping[str, str], name: str) -> str:
    text = env.get(name, "").strip()
    return _valid_path(name, text, "") if text else ""


def _valid_path(name: str, expression: str, stand_in: str) -> str:
    try:
        return compile_jmespath(name, expression)
    except ConfigurationError as error:
        _problem(str(error))
        return stand_in


def compile_jmespath(name: str, expression: str) -> str:
    """``expression`` if it is valid JMESPath; a clear ConfigurationError naming the setting otherwise."""
    import jmespath
    from jmespath.exceptions import JMESPathError

    try:
        jmespath.compile(expression)
    except JMESPathError as error:
        detail = " ".join(str(error).split())
        raise ConfigurationError(f"{name} is not a valid JMESPath expression: {detail}") from None
    return expression
