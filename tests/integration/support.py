"""Helpers of the end-to-end tests: process environments, CLI subprocesses, reading whole topics.

Everything these tests run is the product as deployed: ``avminer`` commands configured by
``AVMINER_*`` variables (or :func:`avminer.config.load_settings` for in-process miners), against the
session's real broker, SeaweedFS and PostgreSQL.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]

# Consumer-group timings that make tansu group joins take seconds, not tens of seconds.
FAST_GROUP = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000, "max_poll_interval_ms": 5000}


def product_env(**settings: str) -> dict[str, str]:
    """This process's environment without any ``AVMINER_*`` variable, plus ``settings`` (already prefixed)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AVMINER_")}
    env.update(settings)
    return env


def with_schema(url: str, schema: str) -> str:
    """A PostgreSQL URL whose catalog tables live in ``schema`` (``?schema=`` query parameter)."""
    return f"{url}{'&' if '?' in url else '?'}schema={schema}"


def avminer(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Start ``avminer ARGS`` in its own session; stdout and stderr go to ``log``."""
    fh = open(log, "ab")  # noqa: SIM115 - the child keeps it
    return subprocess.Popen([sys.executable, "-m", "avminer.cli.main", *args], env=env, cwd=REPO, stdout=fh,
                            stderr=subprocess.STDOUT, start_new_session=True)


def finish(proc: subprocess.Popen[bytes], log: Path, timeout_s: float, sig: int | None = None) -> str:
    """Optionally signal ``proc``, wait for it, fail with its log unless it exited 0; returns the log."""
    if sig is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise AssertionError(f"{proc.args!r} did not exit within {timeout_s:.0f}s:\n{log.read_text()[-4000:]}") from None
    text = log.read_text()
    assert proc.returncode == 0, f"{proc.args!r} exited with {proc.returncode}:\n{text[-4000:]}"
    return text


def kill(proc: subprocess.Popen[bytes]) -> None:
    """Make sure a child started here is gone (test teardown)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


class TopicReader:
    """Reads every partition of one topic from the beginning, accumulating what arrives.

    One consumer for the whole test (no group, no commits), so waiting on a topic costs one fetch loop
    rather than a group join per check.
    """

    def __init__(self, bootstrap: str, topic: str, **client: Any) -> None:
        from kafka import KafkaConsumer, TopicPartition

        self.topic = topic
        self.records: list[Any] = []
        # client: more kafka-python settings (the TLS tests' security settings).
        self._consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                       auto_offset_reset="earliest", **client)
        deadline = time.monotonic() + 30
        parts = self._consumer.partitions_for_topic(topic)
        while not parts and time.monotonic() < deadline:
            time.sleep(0.2)
            parts = self._consumer.partitions_for_topic(topic)
        assert parts, f"topic {topic} has no partitions"
        self._consumer.assign([TopicPartition(topic, p) for p in sorted(parts)])

    def poll(self, timeout_ms: int = 500) -> int:
        """Fetch what is there now; returns how many records arrived."""
        n = 0
        for batch in self._consumer.poll(timeout_ms=timeout_ms).values():
            self.records.extend(batch)
            n += len(batch)
        return n

    def wait_for(self, done: Callable[[list[Any]], bool], timeout_s: float, what: str,
                 alive: Callable[[], str | None] | None = None) -> list[Any]:
        """Poll until ``done(records)``; ``alive()`` returns why to give up early (a dead process), or None."""
        deadline = time.monotonic() + timeout_s
        while not done(self.records):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what} on {self.topic} "
                                     f"({len(self.records)} records read)")
            problem = alive() if alive is not None else None
            if problem:
                raise AssertionError(f"gave up waiting for {what}: {problem}")
            self.poll()
        return self.records

    def settle(self, quiet_s: float = 1.5) -> list[Any]:
        """Keep reading until nothing new arrives for ``quiet_s`` (late duplicates, stray extras)."""
        last = time.monotonic()
        while time.monotonic() - last < quiet_s:
            if self.poll(timeout_ms=300):
                last = time.monotonic()
        return self.records

    def close(self) -> None:
        self._consumer.close()

    def __enter__(self) -> TopicReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()



class MinerThread:
    """``run_miner`` in a thread of this process, stopped (drain, commit, close) on exit.

    In-process so a test can watch the engine holder it serves from; the miner itself is the
    product's (:func:`avminer.mining.daemon.run_miner`) with the given settings.
    """

    def __init__(self, settings: Any, engines: Any) -> None:
        self.stop = threading.Event()
        self.stats: Any = None
        self.error: BaseException | None = None

        def run() -> None:
            from avminer.mining.daemon import run_miner

            try:
                self.stats = run_miner(settings, engines=engines, stop=self.stop, handle_signals=False,
                                       serve_metrics=False)
            except BaseException as exc:  # reported by the test, not lost in the thread
                self.error = exc

        self.thread = threading.Thread(target=run, name="test-miner", daemon=True)

    def problem(self) -> str | None:
        """Why the miner is not mining any more (for :meth:`TopicReader.wait_for`), or None."""
        if self.thread.is_alive():
            return None
        return f"the miner stopped: {self.error!r}"

    def __enter__(self) -> MinerThread:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=60)
        assert not self.thread.is_alive(), "the miner did not stop within 60 s"
        if self.error is not None:
            raise self.error
