"""Keeping freed fetch buffers: a process that does it stops page-faulting its buffers back in; the miner's
consumer does it unless ``kafka.keep_fetch_memory`` is off; under another C library nothing is touched.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from avminer.config import load_settings
from avminer.sources import kafka as kafka_source
from avminer.sources import kafka_memory

BUFFER_PAGES = (6 << 20) // 4096

# kafka-python's shape of allocation, in a fresh process: four 6 MB copies of a fetch alive at once, freed,
# again and again, on a helper thread (its IO thread's malloc arena) and on the main thread.
_FETCH_LIKE_CHURN = textwrap.dedent("""
    import json, resource, sys, threading
    outcome = "defaults"
    if sys.argv[1] == "keep":
        from avminer.sources.kafka_memory import keep_fetch_memory
        outcome = keep_fetch_memory()
    def churn(faults):
        fetch = bytes(6 << 20)
        def one():
            held = [bytearray(fetch) for _ in range(4)]
            del held
        for _ in range(3):
            one()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(10):
            one()
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    faults = []
    thread = threading.Thread(target=churn, args=(faults,))
    thread.start()
    thread.join()
    churn(faults)
    print(json.dumps({"outcome": outcome, "faults": faults}))
""")


def _churn(mode: str) -> dict[str, object]:
    done = subprocess.run([sys.executable, "-c", _FETCH_LIKE_CHURN, mode], capture_output=True, text=True,
                          timeout=120, check=True)
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.skipif(kafka_memory.glibc_version() is None, reason="the thresholds are glibc's")
def test_kept_memory_is_reused_where_the_defaults_fault_every_page_back_in() -> None:
    kept = _churn("keep")
    assert str(kept["outcome"]).startswith("kept (glibc")
    # Ten rounds of 24 MB each on both threads: not one buffer's worth of fresh pages.
    assert all(f < BUFFER_PAGES for f in kept["faults"])  # type: ignore[attr-defined]
    # The control: with glibc's own thresholds the same churn maps fresh pages every round. If a future
    # glibc stops doing that, this fails and the setting can go.
    stock = _churn("defaults")
    assert all(f > 10 * BUFFER_PAGES for f in stock["faults"])  # type: ignore[attr-defined]


def test_another_c_library_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_such_name(name: str) -> str:
        raise ValueError(f"unrecognized configuration name {name!r}")

    monkeypatch.setattr(kafka_memory.os, "confstr", no_such_name)
    assert kafka_memory.glibc_version() is None
    assert kafka_memory._apply() == "C library defaults (not glibc)"
    monkeypatch.setattr(kafka_memory.os, "confstr", lambda name: "musl 1.2")
    assert kafka_memory.glibc_version() is None


def test_the_miners_source_keeps_fetch_memory_unless_told_not_to(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def keep() -> str:
        calls.append("kept")
        return "kept"

    monkeypatch.setattr(kafka_source, "keep_fetch_memory", keep)

    class _Consumer:
        def __init__(self, **config: object) -> None:
            self.config = config

        def subscribe(self, topics: list[str], listener: object) -> None:
            pass

    monkeypatch.setattr(kafka_source, "KafkaConsumer", _Consumer)
    base = {"bootstrap_servers": "127.0.0.1:9"}
    kafka_source.KafkaSource(load_settings(environ={}, overrides={"kafka": base}), topics=["t"])
    assert calls == ["kept"]  # on by default
    kafka_source.KafkaSource(load_settings(environ={}, overrides={"kafka": {**base, "keep_fetch_memory": False}}),
                             topics=["t"])
    assert calls == ["kept"]
    settings = load_settings(environ={"AVMINER_KAFKA__KEEP_FETCH_MEMORY": "false"}, overrides={"kafka": base})
    assert settings.kafka.keep_fetch_memory is False
