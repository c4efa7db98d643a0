"""Configuration read once per container from the environment.

Every setting has a safe default except the three that name outside resources. The Capillary base URL comes
from here and nowhere else: an event can never redirect the credentials to another host.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import Field, dataclass, field, fields
from typing import Any, Final, TypeVar, overload
from urllib.parse import urlsplit

from resender.errors import ResenderError

N = TypeVar("N", int, float)
T = TypeVar("T")

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
class Source:
    """Where a setting comes from: its environment variable (a contract name) and how that is read."""

    variable: str
    load: Callable[[Mapping[str, str]], Any]


_SOURCE: Final = "source"


def source(setting_field: Field[Any]) -> Source | None:
    """The environment variable a Settings field is read from, or None for a field that is not read."""
    found: Source | None = setting_field.metadata.get(_SOURCE)
    return found


def required(variable: str, read: Callable[[Mapping[str, str], str], str] | None = None) -> dict[str, Source]:
    """The metadata of a setting without a default.

    Declared as ``field(metadata=required(...))``: a call to ``field`` itself without a default is what tells
    mypy, as well as the dataclass, that the argument must be given.
    """
    reader = _required if read is None else read
    return {_SOURCE: Source(variable, lambda env: reader(env, variable))}


@overload
def setting(variable: str, default: N, *, minimum: N | None = None) -> N: ...
@overload
def setting(variable: str, default: T, read: Callable[[Mapping[str, str], str, T], T]) -> T: ...
def setting(
    variable: str,
    default: Any,
    read: Callable[[Mapping[str, str], str, Any], Any] | None = None,
    *,
    minimum: float | None = None,
) -> Any:
    """A field with its default, read from ``variable``.

    A number (of the default's type, at least ``minimum``) unless ``read`` names another reader, which is
    given the environment, the variable and the default.
    """

    def load(env: Mapping[str, str]) -> Any:
        if read is None:
            return _number(env, variable, default, minimum)
        return read(env, variable, default)

    return field(default=default, metadata={_SOURCE: Source(variable, load)})


def _required(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "").strip()
    if not value:
        _problem(f"{name} is not set")
        return f"<{name} unset>"
    return value


def _base_url(env: Mapping[str, str], name: str) -> str:
    raw = env.get(name, "").strip()
    if not raw:
        return _required(env, name)
    try:
        return validate_base_url(raw)
    except ConfigurationError as error:
        _problem(str(error))
        return raw


def _number(env: Mapping[str, str], name: str, default: N, minimum: float | None = None) -> N:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = type(default)(raw)
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


def _rate(env: Mapping[str, str], name: str, default: float | None) -> float | None:
    """A rate of at least 1, or ``default`` when the setting is empty (no fixed ceiling)."""
    if not env.get(name, "").strip():
        return default
    return _number(env, name, 1.0, minimum=1.0)


def _list(env: Mapping[str, str], name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    """A comma-separated list; unset means ``default``, set to the empty string means no entries."""
    raw = env.get(name)
    if raw is None:
        return default
    return tuple(entry.strip() for entry in raw.split(",") if entry.strip())


def _path(env: Mapping[str, str], name: str, default: str) -> str:
    """A JMESPath expression; empty means ``default``, which is also the stand-in for an invalid one."""
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        return compile_jmespath(name, text)
    except ConfigurationError as error:
        _problem(str(error))
        return default


def _text(env: Mapping[str, str], name: str, default: str | None) -> str | None:
    """A name or URL; blank means ``default``, as it does for every other setting."""
    return env.get(name, "").strip() or default


@dataclass(frozen=True, slots=True)
class Settings:
    outcomes_table: str = field(metadata=required("OUTCOMES_TABLE"))
    capillary_secret_id: str = field(metadata=required("CAPILLARY_SECRET_ID"))
    capillary_base_url: str = field(metadata=required("CAPILLARY_BASE_URL", _base_url))
    capillary_timeout_seconds: float = setting("CAPILLARY_TIMEOUT_SECONDS", 10.0)
    dead_letter_queue_url: str | None = setting("DEAD_LETTER_QUEUE_URL", None, _text)
    max_resend_depth: int = setting("MAX_RESEND_DEPTH", 2, minimum=0)
    message_id_path: str = setting("MESSAGE_ID_PATH", "messageId", _path)
    idempotency_ttl_seconds: int = setting("IDEMPOTENCY_TTL_SECONDS", 7 * 24 * 3600, minimum=1)
    secret_max_age_seconds: int = setting("SECRET_MAX_AGE_SECONDS", 5 * 60, minimum=0)
    resend_concurrency: int = setting("RESEND_CONCURRENCY", 10, minimum=1)
    claim_margin_seconds: int = setting("CLAIM_MARGIN_SECONDS", 60, minimum=0)
    default_claim_lease_seconds: int = setting("CLAIM_LEASE_SECONDS", 15 * 60, minimum=1)
    circuit_breaker_threshold: int = setting("CIRCUIT_BREAKER_THRESHOLD", 3, minimum=1)
    retry_base_seconds: int = setting("RETRY_BASE_SECONDS", 30, minimum=0)
    retry_cap_seconds: int = setting("RETRY_CAP_SECONDS", 15 * 60, minimum=0)
    max_body_bytes: int = setting("MAX_BODY_BYTES", 256 * 1024, minimum=1)
    max_text_chars: int = setting("MAX_TEXT_CHARS", 512, minimum=64)
    # Resend policy (see resender.policy); each default is the contract's.
    reason_path: str = setting("REASON_PATH", "reason", _path)
    skip_reasons: tuple[str, ...] = setting("SKIP_REASONS", DEFAULT_SKIP_REASONS, _list)
    channel_path: str = setting("CHANNEL_PATH", "channel", _path)
    resend_channels: tuple[str, ...] = setting("RESEND_CHANNELS", (), _list)
    failed_at_path: str = setting("FAILED_AT_PATH", "failedAt", _path)
    resend_max_age_seconds: int = setting("RESEND_MAX_AGE_SECONDS", 24 * 3600, minimum=0)
    skip_when: str = setting("SKIP_WHEN", "", _path)
    # Several orgs: where the org id sits in the payload; empty means one org per deployment.
    org_id_path: str = setting("ORG_ID_PATH", "", _path)
    # Pacing (see docs/pacing.md): off unless PACING_TABLE names the table of the shared limiter.
    pacing_table: str | None = setting("PACING_TABLE", None, _text)
    resend_rate_per_minute: float | None = setting("RESEND_RATE_PER_MINUTE", None, _rate)
    resend_burst: int = setting("RESEND_BURST", 1, minimum=1)
    rate_window_seconds: float = setting("RATE_WINDOW_SECONDS", 60.0, minimum=0.1)
    pacing_max_wait_seconds: float = setting("PACING_MAX_WAIT_SECONDS", 10.0, minimum=0.0)
    deferral_max_age_seconds: int = setting("DEFERRAL_MAX_AGE_SECONDS", 24 * 3600, minimum=60)
    adaptive_start_per_minute: float = setting("ADAPTIVE_START_PER_MINUTE", 60.0, minimum=1.0)
    adaptive_min_per_minute: float = setting("ADAPTIVE_MIN_PER_MINUTE", 6.0, minimum=0.1)
    adaptive_period_seconds: float = setting("ADAPTIVE_PERIOD_SECONDS", 30.0, minimum=0.1)
    shared_breaker_threshold: int = setting("SHARED_BREAKER_THRESHOLD", 5, minimum=1)
    shared_breaker_open_seconds: float = setting("SHARED_BREAKER_OPEN_SECONDS", 30.0, minimum=0.1)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        with _all_problems_at_once():
            loaded = {
                each.name: found.load(env) for each in fields(cls) if (found := source(each)) is not None
            }
            settings = cls(**loaded)
            _check_together(settings)
            return settings


def _check_together(settings: Settings) -> None:
    """The checks made once every value is read: across settings, and the bounds ``minimum`` cannot state."""
    if settings.capillary_timeout_seconds <= 0:
        _problem("CAPILLARY_TIMEOUT_SECONDS must be greater than 0")
    if settings.retry_cap_seconds > 43_200:
        _problem("RETRY_CAP_SECONDS must be at most 43200 (the SQS visibility limit)")
    rate = settings.resend_rate_per_minute
    if rate is not None and rate < settings.resend_burst:
        _problem("RESEND_BURST must not be larger than RESEND_RATE_PER_MINUTE")


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
