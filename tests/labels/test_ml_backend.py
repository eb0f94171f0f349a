"""The ML-backend protocol server on its own (the starter model, a local catalog and frame store), and the
Label Studio client's checks that need no server. The live protocol run is in test_labelstudio_live.py."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from avminer.catalog.catalog import Catalog
from avminer.config import load_settings
from avminer.errors import ConfigError, LabelError
from avminer.labels.consumer import LabelApplier
from avminer.labels.deliver import deliver
from avminer.labels.labelstudio import label_config, mask_from_results, prediction_results
from avminer.labels.labelstudio_api import LabelStudioClient, LabelStudioError, is_personal_access_token
from avminer.labels.masks import CLASS_NAMES, decode_mask_png
from avminer.labels.ml_backend import (
    EnsemblePredictor,
    FrameFetcher,
    MLBackend,
    MLBackendServer,
    check_label_config,
)
from avminer.sinks.base import MinedSampleWriter
from avminer.sinks.local import LocalDecisionSink, LocalRequestSink
from avminer.storage.local import LocalFrameStore
from tests.sinks import factories as f


@pytest.fixture
def served(tmp_path: Path, sqlite_catalog: Catalog) -> Iterator[tuple[MLBackendServer, LocalFrameStore]]:
    from avminer.mining.daemon import open_engines
    from avminer.mining.pipeline import default_scorer_factory

    settings = load_settings(environ={}, overrides={"engine": {"threads": 1}, "metrics": {"port": 0}})
    out = tmp_path / "out"
    store = LocalFrameStore(out)
    writer = MinedSampleWriter(store, LocalRequestSink(out), LocalDecisionSink(out), sqlite_catalog)
    writer.write_batch([f.sample(i) for i in range(2)])
    writer.close()
    holder = open_engines(settings)
    applier = LabelApplier(sqlite_catalog, store)
    backend = MLBackend(EnsemblePredictor(holder, default_scorer_factory(settings)),
                        FrameFetcher(sqlite_catalog, store.get),
                        on_results=lambda results: deliver(settings, results, applier))
    server = MLBackendServer(backend)
    server.start()
    try:
        yield server, store
    finally:
        server.shutdown()
        server.server_close()
        holder.close()


def _call(server: MLBackendServer, method: str, path: str, body: Any = None,
          raw: bytes | None = None) -> tuple[int, dict[str, Any]]:
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(server.url + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_health_setup_and_predict_on_a_mined_sample(served: tuple[MLBackendServer, LocalFrameStore]) -> None:
    server, _ = served
    status, health = _call(server, "GET", "/health")
    assert status == 200 and health["status"] == "UP" and health["model_version"] == "starter-1"
    assert _call(server, "POST", "/setup", {"project": "1.1", "schema": label_config()}) == (
        200, {"model_version": "starter-1"})
    assert _call(server, "GET", "/versions") == (200, {"versions": ["starter-1"]})

    tasks = [{"id": 7, "data": {"image": "ignored: read from the store", "sample_id": "s0001"}},
             {"id": 8, "data": {"image": "ftp://nowhere/x.jpg"}}]
    status, body = _call(server, "POST", "/predict", {"tasks": tasks, "label_config": label_config()})
    assert status == 200 and len(body["results"]) == 2  # one per task, in order
    first, unreadable = body["results"]
    mask = mask_from_results(first["result"])
    assert mask is not None and mask.shape == (f.H, f.W)  # the frame's own size, not the model's input size
    assert first["model_version"] == "starter-1" and first["score"] > 0  # pooled ensemble mutual information
    assert unreadable == {"result": [], "score": None, "model_version": "starter-1"}


def test_protocol_errors_name_the_problem(served: tuple[MLBackendServer, LocalFrameStore]) -> None:
    server, _ = served
    status, body = _call(server, "POST", "/setup", {"project": "1.1", "schema": "<View><Image name='image'/></View>"})
    assert status == 400 and "BrushLabels" in body["error"]
    wrong = label_config(["road", "lava"])
    status, body = _call(server, "POST", "/setup", {"project": "1.1", "schema": wrong})
    assert status == 400 and "lava" in body["error"]
    assert _call(server, "POST", "/predict", {"tasks": "all"})[0] == 400
    status, body = _call(server, "POST", "/predict", raw=b"{not json")
    assert status == 400 and "JSON" in body["error"]
    assert _call(server, "GET", "/nowhere")[0] == 404


def test_annotation_webhook_labels_the_sample(served: tuple[MLBackendServer, LocalFrameStore],
                                              sqlite_catalog: Catalog) -> None:
    server, store = served
    status, body = _call(server, "POST", "/webhook", {"action": "PROJECT_UPDATED", "project": {"id": 1}})
    assert status == 200 and body["results"] == 0
    corrected = f.class_mask(0).copy()
    corrected[4:12, 4:20] = CLASS_NAMES.index("car")
    event = {"action": "ANNOTATION_CREATED", "project": {"id": 1},
             "task": {"id": 3, "data": {"sample_id": "s0000", "image": "x"}},
             "annotation": {"id": 42, "completed_by": 5, "was_cancelled": False,
                            "updated_at": "2026-01-02T03:04:05Z", "result": prediction_results(corrected)}}
    status, body = _call(server, "POST", "/webhook", event)
    assert status == 200 and body["results"] == 1 and body["delivered"]["applied"] == 1
    row = sqlite_catalog.get_sample("s0000")
    assert row is not None and row.state == "labeled" and row.labeler == "labelstudio:5#annotation-42"
    assert np.array_equal(decode_mask_png(store.get(str(row.label_uri))), corrected)
    # An event for a sample the catalog does not know is refused by the same validation as any label.
    ghost = {**event, "task": {"id": 4, "data": {"sample_id": "ghost"}}}
    status, body = _call(server, "POST", "/webhook", ghost)
    assert status == 200 and body["delivered"]["refused"] == 1 and body["delivered"]["reasons"] == {
        "unknown_sample": 1}


def test_a_backend_with_a_password_refuses_requests_without_it(served: tuple[MLBackendServer, LocalFrameStore]) -> None:
    import base64

    backend = served[0].backend
    locked = MLBackendServer(backend, secret="s3cret")
    locked.start()
    try:
        assert _call(locked, "GET", "/health")[0] == 401
        status, body = _call(locked, "POST", "/webhook", {"action": "ANNOTATION_CREATED"})
        assert status == 401 and "ml_backend_secret" in body["error"]
        for password in ("wrong", "s3cret"):
            token = base64.b64encode(f"labelstudio:{password}".encode()).decode()
            req = urllib.request.Request(locked.url + "/health", headers={"Authorization": f"Basic {token}"})
            try:
                with urllib.request.urlopen(req, timeout=30) as resp:
                    status = resp.status
            except urllib.error.HTTPError as exc:
                status = exc.code
            assert status == (200 if password == "s3cret" else 401)
    finally:
        locked.shutdown()
        locked.server_close()


def test_check_label_config() -> None:
    check_label_config(label_config(), CLASS_NAMES)
    with pytest.raises(LabelError, match="not XML"):
        check_label_config("<View>", CLASS_NAMES)


def test_client_and_settings_refuse_bad_connections() -> None:
    assert is_personal_access_token("eyJh.eyJ0.sig") and not is_personal_access_token("0123abcd" * 5)
    with pytest.raises(LabelStudioError, match="http"):
        LabelStudioClient("ftp://ls", "t")
    with pytest.raises(LabelStudioError, match="token"):
        LabelStudioClient("http://127.0.0.1:9", "")
    with pytest.raises(LabelStudioError, match="unreachable"):
        LabelStudioClient("http://127.0.0.1:9", "legacy-token").projects()
    with pytest.raises(ConfigError, match="labelstudio.url"):
        load_settings(environ={"AVMINER_LABELSTUDIO__URL": "labelstudio:8080"}).validate()
    shown = json.dumps(load_settings(environ={"AVMINER_LABELSTUDIO__TOKEN": "s3cr3t"}).as_dict())
    assert "s3cr3t" not in shown


def test_frames_by_url_only_from_allowed_origins(tmp_path: Path) -> None:
    """Task data is written by whoever creates tasks: the backend fetches only from its S3 / Label Studio."""
    import functools
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    (tmp_path / "frame.jpg").write_bytes(f.jpeg(3))
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(tmp_path))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    origin = f"http://127.0.0.1:{httpd.server_address[1]}"
    task = {"id": 1, "data": {"image": f"{origin}/frame.jpg"}}
    try:
        assert FrameFetcher(allowed_origins=[origin])(task) == f.jpeg(3)
        with pytest.raises(LabelError, match="will not fetch"):
            FrameFetcher(allowed_origins=["http://s3.internal:8333"])(task)
        with pytest.raises(LabelError, match="over 100 bytes"):
            FrameFetcher(allowed_origins=[origin], max_bytes=100)(task)
    finally:
        httpd.shutdown()
        httpd.server_close()
