"""The mining report from a real catalog, real sink files and real frames: numbers, links, escaping."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from avminer.catalog.catalog import Catalog, open_catalog
from avminer.config import load_settings
from avminer.engines import default_bundle_path
from avminer.engines.bundle import load_bundle
from avminer.errors import ConfigError
from avminer.events.records import CameraFrame, Decision
from avminer.mining.pipeline import uncertainty_png
from avminer.report.build import write_report
from avminer.report.collect import collect
from avminer.report.page import href, text
from avminer.sinks.base import MinedSample, MinedSampleWriter
from avminer.sinks.local import LocalDecisionSink, LocalRequestSink
from avminer.storage.local import LocalFrameStore
from tests.mining.support import sample_records

HOSTILE_ID = '<img src=x onerror="alert(1)">\x1b[31m'
HOSTILE_FRAME = "<script>alert('frame')</script>"
HOSTILE_SLICE = "dusk/<b>rain</b>/x"
DAY = "day/clear/cambridge_uk"


def _settings(out: Path) -> Any:
    return load_settings(environ={}, overrides={
        "sinks": {"output_dir": str(out)},
        "selection": {"target_rate": 0.25, "slice_rates": {"dusk/*/*": 0.5}},
    })


def _decision(i: int, frame: CameraFrame, slice_key: str, mined: bool, version: str, **kw: Any) -> Decision:
    fields: dict[str, Any] = dict(
        sample_id=f"s{i:03d}", frame_id=frame.frame_id, vehicle_id="car-1", camera_id="front",
        timestamp_us=1_700_000_000_000_000 + i * 1_000_000, model_version=version, slice=slice_key, mined=mined,
        scores={"mi": 0.1 + i / 100, "shift": 40.0 + 10 * i, "radar": 0.0, "novelty": 0.5},
        reasons=["uncertainty" if i % 2 else "shift"] if mined else [],
    )
    fields.update(kw)
    return Decision(**fields)


@pytest.fixture
def run(tmp_path: Path, sample_drive: Path) -> tuple[Any, Catalog, list[Decision]]:
    """An output directory as an embedded run leaves it: 12 decisions, 5 mined, one labeled, one hostile."""
    out = tmp_path / "run"
    settings = _settings(out)
    version = load_bundle(default_bundle_path(), verify=False).version
    frames, _ = sample_records(sample_drive)
    decisions = []
    for i in range(12):
        slice_key = DAY if i < 8 else HOSTILE_SLICE
        mined = i in (2, 5, 7, 9)
        decisions.append(_decision(i, frames[i], slice_key, mined, version))
    decisions.append(_decision(12, frames[12], HOSTILE_SLICE, True, version, sample_id=HOSTILE_ID,
                               frame_id=HOSTILE_FRAME, reasons=["<i>odd</i>"]))
    catalog = open_catalog(f"sqlite:///{out / 'catalog.db'}")
    writer = MinedSampleWriter(LocalFrameStore(out), LocalRequestSink(out), LocalDecisionSink(out), catalog)
    umap = np.linspace(0, 1, 48 * 64, dtype=np.float32).reshape(48, 64)
    writer.write_batch([
        MinedSample(d, image=frames[i].image, content_type="image/jpeg", uncertainty_png=uncertainty_png(umap),
                    width=frames[i].width, height=frames[i].height, priority=float(i))
        for i, d in enumerate(decisions)
    ])
    writer.close()
    catalog.mark_labeled("s005", "file:///labels/s005.png", "oracle")
    yield settings, catalog, decisions
    catalog.close()


def test_counts_rates_and_drift_per_slice(run: tuple[Any, Catalog, list[Decision]]) -> None:
    settings, catalog, decisions = run
    out = Path(settings.sinks.output_dir)
    data = collect(settings, catalog, decisions=out / "decisions.jsonl", requests=out / "requests.jsonl")
    by = {s.slice: s for s in data.slices}
    assert set(by) == {DAY, HOSTILE_SLICE}
    day, dusk = by[DAY], by[HOSTILE_SLICE]
    assert (day.seen, day.mined, day.labeled) == (8, 3, 1)
    assert (dusk.seen, dusk.mined, dusk.labeled) == (5, 2, 0)
    assert day.rate == pytest.approx(3 / 8) and dusk.rate == pytest.approx(2 / 5)
    assert day.target_rate == 0.25 and dusk.target_rate == 0.5  # the policy's rate_for, pattern included
    assert day.series[-1][1:] == (8, 3, 1)  # the over-time series ends at the totals
    assert [p[0] for p in day.series] == sorted(p[0] for p in day.series)
    # Drift: the decisions' shift scores replayed against the starter bundle's reference.
    assert data.drift_reference == decisions[0].model_version
    assert day.drift is not None and dusk.drift is not None and dusk.drift_max is not None
    assert dusk.drift_max >= dusk.drift
    assert data.seen_total == 13 and data.mined_total == 5
    assert [g.priority for g in data.gallery] == sorted((g.priority for g in data.gallery), reverse=True)
    assert {g.state for g in data.gallery} == {"requested", "labeled"}


def test_without_decisions_counts_come_from_the_catalog(run: tuple[Any, Catalog, list[Decision]]) -> None:
    settings, catalog, _ = run
    data = collect(settings, catalog, decisions=Path(settings.sinks.output_dir) / "missing.jsonl")
    assert {s.slice: (s.seen, s.mined, s.rate) for s in data.slices} == {
        DAY: (3, 3, None), HOSTILE_SLICE: (2, 2, None)}
    assert data.seen_total is None and any("missing.jsonl" in n for n in data.notes)


def test_malformed_decision_lines_are_counted_not_fatal(run: tuple[Any, Catalog, list[Decision]]) -> None:
    settings, catalog, _ = run
    path = Path(settings.sinks.output_dir) / "decisions.jsonl"
    with open(path, "a") as fh:
        fh.write("not json\n")
        fh.write(json.dumps({"sample_id": "x", "slice": DAY}) + "\n")  # no timestamp
        fh.write("[1, 2]\n")
        fh.write(json.dumps({"sample_id": "y", "slice": DAY, "timestamp_us": 10**30, "mined": False,
                             "scores": {"shift": "high"}}) + "\n")  # far future, a score that is no number
    data = collect(settings, catalog, decisions=path)
    assert data.seen_total == 14
    assert "3 malformed line(s) of decisions.jsonl skipped" in data.notes
    index = write_report(settings, Path(settings.sinks.output_dir) / "report", catalog, decisions=path)
    assert f"{10**30} us" in index.read_text()


def test_page_escapes_everything_from_messages(run: tuple[Any, Catalog, list[Decision]], tmp_path: Path) -> None:
    settings, catalog, _ = run
    out = Path(settings.sinks.output_dir)
    index = write_report(settings, tmp_path / "report", catalog, decisions=out / "decisions.jsonl",
                         requests=out / "requests.jsonl")
    page = index.read_text()
    assert "<script>alert" not in page and "<img src=x" not in page and "<b>rain" not in page
    assert "<i>odd" not in page
    assert text(HOSTILE_FRAME) in page and text(HOSTILE_SLICE) in page
    assert "\x1b" not in page and "\\x1b[31m" in page  # the ESC shown, not passed to a terminal or parser
    assert page.count("<script>") == 1  # only the page's own filter script
    assert page.count('class="card"') == 5


def test_gallery_links_resolve_inside_the_report_folder(run: tuple[Any, Catalog, list[Decision]],
                                                        tmp_path: Path) -> None:
    settings, catalog, _ = run
    out = Path(settings.sinks.output_dir)
    tasks = tmp_path / "tasks.json"
    tasks.write_text(json.dumps([
        {"id": 41, "data": {"sample_id": "s002", "image": "s3://b/k.jpg"}},
        {"data": {"sample_id": "s005", "image": "s3://b/l.jpg"}},  # our own export: no Label Studio id yet
    ]))
    cvat = tmp_path / "cvat"
    (cvat / "images").mkdir(parents=True)
    (cvat / "images" / "s009.jpg").write_bytes(b"\xff\xd8 jpeg")
    report = tmp_path / "report"
    write_report(settings, report, catalog, decisions=out / "decisions.jsonl", requests=out / "requests.jsonl",
                 labelstudio_tasks=tasks, labelstudio_url="http://127.0.0.1:8080/projects/3/", cvat_export=cvat)
    page = (report / "index.html").read_text()
    assert 'href="http://127.0.0.1:8080/projects/3/data?task=41"' in page
    assert len(list((report / "requests").glob("*.json"))) == 5
    sent = [json.loads(p.read_text()) for p in (report / "requests").glob("*.json")]
    assert {r["source"] for r in sent} == {"label request as sent"}
    assert {r["request"]["sample_id"] for r in sent} == {"s002", "s005", "s007", "s009", HOSTILE_ID}
    own_tasks = [json.loads(p.read_text()) for p in (report / "tasks").glob("*.json")]
    assert [t["data"]["sample_id"] for t in own_tasks] == ["s005"]
    assert 'href="../cvat/images/s009.jpg"' in page
    # Every relative link and image of the page names a file the report folder (or the export) holds.
    images = re.findall(r'<img src="([^"]*)"', page)
    assert len(images) == 10 and all(i.startswith("assets/") for i in images)  # 5 frames, 5 uncertainty maps
    targets = re.findall(r'(?:href|src)="([^"#][^"]*)"', page)
    local = [t for t in targets if not t.startswith(("http", "data:"))]  # data: is the empty favicon
    for t in local:
        assert (report / t).resolve().is_file(), t


def test_bad_links_are_refused(run: tuple[Any, Catalog, list[Decision]], tmp_path: Path) -> None:
    settings, catalog, _ = run
    with pytest.raises(ConfigError, match="labelstudio-url"):
        write_report(settings, tmp_path / "r", catalog, labelstudio_url="javascript:alert(1)")
    with pytest.raises(ConfigError, match="images/"):
        write_report(settings, tmp_path / "r", catalog, cvat_export=tmp_path)
    assert href("javascript:alert(1)") == "#" and href("data:text/html,x") == "#"
    assert href("requests/a b<.json") == "requests/a%20b%3C.json"


def test_report_command_on_a_run_directory(run: tuple[Any, Catalog, list[Decision]], tmp_path: Path) -> None:
    settings, _, _ = run
    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-m", "avminer.cli.main", "report", "--run", settings.sinks.output_dir, "--profile", "sample",
         "--out", str(tmp_path / "page"), "--limit", "2"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(repo)})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == f"report: {(tmp_path / 'page' / 'index.html').resolve()}"
    page = (tmp_path / "page" / "index.html").read_text()
    assert page.count('class="card"') == 2  # --limit
    assert "/ target 10.0%" in page and "/ target 50.0%" in page  # the sample profile's targets
    assert "the 2 highest-priority of 5 mined frames" in page


def test_decisions_from_the_kafka_topic(run: tuple[Any, Catalog, list[Decision]], kafka: Any, tmp_path: Path) -> None:
    """A miner on Kafka writes no decisions file: the report reads the decisions topic to its end."""
    from kafka import KafkaProducer

    from avminer.events import codec

    _, catalog, decisions = run
    topic = kafka.topic("decisions", partitions=2)
    producer = KafkaProducer(bootstrap_servers=kafka.bootstrap)
    for d in [*decisions, decisions[0]]:  # at-least-once: a duplicate counts once
        producer.send(topic, key=d.sample_id.encode(), value=codec.encode(d))
    producer.send(topic, key=b"x", value=b"not an avminer event")
    producer.flush()
    producer.close()
    settings = load_settings(environ={"AVMINER_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap}, overrides={
        "sinks": {"output_dir": str(tmp_path / "kafka-run")}, "selection": {"target_rate": 0.25, "slice_rates": {}}})
    data = collect(settings, catalog, decisions_topic=topic)
    assert {s.slice: (s.seen, s.mined, s.labeled) for s in data.slices} == {DAY: (8, 3, 1), HOSTILE_SLICE: (5, 2, 0)}, data.notes
    assert data.seen_total == 13
    assert f"1 undecodable message(s) on {topic} skipped" in data.notes
    missing = collect(settings, catalog, decisions_topic=f"absent-{tmp_path.name}")
    assert missing.seen_total is None and any("does not exist" in n for n in missing.notes)


def test_an_empty_catalog_gives_a_page_that_says_so(tmp_path: Path) -> None:
    settings = _settings(tmp_path / "empty")
    with open_catalog(f"sqlite:///{tmp_path / 'empty.db'}") as catalog:
        index = write_report(settings, tmp_path / "page", catalog)
    page = index.read_text()
    assert "No frame was mined." in page and 'class="card"' not in page
    from avminer.report.serve import make_server

    with pytest.raises(ConfigError, match="holds no index.html"):
        make_server(tmp_path)
