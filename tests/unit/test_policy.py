"""The resend policy's rules, one by one, and the parsing they rely on (property-based)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resender.events import Delivery, Notice, parse_time
from resender.policy import PolicyRule, ResendPolicy, normalise_reason
from resender.settings import DEFAULT_SKIP_REASONS, ConfigurationError, Settings
from tests.builders import REQUIRED_ENV

NOW = 1_800_000_000.0
ID = 1746061653596


def policy(**env: str) -> ResendPolicy:
    return ResendPolicy.from_settings(Settings.from_env({**REQUIRED_ENV, **env}), clock=lambda: NOW)


def notice(payload: object, envelope_time: float | None = None) -> Notice:
    return Notice(Delivery("r", "{}"), ID, payload, envelope_time)


def refused_by(rules: ResendPolicy, payload: object, envelope_time: float | None = None) -> str | None:
    refusal = rules.evaluate(notice(payload, envelope_time))
    return None if refusal is None else refusal.rule


# -- reason -------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", DEFAULT_SKIP_REASONS)
def test_each_default_status_is_skipped(status: str) -> None:
    refusal = policy().evaluate(notice({"messageId": ID, "reason": status}))

    assert refusal is not None
    assert refusal.rule is PolicyRule.REASON
    assert refusal.message.startswith("policy: reason: ")
    assert status in refusal.message


def test_the_default_list_is_the_nine_hopeless_statuses() -> None:
    # The contract as docs/configuration.md states it (the reason rule's default SKIP_REASONS), in its order.
    documented = (
        "HARD_BOUNCED,DND_BLOCKED,NDNC_BLOCKED,MARKED_UNSUBSCRIBED,MARKED_SPAM,"
        "INVALID,MOBILE_WHITELISTED_BLOCKED,ORG_DISABLED,BLOCKED"
    )
    assert Settings.from_env(REQUIRED_ENV).skip_reasons == tuple(documented.split(","))


@pytest.mark.parametrize(
    "reason",
    ["hard bounced", "Hard-Bounced", "  hard_bounced ", "HARD BOUNCED", "dnd-blocked", "marked  spam"],
)
def test_case_and_separator_forms_match(reason: str) -> None:
    assert refused_by(policy(), {"reason": reason}) == PolicyRule.REASON


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"reason": None},
        {"reason": ""},
        {"reason": "SOFT_BOUNCED"},
        {"reason": "NOT-DELIVERED"},
        {"reason": "hard bounce"},  # not the status's spelling
        {"reason": {"code": "HARD_BOUNCED"}},
        "not an object",
    ],
)
def test_other_or_missing_reasons_are_resent(payload: object) -> None:
    assert refused_by(policy(), payload) is None


def test_empty_skip_reasons_skips_no_reason() -> None:
    assert Settings.from_env({**REQUIRED_ENV, "SKIP_REASONS": ""}).skip_reasons == ()
    assert refused_by(policy(SKIP_REASONS=""), {"reason": "HARD_BOUNCED"}) is None


def test_skip_reasons_and_reason_path_are_configurable() -> None:
    rules = policy(SKIP_REASONS="SOFT_BOUNCED, credit limit exceeded", REASON_PATH="delivery.status")

    assert refused_by(rules, {"delivery": {"status": "soft-bounced"}}) == PolicyRule.REASON
    assert refused_by(rules, {"delivery": {"status": "CREDIT_LIMIT_EXCEEDED"}}) == PolicyRule.REASON
    assert refused_by(rules, {"delivery": {"status": "HARD_BOUNCED"}}) is None
    assert refused_by(rules, {"reason": "SOFT_BOUNCED"}) is None


@given(
    status=st.sampled_from(DEFAULT_SKIP_REASONS),
    flips=st.lists(st.booleans(), min_size=40, max_size=40),
    separator=st.sampled_from([" ", "-", "_", "  ", " - ", "--"]),
    padding=st.sampled_from(["", " ", "\t", "  "]),
)
def test_any_case_and_separator_spelling_of_a_default_status_is_skipped(
    status: str, flips: list[bool], separator: str, padding: str
) -> None:
    cased = "".join(char.lower() if flip else char for char, flip in zip(status, flips, strict=False))
    spelled = padding + cased.replace("_", separator) + padding

    assert normalise_reason(spelled) == normalise_reason(status)
    assert refused_by(policy(), {"reason": spelled}) == PolicyRule.REASON


@given(st.text(max_size=40))
def test_normalisation_is_idempotent_and_has_no_separator_runs(text: str) -> None:
    once = normalise_reason(text)

    assert normalise_reason(once) == once
    assert "__" not in once
    assert " " not in once
    assert "-" not in once


@given(st.text(alphabet=st.characters(codec="ascii"), max_size=30))
def test_a_reason_is_skipped_only_if_it_normalises_to_a_listed_status(text: str) -> None:
    listed = {normalise_reason(status) for status in DEFAULT_SKIP_REASONS}

    skipped = refused_by(policy(), {"reason": text}) == PolicyRule.REASON

    assert skipped == (normalise_reason(text) in listed)


# -- channel ------------------------------------------------------------------------------------


def test_every_channel_is_resent_by_default() -> None:
    assert refused_by(policy(), {"channel": "PUSH"}) is None


def test_resend_channels_limits_channels_ignoring_case() -> None:
    rules = policy(RESEND_CHANNELS="SMS, whatsapp")

    assert refused_by(rules, {"channel": "sms"}) is None
    assert refused_by(rules, {"channel": "WhatsApp"}) is None
    refusal = rules.evaluate(notice({"channel": "EMAIL"}))
    assert refusal is not None
    assert refusal.rule is PolicyRule.CHANNEL
    assert refusal.message.startswith("policy: channel: ")
    assert "EMAIL" in refusal.message


@pytest.mark.parametrize("payload", [{}, {"channel": None}, {"channel": ""}, {"channel": 7}])
def test_a_missing_channel_is_resent(payload: object) -> None:
    assert refused_by(policy(RESEND_CHANNELS="SMS"), payload) is None


def test_channel_path_is_configurable() -> None:
    rules = policy(RESEND_CHANNELS="SMS", CHANNEL_PATH="meta.channel")

    assert refused_by(rules, {"meta": {"channel": "EMAIL"}}) == PolicyRule.CHANNEL
    assert refused_by(rules, {"channel": "EMAIL"}) is None


# -- age ----------------------------------------------------------------------------------------


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")


@pytest.mark.parametrize(
    "failed_at",
    [
        iso(NOW - 86_401),
        NOW - 86_401,
        int((NOW - 86_401) * 1000),
        str(int(NOW - 90_000)),
        "2020-01-01T00:00:00+05:30",
    ],
)
def test_a_failure_older_than_the_limit_is_skipped(failed_at: object) -> None:
    refusal = policy().evaluate(notice({"failedAt": failed_at}))

    assert refusal is not None
    assert refusal.rule is PolicyRule.AGE
    assert refusal.message.startswith("policy: age: ")
    assert "failedAt in the payload" in refusal.message


@pytest.mark.parametrize("failed_at", [iso(NOW - 86_000), NOW - 10, int((NOW - 3600) * 1000)])
def test_a_recent_failure_is_resent(failed_at: object) -> None:
    assert refused_by(policy(), {"failedAt": failed_at}) is None


def test_without_a_payload_time_the_envelope_time_counts() -> None:
    refusal = policy().evaluate(notice({"messageId": ID}, envelope_time=NOW - 2 * 86_400))

    assert refusal is not None
    assert refusal.rule is PolicyRule.AGE
    assert "envelope" in refusal.message
    assert refused_by(policy(), {"messageId": ID}, envelope_time=NOW - 60) is None


def test_the_payload_time_wins_over_the_envelope_time() -> None:
    # Published late, but the failure itself is recent: resent.
    assert refused_by(policy(), {"failedAt": iso(NOW - 60)}, envelope_time=NOW - 3 * 86_400) is None


@pytest.mark.parametrize("failed_at", ["yesterday", "2026-13-45", True, {"at": 1}, iso(NOW + 3600)])
def test_an_unreadable_or_future_time_is_not_skipped(failed_at: object) -> None:
    assert refused_by(policy(), {"failedAt": failed_at}, envelope_time=NOW - 9 * 86_400) is None


def test_no_time_at_all_is_not_skipped() -> None:
    assert refused_by(policy(), {"messageId": ID}) is None


def test_zero_max_age_means_no_limit() -> None:
    assert refused_by(policy(RESEND_MAX_AGE_SECONDS="0"), {"failedAt": "2001-01-01T00:00:00Z"}) is None


def test_max_age_and_failed_at_path_are_configurable() -> None:
    rules = policy(RESEND_MAX_AGE_SECONDS="300", FAILED_AT_PATH="delivery.at")

    assert refused_by(rules, {"delivery": {"at": NOW - 301}}) == PolicyRule.AGE
    assert refused_by(rules, {"delivery": {"at": NOW - 299}}) is None


moments = st.datetimes(min_value=datetime(1975, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC))


@given(moments)
def test_iso_8601_text_reads_back_as_the_same_moment(moment: datetime) -> None:
    assert parse_time(moment.isoformat()) == pytest.approx(moment.timestamp(), abs=1e-6)
    assert parse_time(moment.isoformat().replace("+00:00", "Z")) == pytest.approx(
        moment.timestamp(), abs=1e-6
    )


@given(moments, st.integers(min_value=-12 * 60, max_value=14 * 60))
def test_an_offset_is_honoured(moment: datetime, minutes: int) -> None:
    shown = moment.astimezone(timezone(timedelta(minutes=minutes)))

    assert parse_time(shown.isoformat()) == pytest.approx(moment.timestamp(), abs=1e-6)


@given(moments)
def test_epoch_seconds_and_milliseconds_read_as_the_same_moment(moment: datetime) -> None:
    seconds = int(moment.timestamp())

    assert parse_time(seconds) == seconds
    assert parse_time(seconds * 1000) == seconds
    assert parse_time(str(seconds)) == seconds
    assert parse_time(str(seconds * 1000)) == seconds


@given(st.one_of(st.text(max_size=30), st.none(), st.booleans(), st.lists(st.integers(), max_size=2)))
def test_parse_time_never_raises(value: object) -> None:
    result = parse_time(value)

    assert result is None or isinstance(result, float)


# -- SKIP_WHEN ----------------------------------------------------------------------------------


def test_skip_when_true_skips_and_quotes_the_expression() -> None:
    expression = "customer.optedOut == `true`"
    refusal = policy(SKIP_WHEN=expression).evaluate(notice({"customer": {"optedOut": True}}))

    assert refusal is not None
    assert refusal.rule is PolicyRule.SKIP_WHEN
    assert refusal.message.startswith("policy: skipWhen: ")
    assert expression in refusal.message


@pytest.mark.parametrize(
    "payload", [{"customer": {"optedOut": False}}, {}, {"customer": "x"}, {"customer": {"optedOut": "yes"}}]
)
def test_skip_when_false_or_not_true_resends(payload: object) -> None:
    assert refused_by(policy(SKIP_WHEN="customer.optedOut"), payload) is None


def test_skip_when_that_fails_on_a_payload_resends() -> None:
    # length() of a number is a JMESPath type error at evaluation time.
    assert refused_by(policy(SKIP_WHEN="length(count) > `2`"), {"count": 5}) is None


@pytest.mark.parametrize(
    ("name", "value"),
    [("SKIP_WHEN", "channel =="), ("REASON_PATH", "a.["), ("CHANNEL_PATH", "]"), ("FAILED_AT_PATH", "(")],
)
def test_an_invalid_expression_refuses_to_start(name: str, value: str) -> None:
    with pytest.raises(ConfigurationError, match=name):
        Settings.from_env({**REQUIRED_ENV, name: value})


def test_every_invalid_expression_is_named_in_one_error() -> None:
    with pytest.raises(ConfigurationError) as raised:
        Settings.from_env(
            {**REQUIRED_ENV, "SKIP_WHEN": "a ==", "ORG_ID_PATH": "[", "RESEND_MAX_AGE_SECONDS": "-1"}
        )

    message = str(raised.value)
    assert "SKIP_WHEN" in message
    assert "ORG_ID_PATH" in message
    assert "RESEND_MAX_AGE_SECONDS" in message


def test_rules_are_applied_in_order_reason_first() -> None:
    rules = policy(RESEND_CHANNELS="SMS", SKIP_WHEN="`true`")

    assert refused_by(rules, {"reason": "BLOCKED", "channel": "EMAIL"}) == PolicyRule.REASON
    assert refused_by(rules, {"reason": "x", "channel": "EMAIL"}) == PolicyRule.CHANNEL
    assert refused_by(rules, {"reason": "x", "channel": "SMS"}) == PolicyRule.SKIP_WHEN
