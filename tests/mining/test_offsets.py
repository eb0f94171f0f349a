"""The commit rule: only the contiguous done prefix per partition, last done + 1."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from avminer.mining.offsets import OffsetTracker

TP = ("frames", 0)


def test_commits_contiguous_prefix_only() -> None:
    t = OffsetTracker()
    for o in range(5):
        t.track(TP, o)
    t.done(TP, 1)
    t.done(TP, 2)
    assert t.to_commit() == {}  # 0 is still open
    t.done(TP, 0)
    assert t.to_commit() == {TP: 3}
    t.committed({TP: 3})
    assert t.to_commit() == {}
    t.done(TP, 4)
    t.done(TP, 3)
    assert t.to_commit() == {TP: 5}
    assert t.in_flight() == 0


def test_gaps_in_offsets_are_not_waited_for() -> None:
    t = OffsetTracker()
    for o in (10, 12, 17):  # compaction / transaction markers leave holes
        t.track(TP, o)
    t.done(TP, 10)
    t.done(TP, 12)
    assert t.to_commit() == {TP: 13}
    t.done(TP, 17)
    assert t.to_commit() == {TP: 18}


def test_unknown_and_repeated_done_are_ignored() -> None:
    t = OffsetTracker()
    t.track(TP, 0)
    assert t.done(("other", 0), 0) is False
    assert t.done(TP, 5) is False
    assert t.done(TP, 0) is True
    assert t.done(TP, 0) is False
    assert t.to_commit() == {TP: 1}


def test_forget_drops_staged_offsets_and_allows_refetch() -> None:
    t = OffsetTracker()
    for o in range(3):
        t.track(TP, o)
    t.done(TP, 0)
    t.forget([TP])
    assert t.to_commit() == {} and t.in_flight() == 0
    assert t.done(TP, 1) is False  # late completion of revoked work moves nothing
    t.track(TP, 1)  # re-fetched from the committed offset after re-assignment
    t.done(TP, 1)
    assert t.to_commit() == {TP: 2}


def test_tracking_backwards_is_refused() -> None:
    t = OffsetTracker()
    t.track(TP, 5)
    with pytest.raises(ValueError, match="forget"):
        t.track(TP, 5)


def test_stale_committed_ack_does_not_clear_newer_progress() -> None:
    t = OffsetTracker()
    for o in range(3):
        t.track(TP, o)
    t.done(TP, 0)
    staged = t.to_commit()
    t.done(TP, 1)  # progress while the commit was in flight
    t.committed(staged)
    assert t.to_commit() == {TP: 2}


@st.composite
def scenario(draw: st.DrawFn) -> tuple[dict[int, list[int]], list[tuple[int, int]]]:
    parts = draw(st.integers(1, 3))
    offsets: dict[int, list[int]] = {}
    for p in range(parts):
        gaps = draw(st.lists(st.integers(1, 3), min_size=0, max_size=30))
        start = draw(st.integers(0, 100))
        acc, out = start, []
        for g in gaps:
            out.append(acc)
            acc += g
        offsets[p] = out
    events = [(p, o) for p, offs in offsets.items() for o in offs]
    order = draw(st.permutations(events))
    return offsets, list(order)


@settings(max_examples=300, deadline=None)
@given(scenario(), st.data())
def test_commit_offset_is_last_of_done_prefix_plus_one(sc: tuple[dict[int, list[int]], list[tuple[int, int]]],
                                                       data: st.DataObject) -> None:
    offsets, order = sc
    t = OffsetTracker()
    for p, offs in offsets.items():
        for o in offs:
            t.track(("t", p), o)
    done: set[tuple[int, int]] = set()
    committed: dict[int, int] = {}
    for p, o in order:
        t.done(("t", p), o)
        done.add((p, o))
        if data.draw(st.booleans()):
            staged = t.to_commit()
            for (_, part), off in staged.items():
                # Never behind what was committed, never past an open offset.
                assert off > committed.get(part, -1)
                assert all((part, x) in done for x in offsets[part] if x < off)
                committed[part] = off
            t.committed(staged)
    staged = t.to_commit()
    for (_, part), off in staged.items():
        committed[part] = off
    for p, offs in offsets.items():
        if offs:
            assert committed[p] == offs[-1] + 1  # everything done: commit past the last offset
    assert t.in_flight() == 0


def test_untrack_from_drops_the_unstarted_tail() -> None:
    t = OffsetTracker()
    for o in range(6):
        t.track(TP, o)
    t.done(TP, 0)
    t.done(TP, 1)
    assert t.untrack_from(TP, 3) == 3
    t.done(TP, 2)
    assert t.to_commit() == {TP: 3} and t.in_flight() == 0
    t.track(TP, 3)  # fetched again later
    t.track(TP, 4)
    t.done(TP, 4)
    with pytest.raises(ValueError, match="done"):
        t.untrack_from(TP, 3)
