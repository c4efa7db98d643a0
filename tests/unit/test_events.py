"""From a Lambda event to a communication id: the four shapes, the id rules, and poison that never crashes."""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from resender.events import (
    Delivery,
    EventSource,
    MessageIdParser,
    Notice,
    Poison,
    UnsupportedEventError,
    parse_event,
)
from resender.settings import ConfigurationError
from tests.builders import (
    QUEUE_ARN,
    TOPIC_ARN,
    eventbridge_event,
    failure,
    sns_envelope,
    sns_event,
    sqs_event,
    sqs_record,
)

MESSAGE_ID = 1746061653596
INT64_MAX = 2**63 - 1
PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# For small input spaces (chains of at most 7 layers of 2 kinds), fewer examples cover them.
SMALL_PROPERTY = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ASCII_DIGITS = re.compile(r"[0-9]+")


def parse(body: str, parser: MessageIdParser | None = None) -> Notice | Poison:
    return (parser or MessageIdParser()).parse(Delivery(record_id="record-1", body=body))


def parsed_id(body: str, parser: MessageIdParser | None = None) -> int:
    result = parse(body, parser)
    assert isinstance(result, Notice), f"expected a Notice, got {result!r}"[:500]
    return result.message_id


def poison_reason(body: str, parser: MessageIdParser | None = None) -> str:
    result = parse(body, parser)
    assert isinstance(result, Poison), f"expected Poison, got {result!r}"[:500]
    assert result.reason.strip()
    return result.reason


def outcome(result: Notice | Poison) -> tuple[str, int | str]:
    """What a parse decided, without the delivery it was about."""
    if isinstance(result, Notice):
        return ("notice", result.message_id)
    return ("poison", result.reason)


def body_with_id(value: Any) -> str:
    return json.dumps({"messageId": value, "channel": "SMS"})


def one_delivery(event: dict[str, Any]) -> tuple[EventSource, Delivery]:
    source, deliveries = parse_event(event)
    assert len(deliveries) == 1
    return source, deliveries[0]


# --- the four shapes -------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [MESSAGE_ID, str(MESSAGE_ID)], ids=["integer", "digit-string"])
def test_sqs_body_is_the_failure_itself(value: object) -> None:
    source, delivery = one_delivery(sqs_event(failure(value)))

    assert source is EventSource.SQS
    assert parsed_id(delivery.body) == MESSAGE_ID


@pytest.mark.parametrize("value", [MESSAGE_ID, str(MESSAGE_ID)], ids=["integer", "digit-string"])
def test_sns_envelope_inside_sqs_body_yields_the_inner_id(value: object) -> None:
    sns_uuid = str(uuid.uuid4())
    _, delivery = one_delivery(sqs_event(sns_envelope(failure(value), sns_message_id=sns_uuid)))

    result = parse(delivery.body)

    assert isinstance(result, Notice)
    assert result.message_id == MESSAGE_ID


def test_sns_envelope_whose_message_lacks_an_id_is_poison_not_the_envelope_uuid() -> None:
    body = sns_envelope(json.dumps({"channel": "SMS", "reason": "undelivered"}))

    reason = poison_reason(body)

    assert "missing" in reason


@pytest.mark.parametrize("sns_message_id", ["1746061653597", "42", "9223372036854775807"])
def test_numeric_looking_envelope_message_id_is_never_taken(sns_message_id: str) -> None:
    without_id = sns_envelope(json.dumps({"channel": "SMS"}), sns_message_id=sns_message_id)
    with_id = sns_envelope(failure(MESSAGE_ID), sns_message_id=sns_message_id)

    assert "missing" in poison_reason(without_id)
    assert parsed_id(with_id) == MESSAGE_ID


def test_direct_sns_invocation_reads_the_message() -> None:
    event = sns_event(failure(MESSAGE_ID))
    sns = event["Records"][0]["Sns"]

    source, delivery = one_delivery(event)

    assert source is EventSource.SNS
    assert delivery.record_id == sns["MessageId"]
    assert delivery.body == sns["Message"]
    assert delivery.source_arn == TOPIC_ARN
    assert delivery.receipt_handle is None
    assert parsed_id(delivery.body) == MESSAGE_ID


def test_direct_sns_with_numeric_sns_message_id_and_no_inner_id_is_poison() -> None:
    event = sns_event(json.dumps({"channel": "SMS"}))
    event["Records"][0]["Sns"]["MessageId"] = "1746061653597"

    _, delivery = one_delivery(event)

    assert "missing" in poison_reason(delivery.body)


def test_direct_sns_carrying_an_eventbridge_event() -> None:
    _, delivery = one_delivery(sns_event(eventbridge_event({"messageId": MESSAGE_ID})))

    assert parsed_id(delivery.body) == MESSAGE_ID


@pytest.mark.parametrize("value", [MESSAGE_ID, str(MESSAGE_ID)], ids=["integer", "digit-string"])
def test_eventbridge_detail_in_sqs_body(value: object) -> None:
    _, delivery = one_delivery(sqs_event(eventbridge_event({"messageId": value, "channel": "EMAIL"})))

    assert parsed_id(delivery.body) == MESSAGE_ID


def test_eventbridge_without_id_in_detail_is_poison() -> None:
    # The event's own "id" is EventBridge's, and an id beside "detail" is outside the failure.
    event = json.loads(eventbridge_event({"channel": "SMS"}))
    event["messageId"] = MESSAGE_ID

    assert "missing" in poison_reason(json.dumps(event))


def test_eventbridge_inside_sns_envelope_inside_sqs() -> None:
    body = sns_envelope(eventbridge_event({"messageId": str(MESSAGE_ID)}), sns_message_id="77")
    _, delivery = one_delivery(sqs_event(body))

    assert parsed_id(delivery.body) == MESSAGE_ID


@pytest.mark.parametrize(
    ("message", "keywords"),
    [
        ("not json at all", ("JSON",)),
        ("", ("empty",)),
        ("   ", ("empty",)),
        (json.dumps({"messageId": MESSAGE_ID}) + "x", ("JSON",)),
    ],
)
def test_broken_sns_message_inside_envelope_is_poison(message: str, keywords: tuple[str, ...]) -> None:
    reason = poison_reason(sns_envelope(message, sns_message_id="123"))

    assert any(word.lower() in reason.lower() for word in keywords), reason


def test_sns_envelope_whose_message_is_not_a_string_is_poison() -> None:
    envelope = json.loads(sns_envelope("{}"))
    envelope["Message"] = {"messageId": MESSAGE_ID}

    reason = poison_reason(json.dumps(envelope))

    assert "string" in reason


# --- the id itself -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [1, 7, MESSAGE_ID, INT64_MAX])
@pytest.mark.parametrize("as_string", [False, True])
def test_valid_ids(value: int, as_string: bool) -> None:
    assert parsed_id(body_with_id(str(value) if as_string else value)) == value


@pytest.mark.parametrize(
    ("raw_value", "keywords"),
    [
        ("null", ("missing", "null")),
        ("true", ("boolean",)),
        ("false", ("boolean",)),
        ("1.5", ("decimal", "not an integer")),
        ("5.0", ("decimal", "not an integer")),
        ("1e3", ("decimal", "not an integer")),
        ("1746061653596.0", ("decimal", "not an integer")),
        ("-1", ("greater than 0", "positive")),
        ("-1746061653596", ("greater than 0", "positive")),
        ("0", ("greater than 0", "positive")),
        ("-0", ("greater than 0", "positive")),
        (str(2**63), ("64-bit", "int64")),
        (str(2**64), ("64-bit", "int64")),
        ('"0"', ("greater than 0", "positive")),
        (f'"{2**63}"', ("64-bit", "int64")),
        ('"12ab"', ("digits",)),
        ('" 12"', ("digits",)),
        ('"12 "', ("digits",)),
        ('"12\\n"', ("digits",)),
        ('"+12"', ("digits",)),
        ('"-12"', ("digits",)),
        ('"1_000"', ("digits",)),
        ('"0x1F"', ("digits",)),
        ('"1.0"', ("digits",)),
        ('"\u0661\u0662"', ("digits",)),  # Arabic-Indic 12
        ('"\uff11\uff12"', ("digits",)),  # full-width 12
        ('""', ("digits",)),
        ('{"id": 5}', ("object",)),
        ("[5]", ("array",)),
        ("[]", ("array",)),
        ("NaN", ("JSON",)),
        ("Infinity", ("JSON",)),
        ("-Infinity", ("JSON",)),
    ],
)
def test_poison_ids(raw_value: str, keywords: tuple[str, ...]) -> None:
    reason = poison_reason('{"messageId": ' + raw_value + ', "channel": "SMS"}')

    assert any(word.lower() in reason.lower() for word in keywords), reason


@pytest.mark.parametrize(
    ("body", "keywords"),
    [
        ("not json", ("JSON",)),
        ("{'messageId': 1}", ("JSON",)),
        ('{"messageId": 1', ("JSON",)),
        ("", ("empty",)),
        ("   \n\t ", ("empty",)),
        ("{}", ("missing",)),
        ('{"MessageId": 5}', ("missing",)),
        ("null", ("missing",)),
        ("5", ("missing",)),
        ('"1746061653596"', ("missing",)),
        ("[1746061653596]", ("missing",)),
        ("NaN", ("JSON",)),
    ],
)
def test_poison_bodies(body: str, keywords: tuple[str, ...]) -> None:
    reason = poison_reason(body)

    assert any(word.lower() in reason.lower() for word in keywords), reason


def test_poison_and_notice_keep_their_delivery() -> None:
    good = Delivery(record_id="a", body=failure(MESSAGE_ID), receive_count=3, receipt_handle="h")
    bad = Delivery(record_id="b", body="nope")
    parser = MessageIdParser()

    assert parser.parse(good) == Notice(good, MESSAGE_ID)
    result = parser.parse(bad)
    assert isinstance(result, Poison)
    assert result.delivery is bad


def test_deeply_nested_json_is_poison_not_a_crash() -> None:
    for body in ("[" * 100_000, "[" * 100_000 + "]" * 100_000, '{"a":' * 50_000 + "1" + "}" * 50_000):
        reason = poison_reason(body, MessageIdParser(max_body_bytes=1_000_000))
        assert "nested" in reason or "JSON" in reason, reason


def test_deeply_nested_sns_message_is_poison_not_a_crash() -> None:
    reason = poison_reason(sns_envelope("[" * 100_000), MessageIdParser(max_body_bytes=1_000_000))

    assert "nested" in reason or "JSON" in reason, reason


@pytest.mark.parametrize(
    "body",
    [
        body_with_id("1" * 5000),
        body_with_id("9" * 20),
        '{"messageId": ' + "1" * 5000 + "}",
        '{"messageId": ' + "1" * 4000 + "}",
        '{"messageId": -' + "1" * 5000 + "}",
    ],
    ids=["5000-digit-string", "20-digit-string", "5000-digit-int", "4000-digit-int", "5000-digit-negative"],
)
def test_huge_numbers_are_poison_not_a_crash(body: str) -> None:
    poison_reason(body)


def test_body_size_limit_is_in_bytes_and_inclusive() -> None:
    limit = 300
    parser = MessageIdParser(max_body_bytes=limit)
    base = failure(MESSAGE_ID, note="")

    def padded(size: int) -> str:
        room = size - len(base.encode("utf-8"))
        return base.replace('"note": ""', '"note": "' + "x" * room + '"')

    at_limit = padded(limit)
    assert len(at_limit.encode("utf-8")) == limit
    assert parsed_id(at_limit, parser) == MESSAGE_ID

    over = padded(limit + 1)
    reason = poison_reason(over, parser)
    assert "bytes" in reason
    assert str(limit) in reason

    # 2-byte characters: fewer characters than the limit, more bytes than it.
    multibyte = base.replace('"note": ""', '"note": "' + "\u00e9" * 200 + '"')
    assert len(multibyte) <= limit < len(multibyte.encode("utf-8"))
    assert "bytes" in poison_reason(multibyte, parser)


def test_default_body_limit_is_256_kib() -> None:
    base = failure(MESSAGE_ID, note="")
    room = 256 * 1024 - len(base.encode("utf-8"))
    at_limit = base.replace('"note": ""', '"note": "' + "x" * room + '"')

    assert parsed_id(at_limit) == MESSAGE_ID
    assert "bytes" in poison_reason(at_limit.replace('"note": "', '"note": "x'))


# --- a configurable place for the id -----------------------------------------------------------------------


def test_custom_path_nested_fields() -> None:
    parser = MessageIdParser("data.communication.id")
    body = json.dumps({"messageId": 1, "data": {"communication": {"id": str(MESSAGE_ID)}}})

    assert parsed_id(body, parser) == MESSAGE_ID
    reason = poison_reason(json.dumps({"messageId": MESSAGE_ID, "data": {}}), parser)
    assert "missing" in reason
    assert "data.communication.id" in reason


def test_custom_path_list_index() -> None:
    parser = MessageIdParser("ids[0]")

    assert parsed_id(json.dumps({"ids": [MESSAGE_ID, 2]}), parser) == MESSAGE_ID
    assert "missing" in poison_reason(json.dumps({"ids": []}), parser)
    assert "missing" in poison_reason(json.dumps({"ids": {"0": MESSAGE_ID}}), parser)
    assert "boolean" in poison_reason(json.dumps({"ids": [True]}), parser)


def test_custom_path_applies_after_unwrapping() -> None:
    parser = MessageIdParser("data.communication.id")
    inner = json.dumps({"data": {"communication": {"id": MESSAGE_ID}}})

    assert parsed_id(sns_envelope(inner, sns_message_id="5"), parser) == MESSAGE_ID
    assert parsed_id(eventbridge_event(json.loads(inner)), parser) == MESSAGE_ID


@pytest.mark.parametrize("path", ["", "messageId[", "a..b", "foo)", "`unclosed", "[?"])
def test_invalid_jmespath_is_a_configuration_error(path: str) -> None:
    with pytest.raises(ConfigurationError, match="MESSAGE_ID_PATH"):
        MessageIdParser(path)


# --- parse_event -------------------------------------------------------------------------------------------


def test_sqs_record_fields() -> None:
    record = sqs_record(failure(MESSAGE_ID), receive_count=4, record_id="c0ffee-record")

    source, delivery = one_delivery({"Records": [record]})

    assert source is EventSource.SQS
    assert delivery == Delivery(
        record_id="c0ffee-record",
        body=failure(MESSAGE_ID),
        receive_count=4,
        receipt_handle="handle-c0ffee-record",
        source_arn=QUEUE_ARN,
        first_seen_at=1746061700.0,  # the record's SentTimestamp: when the failure reached the queue
    )


def test_a_deferred_copy_carries_its_deferral_count_first_seen_time_and_other_attributes() -> None:
    record = sqs_record(failure(MESSAGE_ID))
    record["messageAttributes"] = {
        "resenderDeferrals": {"stringValue": "3", "dataType": "Number"},
        "resenderFirstSeenAt": {"stringValue": "1746061600123", "dataType": "Number"},
        "tenant": {"stringValue": "brand-a", "dataType": "String"},
        "blob": {"binaryValue": "AAE=", "dataType": "Binary"},
    }

    _, delivery = one_delivery({"Records": [record]})

    assert delivery.deferrals == 3
    assert delivery.first_seen_at == 1746061600.123
    assert ("tenant", "String", "brand-a") in delivery.message_attributes
    assert all(name != "blob" for name, _, _ in delivery.message_attributes)


def test_sqs_batch_keeps_order_and_every_record() -> None:
    bodies = [failure(n) for n in (3, 1, 2)]

    source, deliveries = parse_event(sqs_event(*bodies, receive_count=2))

    assert source is EventSource.SQS
    assert [d.body for d in deliveries] == bodies
    assert {d.receive_count for d in deliveries} == {2}
    assert len({d.record_id for d in deliveries}) == 3


@pytest.mark.parametrize(
    ("attributes", "expected"),
    [(None, 1), ({}, 1), ({"ApproximateReceiveCount": "7"}, 7), ({"ApproximateReceiveCount": "0"}, 1)]
    + [({"ApproximateReceiveCount": raw}, 1) for raw in ("", "abc", "-3", "2.5")],
)
def test_sqs_receive_count_is_read_or_defaults_to_one(
    attributes: dict[str, str] | None, expected: int
) -> None:
    record = sqs_record(failure(MESSAGE_ID))
    if attributes is None:
        del record["attributes"]
    else:
        record["attributes"] = attributes

    _, delivery = one_delivery({"Records": [record]})

    assert delivery.receive_count == expected


def test_sqs_receive_count_with_non_ascii_digit_does_not_crash() -> None:
    record = sqs_record(failure(MESSAGE_ID))
    record["attributes"]["ApproximateReceiveCount"] = "\u00b2"

    _, delivery = one_delivery({"Records": [record]})

    assert delivery.receive_count == 1


@pytest.mark.parametrize("body", [None, 42, {"messageId": MESSAGE_ID}])
def test_sqs_record_with_non_string_body_becomes_poison(body: object) -> None:
    record = sqs_record("")
    record["body"] = body

    _, delivery = one_delivery({"Records": [record]})

    assert delivery.body == ""
    assert "empty" in poison_reason(delivery.body)


@pytest.mark.parametrize(
    "event",
    [
        {},
        {"Records": []},
        {"Records": None},
        {"Records": "not a list"},
        {"Records": {"0": sqs_record("{}")}},
        {"detail-type": "x", "detail": {"messageId": 1}},
    ],
    ids=["empty", "no-records", "null-records", "string-records", "dict-records", "raw-eventbridge"],
)
def test_event_without_records_is_unsupported(event: dict[str, Any]) -> None:
    with pytest.raises(UnsupportedEventError, match="Records"):
        parse_event(event)


def test_mixed_sources_are_unsupported() -> None:
    mixed = {"Records": sqs_event(failure(1))["Records"] + sns_event(failure(2))["Records"]}

    with pytest.raises(UnsupportedEventError, match="mix"):
        parse_event(mixed)


@pytest.mark.parametrize(
    "record",
    [{"eventSource": "aws:kinesis"}, {"eventSource": "aws:dynamodb"}, "a string", 42, None, {}],
)
def test_records_from_other_sources_are_unsupported(record: object) -> None:
    with pytest.raises(UnsupportedEventError):
        parse_event({"Records": [record]})


# --- properties --------------------------------------------------------------------------------------------

valid_ids = st.integers(min_value=1, max_value=INT64_MAX)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


def is_valid_id(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= INT64_MAX


def is_ascii_digit_string(value: object) -> bool:
    return isinstance(value, str) and ASCII_DIGITS.fullmatch(value) is not None


@PROPERTY
@given(valid_ids, st.booleans())
def test_property_every_positive_int64_round_trips(message_id: int, as_string: bool) -> None:
    assert parsed_id(body_with_id(str(message_id) if as_string else message_id)) == message_id


# Characters that a lenient parser (int(), str.isdigit(), a regex with \s or \d) would let through.
JUNK = [" ", "\t", "\n", "+", "-", ".", "_", "x", "e", "\u0661", "\uff11", "\u00b2", "\x00"]
digit_strings_with_junk = st.builds(
    lambda digits, junk, where: digits[:where] + junk + digits[where:],
    st.from_regex(r"[0-9]{1,19}", fullmatch=True),
    st.sampled_from(JUNK),
    st.integers(min_value=0, max_value=19),
)
# Every branch weighs the same in one_of, so each kind of wrong value gets its share of examples.
invalid_ids = st.one_of(
    st.booleans(),
    st.none(),
    st.floats(),
    st.integers(max_value=0),
    st.integers(min_value=2**63),
    st.integers(max_value=0).map(str),
    st.integers(min_value=2**63, max_value=10**40).map(str),
    st.text().filter(lambda s: not is_ascii_digit_string(s)),
    digit_strings_with_junk,
    json_values.filter(lambda v: isinstance(v, list | dict)),
)


@PROPERTY
@given(invalid_ids)
def test_property_anything_else_is_poison(value: object) -> None:
    result = parse(body_with_id(value))

    assert isinstance(result, Poison)
    assert result.reason.strip()


text_bodies = st.one_of(
    st.text(),
    st.binary().map(lambda raw: raw.decode("utf-8", errors="surrogateescape")),
    st.binary().map(lambda raw: raw.decode("utf-8", errors="replace")),
    json_values.map(json.dumps),
    st.builds(
        lambda prefix, n: prefix + str(n), st.sampled_from(['{"messageId":', "[", '"', ""]), st.integers()
    ),
)


@PROPERTY
@given(text_bodies)
def test_property_arbitrary_bodies_never_raise(body: str) -> None:
    result = parse(body)

    assert isinstance(result, Notice | Poison)
    if isinstance(result, Notice):
        assert 1 <= result.message_id <= INT64_MAX
    else:
        assert result.reason.strip()


@PROPERTY
@given(text_bodies)
def test_property_arbitrary_sqs_events_never_raise(body: str) -> None:
    _, deliveries = parse_event(sqs_event(body, body))

    for delivery in deliveries:
        assert delivery.body == body
        assert isinstance(parse(delivery.body), Notice | Poison)


inner_payloads = st.one_of(
    json_values,
    st.builds(
        lambda extra, value: {**extra, "messageId": value},
        st.dictionaries(st.text(max_size=8), json_values, max_size=3),
        st.one_of(valid_ids, valid_ids.map(str), json_values),
    ),
)


@PROPERTY
@given(inner_payloads, st.sampled_from(["sns", "eventbridge"]), st.text(max_size=20))
def test_property_one_wrapper_is_transparent(payload: Any, wrapper: str, sns_id: str) -> None:
    assume(not (isinstance(payload, dict) and {"detail", "detail-type"} <= payload.keys()))
    inner = json.dumps(payload)
    if wrapper == "sns":
        wrapped = sns_envelope(inner, sns_message_id=sns_id or None)
    else:
        wrapped = eventbridge_event(payload)

    assert outcome(parse(wrapped)) == outcome(parse(inner))


# unwrap() peels at most 4 layers (events._MAX_UNWRAP_DEPTH); real chains have at most 2.
MAX_CHAIN = 4


def wrap(payload: dict[str, Any], chain: list[str], sns_id: str) -> str:
    body = json.dumps(payload)
    for layer in chain:
        if layer == "sns":
            body = sns_envelope(body, sns_message_id=sns_id)
        else:
            body = eventbridge_event(json.loads(body))
    return body


@PROPERTY
@given(
    valid_ids,
    st.booleans(),
    st.lists(st.sampled_from(["sns", "eventbridge"]), max_size=MAX_CHAIN),
    valid_ids,
)
def test_property_ids_round_trip_through_any_chain_of_envelopes(
    message_id: int, as_string: bool, chain: list[str], sns_id: int
) -> None:
    payload = {"messageId": str(message_id) if as_string else message_id, "channel": "SMS"}
    body = wrap(payload, chain, str(sns_id))

    assert parsed_id(body) == message_id
    _, delivery = one_delivery(sqs_event(body))
    assert parsed_id(delivery.body) == message_id
    _, delivery = one_delivery(sns_event(body))
    assert parsed_id(delivery.body) == message_id


@SMALL_PROPERTY
@given(st.lists(st.sampled_from(["sns", "eventbridge"]), min_size=1, max_size=MAX_CHAIN + 3), valid_ids)
def test_property_envelope_ids_are_never_taken(chain: list[str], sns_id: int) -> None:
    body = wrap({"channel": "SMS"}, chain, str(sns_id))

    assert isinstance(parse(body), Poison)


@SMALL_PROPERTY
@given(st.lists(st.sampled_from(["sns", "eventbridge"]), min_size=MAX_CHAIN + 1, max_size=MAX_CHAIN + 3))
def test_property_too_deep_chains_never_yield_a_wrong_id(chain: list[str]) -> None:
    body = wrap({"messageId": MESSAGE_ID}, chain, "1234")

    result = parse(body)

    assert isinstance(result, Poison) or result.message_id == MESSAGE_ID


def test_nesting_is_limited_at_a_fixed_depth_not_at_the_stack() -> None:
    from resender.events import MAX_NESTING_DEPTH, MessageIdParser, Notice, Poison

    def body(depth: int) -> str:
        inner = "[" * (depth - 1) + "]" * (depth - 1)
        return '{"messageId": 1746061653596, "x": ' + inner + "}"

    parser = MessageIdParser()
    deepest_allowed = parser.parse(Delivery(record_id="a", body=body(MAX_NESTING_DEPTH)))
    too_deep = parser.parse(Delivery(record_id="b", body=body(MAX_NESTING_DEPTH + 1)))
    brackets_in_a_string = parser.parse(
        Delivery(record_id="c", body='{"messageId": 1746061653596, "x": "' + "[" * 500 + '"}')
    )

    assert isinstance(deepest_allowed, Notice)
    assert isinstance(too_deep, Poison)
    assert "nested more than" in too_deep.reason
    assert isinstance(brackets_in_a_string, Notice)
