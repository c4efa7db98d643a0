"""AWS clients, one set per container.

Clients (not resources) because they are safe to share between threads. No endpoint is hard-coded, so the
SDK's own ``AWS_ENDPOINT_URL`` points the same code at a local emulator.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_secretsmanager import SecretsManagerClient
    from mypy_boto3_sqs import SQSClient


def client_config(pool_size: int) -> Config:
    # Short timeouts: a claim that hangs would hold a record hostage; the standard retry mode already
    # backs off on throttling and 5xx before the error reaches the caller.
    return Config(
        connect_timeout=3,
        read_timeout=5,
        retries={"mode": "standard", "max_attempts": 3},
        max_pool_connections=max(pool_size, 10),
    )


class AwsClients:
    def __init__(self, pool_size: int = 10, session: boto3.session.Session | None = None) -> None:
        self._session = session or boto3.session.Session()
        config = client_config(pool_size)
        self.dynamodb: DynamoDBClient = self._client("dynamodb", config)
        self.secretsmanager: SecretsManagerClient = self._client("secretsmanager", config)
        self.sqs: SQSClient = self._client("sqs", config)

    def _client(self, service: str, config: Config) -> Any:
        return self._session.client(service, config=config)  # type: ignore[call-overload]
