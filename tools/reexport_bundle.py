"""Upgrade a model bundle to the current format from its own model.pt (no retraining).

    .venv/bin/python tools/reexport_bundle.py avminer/data/starter_bundle      # in place
    .venv/bin/python tools/reexport_bundle.py OLD_BUNDLE --out NEW_BUNDLE

The ONNX graph is exported again with the in-graph scoring head (bundle format 2); the manifest keeps
the model's version, metrics and training record; model.pt and reference_stats.npz are copied byte for
byte. ONNX Runtime is checked against torch before the bundle is written out (parity figures printed).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", type=Path, help="bundle directory (format 1 or 2)")
    p.add_argument("--out", type=Path, help="write here instead of replacing the bundle")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import torch

    from avminer.engines.export import check_parity, reexport_bundle

    torch.set_num_threads(args.threads)
    bundle = reexport_bundle(args.bundle, args.out, check=False)
    report = check_parity(bundle, batch=4)
    size = sum(f.stat().st_size for f in bundle.path.rglob("*") if f.is_file())
    print(json.dumps({"bundle": str(bundle.path), "format": bundle.manifest["format"], "version": bundle.version,
                      "bytes": size, "parity_ort_vs_torch": report}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
