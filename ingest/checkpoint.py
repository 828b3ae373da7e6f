"""Where a batch's progress is kept in Kafka, and what makes its replay a no-op (Quix-style checkpoints).

Before a batch of one partition goes in, the worker commits the unchanged position ``first`` with an
**intent** in the commit's metadata: ``bs1:pending:<last>:<reference ms>:<attempt>[:<offset being
decoded>]``. Whoever owns the partition next (after a crash or a rebalance) reads it and cuts exactly
the same range again, judging expiry against the same reference time. The range's **dedup token**
(``insert_deduplication_token``) makes the repeated insert a no-op in ClickHouse, in the rollups too.
"""

from __future__ import annotations

from dataclasses import dataclass

PREFIX = "bs1:pending:"
# A range replayed this many times (each replay follows a crash or a lost partition) is decoded under
# guard: the offset of each message is recorded in the intent before it is decoded, so a message that
# kills the process while being decoded is dead-lettered (crashed_worker) by the next owner, undecoded.
GUARD_AFTER_ATTEMPTS = 3


def dedup_token(topic: str, partition: int, first: int, last: int) -> str:
    """The insert deduplication token of the offset range [first, last] of one partition: the same range
    gives the same token, whoever inserts it and however often. Halves of a split insert append
    ``/a`` and ``/b``; the worker's own counters of the range append ``:c``."""
    return f"{topic}:{partition}:{first}-{last}"


@dataclass(frozen=True)
class Intent:
    """What a batch is about to do, recorded with the commit of its first offset."""

    last: int  # the range ends here (inclusive)
    ref_ms: int | None  # wall-clock ms that expiry is judged against (None: written by an older worker)
    attempt: int = 1  # how many times the range has been cut
    decoding: int | None = None  # under guard: the offset being decoded when the owner died

    def metadata(self, decoding: int | None = None) -> str:
        md = f"{PREFIX}{self.last}:{self.ref_ms}:{self.attempt}"
        return md if decoding is None else f"{md}:{decoding}"

    @property
    def guarded(self) -> bool:
        return self.attempt > GUARD_AFTER_ATTEMPTS

    @classmethod
    def parse(cls, metadata: str | None) -> Intent | None:
        """The intent in a committed offset's metadata; None if there is none (or it is not ours)."""
        md = metadata or ""
        if not md.startswith(PREFIX):
            return None
        fields = md[len(PREFIX):].split(":")
        if not fields[0].isdigit():
            return None

        def num(i: int) -> int | None:
            return int(fields[i]) if len(fields) > i and fields[i].isdigit() else None

        return cls(int(fields[0]), num(1), num(2) or 1, num(3))
