"""Data-parallel training under torchrun: two gloo processes on the CPU end with the same weights, and only
rank 0 evaluates and writes the checkpoint. (NCCL on GPUs is the same code with another backend: unverified
here, no GPU.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from avminer.models import build_ensemble, erfnet_arch
from avminer.trainer.train import CHECKPOINT, load_checkpoint

REPO = Path(__file__).resolve().parents[2]


def test_two_gloo_ranks_end_identical_and_only_rank_0_writes(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "tests.trainer.ddp_worker", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    w0, w1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert list(w0) == list(w1)
    for name in w0:
        assert torch.equal(w0[name], w1[name]), name  # parameters and BatchNorm statistics alike
    start = build_ensemble(erfnet_arch(width=0.25, members=2), seed=100).state_dict()  # rank 0's initial draw
    moved = [n for n in start if start[n].is_floating_point() and not torch.equal(start[n], w0[n])]
    assert len(moved) > len(start) // 2  # it trained

    assert (tmp_path / "work-rank0" / CHECKPOINT).exists()
    assert not (tmp_path / "work-rank1").exists() or not any((tmp_path / "work-rank1").iterdir())
    ckpt = load_checkpoint(tmp_path / "work-rank0" / CHECKPOINT)
    assert ckpt["epoch"] == 1
    assert all(torch.equal(ckpt["model"][n].cpu(), w0[n]) for n in w0)  # the checkpoint is the final model
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert (r0["rank"], r1["rank"]) == (0, 1) and r0["completed"] and r1["completed"]
    assert "all" in r0["metrics"] and r1["metrics"] == []  # only rank 0 evaluates
    assert r0["history"][0]["loss"] == r1["history"][0]["loss"]  # the epoch loss is averaged over both ranks
