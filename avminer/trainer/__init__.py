"""The trainer: closes the loop from labeled frames to a released model.

- :mod:`~avminer.trainer.data`: labeled frames from CamVid-layout directories and drive logs, augmentation.
- :mod:`~avminer.trainer.dpe`: the Deep Probabilistic Ensembles KL regulariser.
- :mod:`~avminer.trainer.train`: joint training of the K members, per-slice evaluation, checkpoints.
- :mod:`~avminer.trainer.prune`, :mod:`~avminer.trainer.lowrank`, :mod:`~avminer.trainer.expandnet`:
  compression-aware training.
- :mod:`~avminer.trainer.gates`: per-condition release gates.
- :mod:`~avminer.trainer.release`: bundle export, ORT parity, S3 upload, ModelRelease.
- :mod:`~avminer.trainer.run`: one training run end to end (``avminer train run``, the starter bundle).
- :mod:`~avminer.trainer.service`: ``avminer train serve``.

The package import is light; the modules import torch themselves.
"""
