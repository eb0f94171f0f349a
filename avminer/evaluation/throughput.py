"""Speed benchmarks of single parts: the engine backends against each other, and the event codec.

- :func:`engine_bench` (``avminer bench engine``): ONNX Runtime vs torch frames/s on one bundle. Both
  backends run the same bundle on the same frames, with the same thread count, in alternating rounds
  (so machine noise hits both alike); each is warmed up first. Frames/s counts everything
  ``Engine.infer`` does: uint8 -> float conversion, the ensemble, and the outputs back as numpy.
- :func:`codec_bench` (``avminer bench codec``): event codec messages/s for a camera frame and a small
  decision record, encoded and decoded repeatedly in one process (one core). The default frame
  carries a 40 KB image, the size of a CamVid JPEG (480x360).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any


def engine_bench(
    bundle_path: str | Path | None = None, batch: int = 8, frames: int = 32, rounds: int = 2, threads: int = 0
) -> dict[str, Any]:
    """ONNX Runtime and torch frames/s on the same bundle and frames, and their ratio.

    Args:
        bundle_path: bundle directory (default: the starter bundle).
        batch: frames per batch.
        frames: frames timed per backend.
        rounds: alternating rounds the frames are split into.
        threads: intra-op threads for both (0: library default).
    """
    import numpy as np

    from avminer.engines import default_bundle_path, load_bundle
    from avminer.engines.ort import OrtEngine
    from avminer.engines.torch_backend import TorchEngine

    bundle = load_bundle(bundle_path or default_bundle_path())
    h, w = bundle.input_height, bundle.input_width
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(batch, h, w, 3), dtype=np.uint8)  # [N, H, W, 3]
    engines = {
        "onnxruntime": OrtEngine(bundle, threads=threads),
        "torch": TorchEngine(bundle, threads=threads),
    }
    batches_per_round = max(1, -(-frames // (batch * max(1, rounds))))
    seconds = dict.fromkeys(engines, 0.0)
    counted = dict.fromkeys(engines, 0)
    for engine in engines.values():
        engine.warmup(batch=batch, rounds=1)
    for _ in range(max(1, rounds)):
        for name, engine in engines.items():
            start = time.perf_counter()
            for _ in range(batches_per_round):
                engine.infer(images)
            seconds[name] += time.perf_counter() - start
            counted[name] += batches_per_round * batch
    for engine in engines.values():
        engine.close()
    fps = {name: counted[name] / seconds[name] for name in engines}
    return {
        "bundle": str(bundle.path),
        "version": bundle.version,
        "members": bundle.members,
        "input": [h, w],
        "batch": batch,
        "frames": counted["onnxruntime"],
        "threads": threads,
        "ort_fps": round(fps["onnxruntime"], 2),
        "torch_fps": round(fps["torch"], 2),
        "ratio": round(fps["onnxruntime"] / fps["torch"], 3),
    }


def format_engine_report(result: dict[str, Any]) -> str:
    """The figures of :func:`engine_bench` as ``avminer bench engine`` prints them."""
    h, w = result["input"]
    return "\n".join([
        f"model {result['version']}: K={result['members']} at {h}x{w}, batch {result['batch']}, "
        f"{result['frames']} frames per backend, threads {result['threads'] or 'default'}",
        f"onnxruntime  {result['ort_fps']:8.2f} frames/s",
        f"torch        {result['torch_fps']:8.2f} frames/s",
        f"ratio        {result['ratio']:8.3f}x (onnxruntime / torch)",
    ])


def _rate(fn: Any, seconds: float) -> float:
    fn()  # warm-up: schemas parse and compile on first use
    n, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        for _ in range(100):
            fn()
        n += 100
    return n / elapsed


def codec_bench(image_kb: int = 40, seconds: float = 1.0) -> dict[str, dict[str, Any]]:
    """Encode and decode msgs/s (and decode MB/s) of a camera frame with an ``image_kb`` KB image and a decision.

    Args:
        image_kb: image size of the camera frame in KB.
        seconds: time per measurement.
    """
    from avminer.events import codec
    from avminer.events.records import CameraFrame, Conditions, Decision, GpsFix

    frame = CameraFrame(
        vehicle_id="camvid-0001TP", camera_id="front", timestamp_us=1_212_436_800_000_000,
        frame_id="0001TP_006690", width=480, height=360, image=os.urandom(image_kb * 1000),
        gps=GpsFix(52.2, 0.12, 15.0, 90.0, 6.0), conditions=Conditions("dusk", "clear", "urban", "cambridge_uk"),
        metadata={"source": "camvid"},
    )
    decision = Decision("0" * 32, "0001TP_006690", "camvid-0001TP", "front", 1, "m-1", "dusk/clear/cambridge_uk",
                        True, {"mi": 0.31, "entropy": 1.2, "shift": 2.5}, ["uncertainty"], "avminer.frames", 2, 17)
    result: dict[str, dict[str, Any]] = {}
    for name, record in (("camera_frame", frame), ("decision", decision)):
        data = codec.encode(record)
        result[name] = {
            "bytes": len(data),
            "encode_msgs_per_s": round(_rate(lambda r=record: codec.encode(r), seconds)),
            "encode_unvalidated_msgs_per_s": round(_rate(lambda r=record: codec.encode(r, validate=False),
                                                         seconds)),
            "decode_msgs_per_s": round(_rate(lambda d=data: codec.decode(d), seconds)),
        }
        result[name]["decode_mb_per_s"] = round(result[name]["decode_msgs_per_s"] * len(data) / 1e6, 1)
    return result


def format_codec_report(result: dict[str, dict[str, Any]]) -> str:
    """The figures of :func:`codec_bench` as ``avminer bench codec`` prints them."""
    return "\n".join(
        f"{name:13s} {row['bytes']:7d} B  encode {row['encode_msgs_per_s']:8d} msg/s "
        f"(unvalidated {row['encode_unvalidated_msgs_per_s']})  decode {row['decode_msgs_per_s']:8d} msg/s "
        f"({row['decode_mb_per_s']} MB/s)"
        for name, row in result.items()
    )
