"""The selection policy: which scored frames are worth a human's time.

**Priority.** Each frame has four component scores: ``mi`` (ensemble mutual information), ``shift``
(Mahalanobis), ``radar`` (camera-radar disagreement) and ``novelty`` (``1 -`` the highest cosine
similarity of its embedding to recently seen frames). Their scales differ and drift with the model, so
each is turned into a *tail surprise* ``s_i = -log10(fraction of frames scoring higher)`` from a
mergeable quantile sketch of that component (a frame in the top 1/1000 of MI has ``s = 3``). ``mi`` and
``shift`` (:data:`FLEET_RANKED`) are ranked against **every slice's** frames, this miner's and the
fleet's: a condition the model is unsure about or has never seen as a whole (dusk for a day-trained
model, a new country) lands in the fleet-wide tail however rare it is, so the budget follows measured
unfamiliarity, not names given in advance; ``radar`` and ``novelty`` are ranked within the slice. The
priority is ``max(w_mi * s_mi + w_shift * s_shift, w_radar * s_radar, w_novelty * s_novelty)``
(``settings.score_weights``): uncertainty and unfamiliarity add up (surprises are log tail fractions,
so the sum ranks the joint rarity, whatever the scores' scales), radar or novelty can carry a frame on
their own. A release's **measured quality per condition** (its gates' mIoU, shipped in the bundle and given
by :meth:`SelectionPolicy.set_model_quality`) adds ``quality_weight x log10(fleet mIoU / the slice's worst
condition's mIoU)`` to the priority (:mod:`avminer.selection.quality`): a condition the model is measured to
fail on ranks its frames higher than its scores alone would. The reasons of a mined frame are the components
that alone clear the threshold (``uncertainty``, ``shift``, ``radar``, ``novelty``), else the largest
contributor. Novelty is measured only against :data:`NOVELTY_MIN_SEEN` or more frames of the slice (0 until
then).

**Threshold and budget.** A frame is mined iff ``priority > threshold``, the ``1 - q`` quantile of the
priorities of this miner's last ``rank_window`` distinct frames (every slice), **re-scored against the current
sketches** — the same statistics the new frame is ranked against (a priority recorded when a frame arrived was
measured against fewer, older frames and is not comparable: early frames would crowd the top). Until this
miner has seen ``warmup_frames`` frames, :data:`WARMUP_MIN_FRAMES` of them distinct (frames seen are what the
baselines' warm-up counts too; a warm-up of distinct frames lasted three times longer on a stream of
standstill repeats and turned away the first burst of an unfamiliar condition), the fleet's pooled priority
sketch stands in if it holds ``warmup_frames`` frames, else nothing is mined (``warmup``). ``rate`` is
``settings.slice_rates[slice]`` if the key is there exactly (an exact key may also lower a slice's rate), else
the highest of ``settings.target_rate`` and the rates of matching wildcard patterns (patterns only raise a
rate). The budget counts **frames seen**, near-duplicates included: ``q = rate x (frames seen / distinct
frames, over all slices) x catch-up``, so what a standstill's repeats would have cost goes to the best
distinct frames wherever they are, and ``catch-up = 2 ** ((earned - mined) / CATCH_UP_LABELS)`` bounded by
:data:`CATCH_UP` (``earned = sum of rate x frames seen``): refusals of the guards below and the warm-up are
bought back, a burst is paid back, both gently — a quiet stretch of ordinary frames must not pull the bar down
into the common case, nor a burst of unfamiliar frames (a vehicle driving into dusk) be turned away because
the budget ran ahead. With default rates every slice has the same threshold: how much of the budget a
condition gets follows its priorities, i.e. measured unfamiliarity and uncertainty.

**A new model** (a hot-swapped release: frames carry the model version) scores on another scale and
embeds in another space: embedding memories are cleared at once; its frames are ranked against the old
model's statistics until ``warmup_frames`` of them are gathered, which then replace the old (no warm-up
gap at each release).

**Guards** (in this order, after the threshold): near-duplicate of a recently *mined* frame (cosine
similarity ``>= duplicate_similarity``), per-camera cooldown on the frames' own timestamps, per-slice
hourly token bucket on the injected clock.

**Duplicates of seen frames.** A frame whose embedding is a near-duplicate of one of the last
``memory_size`` frames *seen* (mined or not) in its slice — compared around the slice's running
embedding centre, see :meth:`SelectionPolicy._unit` — is rejected outright and not added to the sketches: it
carries no new information, so a camera stuck on one scene, a stationary vehicle or a replayed stream
neither inflates the statistics nor gets a second chance at the threshold, and the same picture is never
labeled twice. This is also the within-batch diversity rule: candidates are taken in arrival order and
the first of two near-identical frames wins. :meth:`stats` reports the rate per frame seen and per
distinct frame.
"""

from __future__ import annotations

import fnmatch
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from avminer.config import SelectionSettings
from avminer.errors import SelectionError
from avminer.selection.budget import TokenBucket
from avminer.selection.memory import EmbeddingMemory, normalize
from avminer.selection.quality import SliceQuality
from avminer.selection.recent import RecentScores
from avminer.selection.sketch import QuantileSketch
from avminer.utils.packing import PackingError, pack_named, unpack_named

COMPONENTS = ("mi", "shift", "radar", "novelty")
"""Score components of the priority, in order."""
REASONS = {"mi": "uncertainty", "shift": "shift", "radar": "radar", "novelty": "novelty"}
"""The reason a mined frame carries for each component."""
PRIORITY = "priority"
REFRESH_EVERY = 16
"""Frames of a slice between two re-reads of its thresholds (more once its sketch is large)."""
WARMUP_MIN_FRAMES = 20
"""Distinct frames of its own this policy needs before it mines (fewer only if ``warmup_frames`` is smaller);
the score baselines (:mod:`avminer.selection.baselines`) need at least this many frames."""
FLEET_RANKED = ("mi", "shift")
"""Components of the full policy ranked against every slice's frames (the rest within the slice)."""
CATCH_UP = (0.5, 2.0)
"""Bounds of the catch-up factor on the mined fraction (module docstring)."""
CATCH_UP_LABELS = 4.0
"""Labels behind (ahead of) the budget that double (halve) the mined fraction."""
SKETCH_ACCURACY = 0.0025
"""Relative accuracy of every sketch; every miner of a fleet must use the same."""

_PACK_VERSION = 1


@dataclass
class Candidate:
    """One scored frame offered to the policy."""

    sample_id: str
    camera_key: str  # vehicle/camera: the cooldown unit
    slice: str
    scores: Mapping[str, float]  # at least mi, shift, radar (missing ones count as 0)
    embedding: np.ndarray | None  # [D]; None disables duplicate checks and novelty for this frame
    timestamp_s: float  # the frame's own time (cooldown runs on it, so replays behave like live)
    model_version: str = ""  # the model that scored it: a new one starts new statistics ("" = unknown)


@dataclass
class Verdict:
    """The policy's answer for one candidate.

    Attributes:
        mined: send it to labeling.
        reasons: for mined frames, the components that alone clear the threshold.
        priority: the frame's priority (module docstring).
        rejected: why not mined: warmup, below_threshold, duplicate, cooldown or budget (None if mined).
        threshold: the slice's threshold when decided (None during warm-up).
        scores: ``novelty`` and the per-component surprises ``surprise_<component>``.
    """

    mined: bool
    reasons: list[str]
    priority: float
    rejected: str | None = None
    threshold: float | None = None
    scores: dict[str, float] = field(default_factory=dict)


def _new_sketches() -> dict[str, QuantileSketch]:
    return {name: QuantileSketch(SKETCH_ACCURACY) for name in (*COMPONENTS, PRIORITY)}


def pack_sketches(sketches: Mapping[str, QuantileSketch]) -> bytes:
    """One slice's named sketches as bytes: ``u8 version | u8 n | (u8 len, name, u32 len, sketch)*``."""
    return pack_named(_PACK_VERSION, {name: sk.to_bytes() for name, sk in sketches.items()})


def unpack_sketches(data: bytes) -> dict[str, QuantileSketch]:
    """Inverse of :func:`pack_sketches`.

    Raises:
        SelectionError: truncated or of an unknown version.
    """
    try:
        raw = unpack_named(data, _PACK_VERSION)
    except PackingError as exc:
        raise SelectionError(f"sketch pack: {exc}") from exc
    return {name: QuantileSketch.from_bytes(blob) for name, blob in raw.items()}


NOVELTY_MIN_SEEN = 16
"""Distinct frames a slice's memory must hold (of the current model; all of a smaller ``memory_size``) before
a frame's novelty is measured; until then it is 0, as for a frame without an embedding (the first frames after a release all scored 1.0,
the slice's rarest value, and were mined for novelty alone)."""
CENTER_HORIZON = 512
"""Frames a slice's embedding centre averages over (an exponential moving average after that)."""
EXACT_REPEAT = 0.999
"""Raw-embedding cosine similarity at which a frame is the same picture again, whatever the centre."""


@dataclass
class _Slice:
    local: dict[str, QuantileSketch]
    bucket: TokenBucket
    rate: float
    seen: EmbeddingMemory  # centred units of recently seen distinct frames
    seen_raw: EmbeddingMemory  # raw units of the same frames: catches exact repeats while the centre moves
    mined_memory: EmbeddingMemory
    center: np.ndarray | None = None  # [D] running mean of the slice's embeddings
    center_n: int = 0
    snapshot: dict[str, QuantileSketch] | None = None
    pool_version: int = -1  # the pooled sketches' version the snapshot holds
    threshold: float | None = None
    since_refresh: int = 0
    frames: int = 0
    distinct: int = 0
    mined: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)


class SelectionPolicy:
    """Per-slice thresholds from mergeable sketches, plus budgets, cooldowns and duplicate suppression.

    Args:
        settings: ``settings.selection``.
        clock: seconds, for the hourly budgets (injectable for tests).
    """

    def __init__(self, settings: SelectionSettings, clock: Callable[[], float] = time.time) -> None:
        unknown = set(settings.score_weights) - set(COMPONENTS)
        if unknown:
            raise SelectionError(
                f"selection.score_weights: unknown components {sorted(unknown)}; use {', '.join(COMPONENTS)}"
            )
        self.settings = settings
        self.clock = clock
        self.weights = {c: float(settings.score_weights.get(c, 0.0)) for c in COMPONENTS}
        self._slices: dict[str, _Slice] = {}
        self._remote: dict[str, dict[str, dict[str, QuantileSketch]]] = {}
        self._last_mined: dict[str, float] = {}
        self._pool: dict[str, QuantileSketch] = {}  # name -> sketch over every slice, rebuilt lazily
        self._pool_total = 0  # distinct frames of all slices when the pool was last rebuilt
        self._pool_version = 0
        self._pooled_stale = False
        self._recent = RecentScores(settings.rank_window, len(COMPONENTS))
        self._ranked: np.ndarray | None = None  # sorted priorities of the recent frames, re-scored now
        self._ranked_at = 0  # distinct frames (every slice) when _ranked was computed
        self._model_version: str | None = None
        self._quality = SliceQuality({}, 0.0)  # the production model's measured quality per condition
        # Statistics of a new model gathered while the old model's still rank (see _new_model).
        self._next: tuple[dict[str, dict[str, QuantileSketch]], RecentScores] | None = None
        # The fleet sync merges remote sketches from its own thread; selection runs in the scoring thread.
        self._lock = threading.RLock()

    # -- configuration -----------------------------------------------------------------------------------
    def rate_for(self, slice_key: str) -> float:
        """Target mined fraction of a slice (exact key, else the highest of the default and matching patterns)."""
        rates = self.settings.slice_rates
        if slice_key in rates:
            return float(rates[slice_key])
        matches = [r for pattern, r in rates.items() if fnmatch.fnmatchcase(slice_key, pattern)]
        return float(max([self.settings.target_rate, *matches]))

    def _state(self, slice_key: str) -> _Slice:
        st = self._slices.get(slice_key)
        if st is None:
            st = _Slice(_new_sketches(), TokenBucket(self.settings.hourly_budget, 3600.0, self.clock),
                        self.rate_for(slice_key), EmbeddingMemory(self.settings.memory_size),
                        EmbeddingMemory(self.settings.memory_size), EmbeddingMemory(self.settings.memory_size))
            self._slices[slice_key] = st
        return st

    # -- thresholds ----------------------------------------------------------------------------------------
    def _sketches(self, slice_key: str) -> dict[str, QuantileSketch]:
        """What a slice's frames are ranked against: its own sketches merged with the fleet's, the
        fleet-ranked components pooled over every slice."""
        snapshot = self._merged(slice_key)
        for name in FLEET_RANKED:
            snapshot[name] = self._pooled_sketch(name)
        return snapshot

    def _merged(self, slice_key: str) -> dict[str, QuantileSketch]:
        st = self._state(slice_key)
        merged = {name: sk.copy() for name, sk in st.local.items()}
        for remote in self._remote.values():
            for name, sk in remote.get(slice_key, {}).items():
                if name in merged:
                    merged[name].merge(sk)
        return merged

    def _refresh(self, slice_key: str, st: _Slice) -> None:
        """Re-read the slice's sketches: its own (merged with the fleet's), the fleet-ranked ones pooled."""
        st.snapshot = self._sketches(slice_key)
        st.since_refresh = 0
        st.pool_version = self._pool_version
        st.threshold = self._budget_threshold(st)

    def _budget_threshold(self, st: _Slice) -> float | None:
        """The ``1 - q`` quantile of the recent frames' priorities, ``q`` per frame seen with catch-up.

        ``q = rate x (frames seen / distinct frames, over every slice) x catch-up`` (module docstring). The
        priorities are the recent frames' re-scored now (:meth:`_recent_priorities`); until this miner is
        warm (``warmup_frames`` frames seen, :data:`WARMUP_MIN_FRAMES` of them distinct, or all of a
        smaller warm-up), the fleet's pooled priority sketch stands in, if it is large enough.
        """
        warmup = max(self.settings.warmup_frames, 1)
        pooled = self._pooled_sketch(PRIORITY)
        frames = sum(x.frames for x in self._slices.values())
        distinct = sum(x.distinct for x in self._slices.values())
        warm = frames >= warmup and len(self._recent) >= min(warmup, WARMUP_MIN_FRAMES)
        if not warm and pooled.count < warmup:
            return None
        earned = sum(x.rate * x.frames for x in self._slices.values())
        mined = sum(x.mined for x in self._slices.values())
        catch_up = min(max(2.0 ** ((earned - mined) / CATCH_UP_LABELS), CATCH_UP[0]), CATCH_UP[1])
        q = min(st.rate * frames / max(distinct, 1) * catch_up, 1.0)
        if not warm:
            return pooled.quantile(1.0 - q)
        ranked = self._recent_priorities()
        return float(ranked[min(int((1.0 - q) * len(ranked)), len(ranked) - 1)])

    def _recent_priorities(self) -> np.ndarray:
        """Sorted priorities of the last ``rank_window`` distinct frames against the current sketches.

        A priority is a tail surprise against everything seen so far, so one recorded when a frame arrived
        (against fewer, older frames) is not comparable with one computed now; re-scoring keeps the
        threshold and the frame it judges on one scale. Recomputed every :data:`REFRESH_EVERY` distinct
        frames, or every 1/16 of the window once it is larger (the statistics move slowly then), and when
        the fleet's sketches or the model change.
        """
        total = sum(x.distinct for x in self._slices.values())
        if self._ranked is None or total - self._ranked_at >= max(REFRESH_EVERY, len(self._recent) // 16):
            parts = []
            for key, values in self._recent.by_slice().items():
                st = self._slices[key]
                snapshot = st.snapshot if st.pool_version == self._pool_version else None
                parts.append(self._priorities(snapshot or self._sketches(key), values) + self._quality.offset(key))
            self._ranked = np.sort(np.concatenate(parts)) if parts else np.zeros(0)
            self._ranked_at = total
        return self._ranked

    def _priorities(self, sketches: Mapping[str, QuantileSketch], values: np.ndarray) -> np.ndarray:
        """:meth:`_priority` of many frames, ``values [n, len(COMPONENTS)]`` -> ``[n]``."""
        weighted: dict[str, np.ndarray] = {}
        for j, name in enumerate(COMPONENTS):
            if self.weights[name] <= 0.0:
                continue
            sk = sketches[name]
            above = sk.count_above(values[:, j]) if sk.count else np.zeros(len(values))
            weighted[name] = self.weights[name] * -np.log10((above + 0.5) / (sk.count + 1.0))
        joint = sum((weighted[n] for n in FLEET_RANKED if n in weighted), np.zeros(len(values)))
        out: np.ndarray = np.max(np.stack([joint, *(v for n, v in weighted.items() if n not in FLEET_RANKED)]), axis=0)
        return out

    def _pooled_sketch(self, name: str) -> QuantileSketch:
        """One sketch of a component over every slice, local and remote.

        Rebuilt every :data:`REFRESH_EVERY` distinct frames of all slices, every frame during the warm-up.
        """
        total = sum(st.distinct for st in self._slices.values())
        # Every frame while warming up (the pool is small and the first threshold should not wait).
        step = REFRESH_EVERY if self._pool_total >= self.settings.warmup_frames else 1
        if total - self._pool_total >= step or self._pooled_stale:
            self._pool.clear()
            self._pool_total, self._pooled_stale = total, False
            self._pool_version += 1
        sk = self._pool.get(name)
        if sk is None:
            sk = QuantileSketch(SKETCH_ACCURACY)
            for st in self._slices.values():
                sk.merge(st.local[name])
            for remote in self._remote.values():
                for slice_sk in remote.values():
                    if name in slice_sk:
                        sk.merge(slice_sk[name])
            self._pool[name] = sk
        return sk

    def pooled_quantile(self, q: float) -> float | None:
        """The ``q`` quantile of the priority pooled over every slice and known miner (None if empty).

        Every miner of a fleet that has merged the same publications reads the same value; the
        thresholds themselves differ by each miner's own budget (frames seen, catch-up).
        """
        with self._lock:
            pooled = self._pooled_sketch(PRIORITY)
            return pooled.quantile(q) if pooled.count else None

    def threshold(self, slice_key: str) -> float | None:
        """Current priority threshold of a slice with this miner's budget state (None while warming up)."""
        with self._lock:
            st = self._state(slice_key)
            self._refresh(slice_key, st)
            return st.threshold

    # -- selection -----------------------------------------------------------------------------------------
    def select(self, cands: Sequence[Candidate]) -> list[Verdict]:
        """Decide a batch, in arrival order (the first of two near-identical frames wins)."""
        if not cands:
            return []
        with self._lock:
            return self._select(cands)

    def _select(self, cands: Sequence[Candidate]) -> list[Verdict]:
        for c in cands:
            if c.embedding is not None and not np.isfinite(np.asarray(c.embedding, dtype=np.float32)).all():
                raise SelectionError(f"candidate {c.sample_id}: embedding has NaN or inf")
        out = []
        for c in cands:
            if c.model_version and c.model_version != self._model_version:
                if self._model_version is not None:
                    self._new_model()
                self._model_version = c.model_version
            out.append(self._decide(c))
        return out

    @staticmethod
    def _unit(st: _Slice, embedding: np.ndarray | None) -> tuple[np.ndarray, np.ndarray] | None:
        """The frame's embedding relative to its slice's running centre, unit length ``[1, D]``.

        Similarity is measured within a slice around the slice's own centre: a shifted condition (dusk
        for a model trained on day) sits far from the training data in one common direction, so raw
        embeddings of *different* dusk frames are all nearly parallel and would all count as duplicates
        of the first one — exactly the frames that should be mined. The centre is a running mean over
        the last :data:`CENTER_HORIZON` frames (an EMA), including this one.
        """
        if embedding is None:
            return None
        e = np.asarray(embedding, dtype=np.float32).reshape(-1)
        if st.center is None or st.center.shape != e.shape:
            st.center, st.center_n = np.zeros_like(e), 0
        st.center_n = min(st.center_n + 1, CENTER_HORIZON)
        st.center += (e - st.center) / st.center_n
        return normalize((e - st.center).reshape(1, -1)), normalize(e.reshape(1, -1))

    def _decide(self, c: Candidate) -> Verdict:
        s = self.settings
        st = self._state(c.slice)
        st.frames += 1
        novelty = 0.0
        units = self._unit(st, c.embedding)
        unit = units[0] if units is not None else None
        if units is not None:
            unit, raw = units
            sim = float(st.seen.max_similarity(unit)[0])
            if sim >= s.duplicate_similarity or float(st.seen_raw.max_similarity(raw)[0]) >= EXACT_REPEAT:
                st.rejected["duplicate"] += 1
                return Verdict(False, [], 0.0, "duplicate", st.threshold, {"novelty": 1.0 - max(sim, 0.0)})
            # Against a few frames (a new slice, or memories just cleared for a new model) and a centre
            # averaged over them, every frame looks new: unmeasured, like a frame without an embedding.
            novelty = 1.0 - max(sim, 0.0) if len(st.seen) >= min(NOVELTY_MIN_SEEN, st.seen.capacity) else 0.0
            st.seen.add(unit)
            st.seen_raw.add(raw)

        grown = max(REFRESH_EVERY, st.distinct // 100)
        self._pooled_sketch(PRIORITY)  # rebuilds the pool (a new version) when it is due
        if st.snapshot is None or st.since_refresh >= grown or st.pool_version != self._pool_version:
            self._refresh(c.slice, st)
        else:
            st.threshold = self._budget_threshold(st)  # the budget moves with every frame seen and mined
        assert st.snapshot is not None
        values = {name: float(c.scores.get(name, 0.0)) for name in ("mi", "shift", "radar")}
        values["novelty"] = novelty
        priority, surprise = self._priority(st.snapshot, values)
        offset = self._quality.offset(c.slice)
        priority += offset
        self._record(c.slice, st, values, priority)
        st.distinct += 1
        st.since_refresh += 1
        extra = {"novelty": novelty, **{f"surprise_{n}": v for n, v in surprise.items()}}
        if offset:
            extra["quality_offset"] = offset

        if st.threshold is None:
            return self._reject(st, "warmup", priority, extra)
        if priority <= st.threshold:
            return self._reject(st, "below_threshold", priority, extra)
        if unit is not None and float(st.mined_memory.max_similarity(unit)[0]) >= s.duplicate_similarity:
            return self._reject(st, "duplicate", priority, extra)
        last = self._last_mined.get(c.camera_key)
        if last is not None and abs(c.timestamp_s - last) < s.camera_cooldown_s:
            return self._reject(st, "cooldown", priority, extra)
        if not st.bucket.try_take():
            return self._reject(st, "budget", priority, extra)
        threshold = st.threshold
        reasons = self._reasons(surprise, threshold)
        if unit is not None:
            st.mined_memory.add(unit)
        self._last_mined[c.camera_key] = c.timestamp_s
        st.mined += 1
        st.reasons.update(reasons)
        return Verdict(True, reasons, priority, None, threshold, extra)

    def _record(self, slice_key: str, st: _Slice, values: Mapping[str, float], priority: float) -> None:
        """Add a distinct frame to the statistics (the next model's while they are being gathered)."""
        row = [v if math.isfinite(v) else 0.0 for v in (values[n] for n in COMPONENTS)]
        if self._next is None:
            local, recent = st.local, self._recent
        else:
            local, recent = self._next[0].setdefault(slice_key, _new_sketches()), self._next[1]
        for name, v in zip(COMPONENTS, row, strict=True):
            local[name].update(v)
        local[PRIORITY].update(priority)
        recent.add(slice_key, row)
        if self._next is not None and len(self._next[1]) >= max(self.settings.warmup_frames, 1):
            sketches, self._recent = self._next
            self._next = None
            for key, x in self._slices.items():
                x.local = sketches.get(key) or _new_sketches()
                x.snapshot, x.since_refresh = None, 0
            self._ranked = None
            self._pooled_stale = True

    def _new_model(self) -> None:
        """A new model scores the frames from now on: its scores are on another scale, its embeddings in
        another space.

        Embedding memories and centres are cleared at once (similarities across models mean nothing). The
        score statistics are not: the new model's frames keep being ranked against the old model's until
        ``warmup_frames`` of them are gathered, then those replace the old (no warm-up gap at each release).
        """
        self._forget_embeddings()
        self._next = ({}, RecentScores(self.settings.rank_window, len(COMPONENTS)))

    def _forget_embeddings(self) -> None:
        """Clear every slice's embedding memories and centre."""
        for st in self._slices.values():
            st.seen.clear()
            st.seen_raw.clear()
            st.mined_memory.clear()
            st.center, st.center_n = None, 0

    def _surprises(self, sketches: Mapping[str, QuantileSketch], values: Mapping[str, float]) -> dict[str, float]:
        surprise: dict[str, float] = {}
        for name in COMPONENTS:
            if self.weights[name] <= 0.0:
                continue
            sk = sketches[name]
            above = sk.count_above_one(float(values.get(name, 0.0))) if sk.count else 0.0
            surprise[name] = -math.log10((above + 0.5) / (sk.count + 1.0))
        return surprise

    def _priority(self, sketches: Mapping[str, QuantileSketch], values: Mapping[str, float]
                  ) -> tuple[float, dict[str, float]]:
        surprise = self._surprises(sketches, values)
        weighted = {n: self.weights[n] * v for n, v in surprise.items()}
        joint = sum(weighted.get(n, 0.0) for n in FLEET_RANKED)
        return max([joint, *(v for n, v in weighted.items() if n not in FLEET_RANKED)]), surprise

    def _reasons(self, surprise: Mapping[str, float], threshold: float) -> list[str]:
        """The components that alone clear the threshold, else the largest weighted one."""
        weighted = {n: self.weights[n] * surprise[n] for n in COMPONENTS if n in surprise}
        reasons = [REASONS[n] for n, v in weighted.items() if v > threshold]
        if not reasons and weighted:
            reasons = [REASONS[max(weighted, key=lambda n: weighted[n])]]
        return reasons

    def priority(self, slice_key: str, scores: Mapping[str, float]) -> tuple[float, dict[str, float]]:
        """Priority and per-component surprises a frame with ``scores`` would get now (read-only probe).

        ``scores`` may include ``novelty``; nothing is recorded.
        """
        with self._lock:
            st = self._state(slice_key)
            self._refresh(slice_key, st)
            assert st.snapshot is not None
            priority, surprise = self._priority(st.snapshot, scores)
            return priority + self._quality.offset(slice_key), surprise

    def set_model_quality(self, quality: Mapping[str, Any] | None) -> None:
        """Take a release's measured quality per condition (``manifest["gate_quality"]``; None: none).

        Frames of slices the model is measured to be weak on rank higher (:mod:`avminer.selection.quality`,
        weight ``selection.quality_weight``). The offsets apply from now on, to the recent frames the
        threshold is re-ranked over too, so frame and threshold stay on one scale.

        Raises:
            SelectionError: a malformed table (nothing of it is kept).
        """
        table = SliceQuality(quality or {}, self.settings.quality_weight)
        with self._lock:
            self._quality = table
            self._ranked = None

    @staticmethod
    def _reject(st: _Slice, why: str, priority: float, extra: dict[str, float]) -> Verdict:
        st.rejected[why] += 1
        return Verdict(False, [], priority, why, st.threshold, extra)

    # -- fleet -----------------------------------------------------------------------------------------------
    def export_sketches(self) -> dict[str, bytes]:
        """This miner's own per-slice sketches (cumulative), packed, for the fleet topic."""
        with self._lock:
            return {key: pack_sketches(st.local) for key, st in self._slices.items()}

    def merge_remote(self, miner_id: str, sketches: Mapping[str, bytes]) -> None:
        """Replace what is known of another miner's sketches (its latest publication wins).

        Raises:
            SelectionError: malformed sketches (nothing of this publication is kept).
        """
        parsed = {key: unpack_sketches(raw) for key, raw in sketches.items()}
        for slice_sk in parsed.values():
            for sk in slice_sk.values():
                if sk.relative_accuracy != SKETCH_ACCURACY:
                    raise SelectionError(
                        f"miner {miner_id} publishes sketches of accuracy {sk.relative_accuracy}, this miner uses "
                        f"{SKETCH_ACCURACY}; run the same avminer version across the fleet"
                    )
        with self._lock:
            touched = set(parsed) | set(self._remote.get(miner_id, {}))
            self._remote[miner_id] = parsed
            self._pooled_stale = True
            self._ranked = None
            for key in touched:
                self._refresh(key, self._state(key))

    def forget_remote(self, miner_id: str) -> None:
        """Drop a miner's sketches (it left the fleet: a tombstone on the topic)."""
        with self._lock:
            gone = self._remote.pop(miner_id, {})
            self._pooled_stale = True
            self._ranked = None
            for key in gone:
                self._refresh(key, self._state(key))

    def reset_statistics(self) -> None:
        """Forget local sketches and embedding memories (a new model changes every score's scale)."""
        with self._lock:
            self._reset()

    def _reset(self) -> None:
        self._forget_embeddings()
        for st in self._slices.values():
            st.local = _new_sketches()
            st.snapshot, st.threshold, st.since_refresh = None, None, 0
        self._recent.clear()
        self._ranked = None
        self._next = None
        self._pool.clear()
        self._pool_version += 1

    # -- observability ---------------------------------------------------------------------------------------
    def stats(self) -> dict[str, dict[str, Any]]:
        """Per slice: frames, distinct frames, mined, rates, target, threshold, rejections, reasons."""
        out: dict[str, dict[str, Any]] = {}
        with self._lock:
            items = sorted(self._slices.items())
        for key, st in items:
            out[key] = {
                "frames": st.frames,
                "distinct": st.distinct,
                "mined": st.mined,
                "mined_rate": st.mined / st.frames if st.frames else 0.0,
                "distinct_rate": st.mined / st.distinct if st.distinct else 0.0,  # above target: repeats' budget
                "target_rate": st.rate,
                "threshold": st.threshold,
                "fleet_frames": st.snapshot[PRIORITY].count if st.snapshot else 0,
                "rejected": dict(st.rejected),
                "reasons": dict(st.reasons),
                "quality_offset": self._quality.offset(key),
            }
        return out
