"""Planted pickles: a checkpoint or model file that would run code on load is refused, and runs nothing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from avminer.errors import TrainerError
from avminer.models.ensemble import load_ensemble
from avminer.trainer.train import CHECKPOINT, load_checkpoint


class Payload:
    """Unpickling this creates ``marker`` (a stand-in for any command an attacker would run)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.mkdir, (str(self.marker),)


def plant(path: Path, marker: Path) -> Path:
    torch.save({"model": {}, "epoch": 1, "arch": {}, "state_dict": {}, "x": Payload(marker)}, path)
    return path


def test_a_planted_checkpoint_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    with pytest.raises(TrainerError, match="refused") as info:
        load_checkpoint(plant(tmp_path / CHECKPOINT, marker))
    assert not marker.exists()
    assert "\n" not in str(info.value)  # one line, not torch's multi-paragraph explanation


def test_a_planted_model_file_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    with pytest.raises(TrainerError, match="refused"):
        load_ensemble(plant(tmp_path / "model.pt", marker))
    assert not marker.exists()


def test_a_plain_pickle_of_nothing_is_still_a_clear_error(tmp_path: Path) -> None:
    bogus = tmp_path / CHECKPOINT
    bogus.write_bytes(b"not a checkpoint at all")
    with pytest.raises(TrainerError, match="not a readable checkpoint"):
        load_checkpoint(bogus)
