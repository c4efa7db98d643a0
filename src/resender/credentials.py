"""Capillary credentials kept in AWS Secrets Manager.

The secret is read once per container and kept for ``SECRET_MAX_AGE_SECONDS``. After an authentication
failure the caller invalidates the generation it used, so that many threads failing at once cause one
re-read, not one each. Powertools' ``parameters`` cache has no such compare-and-invalidate, hence this small
class.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from resender.errors import ResenderError

if TYPE_CHECKING:
    from mypy_boto3_secretsmanager import SecretsManagerClient


class SecretError(ResenderError):
    """The secret cannot be read or is malformed. Messages name fields, never values."""


@dataclass(frozen=True, slots=True)
class BasicCredentials:
    username: str
    password: str = field(repr=False)

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Basic {self._token()}"}

    def secret_values(self) -> tuple[str, ...]:
        """Everything derived from the password that must never be echoed: see :mod:`resender.scrub`."""
        token = self._token()
        return (self.password, self._digest(), token, f"Basic {token}")

    def _digest(self) -> str:
        # Capillary's Basic scheme carries the md5 of the password, not the password itself.
        return hashlib.md5(self.password.encode("utf-8"), usedforsecurity=False).hexdigest()

    def _token(self) -> str:
        return base64.b64encode(f"{self.username}:{self._digest()}".encode()).decode("ascii")


@dataclass(frozen=True, slots=True)
class OAuthCredentials:
    client_key: str
    client_secret: str = field(repr=False)

    def secret_values(self) -> tuple[str, ...]:
        """The client key and secret; the tokens they buy are added by the client that holds them."""
        return (self.client_key, self.client_secret)


Credentials = BasicCredentials | OAuthCredentials


def parse_secret(text: str) -> Credentials:
    """Read one of the two secret shapes; errors name the field that is wrong."""
    document: Any = None
    # The error is raised below, outside this block: a decode error quotes the secret and must not ride
    # along as the new exception's context.
    with contextlib.suppress(ValueError, RecursionError):
        document = json.loads(text)
    if not isinstance(document, dict):
        raise SecretError("the Capillary secret is not a JSON object")
    auth_type = document.get("authType")
    if auth_type == "basic":
        return BasicCredentials(username=_field(document, "username"), password=_field(document, "password"))
    if auth_type == "oauth":
        return OAuthCredentials(
            client_key=_field(document, "clientKey"), client_secret=_field(document, "clientSecret")
        )
    if auth_type is None:
        raise SecretError("the Capillary secret has no 'authType' field (expected 'basic' or 'oauth')")
    raise SecretError("the Capillary secret's 'authType' must be 'basic' or 'oauth'")


def _field(document: dict[str, Any], name: str) -> str:
    value = document.get(name)
    if value is None:
        raise SecretError(f"the Capillary secret has no '{name}' field")
    if not isinstance(value, str) or not value:
        raise SecretError(f"the Capillary secret's '{name}' field must be a non-empty string")
    return value


@dataclass(frozen=True, slots=True)
class CachedCredentials:
    credentials: Credentials
    generation: int


class CredentialsProvider:
    """Thread-safe, per-container cache of the Capillary secret."""

    def __init__(
        self,
        client: SecretsManagerClient,
        secret_id: str,
        max_age_seconds: float = 300,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._secret_id = secret_id
        self._max_age = max_age_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._cached: CachedCredentials | None = None
        self._fetched_at = 0.0
        self._generation = 0

    def get(self) -> CachedCredentials:
        with self._lock:
            if self._cached is None or self._clock() - self._fetched_at >= self._max_age:
                self._cached = self._fetch()
                self._fetched_at = self._clock()
            return self._cached

    def invalidate(self, generation: int) -> None:
        """Forget the credentials of ``generation``, unless a newer read already replaced them."""
        with self._lock:
            if self._cached is not None and self._cached.generation == generation:
                self._cached = None

    def _fetch(self) -> CachedCredentials:
        try:
            response = self._client.get_secret_value(SecretId=self._secret_id)
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "Unknown")
            raise SecretError(f"cannot read the Capillary secret from Secrets Manager ({code})") from None
        except BotoCoreError as error:
            raise SecretError(
                f"cannot reach Secrets Manager to read the Capillary secret ({type(error).__name__})"
            ) from None
        text = response.get("SecretString")
        if text is None:
            raise SecretError("the Capillary secret has no SecretString (binary secrets are not supported)")
        self._generation += 1
        return CachedCredentials(parse_secret(text), self._generation)
