"""AWS clients, one set per container.

Clients (not resources) because they are safe to share between threads. No endpoint is hard-coded, so the
SDK's own ``AWS_ENDPOINT_URL`` points the same code at a local emulator. The clients come from botocore
directly: boto3 adds nothing the function uses and imports s3transfer, a third of the handler's import time.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import botocore.session
from botocore.config import Config
from botocore.exceptions import ClientError

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


def region_from_environment() -> str | None:
    """``AWS_REGION`` before ``AWS_DEFAULT_REGION``, as the AWS CLI v2 and Lambda's runtime read them.

    botocore reads only ``AWS_DEFAULT_REGION`` (and then the profile); Lambda sets both, but a shell that
    follows the AWS CLI's habit exports only ``AWS_REGION``.
    """
    return os.environ.get("AWS_REGION", "").strip() or None


class AwsClients:
    """The function's clients, from ``session`` (default: botocore's, configured by the environment).

    The operator tool passes a session of its own, with the region and endpoint it was pointed at, so it
    builds the function's wiring without changing the process environment. Unset, ``region`` is
    ``AWS_REGION`` (see :func:`region_from_environment`) and the endpoint is the SDK's own choice.
    """

    def __init__(
        self,
        pool_size: int = 10,
        session: botocore.session.Session | None = None,
        *,
        region: str | None = None,
        endpoint_url: str | None = None,
    ) -> None:
        self._session = session or botocore.session.get_session()
        self._region = region or region_from_environment()
        self._endpoint_url = endpoint_url or None
        config = client_config(pool_size)
        self.dynamodb: DynamoDBClient = self._client("dynamodb", config)
        self.secretsmanager: SecretsManagerClient = self._client("secretsmanager", config)
        self.sqs: SQSClient = self._client("sqs", config)

    def _client(self, service: str, config: Config) -> Any:
        return self._session.create_client(
            service, region_name=self._region, endpoint_url=self._endpoint_url, config=config
        )


def error_name(error: BaseException) -> str:
    """What to call an AWS failure in a message: the service's error code, else the exception's type.

    Never its text: a service's message may quote the request, and with it an item's or a secret's values.
    """
    if isinstance(error, ClientError):
        return str(error.response.get("Error", {}).get("Code", "Unknown"))
    return type(error).__name__
