"""The feed contract: the JSON Schema is valid, and every shipped example and sample event satisfies it."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from resender.cli.submit import Source, read_inputs
from resender.events import MessageIdParser, PoisonError, parse_event, unwrap

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((ROOT / "schema" / "failure-notification.schema.json").read_text())
VALIDATOR = Draft202012Validator(SCHEMA)
EXAMPLES = ROOT / "schema" / "examples"
# Bad on purpose: the function sets these aside as poison.
POISON_SAMPLES = {"sqs-poison.json"}


def test_the_schema_is_a_valid_draft_2020_12_schema() -> None:
    Draft202012Validator.check_schema(SCHEMA)
    assert SCHEMA["required"] == ["messageId"]
    assert set(SCHEMA["properties"]) == {"messageId", "orgId", "channel", "reason", "failedAt", "customerId"}


@pytest.mark.parametrize("name", sorted(path.name for path in EXAMPLES.glob("*.json")))
def test_json_examples_validate(name: str) -> None:
    VALIDATOR.validate(json.loads((EXAMPLES / name).read_text()))


def test_every_line_of_the_jsonl_and_csv_examples_becomes_a_valid_notification() -> None:
    sources = [
        Source(str(EXAMPLES / name), io.StringIO((EXAMPLES / name).read_text()))
        for name in ("insights-export.csv", "failures.jsonl")
    ]

    result = read_inputs(sources)

    assert result.invalid == []
    assert len(result.notifications) + result.duplicates == 4
    for notification in result.notifications:
        VALIDATOR.validate(notification.body)


def sample_payloads() -> list[tuple[str, Any]]:
    payloads: list[tuple[str, Any]] = []
    for path in sorted((ROOT / "events").glob("*.json")):
        if path.name == "env.json" or path.name in POISON_SAMPLES:
            continue
        _, deliveries = parse_event(json.loads(path.read_text()))
        payloads.extend((path.name, unwrap(json.loads(delivery.body))) for delivery in deliveries)
    return payloads


@pytest.mark.parametrize(("name", "payload"), sample_payloads())
def test_sample_events_carry_valid_notifications(name: str, payload: Any) -> None:
    VALIDATOR.validate(payload)


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"messageId": True},
        {"messageId": 0},
        {"messageId": "12ab"},
        {"messageId": 1.5},
        {"messageId": 2**63},
    ],
)
def test_the_schema_refuses_what_the_function_sets_aside(payload: dict[str, Any]) -> None:
    assert not VALIDATOR.is_valid(payload)
    with pytest.raises(PoisonError):
        MessageIdParser().message_id(json.dumps(payload))


ids = st.one_of(
    st.integers(min_value=-5, max_value=2**63 + 5),
    st.text(alphabet="0123456789ab -", max_size=22),
    st.booleans(),
    st.none(),
    st.floats(allow_nan=False, allow_infinity=False),
)


@given(ids)
def test_schema_and_function_agree_on_every_message_id(value: object) -> None:
    # Two differences the schema's description states: JSON Schema counts 1.0 as an integer (the function
    # refuses a decimal point), and its pattern cannot bound a string of digits by 2^63.
    assume(not (isinstance(value, float) and value.is_integer()))
    assume(not (isinstance(value, str) and value.isdigit() and int(value) >= 2**63))
    body = json.dumps({"messageId": value})
    try:
        MessageIdParser().message_id(body)
        accepted = True
    except PoisonError:
        accepted = False

    assert VALIDATOR.is_valid({"messageId": value}) == accepted
