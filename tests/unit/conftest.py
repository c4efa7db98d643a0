"""Fixtures the unit tests share: the fake clock, and moto's in-process DynamoDB."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import boto3
import pytest
from moto import mock_aws

from resender.local.aws import make_dynamodb_writes_atomic
from tests.clock import FakeClock

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def moto_dynamodb() -> Iterator[DynamoDBClient]:
    """An empty in-process DynamoDB; moto's conditional writes are made atomic, as DynamoDB's are."""
    make_dynamodb_writes_atomic()
    with mock_aws():
        yield boto3.client("dynamodb", region_name="us-east-1")
