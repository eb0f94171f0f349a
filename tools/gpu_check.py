"""The GPU check of issue #14, run by tools/gpu_check.sh: parity, engine throughput, pipeline; JSON out.

    tools/gpu_check.sh                      # on an H100/H200: < 5 minutes, prints one JSON object
    tools/gpu_check.sh --device cpu --quick # smoke test of this script on a machine without a GPU

Parts (each one's errors are caught and reported in the JSON; the rest still runs):

1. ``parity``: the committed starter bundle on the torch CUDA engine (FP32 with TF32 off, FP16, and FP16
   compiled: the CUDA default) against ONNX Runtime on the CPU: max abs difference of the frame scores, features (relative),
   uint8 map, and argmax agreement, each with its tolerance and a pass flag.
2. ``throughput``: random-weight ERFNet ensembles, K=4, 480x360, 11 classes, widths 1.0/0.5/0.25,
   FP32/FP16, eager/compiled (inductor, freezing), batch 32: frames/s of ``TorchEngine.infer``
   (uint8 frames in host memory -> compact scores in host memory: the GPU scoring head included),
   load seconds (compile and warm-up), host bytes per frame. Compiled configurations run last and are
   skipped, and said to be, once ``--budget-s`` is spent.
3. ``pipeline``: ``avminer bench pipeline`` on the torch CUDA backend (starter bundle, eager unless
   ``--pipeline-compile``), and with the null engine (the plumbing ceiling of this machine).
4. ``train`` (only with ``--train-data DIR``, a CamVid-layout folder): ``avminer train run`` on ``--device``
   and on this machine's CPUs, the same frames and settings, one epoch each: seconds per epoch, the speed-up,
   and whether the GPU-trained bundle exported (the export compares ONNX Runtime against torch) and loads.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SCORE_TOL = {"fp32": 1e-3, "fp16": 5e-2}
"""Largest abs difference of a frame score vs ONNX Runtime FP32 (scores are in nats, 0..log 11 = 2.4)."""
ARGMAX_TOL = {"fp32": 0.999, "fp16": 0.99}
FEATURES_REL_TOL = {"fp32": 1e-3, "fp16": 1e-2}


def _env() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                            "cuda": torch.cuda.is_available(), "cpus": os.cpu_count()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda_version"] = torch.version.cuda
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        info["onnxruntime"] = None
    return info


def _parity(device: str, batch: int) -> dict[str, Any]:
    import torch

    from avminer.engines import default_bundle_path, load_bundle
    from avminer.engines.ort import OrtEngine
    from avminer.engines.torch_backend import TorchEngine

    torch.backends.cuda.matmul.allow_tf32 = False  # FP32 means FP32 here (TF32 cost 9e-3 on probs in #14)
    torch.backends.cudnn.allow_tf32 = False
    bundle = load_bundle(default_bundle_path())
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(batch, bundle.input_height, bundle.input_width, 3), dtype=np.uint8)
    with OrtEngine(bundle) as ort_engine:
        ref = ort_engine.infer(images)
    out: dict[str, Any] = {"bundle": bundle.version, "frames": batch, "input": [bundle.input_height, bundle.input_width]}
    # fp16 compiled: what a CUDA engine serves by default (engine.precision and engine.compile unset).
    for key, precision, compiled in (("fp32", "fp32", "off"), ("fp16", "fp16", "off"), ("fp16_compiled", "fp16", "on")):
        with TorchEngine(bundle, device=device, precision=precision, compile=compiled) as engine:
            got = engine.infer(images)
            pred = np.stack([got.prediction(i) for i in range(batch)])
            was_compiled = engine.compiled
        ref_pred = np.stack([ref.prediction(i) for i in range(batch)])
        scale = max(1.0, float(np.abs(ref.features).max()))
        r: dict[str, Any] = {
            "scores_max_abs": float(np.abs(got.scores - ref.scores).max()),
            "features_max_rel": float(np.abs(got.features - ref.features).max() / scale),
            "umap_max_units": float(np.abs(got.umap.astype(np.float32) - ref.umap.astype(np.float32)).max()),
            "argmax_agreement": float((pred == ref_pred).mean()),
            "tolerance": {"scores_max_abs": SCORE_TOL[precision], "argmax_agreement": ARGMAX_TOL[precision],
                          "features_max_rel": FEATURES_REL_TOL[precision]},
        }
        r["pass"] = (r["scores_max_abs"] <= SCORE_TOL[precision] and r["argmax_agreement"] >= ARGMAX_TOL[precision]
                     and r["features_max_rel"] <= FEATURES_REL_TOL[precision])
        r["compiled"] = was_compiled
        out[key] = r
    return out


def _memory_bundle(arch: dict[str, Any], input_hw: tuple[int, int], width: float) -> Any:
    """A bundle object for a model held in memory (nothing on disk is read: the torch engine gets the model)."""
    from avminer.engines.bundle import Bundle
    from avminer.engines.contract import HeadSpec
    from avminer.models import feature_dim
    from avminer.taxonomy import CAMVID

    classes = list(CAMVID.classes)
    manifest = {
        "format": "avminer-bundle/2", "version": f"erfnet-w{width}", "members": arch["members"],
        "input": {"height": input_hw[0], "width": input_hw[1]}, "classes": classes, "void_index": len(classes),
        "feature_dim": feature_dim(arch), "head": HeadSpec.for_classes(classes).to_manifest(), "files": {},
    }
    return Bundle(Path(tempfile.gettempdir()), manifest)


def _throughput(args: argparse.Namespace, deadline: float) -> list[dict[str, Any]]:
    import torch

    from avminer.engines.torch_backend import TorchEngine
    from avminer.models import build_ensemble, erfnet_arch

    h, w = args.size
    configs = [(width, precision, False) for width in args.widths for precision in args.precisions]
    configs += [(width, precision, True) for precision in reversed(args.precisions) for width in args.widths
                if args.compile]  # fp16 first: the configuration the goal is about
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(args.batch, h, w, 3), dtype=np.uint8)
    results = []
    for width, precision, compiled in configs:
        row: dict[str, Any] = {"width": width, "precision": precision, "compiled": compiled, "batch": args.batch,
                               "input": [h, w], "members": args.members}
        if time.monotonic() > deadline:
            row["skipped"] = "time budget spent"
            results.append(row)
            continue
        try:
            arch = erfnet_arch(width=width, members=args.members)
            model = build_ensemble(arch, seed=0)
            start = time.monotonic()
            engine = TorchEngine(_memory_bundle(arch, (h, w), width), device=args.device, model=model, precision=precision,
                                 compile="on" if compiled else "off", max_batch=args.batch)
            engine.warmup(batch=args.batch, rounds=2)
            row["load_s"] = round(time.monotonic() - start, 1)
            row["compiled_ok"] = engine.compiled
            if engine.compile_error:
                row["compile_error"] = engine.compile_error[:300]
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            host = 0
            for _ in range(args.batches):
                out = engine.infer(images)
                host += out.host_bytes()
            seconds = time.perf_counter() - start
            frames = args.batches * args.batch
            row.update({"fps": round(frames / seconds, 1), "host_bytes_per_frame": host // frames,
                        "argmax_bytes_on_demand": h * w})
            engine.close()
            del engine, model
            if args.device.startswith("cuda"):
                torch.cuda.empty_cache()
        except Exception as exc:  # one configuration failing must not lose the others
            row["error"] = f"{type(exc).__name__}: {exc}"[:500]
        results.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)  # progress while it runs
    return results


def _pipeline(args: argparse.Namespace, backend: str) -> dict[str, Any]:
    """``avminer bench pipeline`` in this process, its JSON captured."""
    from avminer.cli.bench import pipeline as bench

    env = {"AVMINER_ENGINE__BACKEND": backend, "AVMINER_ENGINE__DEVICE": args.device,
           "AVMINER_ENGINE__COMPILE": "on" if args.pipeline_compile else "off"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    ns = argparse.Namespace(config=None, frames=args.pipeline_frames, drive_log=None, rounds=1, backend=backend,
                            null_size="360x480", decode_workers=args.decode_workers, batch=args.pipeline_batch,
                            json=True)
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            bench._bench(ns)
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    result: dict[str, Any] = json.loads(buf.getvalue().strip().splitlines()[-1])
    return result


def _train(args: argparse.Namespace) -> dict[str, Any]:
    """``avminer train run`` on the device and on the CPUs (subprocesses: each sets its own threads)."""
    import subprocess

    from avminer.engines import load_bundle

    out: dict[str, Any] = {"data": str(args.train_data), "frames": args.train_limit, "epochs": 1}
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for device in (args.device, "cpu"):
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-c", "import sys; from avminer.cli.main import main; sys.exit(main())", "train",
                   "run", "--data", str(args.train_data), "--out", f"{tmp}/bundle", "--work-dir", f"{tmp}/work",
                   "--device", device, "--epochs", "1", "--limit", str(args.train_limit), "--no-progress", "--json",
                   "--threads", str(os.cpu_count() or 1), "--version", f"gpu-check-{device}"]
            start = time.monotonic()
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
            row: dict[str, Any] = {"rc": proc.returncode, "wall_s": round(time.monotonic() - start, 1)}
            if proc.returncode == 0:
                row.update(json.loads(proc.stdout.strip().splitlines()[-1]))
                row["export_log"] = [line for line in proc.stderr.splitlines() if "ORT vs torch" in line][-1:]
                row["bundle_loads"] = load_bundle(Path(tmp) / "bundle").version
            else:
                row["stderr_tail"] = proc.stderr[-1500:]
            out[device] = row
    gpu, cpu = out.get(args.device, {}), out.get("cpu", {})
    if gpu.get("seconds_per_epoch") and cpu.get("seconds_per_epoch"):
        out["speedup"] = round(cpu["seconds_per_epoch"] / gpu["seconds_per_epoch"], 1)
    return out


def _part(report: dict[str, Any], name: str, fn: Any, *fn_args: Any) -> None:
    start = time.monotonic()
    try:
        report[name] = fn(*fn_args)
    except Exception as exc:
        report[name] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-2000:]}
    report.setdefault("seconds", {})[name] = round(time.monotonic() - start, 1)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test of the script, e.g. on a CPU)")
    p.add_argument("--budget-s", type=float, default=170.0, help="throughput part's time budget (compiled runs last)")
    p.add_argument("--out", type=Path, help="also write the JSON here")
    p.add_argument("--no-compile", dest="compile", action="store_false")
    p.add_argument("--pipeline-compile", action="store_true", help="torch.compile the pipeline's engine too")
    p.add_argument("--parts", default="parity,throughput,pipeline,train",
                   help="comma-separated parts to run (train also needs --train-data)")
    p.add_argument("--train-data", type=Path, help="CamVid-layout folder: also time the trainer (part 4)")
    p.add_argument("--train-limit", type=int, default=96, help="frames the trainer part trains on")
    args = p.parse_args()
    if args.quick:
        args.size, args.widths, args.precisions, args.batch, args.batches = (96, 128), [0.25], ["fp32"], 4, 2
        args.members, args.pipeline_frames, args.pipeline_batch, args.decode_workers = 2, 64, 8, 2
        args.train_limit = min(args.train_limit, 16)
        args.compile = args.compile and args.device != "cpu"
    else:
        args.size, args.widths, args.precisions, args.batch, args.batches = (360, 480), [1.0, 0.5, 0.25], \
            ["fp32", "fp16"], 32, 20
        args.members, args.pipeline_frames, args.pipeline_batch = 4, 3000, 32
        args.decode_workers = max(1, (os.cpu_count() or 2) // 2)
    start = time.monotonic()
    report: dict[str, Any] = {"check": "avminer issue 14 GPU check", "device": args.device, "quick": args.quick}
    parts = set(args.parts.split(","))
    _part(report, "env", _env)
    if "parity" in parts:
        _part(report, "parity", _parity, args.device, 2 if args.quick else 8)
    if "throughput" in parts:
        _part(report, "throughput", _throughput, args, start + args.budget_s)
    if "pipeline" in parts:
        _part(report, "pipeline_torch", _pipeline, args, "torch")
        _part(report, "pipeline_null", _pipeline, args, "null")
    if "train" in parts and args.train_data:
        _part(report, "train", _train, args)
    report["seconds"]["total"] = round(time.monotonic() - start, 1)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
