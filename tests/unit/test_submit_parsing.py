"""``resender submit``'s reading of its inputs, property-based: what is published is exactly what the function
would accept, once each, in input order, and every other line is reported where it is."""

from __future__ import annotations

import csv
import io
import json

from hypothesis import given
from hypothesis import strategies as st

from resender.cli.submit import InputFormat, Source, guess_format, read_inputs
from resender.events import PoisonError, validate_message_id

valid_ids = st.integers(min_value=1, max_value=2**63 - 1)
lines = st.one_of(
    valid_ids.map(str),
    st.integers(min_value=-(2**64), max_value=2**64).map(str),
    st.text(alphabet="0123456789abx .-", min_size=1, max_size=21).filter(
        lambda t: t.strip() and "#" not in t
    ),
)


def accepted(text: str) -> int | None:
    try:
        return validate_message_id(text.strip())
    except PoisonError:
        return None


@given(st.lists(lines, max_size=40))
def test_plain_ids_publish_each_valid_id_once_in_order_and_report_the_rest(entries: list[str]) -> None:
    result = read_inputs([Source("ids.txt", io.StringIO("\n".join(entries)), InputFormat.IDS)])

    expected: list[int] = []
    invalid_lines = []
    for number, entry in enumerate(entries, start=1):
        message_id = accepted(entry)
        if message_id is None:
            invalid_lines.append(number)
        elif message_id not in expected:
            expected.append(message_id)
    assert [n.message_id for n in result.notifications] == expected
    assert [line.line for line in result.invalid] == invalid_lines
    assert result.duplicates == len(entries) - len(invalid_lines) - len(expected)
    assert all(n.body == {"messageId": n.message_id} for n in result.notifications)


cells = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12)


@given(st.lists(st.tuples(valid_ids, cells, cells), min_size=1, max_size=15))
def test_csv_rows_carry_the_schema_columns_and_line_numbers(rows: list[tuple[int, str, str]]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["Channel", "nsadmin_id", "reason", "ignored"])
    for message_id, channel, reason in rows:
        writer.writerow([channel, message_id, reason, "x"])

    result = read_inputs([Source("export.csv", io.StringIO(buffer.getvalue()))])

    assert result.invalid == []
    first: dict[int, tuple[str, str]] = {}
    for message_id, channel, reason in rows:
        first.setdefault(message_id, (channel, reason))
    assert [n.message_id for n in result.notifications] == list(first)
    for notification in result.notifications:
        channel, reason = first[notification.message_id]
        expected: dict[str, object] = {"messageId": notification.message_id}
        if channel.strip():
            expected["channel"] = channel.strip()
        if reason.strip():
            expected["reason"] = reason.strip()
        assert notification.body == expected
        json.dumps(notification.body)  # publishable as is


@given(
    st.lists(
        st.dictionaries(st.sampled_from(["messageId", "orgId", "tag"]), st.integers(0, 10**6)), max_size=20
    )
)
def test_jsonl_objects_are_published_whole_or_reported(objects: list[dict[str, int]]) -> None:
    text = "\n".join(json.dumps(document) for document in objects)

    result = read_inputs([Source("feed.jsonl", io.StringIO(text))])

    published = {n.message_id: n.body for n in result.notifications}
    for line, document in enumerate(objects, start=1):
        good = document.get("messageId", 0) > 0 and document.get("orgId", 1) > 0
        reported = any(invalid.line == line for invalid in result.invalid)
        assert reported != good
        if good and published.get(document["messageId"]) is not None:
            assert published[document["messageId"]]["messageId"] == document["messageId"]


def test_the_format_is_guessed_from_the_name_then_the_first_line() -> None:
    assert guess_format("export.CSV", "x") is InputFormat.CSV
    assert guess_format("feed.ndjson", "1") is InputFormat.JSONL
    assert guess_format("-", '{"messageId": 1}') is InputFormat.JSONL
    assert guess_format("-", "nsadmin_id\n1") is InputFormat.CSV
    assert guess_format("-", "id,channel\n1,SMS") is InputFormat.CSV
    assert guess_format("-", "\n1746061653596\n") is InputFormat.IDS
