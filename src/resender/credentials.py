"""Capillary credentials kept in AWS Secrets Manager.

The secret holds one credential (``authType`` basic or oauth), or a map of several orgs' credentials
(``{"orgs": {"<orgId>": {<one of the two shapes>, "baseUrl": "https://..."}}}``), because a Capillary
credential is bound to one org and orgs live on different clusters. :class:`OrgCredentials` is the view of
one org of the map, with the same ``get()``/``invalidate()`` the Capillary client uses.

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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from botocore.exceptions import BotoCoreError, ClientError

from resender.aws import error_name
from resender.errors import ResenderError
from resender.settings import ConfigurationError, validate_base_url

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


@dataclass(frozen=True, slots=True)
class OrgEntry:
    credentials: Credentials
    base_url: str | None = None  # None: CAPILLARY_BASE_URL


@dataclass(frozen=True, slots=True)
class OrgDirectory:
    """The several-orgs shape of the secret: each org's credentials and cluster, by org id (digits)."""

    orgs: Mapping[str, OrgEntry]


SecretDocument = Credentials | OrgDirectory


def parse_secret(text: str) -> Credentials:
    """Read one of the two single-org secret shapes; errors name the field that is wrong."""
    document = parse_secret_document(text)
    if isinstance(document, OrgDirectory):
        raise SecretError("the Capillary secret holds several orgs ('orgs'), not one credential")
    return document


def parse_secret_document(text: str) -> SecretDocument:
    """Read the secret in any of its shapes: one credential, or a map of orgs."""
    document: Any = None
    # The error is raised below, outside this block: a decode error quotes the secret and must not ride
    # along as the new exception's context.
    with contextlib.suppress(ValueError, RecursionError):
        document = json.loads(text)
    if not isinstance(document, dict):
        raise SecretError("the Capillary secret is not a JSON object")
    if "orgs" in document and "authType" not in document:
        return _org_directory(document["orgs"])
    return _credentials(document, "the Capillary secret")


def _org_directory(orgs: object) -> OrgDirectory:
    if not isinstance(orgs, dict) or not orgs:
        raise SecretError("the Capillary secret's 'orgs' must be a non-empty object of org id to credentials")
    entries: dict[str, OrgEntry] = {}
    for org_id, entry in orgs.items():
        if not (org_id.isascii() and org_id.isdigit() and 0 < int(org_id) < 2**63):
            raise SecretError("every key of the Capillary secret's 'orgs' must be an org id (digits)")
        where = f"the Capillary secret's org {int(org_id)}"
        if not isinstance(entry, dict):
            raise SecretError(f"{where} is not a JSON object")
        base_url = entry.get("baseUrl")
        if base_url is not None:
            if not isinstance(base_url, str):
                raise SecretError(f"{where} has a 'baseUrl' that is not a string")
            try:
                base_url = validate_base_url(base_url)
            except ConfigurationError as error:
                # The same https rule as CAPILLARY_BASE_URL; the message names the setting it came from.
                detail = str(error).replace("CAPILLARY_BASE_URL", "baseUrl")
                raise SecretError(f"{where}: {detail}") from None
        entries[str(int(org_id))] = OrgEntry(_credentials(entry, where), base_url)
    return OrgDirectory(entries)


def _credentials(document: dict[str, Any], where: str) -> Credentials:
    auth_type = document.get("authType")
    if auth_type == "basic":
        return BasicCredentials(
            username=_field(document, "username", where), password=_field(document, "password", where)
        )
    if auth_type == "oauth":
        return OAuthCredentials(
            client_key=_field(document, "clientKey", where),
            client_secret=_field(document, "clientSecret", where),
        )
    if auth_type is None:
        raise SecretError(f"{where} has no 'authType' field (expected 'basic' or 'oauth')")
    raise SecretError(f"{where}'s 'authType' must be 'basic' or 'oauth'")


def _field(document: dict[str, Any], name: str, where: str) -> str:
    value = document.get(name)
    if value is None:
        raise SecretError(f"{where} has no '{name}' field")
    if not isinstance(value, str) or not value:
        raise SecretError(f"{where}'s '{name}' field must be a non-empty string")
    return value


@dataclass(frozen=True, slots=True)
class CachedCredentials:
    credentials: Credentials
    generation: int


@dataclass(frozen=True, slots=True)
class CachedSecret:
    document: SecretDocument
    generation: int
    # The single-org view, built once per read so that callers see one object per generation.
    single: CachedCredentials | None = None


class CredentialSource(Protocol):
    """What the Capillary client needs: credentials with a generation, and a way to drop a refused one."""

    def get(self) -> CachedCredentials: ...

    def invalidate(self, generation: int) -> None: ...


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
        self._cached: CachedSecret | None = None
        self._fetched_at = 0.0
        self._generation = 0

    def get(self) -> CachedCredentials:
        """The one credential of a single-org secret."""
        cached = self.secret()
        if cached.single is None:
            raise SecretError("the Capillary secret holds several orgs: a record is sent with its org's")
        return cached.single

    def secret(self) -> CachedSecret:
        """The whole secret, in whichever shape it has."""
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

    def _fetch(self) -> CachedSecret:
        try:
            response = self._client.get_secret_value(SecretId=self._secret_id)
        except ClientError as error:
            raise SecretError(
                f"cannot read the Capillary secret from Secrets Manager ({error_name(error)})"
            ) from None
        except BotoCoreError as error:
            raise SecretError(
                f"cannot reach Secrets Manager to read the Capillary secret ({type(error).__name__})"
            ) from None
        text = response.get("SecretString")
        if text is None:
            raise SecretError("the Capillary secret has no SecretString (binary secrets are not supported)")
        self._generation += 1
        document = parse_secret_document(text)
        if isinstance(document, OrgDirectory):
            return CachedSecret(document, self._generation)
        return CachedSecret(document, self._generation, CachedCredentials(document, self._generation))


class OrgCredentials:
    """One org's credentials out of a several-orgs secret, shaped like a single-org provider."""

    def __init__(self, provider: CredentialsProvider, org_id: str) -> None:
        self._provider = provider
        self.org_id = org_id
        self._lock = threading.Lock()
        self._view: CachedCredentials | None = None

    def get(self) -> CachedCredentials:
        cached = self._provider.secret()
        document = cached.document
        entry = document.orgs.get(self.org_id) if isinstance(document, OrgDirectory) else None
        if entry is None:
            # The secret changed under a running container: this org is gone from it.
            raise SecretError(f"no credentials for org {self.org_id}")
        with self._lock:
            if self._view is None or self._view.generation != cached.generation:
                self._view = CachedCredentials(entry.credentials, cached.generation)
            return self._view

    def invalidate(self, generation: int) -> None:
        self._provider.invalidate(generation)
