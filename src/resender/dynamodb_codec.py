"""DynamoDB's typed JSON (``{"N": "42"}``) to plain values and back, for every reader of the project's tables.

Decoding goes through Powertools' copy of boto3's ``TypeDeserializer``, which parses numbers with DynamoDB's
own decimal context (38 digits, nothing rounded): the function does not ship boto3, so it cannot use boto3's.
Only the types the project writes are decoded, numbers (``N``), strings (``S``) and booleans (``BOOL``); an
attribute of any other type (``NULL``, binary, sets, lists, maps) is left out of the plain item, as the
readers have always done.

Every number the outcomes table stores is whole, so :func:`item_to_plain` gives ``int``, and a number with a
fraction is refused with ``ValueError`` rather than cut to an ``int``. The pacing table also stores fractions
(a rate per minute), so :func:`item_numbers` gives ``int`` for a whole number and ``float`` otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any, Final, TypeAlias

from aws_lambda_powertools.shared.dynamodb_deserializer import TypeDeserializer

PlainValue: TypeAlias = int | str | bool
AttributeValue: TypeAlias = dict[str, Any]

_DECODED_TYPES: Final = ("N", "S", "BOOL")
_DESERIALIZER: Final = TypeDeserializer()


def to_attribute_value(value: PlainValue) -> AttributeValue:
    """One plain value as DynamoDB's typed JSON, as boto3's ``TypeSerializer`` would write it."""
    # bool first: it is an int to Python, and True must not be stored as the number 1.
    if isinstance(value, bool):
        return {"BOOL": value}
    if isinstance(value, int):
        return {"N": str(value)}
    if isinstance(value, str):
        return {"S": str(value)}  # a StrEnum member goes as its plain text
    raise TypeError(f"no DynamoDB encoding for {type(value).__name__}")


def to_item(values: Mapping[str, PlainValue]) -> dict[str, AttributeValue]:
    """A plain item as DynamoDB's typed JSON."""
    return {name: to_attribute_value(value) for name, value in values.items()}


def item_to_plain(item: Mapping[str, Any]) -> dict[str, PlainValue]:
    """An item of the outcomes table as plain values: numbers as ``int``, strings, booleans.

    Raises ``ValueError`` for a number that is not whole or not a number at all: the table stores none,
    and cutting one to an ``int`` would hide it.
    """
    plain: dict[str, PlainValue] = {}
    for name, value in _decoded(item).items():
        if isinstance(value, Decimal):
            if not value.is_finite() or value != value.to_integral_value():
                raise ValueError(f"attribute {name!r} is not a whole number")
            plain[name] = int(value)
        else:
            plain[name] = value
    return plain


def item_numbers(item: Mapping[str, Any]) -> dict[str, float]:
    """The numeric attributes of an item: ``int`` for a whole number, ``float`` for one with a fraction."""
    numbers: dict[str, float] = {}
    for name, value in _decoded(item).items():
        if isinstance(value, Decimal):
            numbers[name] = int(value) if value == value.to_integral_value() else float(value)
    return numbers


def _decoded(item: Mapping[str, Any]) -> dict[str, Decimal | str | bool]:
    decoded: dict[str, Decimal | str | bool] = {}
    for name, typed in item.items():
        if not isinstance(typed, Mapping):
            continue
        kind = next((kind for kind in _DECODED_TYPES if kind in typed), None)
        if kind is None:
            continue
        if kind == "N" and typed[kind] in ("", "."):
            # Powertools reads these as 0; DynamoDB never returns them, so they are refused, not made up.
            raise ValueError(f"attribute {name!r} is not a DynamoDB number")
        try:
            decoded[name] = _DESERIALIZER.deserialize({kind: typed[kind]})
        except ArithmeticError:
            # decimal's errors (not a number, more digits than DynamoDB keeps) are not ValueErrors.
            raise ValueError(f"attribute {name!r} is not a DynamoDB number") from None
    return decoded
