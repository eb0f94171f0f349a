"""`avminer catalog` and `avminer catalog freeze` answer the provenance questions from the shell."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from avminer.catalog.catalog import Catalog
from avminer.cli.main import main
from tests.sinks import factories as f


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    assert main(list(argv)) == 0
    out: dict[str, Any] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    return out


def test_mined_at_dusk_and_trained_on(sqlite_catalog: Catalog, capsys: pytest.CaptureFixture[str]) -> None:
    now = int(time.time() * 1e6)
    for i, (slice_key, age_s) in enumerate([("dusk/clear/x", 60), ("dusk/fog/x", 600), ("day/clear/x", 60),
                                            ("dusk/clear/x", 7200)]):
        s = f.sample(i, with_maps=False, slice_key=slice_key, ts_us=now - age_s * 1_000_000)
        sqlite_catalog.upsert_decision(s.decision, frame_uri=f"s3://b/{i}.jpg")
        sqlite_catalog.mark_labeled(s.sample_id, f"s3://b/m{i}.png", "oracle")
    url = sqlite_catalog.url
    got = _run(capsys, "catalog", "--catalog", url, "mined", "--slice", "dusk/*/*", "--since", "1h", "--json")
    assert [s["sample_id"] for s in got["samples"]] == ["s0000", "s0001"]
    assert got["samples"][0]["reasons"] == ["uncertainty"] and "mi" in got["samples"][0]["scores"]

    _run(capsys, "catalog", "--catalog", url, "freeze", "dusk", "--query", '{"slices": ["dusk"]}')
    sqlite_catalog.record_training_run("run-7", "dusk", model_version="v7")
    got = _run(capsys, "catalog", "--catalog", url, "trained-on", "v7", "--json")
    assert sorted(r["sample_id"] for r in got["labels"]) == ["s0000", "s0001", "s0003"]
    stats = _run(capsys, "catalog", "--catalog", url, "stats", "--json")
    assert stats["by_state"] == {"mined": 0, "requested": 0, "labeled": 1, "used": 3}
    # Human-readable forms run too.
    assert main(["catalog", "--catalog", url, "mined", "--since", "1h"]) == 0
    assert "3 sample(s)" in capsys.readouterr().out
    assert main(["catalog", "--catalog", url, "trained-on", "v8"]) == 2  # a clear error, not a traceback
    assert "no training run produced model 'v8'" in capsys.readouterr().err
