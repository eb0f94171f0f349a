"""Which offsets are safe to commit: the contiguous done prefix of every partition.

The pipeline finishes messages out of order (decode workers, radar that waits, dead letters acked by
the broker while a batch is still at the engine). Committing offset ``o`` tells Kafka "everything
before ``o`` is handled", so per partition only the *contiguous* prefix of done offsets may be
committed: the commit offset is the last done offset of that prefix plus one. A crash replays
everything after the last commit (at-least-once); deterministic sample ids make the sinks idempotent.

Offsets are not assumed to be dense — compaction and transaction markers leave gaps — so the tracker
remembers the offsets it was handed rather than counting.

Pure logic, no threads: the poll thread owns the one :class:`OffsetTracker`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

Partition = tuple[str, int]
"""(topic, partition)."""


@dataclass
class _PartitionState:
    pending: deque[int] = field(default_factory=deque)  # tracked, not yet past the prefix, ascending
    open: set[int] = field(default_factory=set)  # tracked and not done (subset of pending)
    last_tracked: int = -1
    committable: int | None = None  # commit offset reached by the done prefix, not yet committed


class OffsetTracker:
    """Per-partition in-flight offsets and the commit offset their done prefix allows.

    Usage: :meth:`track` every offset as it leaves the consumer (ascending per partition), :meth:`done`
    when its decision and sinks (or its dead letter, or its radar join) are durable, and
    :meth:`to_commit` to get what to commit; :meth:`committed` after the commit succeeded.
    """

    def __init__(self) -> None:
        self._parts: dict[Partition, _PartitionState] = {}

    def track(self, tp: Partition, offset: int) -> None:
        """Start tracking ``offset`` of ``tp``; offsets must arrive in ascending order per partition.

        Raises:
            ValueError: an offset not above the last tracked one (a replay without :meth:`forget`).
        """
        st = self._parts.setdefault(tp, _PartitionState())
        if offset <= st.last_tracked:
            raise ValueError(
                f"{tp[0]}[{tp[1]}]: offset {offset} tracked after {st.last_tracked}; "
                "forget() the partition before it is re-fetched from an earlier offset"
            )
        st.last_tracked = offset
        st.pending.append(offset)
        st.open.add(offset)

    def done(self, tp: Partition, offset: int) -> bool:
        """Mark ``offset`` of ``tp`` handled. Returns False (and ignores it) for unknown or repeated offsets.

        Unknown offsets are normal after a revocation: work that was in flight for a partition this
        consumer no longer owns finishes, but must not move the new owner's commits.
        """
        st = self._parts.get(tp)
        if st is None or offset not in st.open:
            return False
        st.open.remove(offset)
        # Advance the contiguous prefix; each offset leaves `pending` once, so this is O(1) amortised.
        while st.pending and st.pending[0] not in st.open:
            st.committable = st.pending.popleft() + 1
        return True

    def to_commit(self) -> dict[Partition, int]:
        """Commit offsets that moved since the last :meth:`committed` (partition -> last done + 1)."""
        return {tp: st.committable for tp, st in self._parts.items() if st.committable is not None}

    def committed(self, offsets: dict[Partition, int]) -> None:
        """Record that ``offsets`` were committed (clears them from :meth:`to_commit`)."""
        for tp, off in offsets.items():
            st = self._parts.get(tp)
            if st is not None and st.committable == off:
                st.committable = None

    def untrack_from(self, tp: Partition, offset: int) -> int:
        """Stop tracking the open offsets ``>= offset`` of ``tp`` (work dropped before it started).

        The commit offset can then reach ``offset`` but never pass it, so the dropped messages are
        fetched again after a restart. Returns how many offsets were dropped.

        Raises:
            ValueError: one of them is already done (only work that never started may be dropped).
        """
        st = self._parts.get(tp)
        if st is None:
            return 0
        dropped = 0
        while st.pending and st.pending[-1] >= offset:
            last = st.pending[-1]
            if last not in st.open:
                raise ValueError(f"{tp[0]}[{tp[1]}]: offset {last} is done; it cannot be untracked")
            st.pending.pop()
            st.open.remove(last)
            dropped += 1
        st.last_tracked = min(st.last_tracked, offset - 1)
        return dropped

    def forget(self, partitions: Iterable[Partition]) -> None:
        """Drop every staged offset of ``partitions`` (revoked: the new owner replays them)."""
        for tp in partitions:
            self._parts.pop(tp, None)

    def in_flight(self, tp: Partition | None = None) -> int:
        """Tracked offsets not done yet, for one partition or all of them."""
        if tp is not None:
            st = self._parts.get(tp)
            return len(st.open) if st else 0
        return sum(len(st.open) for st in self._parts.values())

    def partitions(self) -> list[Partition]:
        """Partitions with any state (in flight or awaiting a commit)."""
        return list(self._parts)
