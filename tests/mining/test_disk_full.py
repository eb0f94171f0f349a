"""The local sink's disk fills up mid-drive: the miner pauses, resumes when space is back, loses nothing.

A real full disk: a small tmpfs mounted for the test (needs root, as CI runs; skipped elsewhere).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from avminer.catalog.catalog import open_catalog
from avminer.config import load_settings
from avminer.errors import SinkUnavailableError
from avminer.mining.daemon import run_miner
from avminer.sinks.local import JsonlSink, read_jsonl, read_requests
from tests.mining.support import fake_holder, sample_records


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 6 MiB tmpfs, unmounted afterwards."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mnt)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root): {done.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(disk: Path, leave: int) -> Path:
    """Write a filler file until only about ``leave`` bytes are free."""
    filler = disk / "filler"
    with open(filler, "wb") as fh:
        try:
            while True:
                st = os.statvfs(disk)
                free = st.f_bavail * st.f_frsize
                if free <= leave:
                    break
                fh.write(b"\0" * min(1 << 16, free - leave))
                fh.flush()
        except OSError:
            pass
    return filler


def writer_pauses() -> float:
    return REGISTRY.get_sample_value("avminer_sink_errors_total", {"sink": "writer"}) or 0.0


def test_a_full_disk_pauses_the_miner_and_nothing_is_lost(small_disk: Path, sample_drive: Path) -> None:
    frames, _ = sample_records(sample_drive)
    out = small_disk / "out"
    settings = load_settings(environ={}, overrides={
        "sinks": {"output_dir": str(out)}, "metrics": {"port": 0},
        "selection": {"target_rate": 1.0, "slice_rates": {}, "warmup_frames": 1, "camera_cooldown_s": 0.0},
    })
    open_catalog(f"sqlite:///{out / 'catalog.db'}").close()  # the miner starts; the disk fills while it runs
    filler = fill(small_disk, leave=64 * 1024)
    before = writer_pauses()
    freed = threading.Event()

    def free_space_once_paused() -> None:
        deadline = time.monotonic() + 120
        while writer_pauses() <= before and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)  # stay full a while: retries keep failing, nothing moves on
        filler.unlink()
        freed.set()

    watcher = threading.Thread(target=free_space_once_paused, daemon=True)
    watcher.start()
    stats = run_miner(settings, engines=fake_holder(), drive_log=sample_drive, handle_signals=False,  # type: ignore[arg-type]
                      serve_metrics=False)
    watcher.join(timeout=5)
    assert freed.is_set() and writer_pauses() > before, "the disk never filled: the test proved nothing"
    assert stats.decisions == len(frames) and stats.drained
    decisions = read_jsonl(out / "decisions.jsonl")
    ids = [d["sample_id"] for d in decisions]
    assert len(ids) == len(set(ids)) and set(ids) == {f.sample_id for f in frames}  # each once, none lost
    mined = {d["sample_id"] for d in decisions if d["mined"]}
    requests = read_requests(out)
    assert mined and len(requests) == len(mined) == len({r.sample_id for r in requests})
    for r in requests:  # every stored blob whole: its content address is its sha256
        data = Path(r.frame_uri.removeprefix("file://")).read_bytes()
        assert hashlib.sha256(data).hexdigest() in r.frame_uri
    with open_catalog(f"sqlite:///{out / 'catalog.db'}") as catalog:
        assert {s.sample_id for s in catalog.query_samples(limit=10_000)} == mined
    assert (out / "decisions.jsonl").read_bytes().endswith(b"\n")


@dataclasses.dataclass
class _Row:
    sample_id: str
    payload: str


def test_a_jsonl_batch_cut_by_a_full_disk_is_rolled_back_and_retried_whole(small_disk: Path) -> None:
    path = small_disk / "rows.jsonl"
    sink = JsonlSink(path)
    filler = fill(small_disk, leave=48 * 1024)
    batches = [[_Row(f"s{b:03d}-{i}", "x" * 3000) for i in range(4)] for b in range(40)]
    failures = 0
    for batch in batches:
        while True:
            try:
                for row in batch:
                    sink.write(row)
                sink.flush()
                break
            except SinkUnavailableError:
                failures += 1
                filler.unlink(missing_ok=True)  # space comes back; the same batch is written again
    sink.close()
    assert failures == 1
    rows = read_jsonl(path)
    assert [r["sample_id"] for r in rows] == [r.sample_id for b in batches for r in b]  # all, once, in order
    assert path.read_bytes().endswith(b"\n")
