"""One tiny data-parallel training run, launched by ``test_ddp.py`` under torchrun (two gloo processes).

Each rank starts from its own random weights (DDP must hand everyone rank 0's), trains one epoch with its
own work directory and saves what it ended with as ``rank<r>.pt`` / ``rank<r>.json`` under OUT.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from avminer.models import build_ensemble, erfnet_arch
from avminer.trainer.train import TrainConfig, train_ensemble
from tests.trainer.conftest import make_frames


def main(out: Path) -> None:
    rank = int(os.environ["RANK"])
    frames = make_frames(10)
    model = build_ensemble(erfnet_arch(width=0.25, members=2), seed=100 + rank)
    cfg = TrainConfig(epochs=1, batch_size=2, lr=5e-3, threads=1, progress=False)
    result = train_ensemble(model, frames, cfg, work_dir=out / f"work-rank{rank}", eval_frames=frames)
    torch.save(result.model.state_dict(), out / f"rank{rank}.pt")
    (out / f"rank{rank}.json").write_text(json.dumps({
        "rank": result.rank, "metrics": sorted(result.metrics), "history": result.history,
        "completed": result.completed,
    }))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
