"""``avminer engine info|verify|build`` and ``avminer bench engine``."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from avminer.cli.main import main
from avminer.engines.bundle import Bundle
from avminer.utils.imports import is_tensorrt_available


def test_engine_info_and_verify(bundles: dict[str, Bundle], capsys: pytest.CaptureFixture[str]) -> None:
    path = str(bundles["v1"].path)
    assert main(["engine", "info", path]) == 0
    out = capsys.readouterr().out
    assert "version     v1" in out and "model.onnx" in out and "no plans" in out
    assert main(["engine", "info", path, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == "v1"
    assert main(["engine", "verify", path, "--batch", "1"]) == 0
    out = capsys.readouterr().out
    assert "checksums   ok" in out and "ort vs torch max abs diff" in out


def test_engine_verify_fails_on_a_flipped_byte(
    bundle_copy: Callable[[str], Bundle], capsys: pytest.CaptureFixture[str]
) -> None:
    b = bundle_copy("v1")
    data = bytearray(b.onnx_path.read_bytes())
    data[-1] ^= 0x10
    b.onnx_path.write_bytes(bytes(data))
    assert main(["engine", "verify", str(b.path), "--checksums-only"]) == 2
    assert "model.onnx sha256 mismatch" in capsys.readouterr().err


@pytest.mark.skipif(is_tensorrt_available(), reason="TensorRT is installed here")
def test_engine_build_without_tensorrt_says_how_to_install(
    bundles: dict[str, Bundle], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["engine", "build", str(bundles["v1"].path), "--fp32"]) == 2
    assert "avminer[gpu]" in capsys.readouterr().err


def test_bench_engine_json(bundles: dict[str, Bundle], capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["bench", "engine", "--bundle", str(bundles["v1"].path), "--batch", "2", "--frames", "2",
            "--rounds", "1", "--json"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)  # exactly one JSON object
    assert result["version"] == "v1" and result["frames"] == 2
    assert result["ort_fps"] > 0 and result["torch_fps"] > 0
    assert result["ratio"] == pytest.approx(result["ort_fps"] / result["torch_fps"], rel=0.01)
