"""Several orgs in one deployment: each record goes with its org's credentials to its org's base URL."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import pytest

from resender import app, cli
from resender.local.runner import (
    LOCAL_POLICY_ENV,
    SECOND_ORG_FIRST_RESENT_ID,
    SECOND_ORG_ID,
    SECOND_ORG_SECRET,
    load_event,
    local_secret,
)
from resender.local.stub import CapillaryStub
from resender.queues import POISON_REASON_ATTRIBUTE
from tests.builders import failure, sqs_event
from tests.conftest import Invoke
from tests.fixture_types import DrainDeadLetters, ReadOutcome, SetSecret, stored

if TYPE_CHECKING:
    from resender.local.aws import LocalResources

ID = 1746061653596
EVENTS = Path(__file__).resolve().parents[2] / "events"
ORG_A, ORG_B = 100737, 200002
ORG_B_OAUTH = {"authType": "oauth", "clientKey": "org-b-key", "clientSecret": "org-b-secret"}


@pytest.fixture
def second_org() -> Iterator[CapillaryStub]:
    """Org B on a cluster of its own, accepting only org B's OAuth client (and not org A's till)."""
    with CapillaryStub(
        org_id=ORG_B,
        username="org-b-till",
        password="org-b-password",
        client_key="org-b-key",
        client_secret="org-b-secret",
    ) as capillary:
        yield capillary


@pytest.fixture
def two_orgs(
    function_env: dict[str, str],
    stub: CapillaryStub,
    second_org: CapillaryStub,
    set_secret: SetSecret,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    set_secret(
        {
            "orgs": {
                str(ORG_A): {"authType": "basic", "username": "store.server", "password": "server123"},
                str(ORG_B): {**ORG_B_OAUTH, "baseUrl": second_org.base_url},
            }
        }
    )
    # Org A has no baseUrl: it is on CAPILLARY_BASE_URL, the first stub.
    monkeypatch.setenv("ORG_ID_PATH", "orgId")
    app.reset_container()


def poison_reasons(dead_letters: DrainDeadLetters) -> dict[str, str]:
    return {
        message["Body"]: message["MessageAttributes"][POISON_REASON_ATTRIBUTE]["StringValue"]
        for message in dead_letters()
    }


def test_one_invocation_serves_two_orgs_each_with_its_own_credentials_and_cluster(
    two_orgs: None, invoke: Invoke, stub: CapillaryStub, second_org: CapillaryStub, outcome: ReadOutcome
) -> None:
    response = invoke(
        sqs_event(
            failure(ID, orgId=ORG_A),
            failure(ID + 1, orgId=str(ORG_B)),
            failure(ID + 2, orgId=ORG_B),
            failure(ID + 3, orgId=ORG_A),
        )
    )

    assert response == {"batchItemFailures": []}
    # Each stub checks its own org's credentials: a call with the other org's would be refused (and recorded).
    assert sorted((c.message_id, c.auth, c.performed) for c in stub.resend_calls) == [
        (ID, "basic", True),
        (ID + 3, "basic", True),
    ]
    assert sorted((c.message_id, c.auth, c.performed) for c in second_org.resend_calls) == [
        (ID + 1, "oauth", True),
        (ID + 2, "oauth", True),
    ]
    assert second_org.token_requests == 1  # one token for org B, cached for the batch
    assert [stored(outcome, ID + n)["orgId"] for n in range(4)] == [ORG_A, ORG_B, ORG_B, ORG_A]
    assert all(stored(outcome, ID + n)["status"] == "RESENT" for n in range(4))


def test_an_unknown_org_is_poison_kept_in_the_dlq_and_never_sent(
    two_orgs: None,
    invoke: Invoke,
    stub: CapillaryStub,
    second_org: CapillaryStub,
    outcome: ReadOutcome,
    dead_letters: DrainDeadLetters,
) -> None:
    unknown, anonymous = failure(ID, orgId=300003), failure(ID + 1)

    response = invoke(sqs_event(unknown, anonymous))

    assert response == {"batchItemFailures": []}
    assert stub.resend_calls == [] and second_org.resend_calls == []
    assert outcome(ID) is None and outcome(ID + 1) is None
    reasons = poison_reasons(dead_letters)
    assert reasons[unknown] == "no credentials for org 300003"
    assert (
        reasons[anonymous] == "no org id at ORG_ID_PATH 'orgId' and the secret holds credentials for 2 orgs"
    )


def test_poison_of_an_unknown_org_is_resent_after_the_secret_is_fixed_and_redriven(
    two_orgs: None,
    invoke: Invoke,
    stub: CapillaryStub,
    second_org: CapillaryStub,
    outcome: ReadOutcome,
    set_secret: SetSecret,
    local_aws: LocalResources,
    capsys: pytest.CaptureFixture[str],
) -> None:
    invoke(sqs_event(failure(ID, orgId=300003)))
    third = CapillaryStub(org_id=300003, first_resent_id=1_749_000_000_000)
    with third:
        set_secret(
            {
                "orgs": {
                    str(ORG_A): {"authType": "basic", "username": "store.server", "password": "server123"},
                    "300003": {
                        "authType": "basic",
                        "username": "store.server",
                        "password": "server123",
                        "baseUrl": third.base_url,
                    },
                }
            }
        )
        app.reset_container()
        assert cli.main(["redrive", "--include-poison", "--queue-url", local_aws.queue_url]) == 0
        sqs = boto3.client("sqs", endpoint_url=local_aws.endpoint_url)
        (message,) = sqs.receive_message(QueueUrl=local_aws.queue_url, MaxNumberOfMessages=10)["Messages"]
        invoke(sqs_event(message["Body"]))

        assert [c.message_id for c in third.resend_calls] == [ID]
    assert stub.resend_calls == []
    assert (stored(outcome, ID)["status"], stored(outcome, ID)["orgId"]) == ("RESENT", 300003)


def test_an_answer_for_another_org_is_recorded_and_logged(
    function_env: dict[str, str],
    invoke: Invoke,
    stub: CapillaryStub,
    set_secret: SetSecret,
    outcome: ReadOutcome,
    log_lines: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The secret files the first stub (org 100737) under org 999: Capillary's answer names the real org.
    set_secret({"orgs": {"999": {"authType": "basic", "username": "store.server", "password": "server123"}}})
    monkeypatch.setenv("ORG_ID_PATH", "orgId")
    app.reset_container()

    invoke(sqs_event(failure(ID, orgId=999), failure(ID + 1)))

    for message_id in (ID, ID + 1):  # a one-org map also takes records that name no org
        item = stored(outcome, message_id)
        assert (item["status"], item["orgId"], item["answeredOrgId"]) == ("RESENT", 999, ORG_A)
    warnings = [json.loads(line) for line in log_lines if '"WARNING"' in line]
    assert any(line.get("answeredOrgId") == ORG_A and line.get("orgId") == 999 for line in warnings)


@pytest.mark.parametrize(
    ("orgs", "fragment"),
    [
        (
            {
                "100737": {
                    "authType": "basic",
                    "username": "u",
                    "password": "p",
                    "baseUrl": "http://eu.api.capillarytech.com",
                }
            },
            "https",
        ),
        ({"acme": {"authType": "basic", "username": "u", "password": "p"}}, "org id"),
        ({"100737": {"authType": "basic", "username": "u"}}, "org 100737 has no 'password' field"),
        ({}, "non-empty"),
    ],
)
def test_a_malformed_org_map_is_retried_and_never_sent(
    function_env: dict[str, str],
    invoke: Invoke,
    stub: CapillaryStub,
    set_secret: SetSecret,
    outcome: ReadOutcome,
    orgs: dict[str, Any],
    fragment: str,
) -> None:
    set_secret({"orgs": orgs})
    app.reset_container()

    response = invoke(sqs_event(failure(ID, orgId=100737)))

    assert len(response["batchItemFailures"]) == 1
    assert stub.resend_calls == []
    item = stored(outcome, ID)
    assert item["status"] == "RETRYING"
    assert fragment in item["errorMessage"]
    assert "p" not in item["errorMessage"].split("'")  # no credential value quoted


def test_a_single_org_secret_ignores_org_ids(
    function_env: dict[str, str],
    invoke: Invoke,
    stub: CapillaryStub,
    outcome: ReadOutcome,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ORG_ID_PATH", "orgId")
    app.reset_container()

    invoke(sqs_event(failure(ID, orgId=424242)))

    assert [c.message_id for c in stub.resend_calls] == [ID]
    assert stored(outcome, ID)["orgId"] == ORG_A  # as Capillary answered; no answeredOrgId
    assert "answeredOrgId" not in stored(outcome, ID)


def test_operators_list_by_org_see_the_org_and_resend_with_its_credentials(
    two_orgs: None,
    invoke: Invoke,
    stub: CapillaryStub,
    second_org: CapillaryStub,
    outcome: ReadOutcome,
    capsys: pytest.CaptureFixture[str],
) -> None:
    invoke(sqs_event(failure(ID, orgId=ORG_A), failure(ID + 1, orgId=ORG_B), failure(ID + 2, orgId=ORG_B)))
    capsys.readouterr()

    assert cli.main(["list", "--org", str(ORG_B), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["items"]
    assert sorted(item["messageId"] for item in listed) == [ID + 1, ID + 2]
    assert cli.main(["status", str(ID + 1)]) == 0
    shown = dict(line.split(None, 1) for line in capsys.readouterr().out.splitlines() if line.strip())
    assert shown["orgId"].strip() == str(ORG_B)

    # A forced resend goes with the recorded org's credentials, to that org's cluster.
    assert cli.main(["resend", str(ID + 1), "--force", "--reason", "customer asked", "--json"]) == 0
    calls = [c.message_id for c in second_org.resend_calls]
    assert (Counter(calls[:2]), calls[2:]) == (Counter([ID + 1, ID + 2]), [ID + 1])
    assert [c.message_id for c in stub.resend_calls] == [ID]
    assert stored(outcome, ID + 1)["orgId"] == ORG_B


def test_the_second_org_sample_goes_to_the_second_org_and_the_others_to_the_first(
    function_env: dict[str, str],
    invoke: Invoke,
    stub: CapillaryStub,
    set_secret: SetSecret,
    outcome: ReadOutcome,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    second = CapillaryStub(
        org_id=SECOND_ORG_ID,
        client_key=SECOND_ORG_SECRET["clientKey"],
        client_secret=SECOND_ORG_SECRET["clientSecret"],
        first_resent_id=SECOND_ORG_FIRST_RESENT_ID,
    )
    with second:
        set_secret(local_secret(second.base_url))
        for variable, value in LOCAL_POLICY_ENV.items():
            monkeypatch.setenv(variable, value)
        app.reset_container()

        invoke(load_event(EVENTS / "sqs-second-org.json"))
        invoke(load_event(EVENTS / "sqs-plain.json"))

        assert [(c.message_id, c.auth) for c in second.resend_calls] == [(1746061653620, "oauth")]
    assert [(c.message_id, c.auth) for c in stub.resend_calls] == [(ID, "basic")]
    assert stored(outcome, 1746061653620)["orgId"] == SECOND_ORG_ID
    assert stored(outcome, ID)["orgId"] == ORG_A  # no orgId in the payload: ORG_ID_PATH's default org
