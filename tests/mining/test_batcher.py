"""Micro-batches leave when full or when their oldest item waited max_wait_ms."""

from __future__ import annotations

from avminer.mining.batcher import MicroBatcher


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_full_batch_leaves_at_once() -> None:
    b: MicroBatcher[int] = MicroBatcher(3, 20, clock=Clock())
    assert b.add(1) is None and b.add(2) is None
    assert b.add(3) == [1, 2, 3]
    assert len(b) == 0 and b.next_deadline() is None


def test_partial_batch_waits_max_wait_from_its_oldest_item() -> None:
    clock = Clock()
    b: MicroBatcher[int] = MicroBatcher(8, 20, clock=clock)
    b.add(1)
    clock.t += 0.015
    b.add(2)
    assert b.due() is None
    assert b.next_deadline() == 100.02
    clock.t = 100.02
    assert b.due() == [1, 2]
    assert b.due() is None


def test_drop_and_flush() -> None:
    b: MicroBatcher[int] = MicroBatcher(8, 20, clock=Clock())
    for i in range(5):
        b.add(i)
    assert b.drop(lambda i: i % 2 == 0) == 2
    assert b.flush() == [0, 2, 4]
    assert b.flush() is None
