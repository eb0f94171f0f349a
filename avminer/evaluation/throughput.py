"""Speed benchmarks of single parts: the engine backends against each other, and the event codec.

- :func:`engine_bench` (``avminer bench engine``): frames/s and host bytes per frame of each backend and
  precision on one bundle (same frames, same thread count, alternating rounds).
- :func:`codec_bench` (``avminer bench codec``): event codec messages/s for a camera frame and a small
  decision record, encoded and decoded repeatedly in one process (one core). The default frame
  carries a 40 KB image, the size of a CamVid JPEG (480x360).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

DEFAULT_CONFIGS = ("onnxruntime", "torch:fp32")


def _open(bundle: Any, spec: str, threads: int, device: str, batch: int) -> Any:
    """An engine for ``BACKEND[:PRECISION][:compiled]`` (precision and compilation: torch only)."""
    from avminer.engines import open_engine
    from avminer.errors import AvminerError

    backend, *parts = spec.split(":")
    unknown = [p for p in parts if p not in ("fp32", "fp16", "bf16", "compiled")]
    if unknown:
        raise AvminerError(f"--configs: {spec!r} has unknown parts {unknown}; use BACKEND[:PRECISION][:compiled]")
    precision = next((p for p in parts if p != "compiled"), None)
    compiled = "compiled" in parts
    if backend == "torch":
        return open_engine(bundle, backend="torch", threads=threads, device=device, precision=precision,
                           compile="on" if compiled else "off", max_batch=batch)
    if precision not in (None, "fp32") or compiled:
        raise AvminerError(f"--configs: {spec!r}: precision and compilation are torch options")
    return open_engine(bundle, backend=backend, threads=threads, device=device if backend == "tensorrt" else "cpu")


def engine_bench(
    bundle_path: str | Path | None = None, batch: int = 8, frames: int = 32, rounds: int = 2, threads: int = 0,
    configs: tuple[str, ...] = DEFAULT_CONFIGS, device: str = "cpu",
) -> dict[str, Any]:
    """Frames/s and host bytes per frame of each backend and precision on the same bundle and frames.

    Every configuration runs in alternating rounds (so machine noise hits all alike), each warmed up (and
    a compiled torch engine compiled) first. Frames/s counts everything ``Engine.infer`` does: uint8 ->
    float, the ensemble, the in-graph scoring head, the compact outputs back in host memory.
    ``host_bytes_per_frame`` is what reaches the host on every batch; ``argmax_bytes`` what a frame
    whose argmax is read adds; ``full_probs_bytes`` what the contract before the in-graph head copied.

    Args:
        bundle_path: bundle directory (default: the starter bundle).
        batch: frames per batch.
        frames: frames timed per configuration.
        rounds: alternating rounds the frames are split into.
        threads: intra-op threads (0: library default).
        configs: ``BACKEND[:PRECISION][:compiled]`` each, e.g. ``torch:fp16:compiled``.
        device: ``cpu`` or ``cuda[:N]`` for the torch and TensorRT configurations.
    """
    import numpy as np

    from avminer.engines import default_bundle_path, load_bundle

    bundle = load_bundle(bundle_path or default_bundle_path())
    h, w = bundle.input_height, bundle.input_width
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(batch, h, w, 3), dtype=np.uint8)  # [N, H, W, 3]
    engines = {spec: _open(bundle, spec, threads, device, batch) for spec in configs}
    batches_per_round = max(1, -(-frames // (batch * max(1, rounds))))
    seconds = dict.fromkeys(engines, 0.0)
    counted = dict.fromkeys(engines, 0)
    host = dict.fromkeys(engines, 0)
    for engine in engines.values():
        engine.warmup(batch=batch, rounds=1)
    for _ in range(max(1, rounds)):
        for name, engine in engines.items():
            start = time.perf_counter()
            for _ in range(batches_per_round):
                host[name] += engine.infer(images).host_bytes()
            seconds[name] += time.perf_counter() - start
            counted[name] += batches_per_round * batch
    info = {name: {"compiled": bool(getattr(e, "compiled", False)), "precision": getattr(e, "precision", "fp32"),
                   "device": getattr(e, "device", "cpu")} for name, e in engines.items()}
    for engine in engines.values():
        engine.close()
    fps = {name: counted[name] / seconds[name] for name in engines}
    k, c = bundle.members, len(bundle.classes)
    result: dict[str, Any] = {
        "bundle": str(bundle.path),
        "version": bundle.version,
        "members": k,
        "input": [h, w],
        "batch": batch,
        "frames": counted[configs[0]],
        "threads": threads,
        "configs": {name: {"fps": round(fps[name], 2), "host_bytes_per_frame": host[name] // counted[name],
                           **info[name]} for name in engines},
        "argmax_bytes": h * w,
        "full_probs_bytes": 4 * k * c * h * w,
    }
    if "onnxruntime" in fps and "torch:fp32" in fps:  # the figures tracked since the first engine bench
        result.update({"ort_fps": round(fps["onnxruntime"], 2), "torch_fps": round(fps["torch:fp32"], 2),
                       "ratio": round(fps["onnxruntime"] / fps["torch:fp32"], 3)})
    return result


def format_engine_report(result: dict[str, Any]) -> str:
    """The figures of :func:`engine_bench` as ``avminer bench engine`` prints them."""
    h, w = result["input"]
    lines = [f"model {result['version']}: K={result['members']} at {h}x{w}, batch {result['batch']}, "
             f"{result['frames']} frames per configuration, threads {result['threads'] or 'default'}"]
    for name, r in result["configs"].items():
        lines.append(f"{name:28s} {r['fps']:9.2f} frames/s  {r['host_bytes_per_frame']:7d} host bytes/frame"
                     f"{'  (compiled)' if r['compiled'] else ''}")
    lines.append(f"argmax read on demand: {result['argmax_bytes']} bytes/frame; full probabilities would be "
                 f"{result['full_probs_bytes']} bytes/frame")
    if "ratio" in result:
        lines.append(f"ratio        {result['ratio']:8.3f}x (onnxruntime / torch fp32)")
    return "\n".join(lines)


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
