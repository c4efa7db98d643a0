"""End to end over real HTTP: one failure in, one resend out, one outcome stored."""

from __future__ import annotations

from resender.local.stub import CapillaryStub
from tests.builders import failure, sqs_event
from tests.conftest import Invoke
from tests.fixture_types import ReadOutcome


def test_one_failure_is_resent_once_and_recorded(
    invoke: Invoke, stub: CapillaryStub, outcome: ReadOutcome
) -> None:
    response = invoke(sqs_event(failure(1746061653596)))

    assert response == {"batchItemFailures": []}
    assert stub.resends_performed(1746061653596) == 1
    item = outcome(1746061653596)
    assert item is not None
    assert item["status"] == "RESENT"
    assert item["resentMessageId"] == stub.resend_calls[0].resent_message_id
    assert item["attempts"] == 1
