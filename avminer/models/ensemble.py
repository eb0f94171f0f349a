"""The K-member ensemble behind one input, as the engines and the trainer see it.

``forward(images float32 [N, 3, H, W], RGB 0..255) -> (probs [K, N, C, H, W], features [N, D])``:
normalisation happens inside the graph, each member's logits go through a softmax over classes, and the
feature vector is the mean of the members' pooled features. That is the ONNX contract of
:mod:`avminer.engines.bundle`.

``model.pt`` is ``torch.save({"arch": arch, "state_dict": state_dict})``; :func:`load_ensemble` rebuilds
the net from ``arch`` alone (pruned, low-rank and per-member variants included).
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from avminer.errors import TrainerError
from avminer.models.arch import feature_dim, member_blocks, validate_arch
from avminer.models.erfnet import ERFNet

# Prior of a BatchNorm scale in Deep Probabilistic Ensembles (Chitta et al., 2018): N(1, 0.01).
BN_PRIOR_MEAN = 1.0
BN_PRIOR_VAR = 0.01


def he_prior_variance(weight: Tensor, transposed: bool = False) -> float:
    """He prior variance 2 / (n_out · k_h · k_w) of a (transposed) convolution kernel.

    Conv2d kernels are ``[out, in, kh, kw]``; ConvTranspose2d kernels are ``[in, out, kh, kw]``.
    """
    n_out = weight.shape[1] if transposed else weight.shape[0]
    return 2.0 / float(n_out * weight.shape[2] * weight.shape[3])


def weight_priors(member: nn.Module) -> dict[str, tuple[float, float]]:
    """Prior (mean, variance) of every regularised parameter of one member, by parameter name.

    Conv and transposed-conv kernels get the He prior N(0, 2/(n_out·kh·kw)); BatchNorm scales N(1, 0.01).
    Biases and BatchNorm shifts carry no prior and are left out.
    """
    priors: dict[str, tuple[float, float]] = {}
    for name, module in member.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(module, nn.ConvTranspose2d):
            priors[f"{prefix}weight"] = (0.0, he_prior_variance(module.weight, transposed=True))
        elif isinstance(module, nn.Conv2d):
            priors[f"{prefix}weight"] = (0.0, he_prior_variance(module.weight))
        elif isinstance(module, nn.BatchNorm2d):
            priors[f"{prefix}weight"] = (BN_PRIOR_MEAN, BN_PRIOR_VAR)
    return priors


def init_from_prior(member: nn.Module, generator: torch.Generator | None = None) -> None:
    """Draw every prior-covered weight from its prior (He init for convs); zero biases and BN shifts.

    Independent draws are what make the members differ at the start; drawing from the DPE prior means
    the regulariser starts near its minimum.
    """
    params = dict(member.named_parameters())
    priors = weight_priors(member)
    with torch.no_grad():
        for name, p in params.items():
            if name in priors:
                mean, var = priors[name]
                p.copy_(torch.randn(p.shape, generator=generator) * var**0.5 + mean)
            else:
                p.zero_()


class Ensemble(nn.Module):
    """K ERFNet members behind one normalising input.

    Attributes:
        arch: the validated arch dict the ensemble was built from.
        members: the K member nets.
    """

    scale: Tensor  # [1, 3, 1, 1] buffer: 1 / std
    shift: Tensor  # [1, 3, 1, 1] buffer: -mean / std

    def __init__(self, arch: dict[str, Any]) -> None:
        super().__init__()
        self.arch = validate_arch(arch)
        k = int(self.arch["members"])
        self.members = nn.ModuleList(
            ERFNet(member_blocks(self.arch, i), self.arch["feature_taps"], self.arch["convs"]) for i in range(k)
        )
        mean = torch.tensor(self.arch["mean"], dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(self.arch["std"], dtype=torch.float32).view(1, 3, 1, 1)
        # (x - mean) / std as one multiply-add: x * scale + shift.
        self.register_buffer("scale", 1.0 / std)
        self.register_buffer("shift", -mean / std)

    @property
    def num_members(self) -> int:
        return len(self.members)

    @property
    def num_classes(self) -> int:
        return int(self.arch["num_classes"])

    @property
    def feature_dim(self) -> int:
        return feature_dim(self.arch)

    def normalise(self, images: Tensor) -> Tensor:
        """[N, 3, H, W] RGB 0..255 -> normalised [N, 3, H, W]."""
        return images * self.scale + self.shift

    def member_outputs(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """images [N, 3, H, W] 0..255 -> (logits [K, N, C, H, W], features [K, N, D]); for training."""
        x = self.normalise(images)
        outs = [member(x) for member in self.members]
        return torch.stack([o[0] for o in outs]), torch.stack([o[1] for o in outs])

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """images [N, 3, H, W] RGB 0..255 -> (probs [K, N, C, H, W], features [N, D])."""
        logits, feats = self.member_outputs(images)
        return torch.softmax(logits, dim=2), feats.mean(dim=0)


def build_ensemble(arch: dict[str, Any], seed: int | None = None) -> Ensemble:
    """A freshly initialised ensemble (weights drawn from the DPE prior; ``seed`` makes it repeatable)."""
    model = Ensemble(arch)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    for member in model.members:
        init_from_prior(member, generator)
    return model


def save_ensemble(model: Ensemble, arch: dict[str, Any] | None, path: str | Path) -> Path:
    """Write ``model.pt`` = ``{"arch": arch, "state_dict": sd}`` (``arch`` defaults to ``model.arch``)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    torch.save({"arch": validate_arch(arch if arch is not None else model.arch), "state_dict": state}, out)
    return out


def load_plain(path: str | Path, noun: str, *, map_location: str | torch.device = "cpu", hint: str = "") -> Any:
    """``torch.load`` with ``weights_only=True``, its failures turned into one-line :class:`TrainerError` s.

    Tensors and plain containers only: a planted pickle is refused and runs nothing.

    Args:
        path: the file.
        noun: what it is, for the messages (``model``, ``checkpoint``).
        map_location: where tensors go.
        hint: appended to the messages of an unreadable or refused file (e.g. how to recover).
    """
    try:
        return torch.load(Path(path), map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise TrainerError(f"{path}: no such {noun} file") from None
    except pickle.UnpicklingError as exc:
        if "unsupported global" not in str(exc).lower():  # corrupt, not planted
            raise TrainerError(f"{path}: not a readable {noun} file (bad pickle data){hint}") from exc
        raise TrainerError(f"{path}: refused: the {noun} file holds objects other than tensors and plain "
                           f"values (it may run code){hint}") from exc
    except (OSError, RuntimeError, EOFError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise TrainerError(f"{path}: not a readable {noun} file ({first}){hint}") from exc


def load_ensemble(path: str | Path, map_location: str | torch.device = "cpu") -> Ensemble:
    """Rebuild an ensemble from ``model.pt`` in eval mode.

    Raises:
        TrainerError: the file is missing, not a model.pt, or its weights do not fit its arch.
    """
    blob = load_plain(path, "model", map_location=map_location)
    if not isinstance(blob, dict) or "arch" not in blob or "state_dict" not in blob:
        raise TrainerError(f"{path}: expected a dict with 'arch' and 'state_dict' (avminer save_ensemble)")
    model = Ensemble(blob["arch"])
    try:
        model.load_state_dict(blob["state_dict"])
    except RuntimeError as exc:
        raise TrainerError(f"{path}: weights do not match the stored arch: {exc}") from exc
    return model.eval()


def set_mc_dropout(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Put only the dropout layers in train mode (Monte-Carlo dropout) or back to eval; BN stays as is."""
    for module in model.modules():
        if isinstance(module, nn.Dropout | nn.Dropout2d):
            module.train(enabled)
    return model


class MCDropoutEnsemble(nn.Module):
    """Monte-Carlo dropout (Gal & Ghahramani, 2016; the approach of the BaaL library) in the ensemble's shape.

    ``member_outputs`` returns ``samples`` stochastic passes of the first member, its dropout layers on
    and batch norm in eval, in place of the K members: ``[T, N, C, H, W]`` logits. The scoring head's
    mutual information over those passes is BALD (Houlsby et al., 2011). Features stay the deterministic
    ensemble's, so shift detection and near-duplicate checks are unchanged. Costs K + T member passes.

    The dropout masks come from their own seed, ``seed`` and the number of batches scored so far, not from
    the process's random state (which depends on what the process ran before): the same batches give the
    same scores, so a replayed stream gets the same selections.

    Args:
        ensemble: the served :class:`Ensemble` (weights shared, not copied).
        samples: T, the number of stochastic passes (>= 2).
        seed: seed of the dropout masks.
    """

    def __init__(self, ensemble: Ensemble, samples: int, seed: int = 0) -> None:
        super().__init__()
        if samples < 2:
            raise ValueError(f"MC dropout needs >= 2 samples, got {samples}")
        self.ensemble = ensemble
        self.samples = samples
        self.seed = seed
        self._batches = 0

    @property
    def num_classes(self) -> int:
        return self.ensemble.num_classes

    def member_outputs(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """images [N, 3, H, W] 0..255 -> (logits [T, N, C, H, W], features [K, N, D])."""
        _, feats = self.ensemble.member_outputs(images)  # deterministic: dropout off
        member = self.ensemble.members[0]
        x = self.ensemble.normalise(images)
        with torch.random.fork_rng(devices=[images.device] if images.is_cuda else []):
            torch.manual_seed(self.seed * 1_000_003 + self._batches)
            self._batches += 1
            set_mc_dropout(member, True)
            try:
                logits = torch.stack([member(x)[0] for _ in range(self.samples)])  # [T, N, C, H, W]
            finally:
                set_mc_dropout(member, False)
        return logits, feats
