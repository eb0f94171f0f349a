"""Domain shift: per-condition reference statistics of pooled features and a Mahalanobis score.

The trainer fits a :class:`ShiftReference` on the pooled features (``[n, D]``, the engine's second
output) of its training frames, one Gaussian per condition slice plus a pooled ``"all"`` Gaussian, and
ships it in the bundle as ``reference_stats.npz``. At mining time every frame's features are scored by
their **squared** Mahalanobis distance to its slice's Gaussian (to the pooled one when the slice was
never seen in training) — the "simple unified framework" of Lee et al., *A Simple Unified Framework
for Detecting Out-of-Distribution Samples and Adversarial Attacks*, NeurIPS 2018, applied to the
pooled encoder features.

Covariances are shrunk towards a scaled identity, because a slice can have fewer frames than feature
dimensions: Ledoit & Wolf, *A well-conditioned estimator for large-dimensional covariance matrices*,
J. Multivariate Anal. 2004 (closed form, the default), or Chen et al., *Shrinkage Algorithms for MMSE
Covariance Estimation* (OAS), IEEE TSP 2010. Features are first divided by their pooled per-dimension
standard deviation so that the identity target suits every dimension.

The baseline to beat is :func:`max_softmax_score` (Hendrycks & Gimpel, ICLR 2017).

:class:`DriftMonitor` turns per-frame scores into a windowed per-slice statistic with an alarm.

npz layout (``FORMAT_VERSION`` 1; every array plain, loadable with ``allow_pickle=False``)::

    version      int64 []          format version
    slices       <U  [S]           slice keys; one of them is "all" (the pooled reference)
    scale        float64 [D]       per-dimension divisor applied before everything else
    means        float64 [S, D]    slice means (in scaled units)
    covariances  float64 [S, D, D] shrunk covariances (in scaled units)
    precisions   float64 [S, D, D] their inverses
    counts       int64 [S]         frames each slice was fitted on
    shrinkage    float64 [S]       shrinkage intensity used, in [0, 1]
    score_mean   float64 [S]       mean squared distance of held-out in-distribution frames
    score_std    float64 [S]       their standard deviation (the drift statistic's unit)
"""

from __future__ import annotations

import io
import logging
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from numpy.typing import NDArray

from avminer.errors import ScoringError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
ALL = "all"
"""Key of the pooled reference, used for slices absent from the reference."""

_EIG_FLOOR = 1e-6  # relative floor of covariance eigenvalues: keeps the precision finite
_FOLDS = 5

F64 = NDArray[np.float64]


# --------------------------------------------------------------------------------------------------
# Covariance shrinkage
# --------------------------------------------------------------------------------------------------
def ledoit_wolf_shrinkage(x: F64) -> float:
    """Ledoit-Wolf optimal shrinkage intensity towards ``mu * I`` (closed form).

    Args:
        x: centred samples ``[n, D]``.

    Returns:
        The intensity in [0, 1] (same estimator as scikit-learn's ``ledoit_wolf_shrinkage``).
    """
    n, d = x.shape
    if n == 0:
        return 1.0
    x2 = x * x  # [n, D]
    emp_cov_trace = x2.sum(axis=0) / n  # [D]: diagonal of the empirical covariance
    mu = float(emp_cov_trace.sum()) / d
    gram = x.T @ x  # [D, D]
    delta_ = float((gram * gram).sum()) / n**2  # ||S||_F^2
    beta_ = float((x2.T @ x2).sum())  # sum_k ||x_k x_k^T||_F^2
    beta = (beta_ / n - delta_) / (d * n)
    delta = (delta_ - 2.0 * mu * float(emp_cov_trace.sum()) + d * mu**2) / d  # ||S - mu I||_F^2 / D
    beta = min(beta, delta)
    return 0.0 if beta <= 0.0 or delta <= 0.0 else float(beta / delta)


def oas_shrinkage(x: F64) -> float:
    """Oracle Approximating Shrinkage intensity towards ``mu * I`` (Chen et al. 2010).

    Args:
        x: centred samples ``[n, D]``.
    """
    n, d = x.shape
    if n == 0:
        return 1.0
    emp_cov = x.T @ x / n  # [D, D]
    mu = float(np.trace(emp_cov)) / d
    alpha = float((emp_cov * emp_cov).mean())
    num = alpha + mu**2
    den = (n + 1.0) * (alpha - mu**2 / d)
    return 1.0 if den <= 0.0 else float(min(num / den, 1.0))


def shrunk_covariance(x: F64, shrinkage: float | str | None = None) -> tuple[F64, F64, float]:
    """Mean, shrunk covariance and the intensity used.

    Args:
        x: samples ``[n, D]`` (float64).
        shrinkage: None or ``"ledoit-wolf"`` (estimated, closed form), ``"oas"``, or a fixed
            intensity in [0, 1].

    Returns:
        ``(mean [D], covariance [D, D], intensity)``.
    """
    mean = x.mean(axis=0)  # [D]
    xc = x - mean  # [n, D]
    n, d = x.shape
    if shrinkage is None or shrinkage == "ledoit-wolf":
        s = ledoit_wolf_shrinkage(xc)
    elif shrinkage == "oas":
        s = oas_shrinkage(xc)
    elif isinstance(shrinkage, (int, float)) and 0.0 <= float(shrinkage) <= 1.0:
        s = float(shrinkage)
    else:
        raise ScoringError(f"shrinkage must be None, 'ledoit-wolf', 'oas' or a number in [0, 1], got {shrinkage!r}")
    emp = xc.T @ xc / max(n, 1)  # [D, D] maximum-likelihood covariance
    mu = float(np.trace(emp)) / d
    cov = (1.0 - s) * emp
    cov[np.diag_indices(d)] += s * mu
    return mean, cov, s


def _precision(cov: F64) -> F64:
    """Inverse of a symmetric PSD matrix through its eigendecomposition, eigenvalues floored."""
    w, v = np.linalg.eigh(cov)  # [D], [D, D]
    floor = max(float(w.max()), 1e-12) * _EIG_FLOOR
    w = np.maximum(w, floor)
    prec: F64 = (v / w) @ v.T  # V diag(1/w) V^T
    return (prec + prec.T) / 2.0  # exact symmetry


def _sq_mahalanobis(x: F64, mean: F64, precision: F64) -> F64:
    d = x - mean  # [N, D]
    # (d P) through BLAS, then a row-wise dot: a three-operand einsum loops in C without BLAS (6x slower at D=128)
    out: F64 = np.einsum("nd,nd->n", d @ precision, d)  # [N]
    return out


# --------------------------------------------------------------------------------------------------
# Reference
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SliceStats:
    """One slice's Gaussian (in scaled feature units) and its in-distribution score statistics."""

    mean: F64  # [D]
    covariance: F64  # [D, D]
    precision: F64  # [D, D]
    count: int
    shrinkage: float
    score_mean: float
    score_std: float


class ShiftReference:
    """Per-condition Gaussian reference of pooled features; scores frames by squared Mahalanobis distance.

    Build with :meth:`fit`, persist with :meth:`save` / :meth:`load` (the bundle's ``reference_stats.npz``).
    """

    def __init__(self, slices: Mapping[str, SliceStats], scale: F64) -> None:
        if ALL not in slices:
            raise ScoringError(f"a shift reference needs the pooled {ALL!r} slice; refit it with ShiftReference.fit")
        self.slices: dict[str, SliceStats] = dict(slices)
        self.scale = np.asarray(scale, dtype=np.float64)

    @property
    def dim(self) -> int:
        """Feature dimension D."""
        return int(self.scale.shape[0])

    def __repr__(self) -> str:
        return f"ShiftReference(dim={self.dim}, slices={sorted(self.slices)})"

    # -- fitting ---------------------------------------------------------------------------------------
    @classmethod
    def fit(
        cls,
        features_by_slice: Mapping[str, np.ndarray],
        shrinkage: float | str | None = None,
        min_count: int = 5,
        seed: int = 0,
    ) -> ShiftReference:
        """Fit one shrunk Gaussian per slice plus the pooled ``"all"`` reference.

        Args:
            features_by_slice: slice key -> pooled features ``[n, D]`` of in-distribution (training)
                frames. The pooled reference is fitted on all of them together (or on the ``"all"``
                entry if given).
            shrinkage: None / ``"ledoit-wolf"`` (default, closed form), ``"oas"``, or a fixed intensity.
            min_count: slices with fewer frames get no Gaussian of their own (they use the pooled one).
            seed: seed of the fold split used to measure held-out in-distribution scores.

        Raises:
            ScoringError: no features, inconsistent dimensions, or non-finite values.
        """
        arrays: dict[str, F64] = {}
        dim: int | None = None
        for key, feats in features_by_slice.items():
            x = np.asarray(feats, dtype=np.float64)
            if x.ndim != 2:
                raise ScoringError(f"features of slice {key!r} must be [n, D], got shape {x.shape}")
            if dim is None:
                dim = x.shape[1]
            if x.shape[1] != dim:
                raise ScoringError(f"slice {key!r} has feature dim {x.shape[1]}, others have {dim}")
            if not np.isfinite(x).all():
                raise ScoringError(f"features of slice {key!r} contain NaN or inf; check the model outputs")
            if len(x):
                arrays[str(key)] = x
        if not arrays or dim is None:
            raise ScoringError("no features to fit a shift reference on")
        pooled = arrays[ALL] if ALL in arrays else np.concatenate(list(arrays.values()), axis=0)
        if len(pooled) < 2:
            raise ScoringError(f"a shift reference needs at least 2 frames, got {len(pooled)}")
        std = pooled.std(axis=0)  # [D]
        # Dead feature channels (constant, e.g. post-ReLU zeros) keep a small positive unit scale.
        scale = np.where(std > 1e-8 * max(float(std.max()), 1e-12), std, max(float(std.max()), 1.0))
        rng = np.random.default_rng(seed)
        stats: dict[str, SliceStats] = {}
        for key, x in [(ALL, pooled), *((k, v) for k, v in arrays.items() if k != ALL)]:
            if key != ALL and len(x) < max(min_count, 2):  # the pooled reference only needs 2 (checked above)
                log.info("shift reference: slice %s has %d frames (< %d); it will use the pooled reference",
                         key, len(x), min_count)
                continue
            stats[key] = _fit_slice(x / scale, shrinkage, rng)
        return cls(stats, scale)

    # -- persistence -------------------------------------------------------------------------------------
    def save(self, path: str | Path | BinaryIO) -> None:
        """Write the reference as an npz file (layout in the module docstring) to a path or binary file."""
        keys = sorted(self.slices, key=lambda k: (k != ALL, k))
        s = [self.slices[k] for k in keys]
        arrays: dict[str, Any] = {
            "version": np.int64(FORMAT_VERSION),
            "slices": np.array(keys, dtype=np.str_),
            "scale": self.scale,
            "means": np.stack([x.mean for x in s]),
            "covariances": np.stack([x.covariance for x in s]),
            "precisions": np.stack([x.precision for x in s]),
            "counts": np.array([x.count for x in s], dtype=np.int64),
            "shrinkage": np.array([x.shrinkage for x in s], dtype=np.float64),
            "score_mean": np.array([x.score_mean for x in s], dtype=np.float64),
            "score_std": np.array([x.score_std for x in s], dtype=np.float64),
        }
        if isinstance(path, (str, Path)):
            with open(path, "wb") as fh:
                np.savez(fh, **arrays)  # a file object: numpy would append ".npz" to a bare path
        else:
            np.savez(path, **arrays)

    def to_bytes(self) -> bytes:
        """The npz file's bytes (e.g. for :func:`avminer.engines.bundle.write_bundle`)."""
        buf = io.BytesIO()
        self.save(buf)
        return buf.getvalue()

    @classmethod
    def load(cls, path: str | Path | BinaryIO) -> ShiftReference:
        """Read a reference written by :meth:`save`.

        Raises:
            ScoringError: missing, unreadable, of another format version, or inconsistent.
        """
        try:
            with np.load(path, allow_pickle=False) as z:
                data = {k: z[k] for k in z.files}
        except FileNotFoundError:
            raise ScoringError(f"shift reference {path} does not exist") from None
        except (OSError, ValueError, EOFError) as exc:
            raise ScoringError(f"shift reference {path} is not a readable npz file ({exc})") from exc
        required = ("version", "slices", "scale", "means", "covariances", "precisions", "counts",
                    "shrinkage", "score_mean", "score_std")
        missing = [k for k in required if k not in data]
        if missing:
            raise ScoringError(f"shift reference {path} lacks {', '.join(missing)}; refit it with this avminer")
        if int(data["version"]) != FORMAT_VERSION:
            raise ScoringError(
                f"shift reference {path} has format version {int(data['version'])}, this avminer reads "
                f"{FORMAT_VERSION}; refit it or upgrade avminer"
            )
        keys = [str(k) for k in data["slices"]]
        n, d = len(keys), data["scale"].shape[0]
        for name, shape in (("means", (n, d)), ("covariances", (n, d, d)), ("precisions", (n, d, d))):
            if data[name].shape != shape:
                raise ScoringError(f"shift reference {path}: {name} has shape {data[name].shape}, expected {shape}")
        slices = {
            k: SliceStats(
                mean=data["means"][i].astype(np.float64),
                covariance=data["covariances"][i].astype(np.float64),
                precision=data["precisions"][i].astype(np.float64),
                count=int(data["counts"][i]),
                shrinkage=float(data["shrinkage"][i]),
                score_mean=float(data["score_mean"][i]),
                score_std=float(data["score_std"][i]),
            )
            for i, k in enumerate(keys)
        }
        return cls(slices, data["scale"].astype(np.float64))

    # -- scoring ---------------------------------------------------------------------------------------
    def stats_for(self, slice_key: str | None) -> tuple[str, SliceStats]:
        """The slice's statistics, or the pooled ones when the slice is unknown (or None)."""
        if slice_key is not None and slice_key in self.slices:
            return slice_key, self.slices[slice_key]
        return ALL, self.slices[ALL]

    def mahalanobis(self, features: np.ndarray, slices: Sequence[str | None] | None = None) -> NDArray[np.float32]:
        """Squared Mahalanobis distance of each frame's features to its slice's reference.

        The squared distance is returned (not its square root): for in-distribution frames it is
        roughly chi-square with D degrees of freedom, so its scale reads directly against D.

        Args:
            features: pooled features ``[N, D]``.
            slices: slice key per frame; None (or an unknown key) scores against the pooled reference.

        Returns:
            ``[N]`` float32, >= 0.
        """
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ScoringError(f"features must be [N, {self.dim}] for this reference, got shape {x.shape}")
        if slices is not None and len(slices) != len(x):
            raise ScoringError(f"{len(slices)} slice keys for {len(x)} frames")
        x = x / self.scale
        out = np.empty(len(x), dtype=np.float64)
        keys = [self.stats_for(s)[0] for s in slices] if slices is not None else [ALL] * len(x)
        for key in set(keys):
            idx = np.fromiter((i for i, k in enumerate(keys) if k == key), dtype=np.int64)
            st = self.slices[key]
            out[idx] = _sq_mahalanobis(x[idx], st.mean, st.precision)
        np.maximum(out, 0.0, out=out)
        out[~np.isfinite(out)] = np.finfo(np.float32).max  # non-finite features: maximally shifted
        return out.astype(np.float32)


def _fit_slice(x: F64, shrinkage: float | str | None, rng: np.random.Generator) -> SliceStats:
    """Fit one slice and measure its in-distribution score distribution on held-out folds.

    In-sample distances are biased low (the Gaussian was fitted on those very frames), which would make
    every new in-distribution frame look shifted; k-fold held-out distances are not.
    """
    mean, cov, s = shrunk_covariance(x, shrinkage)
    prec = _precision(cov)
    n = len(x)
    if n >= 2 * _FOLDS:
        held = np.empty(n, dtype=np.float64)
        folds = np.array_split(rng.permutation(n), _FOLDS)
        for fold in folds:
            train = np.setdiff1d(np.arange(n), fold, assume_unique=True)
            m, c, _ = shrunk_covariance(x[train], shrinkage)
            held[fold] = _sq_mahalanobis(x[fold], m, _precision(c))
    else:
        held = _sq_mahalanobis(x, mean, prec)
    return SliceStats(
        mean=mean,
        covariance=cov,
        precision=prec,
        count=n,
        shrinkage=s,
        score_mean=float(held.mean()),
        score_std=float(max(held.std(), 1e-12)),
    )


# --------------------------------------------------------------------------------------------------
# Baseline
# --------------------------------------------------------------------------------------------------
def max_softmax_score(probs: np.ndarray) -> NDArray[np.float32]:
    """Maximum-softmax-probability baseline: ``1 - mean over pixels of max_c mean_k p``.

    Hendrycks & Gimpel, *A Baseline for Detecting Misclassified and Out-of-Distribution Examples in
    Neural Networks*, ICLR 2017, on the ensemble's mean probabilities. Higher means more anomalous.

    Args:
        probs: ``[K, N, C, H, W]`` per-member probabilities.

    Returns:
        ``[N]`` float32 in [0, 1].
    """
    p = np.asarray(probs)
    if p.ndim != 5:
        raise ScoringError(f"probs must be [K, N, C, H, W], got shape {p.shape}")
    n = p.shape[1]
    out = np.empty(n, dtype=np.float32)
    for i in range(n):  # one frame at a time keeps the temporaries at [C, H, W]
        mean_p = p[:, i].mean(axis=0, dtype=np.float32)  # [C, H, W]
        out[i] = 1.0 - float(mean_p.max(axis=0).mean(dtype=np.float64))
    return np.clip(out, 0.0, 1.0)


# --------------------------------------------------------------------------------------------------
# Drift
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DriftState:
    """The drift statistic of one slice after an update."""

    slice: str
    value: float  # z-score of the window's mean score
    alarm: bool
    frames: int  # frames in the window


class DriftMonitor:
    """Per-slice windowed drift statistic of shift scores, with an alarm.

    Statistic: ``z = (mean of the last `window` scores - mu_ref) / sd_ref`` where ``mu_ref`` and
    ``sd_ref`` are the mean and standard deviation of held-out in-distribution scores of the slice's
    reference (:attr:`SliceStats.score_mean` / ``score_std``). It reads as "the window's average frame
    is z reference standard deviations further out than a typical training frame". It is deliberately
    not divided by ``sqrt(window)``: consecutive video frames are strongly correlated, so a
    standard-error z-test would alarm on harmless within-distribution wander. The alarm is raised while
    ``z > alarm`` and the window holds at least ``min_frames`` frames.

    Values for the ``avminer_drift_statistic`` / ``avminer_drift_alarm`` gauges are in :meth:`values`;
    the scorer copies them into :mod:`avminer.metrics`.
    """

    def __init__(
        self,
        window: int,
        alarm: float,
        reference: ShiftReference | None = None,
        min_frames: int | None = None,
    ) -> None:
        if window < 1:
            raise ScoringError(f"drift window must be >= 1 frame, got {window}")
        self.window = int(window)
        self.alarm = float(alarm)
        self.reference = reference
        self.min_frames = int(min_frames if min_frames is not None else max(1, min(self.window, 20)))
        self._scores: dict[str, deque[float]] = {}
        self._states: dict[str, DriftState] = {}

    def _unit(self, slice_key: str) -> tuple[float, float]:
        if self.reference is None:
            return 0.0, 1.0
        _, st = self.reference.stats_for(slice_key)
        return st.score_mean, st.score_std

    def update(self, slice_key: str, scores: Sequence[float] | np.ndarray) -> DriftState:
        """Add frame scores of one slice and return its new state."""
        buf = self._scores.setdefault(slice_key, deque(maxlen=self.window))
        buf.extend(float(s) for s in np.asarray(scores, dtype=np.float64).ravel() if np.isfinite(s))
        mu, sd = self._unit(slice_key)
        value = (float(np.mean(buf)) - mu) / sd if buf else 0.0
        state = DriftState(slice_key, value, bool(len(buf) >= self.min_frames and value > self.alarm), len(buf))
        self._states[slice_key] = state
        return state

    def state(self, slice_key: str) -> DriftState | None:
        """Last state of a slice (None before its first update)."""
        return self._states.get(slice_key)

    def values(self) -> dict[str, tuple[float, bool]]:
        """slice -> (statistic, alarm) for every slice seen."""
        return {k: (s.value, s.alarm) for k, s in self._states.items()}
