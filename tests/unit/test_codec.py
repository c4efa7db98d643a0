"""The one DynamoDB codec: it writes what boto3's serializer writes and reads back exactly what it wrote."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from hypothesis import given
from hypothesis import strategies as st

from resender.dynamodb_codec import item_numbers, item_to_plain, to_attribute_value, to_item
from resender.models import Status

# What the outcomes table holds: ids, counts and epoch seconds (whole numbers, at most DynamoDB's 38 digits,
# negative only in a hostile answer), statuses, tokens and messages, and the operator's ``forced`` flag.
numbers = st.integers(min_value=-(10**38) + 1, max_value=10**38 - 1)
plain_values = st.one_of(numbers, st.text(), st.booleans())
names = st.text(min_size=1, max_size=20)
plain_items = st.dictionaries(names, plain_values, max_size=12)


@given(plain_items)
def test_encoding_then_decoding_is_the_identity(item: dict[str, int | str | bool]) -> None:
    decoded = item_to_plain(to_item(item))

    assert decoded == item
    assert {name: type(value) for name, value in decoded.items()} == {
        name: type(value) for name, value in item.items()
    }


@given(plain_values)
def test_each_value_is_written_as_boto3_writes_it(value: int | str | bool) -> None:
    assert to_attribute_value(value) == TypeSerializer().serialize(value)


@given(plain_items)
def test_what_boto3_writes_reads_back_as_what_boto3_reads(item: dict[str, int | str | bool]) -> None:
    typed = {name: TypeSerializer().serialize(value) for name, value in item.items()}
    expected = {name: TypeDeserializer().deserialize(value) for name, value in typed.items()}

    assert item_to_plain(typed) == expected


@given(st.dictionaries(names, numbers, max_size=12))
def test_whole_numbers_read_as_int_for_the_pacing_table_too(item: dict[str, int]) -> None:
    numbers_read = item_numbers(to_item(item))

    assert numbers_read == item
    assert all(type(value) is int for value in numbers_read.values())


def test_a_number_with_a_fraction_is_refused_rather_than_cut_to_an_int() -> None:
    with pytest.raises(ValueError, match="'attempts' is not a whole number"):
        item_to_plain({"attempts": {"N": "1.5"}})


def test_the_pacing_table_keeps_a_fraction() -> None:
    assert item_numbers({"rate": {"N": "7.5"}, "tat": {"N": "1800000000000"}, "org": {"S": "default"}}) == {
        "rate": 7.5,
        "tat": 1_800_000_000_000,
    }


def test_a_whole_number_written_with_an_exponent_or_a_zero_fraction_is_an_int() -> None:
    assert item_to_plain({"a": {"N": "1E+3"}, "b": {"N": "42.000"}}) == {"a": 1000, "b": 42}


@pytest.mark.parametrize("text", ["", ".", "abc", "NaN", "Infinity", "1" * 39 + ".5"])
def test_what_is_not_a_dynamodb_number_is_a_value_error(text: str) -> None:
    with pytest.raises(ValueError, match="'n' is not a"):
        item_to_plain({"n": {"N": text}})


def test_types_the_project_never_writes_are_left_out() -> None:
    typed: dict[str, Any] = {
        "status": {"S": "RESENT"},
        "nothing": {"NULL": True},
        "raw": {"B": b"\x00"},
        "tags": {"SS": ["a"]},
        "list": {"L": [{"N": "1"}]},
        "map": {"M": {"n": {"N": "1"}}},
        "malformed": "not typed",
    }

    assert item_to_plain(typed) == {"status": "RESENT"}
    assert item_numbers(typed) == {}


def test_a_value_of_another_python_type_has_no_encoding() -> None:
    with pytest.raises(TypeError, match="no DynamoDB encoding for Decimal"):
        to_attribute_value(Decimal(1))  # type: ignore[arg-type]


def test_a_status_is_written_as_its_plain_text() -> None:
    value = to_attribute_value(Status.RESENT)

    assert value == {"S": "RESENT"}
    assert type(value["S"]) is str
