"""Local output directory sinks and the composite writer: idempotent by sample id, replay-safe."""

from __future__ import annotations

import dataclasses
import json
import threading
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from avminer.catalog.catalog import Catalog
from avminer.errors import SinkError, SinkUnavailableError
from avminer.events.records import Decision, LabelRequest
from avminer.sinks.base import MinedSampleWriter, retry_until_available
from avminer.sinks.local import (
    JsonlSink,
    LocalDecisionSink,
    LocalRequestSink,
    _flat_fields,
    read_jsonl,
    read_requests,
    record_to_json,
)
from avminer.storage.base import content_key
from avminer.storage.local import LocalFrameStore
from tests.sinks import factories as f


@given(st.binary(max_size=256), st.sampled_from(["frame", "uncertainty", "prediction", "mask"]))
def test_content_key_is_a_function_of_the_bytes(data: bytes, kind: str) -> None:
    key = content_key("frames", kind, data, "image/png")
    assert key == content_key("frames/", kind, bytes(data), "image/png")
    assert key.startswith(f"frames/{kind}/") and key.endswith(".png")
    assert key.split("/")[2] == key.split("/")[3][:2]


def test_content_key_refuses_unknown_kinds() -> None:
    with pytest.raises(SinkError, match="unknown blob kind"):
        content_key("", "video", b"x", "image/png")


def test_local_store_put_is_idempotent(tmp_path: Path) -> None:
    store = LocalFrameStore(tmp_path)
    uri1 = store.put("a", b"same bytes", "image/jpeg")
    uri2 = store.put("b", b"same bytes", "image/jpeg")
    assert uri1 == uri2 and uri1.startswith("file://")
    assert store.get(uri1) == b"same bytes"
    assert len([p for p in (tmp_path / "frames").rglob("*") if p.is_file()]) == 1


def test_jsonl_index_survives_restart_and_torn_lines(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    sink = JsonlSink(path)
    assert sink.write(f.decision(1)) and not sink.write(f.decision(1))
    sink.close()
    with open(path, "a") as fh:
        fh.write('{"sample_id": "torn"')  # a crash mid-append
    sink = JsonlSink(path)
    assert "s0001" in sink and "torn" not in sink
    assert not sink.write(f.decision(1))
    assert sink.write(f.decision(2))
    sink.close()
    assert [r["sample_id"] for r in read_jsonl(path)] == ["s0001", "s0002"]


def _writer(out: Path, catalog: Catalog | None) -> MinedSampleWriter:
    return MinedSampleWriter(LocalFrameStore(out), LocalRequestSink(out), LocalDecisionSink(out), catalog)


def test_writer_replay_duplicates_nothing(tmp_path: Path, sqlite_catalog: Catalog) -> None:
    batch = [f.sample(1), f.sample(2, mined=False), f.sample(3)]
    writer = _writer(tmp_path, sqlite_catalog)
    report = writer.write_batch(batch)
    assert (report.decisions, report.mined, report.requests_sent) == (3, 2, 2)
    writer.close()
    # A restart replays the whole batch: nothing new anywhere.
    writer = _writer(tmp_path, sqlite_catalog)
    report = writer.write_batch(batch)
    assert (report.requests_sent, report.requests_skipped) == (0, 2)
    writer.close()
    reqs = read_requests(tmp_path)
    assert sorted(r.sample_id for r in reqs) == ["s0001", "s0003"]
    assert all(r.frame_uri.startswith("file://") and r.uncertainty_uri for r in reqs)
    assert len(read_jsonl(tmp_path / "decisions.jsonl")) == 3
    blobs = [p for p in (tmp_path / "frames").rglob("*") if p.is_file()]
    # 2 frames + 1 shared uncertainty map (same bytes) + 2 predictions.
    assert len(blobs) == 5
    stats = sqlite_catalog.stats()
    assert stats["samples"] == 2 and stats["by_state"]["requested"] == 2
    row = sqlite_catalog.get_sample("s0003")
    assert row is not None and row.prediction_uri and row.width == f.W


def test_writer_without_catalog_still_dedupes_in_the_sink(tmp_path: Path) -> None:
    writer = _writer(tmp_path, None)
    writer.write(f.sample(1))
    writer.write(f.sample(1))
    writer.close()
    assert len(read_requests(tmp_path)) == 1


def test_retry_until_available_pauses_then_succeeds() -> None:
    calls: list[int] = []
    pauses: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise SinkUnavailableError("down")
        return "ok"

    assert retry_until_available(flaky, base_s=0.001, cap_s=0.002, on_pause=lambda e, n: pauses.append(n)) == "ok"
    assert pauses == [0, 1]


def test_retry_until_available_gives_up_on_stop() -> None:
    stop = threading.Event()
    stop.set()

    def down() -> None:
        raise SinkUnavailableError("down")

    with pytest.raises(SinkUnavailableError):
        retry_until_available(down, stop=stop, base_s=0.001)


@dataclasses.dataclass
class _Nested:
    decision: Decision
    others: list[Decision]


def test_json_lines_are_the_records_as_asdict_writes_them() -> None:
    """record_to_json reads flat records field by field (no deep copy): the same line as dataclasses.asdict."""
    d = Decision("s" * 32, "f-1", "v", "front", 12, "m-1", "dusk/clear/x", True, {"mi": 0.25, "radar": 1.0},
                 ["uncertainty"], "frames", 3, 99, 7)
    r = LabelRequest("s" * 32, "f-1", "file:///x.jpg", "v", "front", 12, "dusk/clear/x", "m-1", ["radar"],
                     {"mi": 0.5}, 0.75, 8, None)
    for record in (d, r, _Nested(d, [d])):
        assert record_to_json(record) == json.dumps(dataclasses.asdict(record), separators=(",", ":"), sort_keys=True)
    assert _flat_fields(Decision) is not None and _flat_fields(_Nested) is None
