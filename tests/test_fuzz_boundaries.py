"""Fuzzing every boundary where outside bytes come in: only the boundary's own error may come out.

One property per boundary: whatever hypothesis feeds it (random bytes, mutations of valid input,
random JSON), the code either accepts it or raises the single error type the boundary documents
(a dead-letter ``PoisonError``, ``InvalidLabelError``/``LabelError``, ``ConfigError``, ``BundleError``,
a 4xx). Anything else — a ``KeyError``, a ``MemoryError``, a hang — is a bug: in the miner it would
stop a stage. Example counts are bounded so the whole file runs in CI in well under a minute.
"""

from __future__ import annotations

import contextlib
import io
import json
import socket
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from avminer.catalog.api import DatasetsServer
from avminer.catalog.catalog import Catalog, open_catalog
from avminer.config import DecodeSettings, load_settings
from avminer.engines.bundle import MANIFEST, load_bundle
from avminer.errors import BundleError, ConfigError, LabelError
from avminer.events import codec
from avminer.labels.cvat import results_from_zip
from avminer.labels.labelstudio import results_from_export
from avminer.labels.masks import validate_mask
from avminer.mining.decode import PoisonError, decode_event, decode_image
from avminer.sources.base import SourceMessage
from tests.events.strategies import camera_frames
from tests.sinks import factories as f

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                         HealthCheck.function_scoped_fixture])


def mutate(data: bytes, edits: list[tuple[int, int]], cut: int | None) -> bytes:
    """``data`` with bytes overwritten at (position, value) and optionally cut at ``cut``."""
    out = bytearray(data)
    for pos, value in edits:
        if out:
            out[pos % len(out)] = value
    return bytes(out[:cut] if cut is not None else out)


edits = st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), max_size=8)
cuts = st.none() | st.integers(0, 4096)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=30,
)


def _png(mode: str, size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size).save(buf, format="PNG")
    return buf.getvalue()


def _encoded(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


SEEDS = {fmt: _encoded(fmt) for fmt in ("PNG", "JPEG", "GIF", "BMP")}


# -- codec and decode (the miner's input) --------------------------------------------------------------

@FUZZ
@given(frame=camera_frames, e=edits, cut=cuts)
def test_codec_and_field_checks_raise_only_poison(frame: Any, e: list[tuple[int, int]], cut: int | None) -> None:
    value = mutate(codec.encode(frame), e, cut)
    with contextlib.suppress(PoisonError):
        decode_event(SourceMessage(topic="t", partition=0, offset=0, value=value))


@FUZZ
@given(fmt=st.sampled_from(sorted(SEEDS)), e=edits, cut=cuts,
       encoding=st.sampled_from(["jpeg", "png", "gif", "bmp", "webp", "tiff", "JPEG", "x", ""]),
       declared=st.none() | st.tuples(st.integers(-5, 70000), st.integers(-5, 70000)))
def test_image_decoding_raises_only_poison(fmt: str, e: list[tuple[int, int]], cut: int | None, encoding: str,
                                           declared: tuple[int, int] | None) -> None:
    data = mutate(SEEDS[fmt], e, cut)
    try:
        img = decode_image(data, DecodeSettings(max_pixels=1 << 20), (16, 16), encoding, declared)
    except PoisonError:
        return
    assert img.shape == (16, 16, 3)


def _drive_log_bytes() -> bytes:
    import tempfile

    from avminer.events.drivelog import DriveLogWriter
    from avminer.events.records import CameraFrame, RadarScan

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "d.avro"
        with DriveLogWriter(path) as log:
            for i in range(4):
                log.write(CameraFrame("v", "front", i * 1000, f"f{i}", 32, 24, image=SEEDS["JPEG"]))
                log.write(RadarScan("v", "front", i * 1000 + 1))
        return path.read_bytes()


DRIVE_LOG = _drive_log_bytes()


@FUZZ
@given(e=edits, cut=cuts)
def test_mutated_drive_logs_raise_only_drive_log_errors(
    tmp_path: Path, e: list[tuple[int, int]], cut: int | None
) -> None:
    from avminer.errors import DriveLogError
    from avminer.events.drivelog import read_drive_log

    path = tmp_path / "d.avro"
    path.write_bytes(mutate(DRIVE_LOG, e, cut))
    try:
        for _ in read_drive_log(path):
            pass
    except DriveLogError:
        pass


# -- labels back ---------------------------------------------------------------------------------------

MASK = f.png(f.class_mask(0))


@FUZZ
@given(e=edits, cut=cuts, seed=st.sampled_from([MASK, _png("P", (48, 32)), _png("RGB", (48, 32)),
                                                 _png("I;16", (48, 32)), _png("L", (4, 4))]))
def test_mask_validation_raises_only_label_errors(e: list[tuple[int, int]], cut: int | None, seed: bytes) -> None:
    try:
        mask = validate_mask(mutate(seed, e, cut), f.W, f.H)
    except LabelError:
        return
    assert mask.shape == (f.H, f.W)


@FUZZ
@given(export=json_values)
def test_labelstudio_import_of_any_json_raises_only_label_errors(export: Any) -> None:
    with contextlib.suppress(LabelError):
        results_from_export(export)


@FUZZ
@given(tasks=st.lists(st.fixed_dictionaries({
    "id": json_values, "data": st.fixed_dictionaries({"sample_id": st.text(max_size=8) | json_values}) | json_values,
    "annotations": st.lists(st.fixed_dictionaries({"result": st.lists(st.fixed_dictionaries({
        "type": st.just("brushlabels"), "original_width": st.integers(-3, 5000) | json_values,
        "original_height": st.integers(-3, 5000) | json_values,
        "value": st.fixed_dictionaries({"rle": st.lists(st.integers(0, 255), max_size=40) | json_values,
                                        "brushlabels": st.lists(st.sampled_from(["Road", "Sky", "x"]), max_size=2)}),
    }), max_size=2)}), max_size=2) | json_values,
}), max_size=3))
def test_labelstudio_shaped_exports_raise_only_label_errors(tasks: Any) -> None:
    with contextlib.suppress(LabelError):
        results_from_export(tasks)


def _cvat_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("labelmap.txt", "background:0,0,0::\nRoad:128,64,128::\n")
        zf.writestr("SegmentationClass/s0000.png", _png("RGB", (48, 32)))
    return buf.getvalue()


@FUZZ
@given(e=edits, cut=cuts)
def test_cvat_import_of_mutated_zips_raises_only_label_errors(
    tmp_path: Path, e: list[tuple[int, int]], cut: int | None
) -> None:
    path = tmp_path / "export.zip"
    path.write_bytes(mutate(_cvat_zip(), e, cut))
    with contextlib.suppress(LabelError):
        results_from_zip(path)


# -- configuration -------------------------------------------------------------------------------------

CONFIG_KEYS = ["AVMINER_SELECTION__TARGET_RATE", "AVMINER_SELECTION__SLICE_RATES", "AVMINER_DECODE__WORKERS",
               "AVMINER_DECODE__IMAGE_ROOTS", "AVMINER_SCORING__GRID", "AVMINER_KAFKA__EXTRA",
               "AVMINER_SELECTION__DUPLICATE_SIMILARITY", "AVMINER_SCORING__REGIONS", "AVMINER_LOG_LEVEL",
               "AVMINER_KAFKA__BOOTSTRAP_SERVERS", "AVMINER_SINKS__API_PORT", "AVMINER_NOPE"]


@FUZZ
@given(env=st.dictionaries(st.sampled_from(CONFIG_KEYS), st.text(max_size=30), max_size=4))
def test_any_environment_raises_only_config_errors(env: dict[str, str]) -> None:
    with contextlib.suppress(ConfigError):
        load_settings(environ=env)


@FUZZ
@given(data=json_values | st.binary(max_size=200).map(lambda b: b.decode("latin-1")))
def test_any_yaml_file_raises_only_config_errors(tmp_path: Path, data: Any) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    with contextlib.suppress(ConfigError):
        load_settings(cfg, environ={})


# -- bundle manifests ----------------------------------------------------------------------------------

VALID_MANIFEST = {"format": "avminer-bundle/1", "version": "v1", "members": 2, "input": {"height": 32, "width": 48},
                  "classes": ["a", "b"], "void_index": 2, "feature_dim": 8, "files": {"model.onnx": "0" * 64}}


@FUZZ
@given(changes=st.dictionaries(st.sampled_from(sorted(VALID_MANIFEST) + ["plans", "arch"]), json_values, max_size=3))
def test_any_manifest_raises_only_bundle_errors(tmp_path: Path, changes: dict[str, Any]) -> None:
    (tmp_path / MANIFEST).write_text(json.dumps({**VALID_MANIFEST, **changes}))
    with contextlib.suppress(BundleError):
        load_bundle(tmp_path, verify=True)


# -- the datasets API ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def api_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DatasetsServer]:
    from avminer.catalog import api

    catalog: Catalog = open_catalog(f"sqlite:///{tmp_path_factory.mktemp('fuzz') / 'c.db'}")
    saved = api.DatasetsHandler.timeout
    api.DatasetsHandler.timeout = 0.3
    srv = DatasetsServer(catalog, "127.0.0.1", 0)
    srv.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    api.DatasetsHandler.timeout = saved
    catalog.close()


request_lines = st.sampled_from([b"GET /datasets", b"POST /datasets/x", b"GET /datasets/x?version=",
                                 b"PUT /healthz", b"GET /", b"POST /datasets/%00", b"GET /datasets/x?version=1e26"])
headers = st.lists(st.sampled_from([b"Host: localhost", b"Host: evil", b"Content-Length: -1", b"Content-Length: 3",
                                    b"Content-Length: 99999999999", b"Transfer-Encoding: chunked",
                                    b"Content-Type: application/json", b"Origin: http://evil", b"Connection: close"]),
                   max_size=5)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(line=request_lines, suffix=st.binary(max_size=20), hs=headers, body=st.binary(max_size=64))
def test_any_request_gets_an_answer_below_500_and_the_server_lives(
    api_server: DatasetsServer, line: bytes, suffix: bytes, hs: list[bytes], body: bytes
) -> None:
    host, port = api_server.server_address[:2]
    request = line + suffix + b" HTTP/1.1\r\n" + b"".join(h + b"\r\n" for h in hs) + b"\r\n" + body
    with socket.create_connection((str(host), port), timeout=5) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        reply = b""
        try:
            while chunk := sock.recv(65536):
                reply += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    if reply.startswith(b"HTTP/1."):
        assert int(reply.split(b" ", 2)[1]) < 500, reply[:200]
    with socket.create_connection((str(host), port), timeout=5) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 200")
