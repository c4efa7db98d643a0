"""The classifier, without HTTP: one row per rule of README's "How an answer is read", plus properties.

Each row is (status, headers, body) -> verdict, error code. ``classify`` is pure, so a row is the whole test.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resender.classify import OVER_THE_CAP, Unreadable, classify
from resender.models import Status, Verdict
from resender.scrub import REDACTED, scrub
from tests.unit.test_fuzz import FUZZ, examples_run

RESENT_ID = 1748743190124
SUCCESS = {
    "orgId": 100737,
    "undeliveredMessageId": 1746061653596,
    "resentMessageId": RESENT_ID,
    "warnings": [],
}
JSON = {"Content-Type": "application/json", "X-Cap-Requestid": "req-1"}
HTML = {"Content-Type": "text/html"}
NGINX_502 = b"<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"


def body(document: Any) -> bytes:
    return json.dumps(document).encode()


def errors(code: int, message: str = "an error", **extra: Any) -> bytes:
    return body({"warnings": [], "errors": [{"status": False, "code": code, "message": message}], **extra})


R, NF, RJ, AF, T, U = (
    Verdict.RESENT,
    Verdict.NOT_FOUND,
    Verdict.REJECTED,
    Verdict.AUTH_FAILED,
    Verdict.TRANSIENT,
    Verdict.UNCERTAIN,
)

ROWS = [
    # Success.
    ("200 success", 200, JSON, body(SUCCESS), R, None),
    ("201 success", 201, JSON, body(SUCCESS), R, None),
    ("200 success, id as digits", 200, JSON, body({**SUCCESS, "resentMessageId": str(RESENT_ID)}), R, None),
    ("200 success, errors null", 200, JSON, body({**SUCCESS, "errors": None}), R, None),
    # Rule 1: an answer that names a resend is a resend, whatever else it says.
    ("200 resentMessageId + 9999", 200, JSON, errors(9999, resentMessageId=RESENT_ID), U, 9999),
    ("200 resentMessageId + 4223", 200, JSON, errors(4223, resentMessageId=RESENT_ID), U, 4223),
    ("200 resentMessageId + 400", 200, JSON, errors(400, resentMessageId=RESENT_ID), U, 400),
    ("401 resentMessageId + 401", 401, JSON, errors(401, resentMessageId=RESENT_ID), U, 401),
    ("498 resentMessageId", 498, JSON, errors(498, resentMessageId=RESENT_ID), U, 498),
    ("200 resentMessageId + 461", 200, JSON, errors(461, resentMessageId=RESENT_ID), U, 461),
    ("503 resentMessageId + 4001", 503, JSON, errors(4001, resentMessageId=RESENT_ID), U, 4001),
    ("500 resentMessageId", 500, JSON, body({"resentMessageId": RESENT_ID}), U, None),
    ("429 resentMessageId", 429, JSON, body({"resentMessageId": RESENT_ID}), U, None),
    ("400 resentMessageId", 400, JSON, errors(400, resentMessageId=RESENT_ID), U, 400),
    ("200 resentMessageId 0", 200, JSON, body({**SUCCESS, "resentMessageId": 0}), U, None),
    ("200 resentMessageId -1", 200, JSON, body({**SUCCESS, "resentMessageId": -1}), U, None),
    ("200 resentMessageId 2^63", 200, JSON, body({**SUCCESS, "resentMessageId": 2**63}), U, None),
    ("200 resentMessageId text", 200, JSON, body({**SUCCESS, "resentMessageId": "abc"}), U, None),
    ("200 resentMessageId true", 200, JSON, body({**SUCCESS, "resentMessageId": True}), U, None),
    ("200 resentMessageId float", 200, JSON, body({**SUCCESS, "resentMessageId": 1.5}), U, None),
    ("200 resentMessageId object", 200, JSON, body({**SUCCESS, "resentMessageId": {}}), U, None),
    # Rule 2: a 2xx that cannot be read.
    ("200 over the read cap", 200, JSON, OVER_THE_CAP, U, None),
    ("200 cut short", 200, JSON, Unreadable("cut short"), U, None),
    ("200 empty", 200, JSON, b"", U, None),
    ("200 blank", 200, JSON, b"  \r\n", U, None),
    ("200 null", 200, JSON, b"null", U, None),
    ("200 not JSON", 200, JSON, b'{"resentMessageId": 17', U, None),
    ("200 JSON list", 200, JSON, body([SUCCESS]), U, None),
    ("200 JSON number", 200, JSON, b"1748743190124", U, None),
    ("200 JSON string", 200, JSON, b'"ok"', U, None),
    ("200 HTML proxy page", 200, HTML, b"<html><body>Sign in</body></html>", U, None),
    ("204 no content", 204, {}, b"", U, None),
    # Rule 3: a gateway that may have forwarded the request and lost the answer.
    ("504 Capillary envelope", 504, JSON, errors(504, "Gateway timeout"), U, 504),
    ("504 empty", 504, {}, b"", U, 504),
    ("504 HTML", 504, HTML, b"<html>504 Gateway Time-out</html>", U, 504),
    ("524 origin timeout", 524, HTML, b"<html>A timeout occurred</html>", U, 524),
    ("599 network read timeout", 599, {}, b"", U, 599),
    ("502 nginx page", 502, HTML, NGINX_502, U, 502),
    ("502 empty", 502, {}, b"", U, 502),
    ("502 JSON without Capillary errors", 502, JSON, body({"message": "Internal server error"}), U, 502),
    ("502 over the read cap", 502, JSON, OVER_THE_CAP, U, 502),
    # Rule 4: Capillary's codes, on any status.
    ("200 4223", 200, JSON, errors(4223), NF, 4223),
    ("404 4223", 404, JSON, errors(4223), NF, 4223),
    ("400 400", 400, JSON, errors(400), RJ, 400),
    ("200 400", 200, JSON, errors(400), RJ, 400),
    ("401 401", 401, JSON, errors(401), AF, 401),
    ("401 no body", 401, {}, b"", AF, 401),
    ("401 HTML", 401, HTML, b"<html>401</html>", AF, 401),
    ("403 4000", 403, JSON, errors(4000), AF, 4000),
    ("498 token expired", 498, JSON, errors(498, "Token expired at 2026-12-01T10:00:00Z"), AF, 498),
    ("200 401 in the body", 200, JSON, errors(401), AF, 401),
    ("502 Capillary envelope", 502, JSON, errors(502, "Bad gateway"), T, 502),
    ("500 Capillary envelope", 500, JSON, errors(500, "Internal server error"), T, 500),
    ("500 HTML", 500, HTML, b"<html>500</html>", T, 500),
    ("500 over the read cap", 500, JSON, OVER_THE_CAP, T, 500),
    ("503 4001", 503, JSON, errors(4001), T, 4001),
    ("503 HTML from a load balancer", 503, HTML, b"<html>503 Service Unavailable</html>", T, 503),
    ("429 throttled", 429, JSON, errors(429), T, 429),
    ("429 empty", 429, {}, b"", T, 429),
    ("461 search busy", 461, JSON, errors(461), T, 461),
    ("521 customer busy", 521, JSON, errors(521), T, 521),
    ("200 461 in the body", 200, JSON, errors(461), T, 461),
    ("400 4001 in the body", 400, JSON, errors(4001), T, 4001),
    ("200 undocumented code", 200, JSON, errors(9999), T, 9999),
    ("418 JSON without errors", 418, JSON, body({}), T, 418),
    ("307 redirect", 307, {"Location": "https://elsewhere.example"}, b"", T, 307),
    # Rule 5: a success without the new id.
    ("200 no resentMessageId", 200, JSON, body({"warnings": []}), U, None),
    ("200 resentMessageId null", 200, JSON, body({**SUCCESS, "resentMessageId": None}), U, None),
    ("200 empty object", 200, JSON, body({}), U, None),
]


@pytest.mark.parametrize(
    ("status", "headers", "content", "verdict", "code"),
    [pytest.param(*row[1:], id=row[0]) for row in ROWS],
)
def test_each_row_of_the_classification(
    status: int, headers: dict[str, str], content: bytes | Unreadable, verdict: Verdict, code: int | None
) -> None:
    result = classify(status, headers, content)

    assert (result.verdict, result.error_code) == (verdict, code)
    assert result.http_status == status
    if verdict is Verdict.RESENT:
        assert result.resent_message_id == RESENT_ID
        assert result.org_id == 100737
        assert result.error_message is None
    else:
        assert result.resent_message_id is None
        assert result.error_message
    if verdict is Verdict.UNCERTAIN:
        message = result.error_message or ""
        assert "may have resent" in message or "without a resentMessageId" in message


def test_every_verdict_appears_in_the_table() -> None:
    assert {row[4] for row in ROWS} == set(Verdict)


def test_request_id_and_retry_after_are_read_from_the_headers_whatever_their_case() -> None:
    result = classify(429, {"x-cap-requestid": "abc", "retry-after": "42"}, errors(429))

    assert (result.request_id, result.retry_after_seconds) == ("abc", 42.0)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("0", 0.0), ("-5", 0.0), ("1e9", 43_200.0), ("nan", None), ("Wed, 21 Oct 2015 07:28:00 GMT", None)],
)
def test_retry_after_is_bounded_and_odd_values_are_ignored(value: str, seconds: float | None) -> None:
    assert classify(429, {"Retry-After": value}, errors(429)).retry_after_seconds == seconds


def test_text_from_the_answer_is_clipped_and_made_valid_unicode() -> None:
    content = b'{"errors": [{"code": 500, "message": "broken \\ud800 ' + b"x" * 5000 + b'"}]}'

    result = classify(500, {"X-Cap-Requestid": "r" * 4000}, content, max_text_chars=100)

    # The lone surrogate becomes "?", and the text is cut to the limit, its last three characters "...".
    assert result.error_message == "broken ? " + "x" * 88 + "..."
    assert result.request_id == "r" * 125 + "..."


SECRETS = (
    "server123",
    "8a16a6b70505eb1f1ff7cdc0cd5559a7",
    "c3RvcmUuc2VydmVyOjhhMTZhNmI3MDUwNWViMWYxZmY3Y2RjMGNkNTU1OWE3",
)


@pytest.mark.parametrize("status", [200, 400, 401, 500, 502, 504])
def test_credentials_echoed_in_the_answer_are_scrubbed(status: int) -> None:
    echo = "; ".join(
        [
            f"Authorization: Basic {SECRETS[2]}",
            f"digest {SECRETS[1].upper()}",
            f"password {SECRETS[0]}",
        ]
    )
    content = errors(4223 if status == 200 else status, echo)

    result = classify(status, {"X-Cap-Requestid": f"id-{SECRETS[0]}"}, content, secrets=SECRETS)

    text = f"{result.error_message} {result.request_id}"
    for secret in SECRETS:
        assert secret.lower() not in text.lower()
    assert REDACTED in text
    # Without the secrets, the same answer carries them: the scrubbing is what removes them.
    unscrubbed = classify(status, {}, content)
    assert SECRETS[0] in (unscrubbed.error_message or "")


def test_scrub_replaces_the_longest_secret_first_and_ignores_empty_ones() -> None:
    assert scrub("Basic abc:def here", ["abc", "Basic abc:def", ""]) == f"{REDACTED} here"
    assert scrub("nothing to hide", []) == "nothing to hide"


# -- properties --------------------------------------------------------------------------------------------

statuses = st.one_of(
    st.sampled_from([200, 201, 204, 400, 401, 403, 429, 461, 498, 500, 502, 503, 504, 521]),
    st.integers(100, 599),
)
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12))
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
capillary_documents = st.fixed_dictionaries(
    {},
    optional={
        "resentMessageId": json_values,
        "orgId": json_values,
        "errors": st.one_of(
            json_values,
            st.lists(
                st.fixed_dictionaries(
                    {},
                    optional={
                        "code": st.one_of(
                            st.sampled_from([400, 401, 403, 461, 498, 4000, 4001, 4223]), json_values
                        ),
                        "message": st.one_of(st.text(max_size=40), json_values),
                    },
                ),
                max_size=3,
            ),
        ),
        "warnings": json_values,
    },
)
bodies = st.one_of(
    capillary_documents.map(lambda d: json.dumps(d).encode()),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=64),
    st.just(OVER_THE_CAP),
    st.builds(Unreadable, st.text(max_size=10)),
)
headers = st.dictionaries(
    st.sampled_from(["X-Cap-Requestid", "Retry-After", "Content-Type", "x-cap-requestid"]),
    st.text(max_size=30),
    max_size=3,
)


def _names_a_resend(content: bytes | Unreadable) -> bool:
    if isinstance(content, Unreadable):
        return False
    try:
        document = json.loads(content)
    except ValueError:
        return False
    return isinstance(document, dict) and document.get("resentMessageId") is not None


def _is_a_json_object(content: bytes | Unreadable) -> bool:
    if isinstance(content, Unreadable):
        return False
    try:
        return isinstance(json.loads(content), dict)
    except ValueError:
        return False


@FUZZ
@given(statuses, headers, bodies)
def test_any_answer_reads_as_one_verdict_and_never_retries_what_may_have_been_resent(
    status: int, header_values: dict[str, str], content: bytes | Unreadable
) -> None:
    examples_run["classify"] += 1
    result = classify(status, header_values, content, secrets=("s3cret-value",))

    assert result.verdict in set(Verdict)
    if _names_a_resend(content):
        assert result.verdict in (Verdict.RESENT, Verdict.UNCERTAIN)
    if 200 <= status < 300 and not _is_a_json_object(content):
        assert result.verdict is Verdict.UNCERTAIN
    if status in (504, 524, 598, 599):
        assert result.verdict in (Verdict.RESENT, Verdict.UNCERTAIN)
    if result.verdict is Verdict.RESENT:
        assert 200 <= status < 300
        assert result.resent_message_id is not None
        assert 0 < result.resent_message_id < 2**63
    assert result.status in set(Status)
    for text in (result.error_message, result.request_id):
        if text is not None:
            assert "s3cret-value" not in text
            text.encode("utf-8")
