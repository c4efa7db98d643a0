"""Several Capillary orgs in one deployment: which org's credentials and cluster each record goes to.

A Capillary credential is bound to one org, and orgs live on different clusters. With a several-orgs secret
each record names its org (``ORG_ID_PATH``), and is sent with that org's credentials to that org's base URL
by a client of its own (own token cache, own connection pool), built on first use and kept per container.
A record whose org the secret does not know is poison: it is never sent with another org's credentials.

With today's single-org secret nothing changes: every record goes through the one client, and the org key
is :data:`DEFAULT_ORG_KEY`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import jmespath
from jmespath.exceptions import JMESPathError

from resender.credentials import CredentialSource, CredentialsProvider, OrgCredentials, OrgDirectory
from resender.errors import ResenderError
from resender.pacing import DEFAULT_ORG
from resender.ports import Capillary
from resender.settings import Settings

#: The org key of a single-org deployment (the rate limiter and breaker key by it).
DEFAULT_ORG_KEY: Final = DEFAULT_ORG

ClientFactory = Callable[[str, CredentialSource], Capillary]


class OrgRoutingError(ResenderError):
    """The record cannot be sent with any credentials the secret holds; the message names the org."""


@dataclass(frozen=True, slots=True)
class Route:
    org_key: str
    client: Capillary
    org_id: int | None = None  # the org it is sent for, when the secret says (several-orgs shape)


class OrgRouter:
    def __init__(
        self,
        settings: Settings,
        credentials: CredentialsProvider,
        default_client: Capillary,
        client_factory: ClientFactory,
    ) -> None:
        self._path_text = settings.org_id_path
        self._path = jmespath.compile(settings.org_id_path) if settings.org_id_path else None
        self._default_base_url = settings.capillary_base_url
        self._credentials = credentials
        self._default = Route(DEFAULT_ORG_KEY, default_client)
        self._factory = client_factory
        self._lock = threading.Lock()
        self._clients: dict[tuple[str, str], Capillary] = {}

    def route(self, payload: Any) -> Route:
        """The org and client for ``payload``; :class:`OrgRoutingError` if none may send it.

        Raises :class:`~resender.credentials.SecretError` when the secret cannot be read (retry later).
        """
        document = self._credentials.secret().document
        if not isinstance(document, OrgDirectory):
            return self._default
        org = self._org_of(payload, document)
        entry = document.orgs.get(org)
        if entry is None:
            raise OrgRoutingError(f"no credentials for org {org}")
        base_url = entry.base_url or self._default_base_url
        with self._lock:
            client = self._clients.get((org, base_url))
            if client is None:
                client = self._factory(base_url, OrgCredentials(self._credentials, org))
                self._clients[(org, base_url)] = client
        return Route(org, client, int(org))

    def _org_of(self, payload: Any, document: OrgDirectory) -> str:
        found: object = None
        if self._path is not None:
            try:
                found = self._path.search(payload)
            except (JMESPathError, TypeError, ValueError):
                found = None
        if found is None:
            if len(document.orgs) == 1:
                return next(iter(document.orgs))
            where = f"at ORG_ID_PATH {self._path_text!r}" if self._path else "(ORG_ID_PATH is not set)"
            raise OrgRoutingError(
                f"no org id {where} and the secret holds credentials for {len(document.orgs)} orgs"
            )
        if isinstance(found, int) and not isinstance(found, bool) and 0 < found < 2**63:
            return str(found)
        if isinstance(found, str) and found.strip().isascii() and found.strip().isdigit():
            number = int(found.strip())
            if 0 < number < 2**63:
                return str(number)
        shown = "".join(char if char.isprintable() else "?" for char in str(found)[:32])
        raise OrgRoutingError(f"org id {shown!r} at ORG_ID_PATH {self._path_text!r} is not an org id")
