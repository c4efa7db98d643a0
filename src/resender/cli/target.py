"""Which AWS the command talks to, chosen the way the AWS CLI chooses it, and how its failures read."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import boto3
import botocore.loaders
import botocore.session
from botocore.exceptions import BotoCoreError, ClientError

from resender.aws import client_config, region_from_environment
from resender.cli.errors import OperatorError

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_sns import SNSClient
    from mypy_boto3_sqs import SQSClient

    from resender.app import Container
    from resender.settings import Settings

#: What the AWS CLI says when it finds no credentials, so an operator gets the fix they already know.
NO_CREDENTIALS_HINT: Final = (
    'Unable to locate credentials. You can configure credentials by running "aws configure".'
)


@dataclass(frozen=True, slots=True)
class StaticCredentials:
    """Keys given as values (an ``--env-vars`` file), not found by the SDK's own chain."""

    access_key: str
    secret_key: str = field(repr=False)
    token: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class AwsTarget:
    """Which AWS to talk to, chosen the way the AWS CLI chooses it.

    Unset values fall back to the SDK's own resolution: ``AWS_PROFILE``, ``AWS_REGION`` /
    ``AWS_DEFAULT_REGION``, the profile's region and ``AWS_ENDPOINT_URL`` (which botocore reads itself when
    no endpoint is passed, so the same command works against a local emulator).
    """

    profile: str | None = None
    region: str | None = None
    endpoint_url: str | None = None
    credentials: StaticCredentials | None = None

    @classmethod
    def from_environment(cls, environ: Mapping[str, str], *, over: AwsTarget | None = None) -> AwsTarget:
        """The choice a function given ``environ`` would make; ``over``'s values (options) win."""
        chosen = over or cls()
        key, secret = environ.get("AWS_ACCESS_KEY_ID"), environ.get("AWS_SECRET_ACCESS_KEY")
        # As in the AWS CLI, a profile named by option wins over keys in the environment.
        if chosen.profile:
            key = secret = None
        return cls(
            chosen.profile or environ.get("AWS_PROFILE") or None,
            chosen.region or environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION") or None,
            chosen.endpoint_url or environ.get("AWS_ENDPOINT_URL") or None,
            chosen.credentials
            or (StaticCredentials(key, secret, environ.get("AWS_SESSION_TOKEN")) if key and secret else None),
        )

    def botocore_session(self) -> botocore.session.Session:
        try:
            core = botocore.session.Session()
            # Service models are static files; parsing them once per process, not once per client, is
            # most of what creating a client costs. Credentials and settings are still resolved afresh.
            core.register_component("data_loader", _shared_loader())
            if self.profile:
                core.set_config_variable("profile", self.profile)
            if region := self.resolved_region():
                core.set_config_variable("region", region)
            if self.credentials:
                core.set_credentials(
                    self.credentials.access_key, self.credentials.secret_key, self.credentials.token
                )
            return core
        except BotoCoreError as error:
            raise OperatorError(f"AWS configuration: {error}") from None

    def session(self) -> boto3.session.Session:
        try:
            session = boto3.session.Session(botocore_session=self.botocore_session())
        except BotoCoreError as error:
            raise OperatorError(f"AWS configuration: {error}") from None
        # boto3 adds its own data folder to the loader's search path on every new session.
        loader = _shared_loader()
        loader.search_paths[:] = list(dict.fromkeys(loader.search_paths))
        return session

    def resolved_region(self) -> str | None:
        # The AWS CLI (v2) reads AWS_REGION before AWS_DEFAULT_REGION; botocore reads only the latter.
        return self.region or region_from_environment()

    def dynamodb(self) -> DynamoDBClient:
        client: DynamoDBClient = self._client("dynamodb")
        return client

    def sqs(self) -> SQSClient:
        client: SQSClient = self._client("sqs")
        return client

    def sns(self) -> SNSClient:
        client: SNSClient = self._client("sns")
        return client

    def _client(self, service: str) -> Any:
        try:
            return self.session().client(  # type: ignore[call-overload]
                service, endpoint_url=self.endpoint_url or None, config=client_config(10)
            )
        except BotoCoreError as error:
            raise OperatorError(f"AWS configuration: {error}") from None

    def container(self, settings: Settings) -> Container:
        """The function's wiring for this AWS: the same clients a deployed function would build."""
        from resender.app import build_container

        return build_container(
            settings,
            session=self.botocore_session(),
            region=self.resolved_region(),
            endpoint_url=self.endpoint_url,
        )


@functools.cache
def _shared_loader() -> botocore.loaders.Loader:
    return botocore.loaders.create_loader()


def aws_failure(error: BotoCoreError | ClientError) -> str:
    """One line naming what AWS said, without a traceback."""
    if isinstance(error, ClientError):
        details = error.response.get("Error", {})
        code = details.get("Code", "Unknown")
        message = details.get("Message") or ""
        return f"AWS error ({code}){': ' + message if message else ''}"
    return f"AWS error: {error}"


def aimed_at(resources: Sequence[str], target: AwsTarget, error: Exception) -> str:
    """Which resources, region and endpoint a failed AWS call was aimed at: what an operator checks first."""
    parts = list(resources)
    try:
        client = target.dynamodb()
        parts.append(f"region {client.meta.region_name or 'unset'}")
        parts.append(f"endpoint {client.meta.endpoint_url}")
    except OperatorError as unresolved:
        parts.append(str(unresolved))
    except Exception:
        parts.append("region unknown")
    context = f" [{', '.join(parts)}]" if parts else ""
    if "NoCredentials" in f"{type(error).__name__} {error}":
        context += f" {NO_CREDENTIALS_HINT}"
    return context
