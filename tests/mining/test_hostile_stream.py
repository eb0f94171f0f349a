"""Hostile frames on a real broker with a PostgreSQL catalog: dead-lettered once, committed past, miner alive."""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from pathlib import Path

from avminer.catalog.catalog import open_catalog
from avminer.events import codec
from avminer.events.records import CameraFrame, Conditions
from avminer.mining import decode
from tests.mining.support import committed_offsets, consume_all, fleet_frames
from tests.mining.test_hostile_decode import gif_bomb, jpeg, png_bomb
from tests.mining.test_kafka_mining import (
    MinerThread,
    decisions_of,
    ends,
    produce,
    settings_for,
    wait_for_count,
)
from tests.services import KafkaBroker


def hostile_frames(good: CameraFrame, root: Path, outside: Path) -> list[tuple[CameraFrame, str]]:
    """(frame, expected dead-letter reason) for what a hostile or broken producer can send."""
    fifo = root / "fifo.jpg"
    os.mkfifo(fifo)
    (root / "escape.jpg").symlink_to(outside)
    by_uri = dataclasses.replace(good, image=None)
    return [
        (dataclasses.replace(by_uri, image_uri="file:///dev/zero"), decode.MISSING_IMAGE),
        (dataclasses.replace(by_uri, image_uri=fifo.as_uri()), decode.MISSING_IMAGE),
        (dataclasses.replace(by_uri, image_uri=outside.as_uri()), decode.MISSING_IMAGE),
        (dataclasses.replace(by_uri, image_uri=(root / "escape.jpg").as_uri()), decode.MISSING_IMAGE),
        (dataclasses.replace(by_uri, image_uri="file:///etc/hostname"), decode.MISSING_IMAGE),
        (dataclasses.replace(good, image=png_bomb(), encoding="png", width=20000, height=20000),
         decode.OVERSIZE_IMAGE),
        (dataclasses.replace(good, image=gif_bomb(), encoding="gif", width=65535, height=65535),
         decode.OVERSIZE_IMAGE),
        (dataclasses.replace(good, image=jpeg(90, 120), width=good.width, height=good.height), decode.INVALID_FIELD),
        (dataclasses.replace(good, frame_id="f\x00nul"), decode.INVALID_FIELD),
        (dataclasses.replace(good, vehicle_id="veh\x1b[31m\nforged"), decode.INVALID_FIELD),
        (dataclasses.replace(good, metadata={"note": "nul\x00"}), decode.INVALID_FIELD),
        (dataclasses.replace(good, conditions=Conditions(weather="fog\x00")), decode.INVALID_FIELD),
        (dataclasses.replace(good, encoding="png"), decode.CORRUPT_IMAGE),  # JPEG bytes that claim to be PNG
    ]


def test_hostile_frames_never_stop_the_miner_and_are_committed_past(
    kafka: KafkaBroker, fleet_topics: dict[str, str], sample_drive: Path, tmp_path: Path, unique: str,
    postgres_url: str,
) -> None:
    root = tmp_path / "images"
    root.mkdir()
    outside = tmp_path / "private.jpg"
    outside.write_bytes(jpeg())
    good = list(fleet_frames(sample_drive, 30))
    hostile = hostile_frames(good[0], root, outside)
    messages: list[tuple[bytes | None, bytes]] = []
    reasons: dict[bytes, str] = {}
    for i, f in enumerate(good):
        messages.append((f.vehicle_id.encode(), codec.encode(f)))
        if i < len(hostile):
            bad, reason = hostile[i]
            bad = dataclasses.replace(bad, timestamp_us=f.timestamp_us + 1)
            value = codec.encode(bad)
            messages.append((b"evil", value))
            reasons[value] = reason
    positions = produce(kafka.bootstrap, fleet_topics["frames"], messages)
    schema = f"t_{unique}"
    settings = settings_for(kafka, fleet_topics, tmp_path, f"g-{unique}",
                            AVMINER_SINKS__CATALOG_URL=f"{postgres_url}?schema={schema}",
                            AVMINER_DECODE__IMAGE_ROOTS=f"[{str(root)!r}]", AVMINER_SELECTION__TARGET_RATE="1.0")
    try:
        with MinerThread(settings) as miner:
            dead = wait_for_count(lambda: consume_all(kafka.bootstrap, fleet_topics["dead_letter"], len(hostile), 5),
                                  len(hostile), 120, "dead letters")
            decided = wait_for_count(lambda: decisions_of(kafka.bootstrap, fleet_topics["decisions"], len(good), 5),
                                     len(good), 120, "decisions")
        assert miner.error is None
        assert {d.sample_id for d in decided} == {f.sample_id for f in good}
        got = Counter(dict(r.headers)["reason"].decode() for r in dead)
        assert got == Counter(reasons.values())
        for r in dead:
            assert dict(r.headers)["reason"].decode() == reasons[r.value]
            assert "\x1b" not in dict(r.headers)["error"].decode()
        # Committed past every hostile message: a restart does not meet any of them again.
        assert committed_offsets(kafka.bootstrap, f"g-{unique}", fleet_topics["frames"]) == ends(positions)
        # Nothing outside the image roots reached the catalog (so no export can copy it out).
        catalog = open_catalog(f"{postgres_url}?schema={schema}")
        rows = catalog.query_samples()
        assert rows and {r.sample_id for r in rows} <= {f.sample_id for f in good}
        assert not any(str(outside) in (r.frame_uri or "") for r in rows)
        catalog.close()
    finally:
        open_catalog(f"{postgres_url}?schema={schema}").drop_schema()
