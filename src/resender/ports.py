"""The seams the processor depends on: the outcomes store and a Capillary client, as typed protocols.

The processor is written against these, not against :class:`~resender.store.OutcomeStore` and
:class:`~resender.capillary.CapillaryClient`, so a test's fake is checked by the type checker against the
same contract as the real class, and cannot drift from it unnoticed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from resender.capillary import CapillaryClient
    from resender.models import ResendResult
    from resender.store import Claim, ClaimResult, Outcome, OutcomeStore


class Store(Protocol):
    """Claim a messageId, settle it, or hand it back for later (see :mod:`resender.store`)."""

    def claim(self, message_id: int, lease_seconds: float) -> ClaimResult: ...

    def settle_without_call(self, message_id: int, outcome: Outcome) -> ClaimResult: ...

    def record(self, claim: Claim, outcome: Outcome) -> None: ...

    def defer(self, claim: Claim, reason: str, *, deferrals: int, next_attempt_at: float) -> None: ...


class Capillary(Protocol):
    """One resend request, bounded in time (see :mod:`resender.capillary`)."""

    @property
    def worst_case_seconds(self) -> float: ...

    def resend(self, message_id: int, *, deadline: float | None = None) -> ResendResult: ...


if TYPE_CHECKING:

    def _real_classes_conform(store: OutcomeStore, client: CapillaryClient) -> tuple[Store, Capillary]:
        return store, client  # the type checker proves both satisfy their protocol
