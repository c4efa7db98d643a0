"""Finding the dead-letter queue from what SQS answers, including answers that name none.

SQS leaves ``Attributes`` out when no attribute asked for is set, and a redrive policy is a JSON string that
someone may have written by hand. botocore's Stubber gives exactly those answers to a real client.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from hypothesis import given, settings
from hypothesis import strategies as st

from resender.cli.errors import OperatorError
from resender.cli.redrive import queue_urls
from resender.queues import NoDeadLetterQueueError, Queues, dead_letter_target_arn, same_queue

SOURCE_ARN = "arn:aws:sqs:us-east-1:123456789012:communication-failures"
SOURCE_URL = "https://sqs.us-east-1.amazonaws.com/123456789012/communication-failures"
DLQ_ARN = "arn:aws:sqs:us-east-1:123456789012:communication-failures-dlq"
DLQ_URL = "https://sqs.us-east-1.amazonaws.com/123456789012/communication-failures-dlq"

NO_USABLE_POLICY = [
    pytest.param({}, id="answer-without-Attributes"),
    pytest.param({"Attributes": {}}, id="no-RedrivePolicy"),
    pytest.param({"Attributes": {"RedrivePolicy": ""}}, id="empty-policy"),
    pytest.param({"Attributes": {"RedrivePolicy": "{not json"}}, id="malformed-json"),
    pytest.param({"Attributes": {"RedrivePolicy": "[1, 2]"}}, id="not-an-object"),
    pytest.param({"Attributes": {"RedrivePolicy": '{"maxReceiveCount": 5}'}}, id="no-target"),
    pytest.param({"Attributes": {"RedrivePolicy": '{"deadLetterTargetArn": 7}'}}, id="target-not-a-string"),
    pytest.param({"Attributes": {"RedrivePolicy": '{"deadLetterTargetArn": "dlq"}'}}, id="target-not-an-arn"),
]


@pytest.fixture
def sqs() -> Iterator[tuple[Any, Stubber]]:
    client = boto3.client("sqs", region_name="us-east-1")
    with Stubber(client) as stubber:
        yield client, stubber
        stubber.assert_no_pending_responses()


@pytest.mark.parametrize("answer", NO_USABLE_POLICY)
def test_no_usable_redrive_policy_is_a_no_dead_letter_queue_error(
    sqs: tuple[Any, Stubber], answer: dict[str, Any]
) -> None:
    client, stubber = sqs
    stubber.add_response("get_queue_url", {"QueueUrl": SOURCE_URL})
    stubber.add_response("get_queue_attributes", answer)

    with pytest.raises(NoDeadLetterQueueError, match="DEAD_LETTER_QUEUE_URL is not set"):
        Queues(client).keep_poison(
            "{}", "messageId is missing", source_arn=SOURCE_ARN, source_message_id="m-1"
        )


def test_a_redrive_policy_names_the_dead_letter_queue(sqs: tuple[Any, Stubber]) -> None:
    client, stubber = sqs
    stubber.add_response("get_queue_url", {"QueueUrl": SOURCE_URL})
    policy = f'{{"deadLetterTargetArn": "{DLQ_ARN}", "maxReceiveCount": 5}}'
    stubber.add_response("get_queue_attributes", {"Attributes": {"RedrivePolicy": policy}})
    stubber.add_response("get_queue_url", {"QueueUrl": DLQ_URL})

    assert Queues(client).dead_letter_queue_url(SOURCE_ARN) == DLQ_URL


@pytest.mark.parametrize("answer", NO_USABLE_POLICY)
def test_redrive_without_a_usable_policy_is_an_operator_error(
    sqs: tuple[Any, Stubber], answer: dict[str, Any]
) -> None:
    client, stubber = sqs
    stubber.add_response("get_queue_attributes", answer)

    with pytest.raises(OperatorError, match="--dlq-url"):
        queue_urls(client, SOURCE_URL, None)


def test_redrive_refuses_the_dead_letter_queue_as_its_own_source(sqs: tuple[Any, Stubber]) -> None:
    client, stubber = sqs
    policy = f'{{"deadLetterTargetArn": "{DLQ_ARN}"}}'
    stubber.add_response("get_queue_attributes", {"Attributes": {"RedrivePolicy": policy}})
    stubber.add_response("get_queue_url", {"QueueUrl": DLQ_URL})

    with pytest.raises(OperatorError, match="same queue"):
        queue_urls(client, DLQ_URL, None)  # a queue whose redrive policy points at itself


def test_same_queue_compares_account_and_name_not_the_host_spelling() -> None:
    assert same_queue(DLQ_URL, "https://queue.amazonaws.com/123456789012/communication-failures-dlq/")
    assert not same_queue(DLQ_URL, SOURCE_URL)
    assert not same_queue(DLQ_URL, DLQ_URL.replace("123456789012", "210987654321"))


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.none(),
        st.text(max_size=80),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=60),
            lambda inner: (
                st.lists(inner, max_size=3)
                | st.dictionaries(st.sampled_from(["deadLetterTargetArn", "maxReceiveCount", "x"]), inner)
            ),
            max_leaves=6,
        ).map(json.dumps),
    )
)
def test_reading_any_policy_text_never_raises(policy: str | None) -> None:
    target = dead_letter_target_arn(policy)
    assert target is None or len(target.split(":")) == 6
