"""The Capillary stub, exercised over real HTTP."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from resender.local.stub import ORG_ID, Behaviour, CapillaryStub, basic_auth_header

# The worked example from Capillary's authentication docs: store.server / server123.
DOC_BASIC = "Basic c3RvcmUuc2VydmVyOjhhMTZhNmI3MDUwNWViMWYxZmY3Y2RjMGNkNTU1OWE3"
MESSAGE_ID = 1746061653596
TIMEOUT = (2.0, 5.0)
DEMO_KEY = "demo-client-key"
DEMO_SECRET = "demo-client-secret"


@pytest.fixture
def stub() -> Iterator[CapillaryStub]:
    with CapillaryStub() as running:
        yield running


def resend(
    stub: CapillaryStub,
    body: Any = None,
    *,
    headers: dict[str, str] | None = None,
    timeout: tuple[float, float] = TIMEOUT,
) -> requests.Response:
    payload = json.dumps({"messageId": MESSAGE_ID} if body is None else body)
    sent = {"Content-Type": "application/json", "Accept": "application/json"}
    sent.update({"Authorization": DOC_BASIC} if headers is None else headers)
    return requests.post(
        f"{stub.base_url}/v2/communications/resend", data=payload, headers=sent, timeout=timeout
    )


def token(stub: CapillaryStub, key: str = DEMO_KEY, secret: str | None = None) -> requests.Response:
    body = {"key": key, "secret": DEMO_SECRET if secret is None else secret}
    return requests.post(f"{stub.base_url}/v3/oauth/token/generate", json=body, timeout=TIMEOUT)


def error_codes(response: requests.Response) -> list[int]:
    return [e["code"] for e in response.json()["errors"]]


# -- authentication ------------------------------------------------------------------------------


def test_basic_auth_header_matches_capillary_worked_example() -> None:
    assert basic_auth_header("store.server", "server123") == DOC_BASIC


def test_basic_auth_worked_example_is_accepted(stub: CapillaryStub) -> None:
    response = resend(stub)

    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    body = response.json()
    assert body["orgId"] == ORG_ID
    assert body["undeliveredMessageId"] == MESSAGE_ID
    assert body["resentMessageId"] > 1_748_743_190_124
    assert body["warnings"] == []
    [call] = stub.resend_calls
    assert call.auth == "basic"
    assert call.performed
    assert call.resent_message_id == body["resentMessageId"]


def test_wrong_password_and_missing_auth_are_401_and_not_performed(stub: CapillaryStub) -> None:
    wrong = resend(stub, headers={"Authorization": basic_auth_header("store.server", "server124")})
    missing = resend(stub, headers={})

    assert wrong.status_code == 401
    assert error_codes(wrong) == [401]
    assert missing.status_code == 401
    assert [(c.auth, c.behaviour, c.performed) for c in stub.resend_calls] == [
        ("basic", Behaviour.UNAUTHORIZED, False),
        ("none", Behaviour.UNAUTHORIZED, False),
    ]
    assert stub.resends_performed() == 0


def test_oauth_token_flow_then_498_after_expire_tokens(stub: CapillaryStub) -> None:
    issued = token(stub)
    assert issued.status_code == 200
    data = issued.json()
    assert data["errors"] is None
    assert data["data"]["ttlSeconds"] == 300
    access = data["data"]["accessToken"]

    accepted = resend(stub, headers={"X-CAP-API-OAUTH-TOKEN": access})
    assert accepted.status_code == 200
    assert stub.resend_calls[-1].auth == "oauth"

    stub.expire_tokens()
    expired = resend(stub, headers={"X-CAP-API-OAUTH-TOKEN": access})
    assert expired.status_code == 498
    assert error_codes(expired) == [498]
    assert expired.json()["errors"][0]["message"].startswith("Token expired at ")
    assert stub.resend_calls[-1].behaviour is Behaviour.TOKEN_EXPIRED

    fresh = token(stub).json()["data"]["accessToken"]
    assert fresh != access
    assert resend(stub, headers={"X-CAP-API-OAUTH-TOKEN": fresh}).status_code == 200
    assert stub.token_requests == 2
    assert stub.resends_performed() == 2


def test_oauth_bad_credentials_and_unknown_token(stub: CapillaryStub) -> None:
    refused = token(stub, secret="guess")
    unknown = resend(stub, headers={"X-CAP-API-OAUTH-TOKEN": "not-a-token"})

    assert refused.status_code == 401
    assert refused.json() == {
        "data": None,
        "errors": [{"code": 320001, "message": "Invalid client key and secret"}],
    }
    assert unknown.status_code == 401
    assert stub.token_requests == 1
    assert stub.resends_performed() == 0


def test_token_older_than_its_ttl_is_expired() -> None:
    with CapillaryStub(token_ttl_seconds=0) as stub:
        access = token(stub).json()["data"]["accessToken"]
        assert resend(stub, headers={"X-CAP-API-OAUTH-TOKEN": access}).status_code == 498


def test_secret_rotation_refuses_old_secret_but_keeps_issued_tokens(stub: CapillaryStub) -> None:
    access = token(stub).json()["data"]["accessToken"]
    stub.set_oauth_secret("rotated")

    assert token(stub).status_code == 401
    assert token(stub, secret="rotated").status_code == 200
    assert resend(stub, headers={"X-CAP-API-OAUTH-TOKEN": access}).status_code == 200


def test_password_rotation(stub: CapillaryStub) -> None:
    stub.set_basic_password("new-password")

    assert resend(stub).status_code == 401
    rotated = resend(stub, headers={"Authorization": basic_auth_header("store.server", "new-password")})
    assert rotated.status_code == 200
    assert stub.resends_performed() == 1


def test_auth_failure_does_not_consume_scripted_behaviour(stub: CapillaryStub) -> None:
    stub.script(MESSAGE_ID, Behaviour.SERVER_ERROR)
    stub.fail_next(Behaviour.BAD_GATEWAY)

    assert resend(stub, headers={}).status_code == 401
    assert resend(stub).status_code == 502
    assert resend(stub).status_code == 500


# -- scripted behaviour --------------------------------------------------------------------------


def test_scripted_behaviours_are_consumed_in_order_then_default(stub: CapillaryStub) -> None:
    other = MESSAGE_ID + 1
    stub.script(MESSAGE_ID, Behaviour.SERVER_ERROR, Behaviour.THROTTLED, Behaviour.NOT_FOUND)

    assert resend(stub, {"messageId": other}).status_code == 200
    statuses = [resend(stub).status_code for _ in range(4)]

    assert statuses == [500, 429, 200, 200]
    assert [c.behaviour for c in stub.resend_calls] == [
        Behaviour.OK,
        Behaviour.SERVER_ERROR,
        Behaviour.THROTTLED,
        Behaviour.NOT_FOUND,
        Behaviour.OK,
    ]
    assert stub.resends_performed(MESSAGE_ID) == 1
    assert stub.resends_performed(other) == 1


def test_fail_next_takes_precedence_over_script(stub: CapillaryStub) -> None:
    stub.script(MESSAGE_ID, Behaviour.SERVER_ERROR)
    stub.fail_next(Behaviour.BAD_GATEWAY, Behaviour.GATEWAY_TIMEOUT)

    assert [resend(stub).status_code for _ in range(4)] == [502, 504, 500, 200]


def test_not_found_answers_http_200_with_code_4223(stub: CapillaryStub) -> None:
    stub.not_found_ids.add(MESSAGE_ID)

    response = resend(stub)

    assert response.status_code == 200
    body = response.json()
    assert body["warnings"] == []
    assert body["errors"] == [
        {
            "status": False,
            "code": 4223,
            "message": f"Failed to resend message : Message not found for orgId: 100737 "
            f"and messageId: {MESSAGE_ID}",
        }
    ]
    assert "resentMessageId" not in body
    assert stub.resends_performed() == 0


def test_rejected_ids_answer_400(stub: CapillaryStub) -> None:
    stub.rejected_ids.add(MESSAGE_ID)

    response = resend(stub)

    assert response.status_code == 400
    assert error_codes(response) == [400]
    assert stub.resends_performed() == 0


@pytest.mark.parametrize(
    ("behaviour", "status", "code"),
    [
        (Behaviour.REJECTED, 400, 400),
        (Behaviour.UNAUTHORIZED, 401, 401),
        (Behaviour.TOKEN_EXPIRED, 498, 498),
        (Behaviour.FORBIDDEN, 403, 4000),
        (Behaviour.SERVER_ERROR, 500, 500),
        (Behaviour.BAD_GATEWAY, 502, 502),
        (Behaviour.GATEWAY_TIMEOUT, 504, 504),
        (Behaviour.THROTTLED, 429, 429),
        (Behaviour.SEARCH_BUSY, 461, 461),
        (Behaviour.CUSTOMER_BUSY, 521, 521),
        (Behaviour.AUTH_UNAVAILABLE, 503, 4001),
    ],
)
def test_json_error_behaviours(stub: CapillaryStub, behaviour: Behaviour, status: int, code: int) -> None:
    stub.fail_next(behaviour)

    response = resend(stub)

    assert response.status_code == status
    assert response.headers["Content-Type"] == "application/json"
    assert error_codes(response) == [code]
    assert stub.resends_performed() == 0


def test_throttled_carries_retry_after(stub: CapillaryStub) -> None:
    stub.fail_next(Behaviour.THROTTLED, Behaviour.THROTTLED)

    assert resend(stub).headers["Retry-After"] == "7"
    stub.retry_after_seconds = 3
    assert resend(stub).headers["Retry-After"] == "3"


def test_html_behaviours_are_text_html(stub: CapillaryStub) -> None:
    stub.fail_next(Behaviour.HTML_ERROR, Behaviour.HTML_OK)

    error = resend(stub)
    captive = resend(stub)

    assert error.status_code == 502
    assert error.headers["Content-Type"].startswith("text/html")
    assert "<html>" in error.text
    assert captive.status_code == 200
    assert captive.headers["Content-Type"].startswith("text/html")
    with pytest.raises(ValueError):
        captive.json()
    assert stub.resends_performed() == 0


def test_no_resent_id(stub: CapillaryStub) -> None:
    stub.fail_next(Behaviour.NO_RESENT_ID)

    response = resend(stub)

    assert response.status_code == 200
    assert response.json() == {"warnings": []}
    assert stub.resends_performed() == 0


# -- lost answers --------------------------------------------------------------------------------


def test_drop_after_resend_counts_and_client_sees_connection_error(stub: CapillaryStub) -> None:
    stub.fail_next(Behaviour.DROP_AFTER_RESEND)

    with pytest.raises(requests.ConnectionError):
        resend(stub)

    assert stub.resends_performed(MESSAGE_ID) == 1
    [call] = stub.resend_calls
    assert call.resent_message_id is not None
    assert resend(stub).status_code == 200


def test_hang_after_resend_outlasts_client_read_timeout(stub: CapillaryStub) -> None:
    stub.hang_seconds = 5.0
    stub.fail_next(Behaviour.HANG_AFTER_RESEND)

    with pytest.raises(requests.ReadTimeout):
        resend(stub, timeout=(2.0, 0.3))

    assert stub.wait_for_resend_calls(1)
    assert stub.resends_performed(MESSAGE_ID) == 1


def test_hang_shorter_than_client_timeout_answers_ok(stub: CapillaryStub) -> None:
    stub.hang_seconds = 0.05
    stub.fail_next(Behaviour.HANG_AFTER_RESEND)

    response = resend(stub)

    assert response.status_code == 200
    assert response.json()["resentMessageId"] == stub.resend_calls[0].resent_message_id


def test_stop_returns_promptly_while_a_request_hangs() -> None:
    stub = CapillaryStub().start()
    stub.hang_seconds = 60.0
    stub.fail_next(Behaviour.HANG_AFTER_RESEND)
    outcome: list[BaseException] = []

    def call() -> None:
        try:
            resend(stub, timeout=(2.0, 120.0))
        except requests.RequestException as exc:
            outcome.append(exc)

    client = threading.Thread(target=call)
    client.start()
    try:
        assert stub.wait_for_resend_calls(1)
        started = time.monotonic()
        stub.stop()
        elapsed = time.monotonic() - started
    finally:
        stub.stop()
    client.join(5.0)

    assert elapsed < 5.0
    assert not client.is_alive()
    assert len(outcome) == 1
    assert isinstance(outcome[0], requests.ConnectionError)
    assert stub.resends_performed() == 1


def test_stop_closes_idle_keep_alive_connections_quickly() -> None:
    stub = CapillaryStub().start()
    with requests.Session() as session:
        headers = {"Authorization": DOC_BASIC}
        url = f"{stub.base_url}/v2/communications/resend"
        assert session.post(url, json={"messageId": 1}, headers=headers, timeout=TIMEOUT).ok
        started = time.monotonic()
        stub.stop()
        assert time.monotonic() - started < 2.0


def test_latency_is_applied_before_answering() -> None:
    with CapillaryStub(latency_seconds=0.2) as stub:
        started = time.monotonic()
        assert resend(stub).status_code == 200
        assert time.monotonic() - started >= 0.2


# -- protocol ------------------------------------------------------------------------------------


def test_request_id_present_and_unique(stub: CapillaryStub) -> None:
    responses = [resend(stub), resend(stub, headers={}), token(stub), resend(stub)]

    ids = [r.headers.get("X-Cap-Requestid") for r in responses]

    assert all(ids)
    assert len(set(ids)) == len(ids)


@pytest.mark.parametrize(
    "body",
    [
        "not json",
        [1, 2],
        {},
        {"messageId": "1746061653596"},
        {"messageId": True},
        {"messageId": 0},
        {"messageId": -5},
        {"messageId": 1.5},
        None,
    ],
)
def test_invalid_body_is_400_and_not_performed(stub: CapillaryStub, body: object) -> None:
    stub.fail_next(Behaviour.SERVER_ERROR)
    raw = body if isinstance(body, str) else json.dumps(body)

    response = requests.post(
        f"{stub.base_url}/v2/communications/resend",
        data=raw,
        headers={"Authorization": DOC_BASIC, "Content-Type": "application/json"},
        timeout=TIMEOUT,
    )

    assert response.status_code == 400
    assert error_codes(response) == [400]
    [call] = stub.resend_calls
    assert (call.message_id, call.behaviour, call.performed) == (None, Behaviour.REJECTED, False)
    # The invalid call must not have used up the queued failure.
    assert resend(stub).status_code == 500


def test_unknown_path_is_404_and_wrong_method_is_405(stub: CapillaryStub) -> None:
    unknown = requests.post(f"{stub.base_url}/v2/nothing", json={}, timeout=TIMEOUT)
    wrong_method = requests.get(f"{stub.base_url}/v2/communications/resend", timeout=TIMEOUT)

    assert unknown.status_code == 404
    assert unknown.headers["Content-Type"] == "application/json"
    assert wrong_method.status_code == 405
    assert wrong_method.headers["Allow"] == "POST"
    assert wrong_method.json()["errors"]
    assert stub.resend_calls == []


def test_keep_alive_reuses_one_connection(stub: CapillaryStub) -> None:
    host, port = stub.base_url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=5)
    headers = {"Authorization": DOC_BASIC, "Content-Type": "application/json"}
    try:
        statuses = []
        sockets = []
        for message_id in (1, 2, 3):
            connection.request(
                "POST", "/v2/communications/resend", json.dumps({"messageId": message_id}), headers
            )
            response = connection.getresponse()
            response.read()
            statuses.append(response.status)
            sockets.append(connection.sock)
    finally:
        connection.close()

    assert statuses == [200, 200, 200]
    assert sockets[0] is not None
    assert all(s is sockets[0] for s in sockets)


def test_concurrent_clients_get_unique_increasing_ids(stub: CapillaryStub) -> None:
    results: list[int] = []
    lock = threading.Lock()

    def worker(first: int) -> None:
        with requests.Session() as session:
            for n in range(10):
                response = session.post(
                    f"{stub.base_url}/v2/communications/resend",
                    json={"messageId": first + n},
                    headers={"Authorization": DOC_BASIC},
                    timeout=TIMEOUT,
                )
                with lock:
                    results.append(response.json()["resentMessageId"])

    threads = [threading.Thread(target=worker, args=(1000 * t + 1,)) for t in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10.0)

    assert len(results) == 120
    assert len(set(results)) == 120
    assert stub.resends_performed() == 120
    recorded = [c.resent_message_id for c in stub.resend_calls if c.resent_message_id is not None]
    assert recorded == sorted(recorded)


def test_reset_forgets_state_but_keeps_credentials(stub: CapillaryStub) -> None:
    access = token(stub).json()["data"]["accessToken"]
    stub.script(MESSAGE_ID, Behaviour.SERVER_ERROR)
    stub.fail_next(Behaviour.BAD_GATEWAY)
    first = resend(stub, {"messageId": 7}, headers={"X-CAP-API-OAUTH-TOKEN": access})
    assert first.status_code == 502

    stub.reset()

    assert stub.resend_calls == []
    assert stub.token_requests == 0
    assert resend(stub, headers={"X-CAP-API-OAUTH-TOKEN": access}).status_code == 401
    again = resend(stub)
    assert again.status_code == 200
    assert stub.resends_performed() == 1


def test_stub_serves_again_on_the_same_port_after_stop() -> None:
    stub = CapillaryStub()
    url = stub.base_url
    with stub:
        assert resend(stub).status_code == 200
    with pytest.raises(requests.ConnectionError):
        resend(stub)
    with stub:
        assert stub.base_url == url
        assert resend(stub).status_code == 200
    assert stub.resends_performed() == 2


def test_server_never_prints(capfd: pytest.CaptureFixture[str]) -> None:
    with CapillaryStub() as stub:
        stub.fail_next(Behaviour.DROP_AFTER_RESEND)
        with pytest.raises(requests.ConnectionError):
            resend(stub)
        resend(stub, headers={"Authorization": "Basic bm9wZQ=="})
        requests.delete(f"{stub.base_url}/v2/communications/resend", timeout=TIMEOUT)
        requests.request("BREW", f"{stub.base_url}/v2/communications/resend", timeout=TIMEOUT)

    out, err = capfd.readouterr()
    assert out == ""
    assert err == ""


def test_command_line_serves_until_terminated() -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "resender.local.stub", "--port", "0", "--latency-ms", "10"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        url = next(word for word in line.split() if word.startswith("http://"))
        assert "store.server" in line
        assert "demo-client-key" in line
        response = requests.post(
            f"{url}/v2/communications/resend",
            json={"messageId": MESSAGE_ID},
            headers={"Authorization": DOC_BASIC},
            timeout=TIMEOUT,
        )
        assert response.status_code == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=5) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()
        if process.stderr is not None:
            process.stderr.close()
