"""``resender redrive``: move messages from the dead-letter queue back to the source queue, losing none.

SQS's own StartMessageMoveTask is not used: it moves everything, so it can neither leave poison messages
behind nor stop after ``--max``, and the local emulator does not implement it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from botocore.exceptions import BotoCoreError, ClientError

from resender import queues
from resender.cli.context import DEAD_LETTER_QUEUE_ENV, SOURCE_QUEUE_ENV
from resender.cli.errors import OperatorError
from resender.cli.target import aws_failure
from resender.queues import POISON_REASON_ATTRIBUTE, SQS_BATCH_SIZE, dead_letter_target_arn, same_queue

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient

#: How long ``redrive`` keeps the messages it received hidden. Skipped (and, in a dry run, counted) messages
#: stay hidden until the run ends, so a receive never returns them twice; they are released at the end.
REDRIVE_VISIBILITY_SECONDS: Final = 120
DRY_RUN_VISIBILITY_SECONDS: Final = 30


@dataclass(slots=True)
class RedriveResult:
    dry_run: bool
    total_estimate: int = 0  # messages in the DLQ when the run started (SQS's approximate count)
    moved: int = 0  # in a dry run: would be moved
    skipped_poison: int = 0
    moved_poison: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "dryRun": self.dry_run,
            "moved": self.moved,
            "skippedPoison": self.skipped_poison,
            "movedPoison": self.moved_poison,
            "inDeadLetterQueueAtStart": self.total_estimate,
        }

    def progress(self, max_moves: int | None = None) -> tuple[int, int, str]:
        """Done, total and the words a progress bar shows for this run so far."""
        done = self.moved + self.skipped_poison
        total = self.total_estimate
        if max_moves is not None:
            total = min(total, max_moves + self.skipped_poison)
        verb = "would move" if self.dry_run else "moved"
        return done, max(total, done, 1), f" {verb} {self.moved}  skipped {self.skipped_poison}"

    def summary(self, queue_url: str) -> list[str]:
        if self.moved == 0 and self.skipped_poison == 0:
            return ["The dead-letter queue is empty: nothing to move."]
        verb = "Would move" if self.dry_run else "Moved"
        line = f"{verb} {self.moved} message(s) to {queue_url}"
        if self.moved_poison:
            line += f" ({self.moved_poison} of them poison)"
        lines = [line + "."]
        if self.skipped_poison:
            lines.append(
                f"Skipped {self.skipped_poison} poison message(s): left in the dead-letter queue "
                "(--include-poison moves them too)."
            )
        if self.dry_run:
            lines.append("Dry run: nothing was moved.")
        return lines


class RedriveInterruptedError(OperatorError):
    def __init__(self, result: RedriveResult, cause: str) -> None:
        super().__init__(
            f"redrive stopped after moving {result.moved} message(s): {cause}. Nothing was lost; rerun "
            "to move the rest (a message sent but not yet deleted may be delivered twice, and the "
            "outcomes table acknowledges the second copy without resending)"
        )
        self.result = result


def queue_urls(sqs: SQSClient, queue_url: str | None, dlq_url: str | None) -> tuple[str, str]:
    """The source queue and its dead-letter queue; either may be found from the other."""
    try:
        if queue_url and not dlq_url:
            policy = queues.redrive_policy(sqs, queue_url)
            target = dead_letter_target_arn(policy)
            if target is None:
                what = "a redrive policy without a dead-letter queue ARN" if policy else "no redrive policy"
                raise OperatorError(
                    f"the source queue has {what}: pass --dlq-url or set {DEAD_LETTER_QUEUE_ENV}"
                )
            dlq_url = queues.url_of_arn(sqs, target)
        elif dlq_url and not queue_url:
            sources = queues.dead_letter_sources(sqs, dlq_url)
            if len(sources) != 1:
                raise OperatorError(
                    f"cannot tell the source queue ({len(sources)} queues use this DLQ): "
                    f"pass --queue-url or set {SOURCE_QUEUE_ENV}"
                )
            queue_url = sources[0]
    except (BotoCoreError, ClientError) as error:
        raise OperatorError(f"finding the queues failed: {aws_failure(error)}") from None
    if not queue_url or not dlq_url:
        raise OperatorError(
            f"no queues: pass --queue-url (or set {SOURCE_QUEUE_ENV}) and/or --dlq-url "
            f"(or set {DEAD_LETTER_QUEUE_ENV})"
        )
    if same_queue(queue_url, dlq_url):
        # Each message would be sent back to the queue it was read from: a new copy that the next receive
        # takes for a message not yet moved, for ever.
        raise OperatorError(
            f"the source queue and the dead-letter queue are the same queue ({queue_url}): "
            "pass the source queue with --queue-url and the DLQ with --dlq-url"
        )
    return queue_url, dlq_url


def redrive(
    sqs: SQSClient,
    *,
    queue_url: str,
    dlq_url: str,
    dry_run: bool = False,
    max_moves: int | None = None,
    include_poison: bool = False,
    on_progress: Callable[[RedriveResult], None] | None = None,
) -> RedriveResult:
    """Move messages from the DLQ back to the source queue, one at a time, send first and delete second.

    A message is deleted from the DLQ only after the source queue accepted its copy, so a crash loses
    nothing; at worst the message is in both queues, and the outcomes table turns the second delivery into
    an acknowledged duplicate, never a second resend.
    """
    try:
        result = RedriveResult(dry_run=dry_run, total_estimate=queues.visible_count(sqs, dlq_url))
    except (BotoCoreError, ClientError) as error:
        raise OperatorError(f"reading the dead-letter queue failed: {aws_failure(error)}") from None
    visibility = DRY_RUN_VISIBILITY_SECONDS if dry_run else REDRIVE_VISIBILITY_SECONDS
    held: dict[str, str] = {}  # SQS message id -> receipt handle, released when the run ends
    seen: set[str] = set()
    try:
        while max_moves is None or result.moved < max_moves:
            wanted = SQS_BATCH_SIZE if max_moves is None else min(SQS_BATCH_SIZE, max_moves - result.moved)
            batch = queues.receive(sqs, dlq_url, wanted, visibility)
            if not batch:
                break
            fresh = [message for message in batch if message["MessageId"] not in seen]
            # Every message received is held (a message seen before and visible again with its newest
            # handle), so an interruption anywhere in the batch hands all of them back.
            held.update((message["MessageId"], message["ReceiptHandle"]) for message in batch)
            if not fresh:
                break  # every message in the queue has been looked at once
            for message in fresh:
                seen.add(message["MessageId"])
                poison = POISON_REASON_ATTRIBUTE in message.get("MessageAttributes", {})
                if poison and not include_poison:
                    result.skipped_poison += 1
                elif dry_run:
                    result.moved += 1
                    result.moved_poison += int(poison)
                else:
                    queues.move(sqs, message, queue_url, dlq_url)
                    del held[message["MessageId"]]
                    result.moved += 1
                    result.moved_poison += int(poison)
                if on_progress:
                    on_progress(result)
    except (BotoCoreError, ClientError) as error:
        raise RedriveInterruptedError(result, aws_failure(error)) from None
    finally:
        # Also on Ctrl-C: the messages go back now, not after their visibility timeout.
        queues.release(sqs, dlq_url, held.values())
    return result
