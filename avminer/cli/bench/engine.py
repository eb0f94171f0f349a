"""``avminer bench engine``: ONNX Runtime vs torch frames/s on one bundle, and their ratio.

Both backends run the same bundle on the same frames, with the same thread count, in alternating
rounds (so machine noise hits both alike); each is warmed up first. Frames/s counts everything
``Engine.infer`` does: uint8 -> float conversion, the ensemble, and the outputs back as numpy.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser("engine", help="ONNX Runtime vs torch frames/s on a bundle")
    parser.add_argument("--bundle", help="bundle directory (default: the starter bundle)")
    parser.add_argument("--batch", type=int, default=8, help="frames per batch")
    parser.add_argument("--frames", type=int, default=32, help="frames timed per backend")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds the frames are split into")
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads for both (0: library default)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import numpy as np

    from avminer.engines import default_bundle_path, load_bundle
    from avminer.engines.ort import OrtEngine
    from avminer.engines.torch_backend import TorchEngine

    bundle = load_bundle(args.bundle or default_bundle_path())
    h, w = bundle.input_height, bundle.input_width
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(args.batch, h, w, 3), dtype=np.uint8)  # [N, H, W, 3]
    engines = {
        "onnxruntime": OrtEngine(bundle, threads=args.threads),
        "torch": TorchEngine(bundle, threads=args.threads),
    }
    batches_per_round = max(1, -(-args.frames // (args.batch * max(1, args.rounds))))
    seconds = dict.fromkeys(engines, 0.0)
    frames = dict.fromkeys(engines, 0)
    for engine in engines.values():
        engine.warmup(batch=args.batch, rounds=1)
    for _ in range(max(1, args.rounds)):
        for name, engine in engines.items():
            start = time.perf_counter()
            for _ in range(batches_per_round):
                engine.infer(images)
            seconds[name] += time.perf_counter() - start
            frames[name] += batches_per_round * args.batch
    for engine in engines.values():
        engine.close()
    fps = {name: frames[name] / seconds[name] for name in engines}
    result = {
        "bundle": str(bundle.path),
        "version": bundle.version,
        "members": bundle.members,
        "input": [h, w],
        "batch": args.batch,
        "frames": frames["onnxruntime"],
        "threads": args.threads,
        "ort_fps": round(fps["onnxruntime"], 2),
        "torch_fps": round(fps["torch"], 2),
        "ratio": round(fps["onnxruntime"] / fps["torch"], 3),
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"model {bundle.version}: K={bundle.members} at {h}x{w}, batch {args.batch}, "
              f"{result['frames']} frames per backend, threads {args.threads or 'default'}")
        print(f"onnxruntime  {result['ort_fps']:8.2f} frames/s")
        print(f"torch        {result['torch_fps']:8.2f} frames/s")
        print(f"ratio        {result['ratio']:8.3f}x (onnxruntime / torch)")
    return 0
