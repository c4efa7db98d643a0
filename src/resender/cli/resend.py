"""``resender resend``: one messageId by hand, through the function's own claim protocol.

An operator can never cause a resend the function would have refused, unless they say ``--force``, and then
the item records who did it, when, from which status and why.
"""

from __future__ import annotations

import getpass
import json
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from resender.cli.context import TABLE_ENV
from resender.cli.errors import ExitCode, OperatorError, RefusedError
from resender.cli.rendering import public
from resender.cli.status import int_or_none
from resender.events import Delivery
from resender.models import FINAL_STATUSES, Status
from resender.store import ClaimLostError, OutcomeStore, StoreError

if TYPE_CHECKING:
    from resender.app import Container
    from resender.cli.target import AwsTarget
    from resender.orgs import Route


@dataclass(frozen=True, slots=True)
class ResendReport:
    message_id: int
    previous_status: str | None
    status: str
    forced: bool
    reason: str
    resent_message_id: int | None = None
    outcome: dict[str, Any] = field(default_factory=dict)

    @property
    def reached_capillary(self) -> bool:
        """Whether the request got to Capillary: it answered (an HTTP status), or may have (UNCERTAIN).

        A RETRYING outcome without an HTTP status never left this side: the secret could not be read, the
        connection was refused, or the circuit breaker held the call back.
        """
        return self.status != Status.RETRYING or "httpStatus" in self.outcome

    @property
    def exit_code(self) -> int:
        """0 only for a resend; 3 when Capillary answered without resending; 4 when it was never reached."""
        if self.status == Status.RESENT:
            return ExitCode.OK
        return ExitCode.NOT_RESENT if self.reached_capillary else ExitCode.UNREACHED

    def to_json(self) -> dict[str, Any]:
        return {
            "messageId": self.message_id,
            "previousStatus": self.previous_status,
            "status": self.status,
            "forced": self.forced,
            "resentMessageId": self.resent_message_id,
            "reachedCapillary": self.reached_capillary,
            "reason": self.reason,
            "outcome": public(self.outcome),
        }

    def summary(self) -> list[str]:
        forced = " (forced)" if self.forced else ""
        lines = [
            f"messageId {self.message_id}: {self.previous_status or 'no outcome'} -> {self.status}{forced}"
        ]
        lines.append(self.reason)
        if self.resent_message_id is not None:
            lines.append(f"resentMessageId {self.resent_message_id}")
        return lines

    def advice(self) -> str | None:
        """What to do next when nothing was resent and trying again can help."""
        if self.exit_code == ExitCode.UNREACHED:
            return (
                f"Capillary was not reached, so nothing was sent; fix the cause above, then run "
                f"resender resend {self.message_id} again."
            )
        if self.status == Status.RETRYING:
            return (
                f"Capillary answered that it did not resend it now; run resender resend {self.message_id} "
                "again later."
            )
        return None


def operator_name(option: str | None, target: AwsTarget | None = None) -> str:
    """Who forces a resend: the option, else the AWS caller identity, else the local login name.

    The caller identity names the person or role behind the credentials; a login name on a shared bastion
    is often just ``root``.
    """
    if option:
        return option
    if target is not None:
        try:
            identity = target.session().client("sts", endpoint_url=target.endpoint_url or None)
            return str(identity.get_caller_identity()["Arn"])
        except (BotoCoreError, ClientError, OperatorError, KeyError):
            pass  # the resend itself reports an AWS problem; naming the operator must not hide it
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name in some containers
        return "unknown"


def refusal(item: Mapping[str, Any] | None, now: float) -> str | None:
    """Why the claim protocol would not resend this message now, or None if it would."""
    if item is None or "status" not in item:
        return None
    status = item["status"]
    if status == Status.RESENT:
        return (
            f"messageId {item['messageId']} was already resent as {item.get('resentMessageId', '?')}; "
            "another resend sends the customer a second copy"
        )
    if status == Status.UNCERTAIN:
        return (
            f"messageId {item['messageId']} is UNCERTAIN: Capillary may already have resent it; "
            "check Capillary first"
        )
    if status in FINAL_STATUSES:
        return f"messageId {item['messageId']} is already settled as {status}"
    if status == Status.IN_PROGRESS and float(item.get("leaseExpiresAt", 0)) > now:
        return f"messageId {item['messageId']} is being resent right now (a live claim)"
    return None


def operator_container(environ: Mapping[str, str], table: str | None, target: AwsTarget) -> Container:
    """The function's wiring, for the table and AWS the command was pointed at."""
    from resender.settings import Settings

    values = {**environ, TABLE_ENV: table} if table else environ
    # The id and org are put in the body by this command, at the default places, whatever the feed uses;
    # and an operator's explicit resend is not second-guessed by the feed's resend policy.
    settings = replace(
        Settings.from_env(values),
        message_id_path="messageId",
        org_id_path="orgId",
        skip_reasons=(),
        resend_channels=(),
        resend_max_age_seconds=0,
        skip_when="",
    )
    return target.container(settings)


def manual_resend(
    container: Container,
    message_id: int,
    *,
    force: bool,
    operator: str,
    reason: str | None = None,
    clock: Callable[[], float] = time.time,
    org_id: int | None = None,
) -> ResendReport:
    """Resend one message through the claim protocol; ``force`` overrides a settled or live status.

    Without ``force`` the message goes through the function's own processor as a one-record batch, so the
    claim, the loop guard and the outcome are exactly what a delivery from the queue would get.
    """
    settings = container.settings
    store = OutcomeStore(
        container.clients.dynamodb, settings.outcomes_table, ttl_seconds=settings.idempotency_ttl_seconds
    )
    current = store.get(message_id)
    previous = current.get("status") if current else None
    why_not = refusal(current, clock())
    known_org = int_or_none(current.get("orgId")) if current else None
    org_id = org_id if org_id is not None else known_org
    if why_not is None:
        return _through_processor(container, store, message_id, previous, org_id)
    if not force:
        raise RefusedError(f"{why_not}; pass --force to resend anyway (recorded on the item as forced)")
    if current is None:  # a refusal always comes from an existing item; this keeps the types honest
        raise OperatorError(f"messageId {message_id} has no outcome to force")
    return _forced(container, store, current, operator, reason, org_id=org_id)


def _through_processor(
    container: Container, store: OutcomeStore, message_id: int, previous: str | None, org_id: int | None
) -> ResendReport:
    from resender.observability import MetricName

    # The body is built here, with the id and org at the places the operator container reads them.
    body: dict[str, Any] = {"messageId": message_id}
    if org_id is not None:
        body["orgId"] = org_id
    _check_route(container, body)
    delivery = Delivery(record_id=f"manual-{uuid.uuid4()}", body=json.dumps(body))
    (report,) = container.resender.process([delivery])
    if any(metric.name is MetricName.DUPLICATE for metric in report.metrics):
        raise RefusedError(
            f"messageId {message_id} was claimed by another delivery meanwhile "
            f"({report.status or 'in progress'}); see resender status {message_id}"
        )
    if report.status is None:
        raise OperatorError(f"messageId {message_id} was not resent: {report.reason}")
    return ResendReport(
        message_id,
        previous,
        report.status,
        forced=False,
        reason=report.reason or "",
        resent_message_id=report.resent_message_id,
        outcome=store.get(message_id) or {},
    )


def _check_route(container: Container, body: Mapping[str, Any]) -> Route:
    """The org routing a delivery of ``body`` would get, or why nothing can be sent (before any claim)."""
    from resender.orgs import OrgRoutingError

    try:
        # The same routing as a delivery's: never another org's credentials.
        return container.resender.route(body)
    except OrgRoutingError as error:
        raise OperatorError(f"messageId {body['messageId']}: {error}; pass --org") from None


def _forced(
    container: Container,
    store: OutcomeStore,
    current: Mapping[str, Any],
    operator: str,
    reason: str | None,
    *,
    org_id: int | None,
) -> ResendReport:
    from resender.processor import outcome_for, record_settled

    settings = container.settings
    route = _check_route(container, {"messageId": current["messageId"], "orgId": org_id})
    message_id = int(current["messageId"])
    previous = Status(current["status"])
    claim = store.force_claim(
        message_id,
        settings.default_claim_lease_seconds + settings.claim_margin_seconds,
        expected_status=previous,
        expected_token=current.get("claimToken") if previous is Status.IN_PROGRESS else None,
        expected_updated_at=current.get("updatedAt"),
        previous_resent_message_id=int_or_none(current.get("resentMessageId")),
        forced_by=operator,
        reason=reason,
    )
    if claim is None:
        raise RefusedError(
            f"messageId {message_id} changed while forcing (another operator or delivery got there "
            f"first); nothing was sent. See resender status {message_id}"
        )
    # The loop guard is not applied: forcing a SKIPPED message is how an operator overrides it.
    result = route.client.resend(message_id)
    outcome = outcome_for(route, result)
    answered = f"Capillary answered {outcome.status} (resentMessageId {outcome.resent_message_id})"
    try:
        record_settled(store, claim, outcome)
    except ClaimLostError:
        raise OperatorError(
            f"messageId {message_id}: {answered} but the item was settled by someone else "
            "before this outcome was written"
        ) from None
    except StoreError as error:
        raise OperatorError(
            f"messageId {message_id}: {answered} but recording it failed ({error}); the "
            "claim will turn UNCERTAIN"
        ) from None
    description = (
        f"forced by {operator} from {previous}: resent as {result.resent_message_id}"
        if result.resent_message_id is not None
        else f"forced by {operator} from {previous}: {result.error_message or outcome.status}"
    )
    return ResendReport(
        message_id,
        previous,
        outcome.status,
        forced=True,
        reason=description,
        resent_message_id=result.resent_message_id,
        outcome=store.get(message_id) or {},
    )
