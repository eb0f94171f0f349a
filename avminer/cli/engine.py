"""``avminer engine``: inspect, verify and build TensorRT plans for model bundles."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from avminer.cli.argtypes import POSITIVE


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser("engine", help="model bundles: info, verify, TensorRT build")
    es = parser.add_subparsers(dest="engine_cmd", metavar="ACTION")
    es.required = True

    info = es.add_parser("info", help="show a bundle's manifest summary, files and TensorRT plans")
    info.add_argument("bundle", nargs="?", help="bundle directory (default: the starter bundle)")
    info.add_argument("--json", action="store_true", help="print the manifest as one JSON object")
    info.set_defaults(func=_info)

    verify = es.add_parser(
        "verify", help="check every checksum, then ONNX Runtime vs torch (and TensorRT on a GPU) on one batch"
    )
    verify.add_argument("bundle", nargs="?", help="bundle directory (default: the starter bundle)")
    verify.add_argument("--batch", type=POSITIVE, default=2, help="frames in the parity batch")
    verify.add_argument("--checksums-only", action="store_true", help="skip the parity run")
    verify.set_defaults(func=_verify)

    build = es.add_parser("build", help="build a TensorRT plan for this GPU and store it in the bundle")
    build.add_argument("bundle", nargs="?", help="bundle directory (default: the starter bundle)")
    prec = build.add_mutually_exclusive_group()
    prec.add_argument("--fp16", dest="fp16", action="store_true", default=True, help="FP16 kernels (default)")
    prec.add_argument("--fp32", dest="fp16", action="store_false", help="strict FP32 (TF32 off)")
    build.add_argument("--device", default="cuda:0", help="CUDA device to build for")
    build.add_argument("--opt-batch", type=POSITIVE, default=8, help="batch size TensorRT tunes for")
    build.add_argument("--max-batch", type=POSITIVE, default=32, help="largest batch the plan accepts")
    build.set_defaults(func=_build)


def _path(args: argparse.Namespace) -> Path:
    from avminer.engines import default_bundle_path

    return Path(args.bundle) if args.bundle else default_bundle_path()


def _info(args: argparse.Namespace) -> int:
    from avminer.engines.bundle import load_bundle

    bundle = load_bundle(_path(args), verify=False)
    m = bundle.manifest
    if args.json:
        print(json.dumps(m, sort_keys=True))
        return 0
    print(f"bundle      {bundle.path}")
    print(f"version     {bundle.version}")
    print(f"members     {bundle.members}")
    print(f"input       {bundle.input_height}x{bundle.input_width} RGB 0..255")
    print(f"classes     {len(bundle.classes)}: {', '.join(bundle.classes)} (void index {bundle.void_index})")
    print(f"features    {bundle.feature_dim}")
    print("files")
    for rel, sha in sorted(m["files"].items()):
        size = (bundle.path / rel).stat().st_size if (bundle.path / rel).exists() else -1
        print(f"  {rel:40s} {size:>12,d} B  sha256 {sha[:12]}")
    plans = m.get("plans", {})
    print("tensorrt    " + (", ".join(sorted(plans)) if plans else "no plans"))
    for key, info in sorted(m.get("plan_info", {}).items()):
        print(f"  {key}: {info.get('precision')} on {info.get('gpu')}, batch 1..{info.get('max_batch')}, "
              f"built {info.get('built_at')}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from avminer.engines.bundle import load_bundle

    bundle = load_bundle(_path(args))  # raises BundleError (exit 2) on any checksum mismatch
    print(f"checksums   ok ({len(bundle.manifest['files'])} files) for model {bundle.version}")
    if bundle.reference_path is not None:
        from avminer.scoring.shift import ShiftReference

        # Loaded as the miner will load it: object arrays or a wrong layout fail here, not in `mine`.
        reference = ShiftReference.load(bundle.reference_path)
        print(f"reference   ok ({len(reference.slices)} slices)")
    if args.checksums_only:
        return 0
    from avminer.engines.export import PARITY_ATOL, check_parity

    if bundle.torch_path is not None:
        report = check_parity(bundle, batch=args.batch)
        print(f"parity      ort vs torch max abs diff: probs {report['probs']:.2e}, "
              f"features {report['features']:.2e} (tolerance {PARITY_ATOL:g})")
    else:
        print("parity      skipped: no model.pt in the bundle")
    from avminer.utils.imports import is_cuda_available, is_tensorrt_available

    if not (is_tensorrt_available() and is_cuda_available()):
        print("tensorrt    not checked: needs TensorRT and a CUDA device")
        return 0
    from avminer.engines.tensorrt_backend import check_tensorrt_parity, current_key

    key = str(current_key())
    if key not in bundle.manifest.get("plans", {}):
        print(f"tensorrt    not checked: no plan for this machine ({key}); `avminer engine build` adds one")
        return 0
    report = check_tensorrt_parity(bundle, batch=args.batch)
    print(f"tensorrt    {key} vs ort: probs max {report['probs_max']:.2e} mean {report['probs_mean']:.2e}, "
          f"argmax agreement {report['argmax_agreement']:.4f} ({report['precision']})")
    return 0


def _build(args: argparse.Namespace) -> int:
    from avminer.engines.bundle import load_bundle
    from avminer.engines.tensorrt_backend import build_plan, current_key

    bundle = load_bundle(_path(args))
    bundle = build_plan(
        bundle, fp16=args.fp16, device=args.device, opt_batch=args.opt_batch, max_batch=args.max_batch
    )
    key = str(current_key(args.device))
    print(f"built {bundle.manifest['plans'][key]} ({'fp16' if args.fp16 else 'fp32'}) in {bundle.path}")
    return 0
