"""The consumer-group source on a real broker: manual commits, pause without rebalance, resets."""

from __future__ import annotations

import time

from avminer.config import load_settings
from avminer.sources.kafka import KafkaSource
from tests.mining.support import committed_offsets, produce
from tests.services import KafkaBroker


def source_for(kafka: KafkaBroker, topic: str, group: str) -> KafkaSource:
    settings = load_settings(environ={}, overrides={"kafka": {
        "bootstrap_servers": kafka.bootstrap, "group_id": group, "session_timeout_ms": 6000,
        "heartbeat_interval_ms": 1000, "max_poll_interval_ms": 5000}})
    return KafkaSource(settings, topics=[topic])


def poll_until(src: KafkaSource, n: int, timeout_s: float = 30) -> list:  # type: ignore[type-arg]
    out: list = []  # type: ignore[type-arg]
    deadline = time.monotonic() + timeout_s
    while len(out) < n and time.monotonic() < deadline:
        out += src.poll(0.2)
    return out


def test_pause_resume_commit_and_replay_after_restart(kafka: KafkaBroker, unique: str) -> None:
    topic = kafka.topic("src", 1)
    produce(kafka.bootstrap, topic, [(b"v", b"m%d" % i) for i in range(30)])
    assigned: list[set[tuple[str, int]]] = []
    src = source_for(kafka, topic, f"g-{unique}")
    src.set_rebalance_callbacks(assigned.append, lambda tps: {})
    try:
        first = poll_until(src, 1)
        assert assigned and assigned[-1] == {(topic, 0)}
        src.pause(src.assignment())
        assert all(not src.poll(0.3) for _ in range(5))  # paused: nothing, and still a member
        src.resume(src.assignment())
        got = first + poll_until(src, 30 - len(first))
        assert [m.value for m in got] == [b"m%d" % i for i in range(30)]
        assert src.commit({(topic, 0): 10})
    finally:
        src.close()
    assert committed_offsets(kafka.bootstrap, f"g-{unique}", topic) == {0: 10}
    again = source_for(kafka, topic, f"g-{unique}")  # a restart replays from the commit, not the position
    try:
        replay = poll_until(again, 20)
        assert replay[0].offset == 10 and replay[-1].offset == 29
    finally:
        again.close()
