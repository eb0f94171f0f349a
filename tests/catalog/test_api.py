"""The datasets HTTP API over real HTTP (loopback, ephemeral port)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from avminer.catalog.api import DatasetsServer
from avminer.catalog.catalog import Catalog
from tests.sinks import factories as f


@pytest.fixture
def api(sqlite_catalog: Catalog) -> Iterator[tuple[str, Catalog]]:
    for i in range(4):
        s = f.sample(i, with_maps=False, slice_key="dusk/clear/x" if i < 3 else "day/clear/x")
        sqlite_catalog.upsert_decision(s.decision, frame_uri=f"s3://b/{i}.jpg", width=f.W, height=f.H)
        if i != 2:
            sqlite_catalog.mark_labeled(s.sample_id, f"s3://b/m{i}.png", "oracle")
    server = DatasetsServer(sqlite_catalog, "127.0.0.1", 0)
    server.start()
    yield server.url, sqlite_catalog
    server.shutdown()
    server.server_close()


def call(url: str, method: str = "GET", body: Any = None, raw: bytes | None = None) -> tuple[int, Any]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_freeze_version_and_list(api: tuple[str, Catalog]) -> None:
    url, catalog = api
    status, v1 = call(f"{url}/datasets/dusk", "POST", {"slices": ["dusk/*/*"], "labeled_only": True})
    assert status == 201 and (v1["version"], v1["sample_count"]) == (1, 2)
    catalog.mark_labeled("s0002", "s3://b/m2.png", "human")
    status, v2 = call(f"{url}/datasets/dusk", "POST", {"slices": ["dusk/*/*"]})
    assert status == 201 and (v2["version"], v2["sample_count"]) == (2, 3)

    status, got = call(f"{url}/datasets/dusk?version=1")
    assert status == 200 and sorted(s["sample_id"] for s in got["samples"]) == ["s0000", "s0001"]
    assert got["query"]["slices"] == ["dusk/*/*"]
    status, latest = call(f"{url}/datasets/dusk")
    assert latest["version"] == 2 and len(latest["samples"]) == 3
    assert all(s["label_uri"] for s in latest["samples"])
    status, listing = call(f"{url}/datasets")
    assert status == 200 and [(d["dataset_id"], d["version"]) for d in listing["datasets"]] == [("dusk", 1), ("dusk", 2)]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "reason"),
    [
        ("POST", "/datasets/x", b"{not json", 400, "not valid JSON"),
        ("POST", "/datasets/x", b'{"colour": "red"}', 400, "unknown query field"),
        ("POST", "/datasets/x", b'{"slices": "dusk", "labeled_only": "yes"}', 400, "labeled_only"),
        ("POST", "/datasets/x", b'{"start": "1h", "end": "2h"}', 400, "end: must be after start"),
        ("POST", "/datasets/x", b'{"slices": ["night/*/*"]}', 409, "no sample matches"),
        ("POST", "/datasets/bad%20id", b"{}", 400, "invalid dataset id"),
        ("GET", "/datasets/nope", None, 404, "has no versions"),
        ("GET", "/datasets/dusk?version=abc", None, 400, "version"),
        ("DELETE", "/datasets/dusk", None, 405, "not allowed"),
        ("GET", "/elsewhere", None, 404, "no route"),
    ],
)
def test_bad_requests_get_4xx_with_a_reason(
    api: tuple[str, Catalog], method: str, path: str, body: bytes | None, status: int, reason: str
) -> None:
    url, _ = api
    got_status, got = call(url + path, method, raw=body)
    assert got_status == status
    assert reason in got["error"]
