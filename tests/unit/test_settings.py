"""Settings.from_env: required names, safe defaults, numbers checked, and a base URL that cannot leak credentials."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from requests.adapters import HTTPAdapter

from resender.settings import (
    CAPILLARY_CONNECT_ATTEMPTS,
    CAPILLARY_CONNECT_BACKOFF_SECONDS,
    RECORDING_MARGIN_SECONDS,
    ConfigurationError,
    ConfigurationRefusedError,
    Settings,
    StartupCheck,
    minimum_resend_seconds,
    validate_base_url,
)

# URL strategies are slow to draw from, so these properties run 100 examples each.
PROPERTY = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
REQUIRED = {
    "OUTCOMES_TABLE": "communication-outcomes",
    "CAPILLARY_SECRET_ID": "capillary/credentials",
    "CAPILLARY_BASE_URL": "https://eu.api.capillarytech.com",
}
LOOPBACK = {"localhost", "127.0.0.1", "::1"}
DLQ_URL = "https://sqs.us-east-1.amazonaws.com/123456789012/communication-failures-dlq"


def env(**overrides: str) -> dict[str, str]:
    return {**REQUIRED, **overrides}


def from_env(**overrides: str) -> Settings:
    return Settings.from_env(env(**overrides))


# --- required names ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(REQUIRED))
@pytest.mark.parametrize("value", [None, "", "   "], ids=["absent", "empty", "blank"])
def test_required_setting_missing_names_the_variable(name: str, value: str | None) -> None:
    environment = env()
    if value is None:
        del environment[name]
    else:
        environment[name] = value

    with pytest.raises(ConfigurationError, match=name):
        Settings.from_env(environment)


def test_required_settings_are_read() -> None:
    loaded = Settings.from_env(env(CAPILLARY_BASE_URL="https://eu.api.capillarytech.com/"))

    assert loaded.outcomes_table == REQUIRED["OUTCOMES_TABLE"]
    assert loaded.capillary_secret_id == REQUIRED["CAPILLARY_SECRET_ID"]
    assert loaded.capillary_base_url == "https://eu.api.capillarytech.com"


def test_reads_os_environ_when_no_mapping_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in env(OUTCOMES_TABLE="from-os-environ", MAX_RESEND_DEPTH="5").items():
        monkeypatch.setenv(name, value)

    loaded = Settings.from_env()

    assert loaded.outcomes_table == "from-os-environ"
    assert loaded.max_resend_depth == 5


# --- defaults ----------------------------------------------------------------------------------------------


def test_defaults() -> None:
    loaded = Settings.from_env(env())

    assert loaded.capillary_timeout_seconds == 10
    assert loaded.max_resend_depth == 2
    assert loaded.message_id_path == "messageId"
    assert loaded.idempotency_ttl_seconds == 604_800
    assert loaded.resend_concurrency == 10
    assert loaded.dead_letter_queue_url is None


@pytest.mark.parametrize(
    ("name", "attribute", "default"),
    [
        ("CAPILLARY_TIMEOUT_SECONDS", "capillary_timeout_seconds", 10),
        ("MAX_RESEND_DEPTH", "max_resend_depth", 2),
        ("MESSAGE_ID_PATH", "message_id_path", "messageId"),
        ("IDEMPOTENCY_TTL_SECONDS", "idempotency_ttl_seconds", 604_800),
        ("RESEND_CONCURRENCY", "resend_concurrency", 10),
        ("DEAD_LETTER_QUEUE_URL", "dead_letter_queue_url", None),
    ],
)
def test_empty_value_means_default(name: str, attribute: str, default: Any) -> None:
    assert getattr(from_env(**{name: ""}), attribute) == default


@pytest.mark.parametrize(
    ("name", "raw", "attribute", "expected"),
    [
        ("CAPILLARY_TIMEOUT_SECONDS", "2.5", "capillary_timeout_seconds", 2.5),
        ("CAPILLARY_TIMEOUT_SECONDS", " 3 ", "capillary_timeout_seconds", 3.0),
        ("MAX_RESEND_DEPTH", "0", "max_resend_depth", 0),
        ("MAX_RESEND_DEPTH", "5", "max_resend_depth", 5),
        ("MESSAGE_ID_PATH", "data.communication.id", "message_id_path", "data.communication.id"),
        ("IDEMPOTENCY_TTL_SECONDS", "86400", "idempotency_ttl_seconds", 86_400),
        ("RESEND_CONCURRENCY", "1", "resend_concurrency", 1),
        ("RESEND_CONCURRENCY", "32", "resend_concurrency", 32),
        ("DEAD_LETTER_QUEUE_URL", DLQ_URL, "dead_letter_queue_url", DLQ_URL),
    ],
)
def test_values_are_read(name: str, raw: str, attribute: str, expected: Any) -> None:
    value = getattr(from_env(**{name: raw}), attribute)

    assert value == expected
    assert type(value) is type(expected)


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("CAPILLARY_TIMEOUT_SECONDS", "ten"),
        ("CAPILLARY_TIMEOUT_SECONDS", "0"),
        ("CAPILLARY_TIMEOUT_SECONDS", "-1"),
        ("CAPILLARY_TIMEOUT_SECONDS", "-inf"),
        ("CAPILLARY_TIMEOUT_SECONDS", "10s"),
        ("MAX_RESEND_DEPTH", "two"),
        ("MAX_RESEND_DEPTH", "1.5"),
        ("MAX_RESEND_DEPTH", "-1"),
        ("IDEMPOTENCY_TTL_SECONDS", "7d"),
        ("IDEMPOTENCY_TTL_SECONDS", "0"),
        ("IDEMPOTENCY_TTL_SECONDS", "1e6"),
        ("RESEND_CONCURRENCY", "0"),
        ("RESEND_CONCURRENCY", "-4"),
        ("RESEND_CONCURRENCY", "many"),
        ("SECRET_MAX_AGE_SECONDS", "-1"),
        ("CIRCUIT_BREAKER_THRESHOLD", "0"),
        ("MAX_BODY_BYTES", "0"),
        ("MAX_TEXT_CHARS", "10"),
        ("RETRY_CAP_SECONDS", "43201"),
    ],
)
def test_bad_numbers_are_rejected_with_the_name(name: str, raw: str) -> None:
    with pytest.raises(ConfigurationError, match=name):
        from_env(**{name: raw})


@pytest.mark.parametrize("raw", ["nan", "NaN", "inf", "Infinity", "1e400"])
def test_non_finite_timeout_is_rejected(raw: str) -> None:
    with pytest.raises(ConfigurationError, match="CAPILLARY_TIMEOUT_SECONDS"):
        from_env(CAPILLARY_TIMEOUT_SECONDS=raw)


def test_bad_number_message_quotes_little_of_the_value() -> None:
    raw = "x" * 200

    with pytest.raises(ConfigurationError) as caught:
        from_env(MAX_RESEND_DEPTH=raw)

    assert len(str(caught.value)) < 120


# --- base URL ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://eu.api.capillarytech.com", "https://eu.api.capillarytech.com"),
        ("https://eu.api.capillarytech.com/", "https://eu.api.capillarytech.com"),
        ("https://eu.api.capillarytech.com///", "https://eu.api.capillarytech.com"),
        ("  https://eu.api.capillarytech.com/  ", "https://eu.api.capillarytech.com"),
        ("https://eu.api.capillarytech.com:8443/", "https://eu.api.capillarytech.com:8443"),
        ("https://gw.example.com/capillary/", "https://gw.example.com/capillary"),
        ("https://10.0.0.5", "https://10.0.0.5"),
        ("http://localhost", "http://localhost"),
        ("http://localhost:8080/", "http://localhost:8080"),
        ("http://LOCALHOST:8080", "http://LOCALHOST:8080"),
        ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
        ("http://[::1]:5000/", "http://[::1]:5000"),
        ("https://localhost:8443", "https://localhost:8443"),
    ],
)
def test_accepted_base_urls(url: str, expected: str) -> None:
    assert validate_base_url(url) == expected
    assert from_env(CAPILLARY_BASE_URL=url).capillary_base_url == expected


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com",
        "http://eu.api.capillarytech.com/",
        "http://localhost.example.com",
        "http://127.0.0.1.nip.io",
        "http://10.0.0.5",
        "http://[::2]",
        "http://0.0.0.0:8080",
        "ftp://eu.api.capillarytech.com",
        "ftp://localhost",
        "file:///etc/passwd",
        "ws://localhost",
        "eu.api.capillarytech.com",
        "//eu.api.capillarytech.com",
        "https://",
        "https:///v2",
        "http://:8080",
        "https://eu.api.capillarytech.com/?region=eu",
        "https://eu.api.capillarytech.com/#frag",
        "<https://eu.api.capillarytech.com>",
    ],
)
def test_rejected_base_urls(url: str) -> None:
    with pytest.raises(ConfigurationError, match="CAPILLARY_BASE_URL"):
        validate_base_url(url)
    with pytest.raises(ConfigurationError, match="CAPILLARY_BASE_URL"):
        from_env(CAPILLARY_BASE_URL=url)


@pytest.mark.parametrize(
    "url",
    [
        "https://user:pw@eu.api.capillarytech.com",
        "https://user:pw@eu.api.capillarytech.com/",
        "https://:pw@eu.api.capillarytech.com",
        "http://user:pw@localhost:8080",
        "http://user:pw@example.com",
    ],
)
def test_url_with_credentials_is_rejected_without_echoing_them(url: str) -> None:
    with pytest.raises(ConfigurationError, match="CAPILLARY_BASE_URL") as caught:
        from_env(CAPILLARY_BASE_URL=url)

    assert "pw" not in str(caught.value)
    assert "pw" not in repr(caught.value)
    assert caught.value.__cause__ is None


def test_url_with_user_only_is_rejected() -> None:
    with pytest.raises(ConfigurationError, match="credentials"):
        validate_base_url("https://store.server@eu.api.capillarytech.com")


@pytest.mark.parametrize(
    "url", ["https://eu.api.capillarytech.com:abc", "https://eu.api.capillarytech.com:99999"]
)
def test_url_with_invalid_port_is_rejected(url: str) -> None:
    with pytest.raises(ConfigurationError, match="CAPILLARY_BASE_URL"):
        validate_base_url(url)


# --- properties --------------------------------------------------------------------------------------------

# hypothesis.provisional.domains() is slow to draw from; labels of letters, digits and hyphens do the job.
labels = st.from_regex(r"[a-zA-Z0-9]([a-zA-Z0-9-]{0,14}[a-zA-Z0-9])?", fullmatch=True)
domains = st.builds(
    lambda names, tld: ".".join([*names, tld]),
    st.lists(labels, min_size=0, max_size=3),
    st.sampled_from(["com", "net", "io", "in", "cn", "internal", "local", "localdomain", "localhost"]),
)
# Hosts that look local but are not on the contract's list.
NEAR_LOOPBACK = [
    "localhost.example.com",
    "localhost.localdomain",
    "localhost6",
    "127.0.0.1.nip.io",
    "127.0.0.2",
    "127.1",
    "0.0.0.0",
    "[::ffff:127.0.0.1]",
    "[0:0:0:0:0:0:0:1]",
    "eu.api.capillarytech.com",
]
non_loopback_hosts = st.one_of(
    domains,
    st.sampled_from(NEAR_LOOPBACK),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(lambda address: f"[{address}]"),
).filter(lambda host: host.strip("[]").lower() not in LOOPBACK and host.lower() != "localhost")
ports = st.none() | st.integers(min_value=1, max_value=65535)
paths = st.sampled_from(["", "/", "/api", "/v2/"])


def url(scheme: str, host: str, port: int | None, path: str) -> str:
    return f"{scheme}://{host}{'' if port is None else f':{port}'}{path}"


@PROPERTY
@given(non_loopback_hosts, ports, paths, st.sampled_from(["http", "HTTP", "Http"]))
def test_property_http_to_any_non_loopback_host_is_rejected(
    host: str, port: int | None, path: str, scheme: str
) -> None:
    with pytest.raises(ConfigurationError, match="CAPILLARY_BASE_URL"):
        validate_base_url(url(scheme, host, port, path))


@PROPERTY
@given(non_loopback_hosts, ports, paths)
def test_property_https_to_any_host_is_accepted_without_trailing_slash(
    host: str, port: int | None, path: str
) -> None:
    raw = url("https", host, port, path)

    accepted = validate_base_url(raw)

    assert accepted == raw.rstrip("/")
    assert not accepted.endswith("/")
    assert validate_base_url(accepted) == accepted


@PROPERTY
@given(
    st.sampled_from(["localhost", "127.0.0.1", "[::1]"]),
    ports,
    paths,
    st.sampled_from(["http", "https"]),
)
def test_property_loopback_is_accepted_over_http_and_https(
    host: str, port: int | None, path: str, scheme: str
) -> None:
    raw = url(scheme, host, port, path)

    assert validate_base_url(raw) == raw.rstrip("/")


@PROPERTY
@given(
    st.sampled_from(["https", "http"]),
    st.one_of(domains, st.sampled_from(["localhost", "127.0.0.1", "[::1]"])),
    st.from_regex(r"[A-Za-z0-9._~-]{0,12}", fullmatch=True),
    st.from_regex(r"[A-Za-z0-9._~!$&'()*+,;=%-]{1,16}", fullmatch=True),
)
def test_property_credentials_in_url_are_rejected_and_never_echoed(
    scheme: str, host: str, user: str, password: str
) -> None:
    secret = f"SeCrEt-{password}"
    with pytest.raises(ConfigurationError) as caught:
        validate_base_url(f"{scheme}://{user}:{secret}@{host}/")

    assert secret not in str(caught.value)
    assert "SeCrEt" not in repr(caught.value)


def test_ipv6_loopback_spellings_other_than_the_canonical_one_are_not_trusted() -> None:
    # The contract lists exactly localhost, 127.0.0.1 and [::1]; anything else needs https.
    assert ipaddress.ip_address("0:0:0:0:0:0:0:1").is_loopback
    with pytest.raises(ConfigurationError):
        validate_base_url("http://[0:0:0:0:0:0:0:1]:8080")


def test_every_bad_setting_is_named_in_one_message() -> None:
    environ = {
        "CAPILLARY_BASE_URL": "http://capillary.example.com",
        "CAPILLARY_TIMEOUT_SECONDS": "soon",
        "RESEND_CONCURRENCY": "0",
    }

    with pytest.raises(ConfigurationError) as caught:
        Settings.from_env(environ)

    message = str(caught.value)
    for name in (
        "OUTCOMES_TABLE",
        "CAPILLARY_SECRET_ID",
        "CAPILLARY_BASE_URL",
        "CAPILLARY_TIMEOUT_SECONDS",
        "RESEND_CONCURRENCY",
    ):
        assert name in message
    assert "\n" not in message


def test_a_single_bad_setting_is_reported_alone() -> None:
    environ = {"OUTCOMES_TABLE": "t", "CAPILLARY_SECRET_ID": "s", "CAPILLARY_BASE_URL": "https://a.example"}

    with pytest.raises(ConfigurationError) as caught:
        Settings.from_env({**environ, "MAX_RESEND_DEPTH": "-1"})

    assert str(caught.value) == "MAX_RESEND_DEPTH must be at least 0"


# --- the budget of one resend, and the start-up refusal ----------------------------------------------------


def test_connect_attempts_in_the_budget_are_the_ones_the_client_makes() -> None:
    from resender.capillary import build_session

    adapter = build_session(1).get_adapter("https://eu.api.capillarytech.com")
    assert isinstance(adapter, HTTPAdapter)
    retry = adapter.max_retries
    assert retry.connect is not None
    assert 1 + retry.connect == CAPILLARY_CONNECT_ATTEMPTS
    assert retry.read == 0  # a resend is never repeated after it may have been sent


@pytest.mark.parametrize("timeout", [0.5, 1.0, 2.0, 10.0, 60.0])
def test_minimum_resend_covers_two_requests_a_token_request_and_recording(timeout: float) -> None:
    one_request = CAPILLARY_CONNECT_ATTEMPTS * timeout + CAPILLARY_CONNECT_BACKOFF_SECONDS + timeout
    budget = minimum_resend_seconds(from_env(CAPILLARY_TIMEOUT_SECONDS=str(timeout)))
    assert budget == pytest.approx(3 * one_request + RECORDING_MARGIN_SECONDS)
    assert budget > 12 * timeout


def test_start_up_check_accepts_a_timeout_with_room_for_one_resend() -> None:
    settings = from_env(CAPILLARY_TIMEOUT_SECONDS="2")
    check = StartupCheck(settings)
    check.check(minimum_resend_seconds(settings))
    check.check(0.5)  # a later, nearly spent invocation is not a configuration problem


def test_start_up_check_refuses_and_keeps_refusing_naming_the_settings_to_change() -> None:
    settings = from_env(CAPILLARY_TIMEOUT_SECONDS="10")
    check = StartupCheck(settings)
    with pytest.raises(ConfigurationRefusedError) as refused:
        check.check(30.0)
    message = str(refused.value)
    assert "FunctionTimeout" in message and "CAPILLARY_TIMEOUT_SECONDS" in message
    assert f"{minimum_resend_seconds(settings):g} s" in message
    with pytest.raises(ConfigurationRefusedError):
        check.check(900.0)  # the verdict of the first invocation stands for the container


# --- pacing ------------------------------------------------------------------------------------------------


def test_pacing_is_off_and_the_rate_adaptive_by_default() -> None:
    settings = from_env()

    assert settings.pacing_table is None
    assert settings.resend_rate_per_minute is None
    assert settings.resend_burst == 1
    assert settings.deferral_max_age_seconds == 24 * 3600
    assert settings.pacing_max_wait_seconds == 10.0


def test_pacing_settings_are_read() -> None:
    settings = from_env(
        PACING_TABLE="pacing",
        RESEND_RATE_PER_MINUTE="95.5",
        RESEND_BURST="3",
        DEFERRAL_MAX_AGE_SECONDS="3600",
        SHARED_BREAKER_THRESHOLD="7",
        SHARED_BREAKER_OPEN_SECONDS="12.5",
    )

    assert (settings.pacing_table, settings.resend_rate_per_minute, settings.resend_burst) == (
        "pacing",
        95.5,
        3,
    )
    assert (settings.shared_breaker_threshold, settings.shared_breaker_open_seconds) == (7, 12.5)
    assert settings.deferral_max_age_seconds == 3600


@pytest.mark.parametrize("rate", ["0", "0.5", "-10", "fast", "nan"])
def test_a_rate_below_one_a_minute_is_refused(rate: str) -> None:
    with pytest.raises(ConfigurationError, match="RESEND_RATE_PER_MINUTE"):
        from_env(RESEND_RATE_PER_MINUTE=rate)


def test_a_burst_larger_than_the_rate_is_refused_with_the_other_problems() -> None:
    with pytest.raises(ConfigurationError) as caught:
        from_env(RESEND_RATE_PER_MINUTE="2", RESEND_BURST="5", DEFERRAL_MAX_AGE_SECONDS="10")

    message = str(caught.value)
    assert "RESEND_BURST must not be larger than RESEND_RATE_PER_MINUTE" in message
    assert "DEFERRAL_MAX_AGE_SECONDS" in message
