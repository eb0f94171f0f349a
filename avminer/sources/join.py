"""Windowed join of radar scans to camera frames, by vehicle and timestamp.

A camera frame of vehicle ``v`` at time ``t`` joins the radar scan of ``v`` nearest to ``t`` within
``window`` (either side). Radar and camera come on different topics and at different speeds, so a
frame may arrive before the radar that matches it; it then waits until either

- the vehicle's radar has moved past ``t + window`` (nothing that could match is still to come —
  radar of one vehicle arrives in time order, its partition is keyed by vehicle), or
- ``wait_s`` of wall-clock time went by (late radar is tolerated: the frame goes on without it), or
- the joiner is flushed (end of input, shutdown).

Frames leave in the order they arrived *per partition*: a frame that is ready waits behind an earlier
frame of its partition that still waits for radar (at most ``wait_s``). Without that, a backlog
released at one tick would leave vehicle by vehicle, and a model hot-swapped between two batches
would not switch at one point of each partition's offsets.

A scan is kept while a frame could still join it and is *expired* once the vehicle's camera frames
have moved ``2 * window`` past it (one window of slack for frames of several cameras arriving slightly
out of order); expired scans' tokens are handed back so their offsets can be committed. The buffer is
bounded (``max_scans``): past it the oldest scans expire early.

Pure logic; the pipeline's assembler thread owns one joiner. Payloads and tokens are opaque.
"""

from __future__ import annotations

import bisect
import time
from collections import deque
from collections.abc import Callable, Collection, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from avminer.events.records import RadarScan

P = TypeVar("P")  # frame payload
T = TypeVar("T")  # radar token


@dataclass(slots=True)
class _Waiting(Generic[P]):
    timestamp_us: int
    arrived: float
    payload: P
    part: Hashable
    scan: RadarScan | None = None
    resolved: bool = False  # joined (or given up on); may still wait behind its partition's head


@dataclass
class _Vehicle(Generic[P, T]):
    scan_ts: list[int] = field(default_factory=list)  # ascending
    scans: list[tuple[RadarScan, T, Hashable]] = field(default_factory=list)  # parallel to scan_ts
    radar_mark: int | None = None  # newest radar timestamp seen
    frame_mark: int | None = None  # newest frame timestamp seen
    waiting: deque[_Waiting[P]] = field(default_factory=deque)


class RadarJoiner(Generic[P, T]):
    """Joins radar scans to camera frames of the same vehicle within a time window.

    Args:
        window_ms: a scan joins a frame when ``|t_scan - t_frame| <= window``.
        wait_ms: longest wall-clock wait of a frame for its radar.
        max_scans: radar scans buffered at most (all vehicles); the oldest expire beyond it.
        clock: monotonic seconds (tests pass a fake).
    """

    def __init__(
        self,
        window_ms: float,
        wait_ms: float,
        max_scans: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window_us = int(window_ms * 1000)
        self.wait_s = wait_ms / 1000.0
        self.max_scans = max_scans
        self.clock = clock
        self._vehicles: dict[str, _Vehicle[P, T]] = {}
        self._ready: list[tuple[P, RadarScan | None, Hashable]] = []
        self._order: dict[Hashable, deque[_Waiting[P]]] = {}  # frames per partition, in arrival order
        self._expired: list[T] = []
        self._n_scans = 0

    # -- input ---------------------------------------------------------------------------------------
    def add_radar(self, scan: RadarScan, token: T, part: Hashable = None) -> None:
        """Buffer a scan; frames of its vehicle that it completes become ready."""
        v = self._vehicles.setdefault(scan.vehicle_id, _Vehicle())
        i = bisect.bisect_right(v.scan_ts, scan.timestamp_us)
        v.scan_ts.insert(i, scan.timestamp_us)
        v.scans.insert(i, (scan, token, part))
        self._n_scans += 1
        v.radar_mark = scan.timestamp_us if v.radar_mark is None else max(v.radar_mark, scan.timestamp_us)
        while v.waiting and v.waiting[0].timestamp_us + self.window_us <= v.radar_mark:
            self._resolve(v, v.waiting.popleft())
        self._expire(v)
        self._bound()

    def add_frame(self, vehicle_id: str, timestamp_us: int, payload: P, part: Hashable = None) -> None:
        """Queue a frame; it is ready at once if its vehicle's radar already moved past its window."""
        v = self._vehicles.setdefault(vehicle_id, _Vehicle())
        v.frame_mark = timestamp_us if v.frame_mark is None else max(v.frame_mark, timestamp_us)
        w = _Waiting(timestamp_us, self.clock(), payload, part)
        self._order.setdefault(part, deque()).append(w)
        complete = v.radar_mark is not None and timestamp_us + self.window_us <= v.radar_mark
        if complete or self.wait_s <= 0:
            self._resolve(v, w)
        else:
            v.waiting.append(w)
        self._expire(v)

    # -- output --------------------------------------------------------------------------------------
    def tick(self, flush: bool = False) -> None:
        """Release frames that waited ``wait_ms`` (all of them, and all radar, with ``flush``)."""
        now = self.clock()
        for v in self._vehicles.values():
            while v.waiting and (flush or v.waiting[0].arrived + self.wait_s <= now):
                self._resolve(v, v.waiting.popleft())
            if flush:
                self._expired.extend(token for _, token, _ in v.scans)
                self._n_scans -= len(v.scans)
                v.scans.clear()
                v.scan_ts.clear()
            else:
                self._expire(v)
        if flush:
            self._vehicles.clear()

    def pop_ready(self) -> list[tuple[P, RadarScan | None]]:
        """Frames ready to go on, each with its joined scan (or None), in arrival order per partition."""
        out = [(payload, scan) for payload, scan, _ in self._ready]
        self._ready = []
        return out

    def pop_expired(self) -> list[T]:
        """Tokens of scans no frame can join any more (their offsets are done)."""
        out, self._expired = self._expired, []
        return out

    def next_deadline(self) -> float | None:
        """Clock time when the next waiting frame times out (None: nothing waits)."""
        heads = [v.waiting[0].arrived for v in self._vehicles.values() if v.waiting]
        return min(heads) + self.wait_s if heads else None

    def drop(self, parts: Collection[Hashable]) -> int:
        """Forget frames and scans that came from ``parts`` (revoked partitions); returns how many."""
        dropped = 0
        parts = set(parts)
        for v in self._vehicles.values():
            keep = deque(w for w in v.waiting if w.part not in parts)
            dropped += len(v.waiting) - len(keep)
            v.waiting = keep
            kept = [(ts, s) for ts, s in zip(v.scan_ts, v.scans, strict=True) if s[2] not in parts]
            dropped += len(v.scans) - len(kept)
            self._n_scans -= len(v.scans) - len(kept)
            v.scan_ts = [ts for ts, _ in kept]
            v.scans = [s for _, s in kept]
        for part in parts:
            dropped += sum(1 for w in self._order.pop(part, ()) if w.resolved)  # unresolved: counted above
        dropped += sum(1 for r in self._ready if r[2] in parts)
        self._ready = [r for r in self._ready if r[2] not in parts]
        return dropped

    @property
    def waiting(self) -> int:
        """Frames waiting for radar."""
        return sum(len(v.waiting) for v in self._vehicles.values())

    @property
    def buffered_scans(self) -> int:
        return self._n_scans

    # -- internals -----------------------------------------------------------------------------------
    def _resolve(self, v: _Vehicle[P, T], w: _Waiting[P]) -> None:
        w.scan = self._nearest(v, w.timestamp_us)
        w.resolved = True
        queue = self._order.get(w.part)
        while queue and queue[0].resolved:
            head = queue.popleft()
            self._ready.append((head.payload, head.scan, head.part))
        if queue is not None and not queue:
            del self._order[w.part]

    def _nearest(self, v: _Vehicle[P, T], t: int) -> RadarScan | None:
        i = bisect.bisect_left(v.scan_ts, t)
        best: RadarScan | None = None
        best_dt = self.window_us + 1
        for j in (i - 1, i):
            if 0 <= j < len(v.scan_ts):
                dt = abs(v.scan_ts[j] - t)
                if dt < best_dt:
                    best, best_dt = v.scans[j][0], dt
        return best

    def _expire(self, v: _Vehicle[P, T]) -> None:
        if v.frame_mark is None:
            return
        horizon = v.frame_mark - 2 * self.window_us
        if v.waiting:
            horizon = min(horizon, min(w.timestamp_us for w in v.waiting) - self.window_us)
        n = bisect.bisect_left(v.scan_ts, horizon)
        if n:
            self._expired.extend(token for _, token, _ in v.scans[:n])
            del v.scans[:n]
            del v.scan_ts[:n]
            self._n_scans -= n

    def _bound(self) -> None:
        while self._n_scans > self.max_scans:
            oldest = min((v for v in self._vehicles.values() if v.scans), key=lambda v: v.scan_ts[0])
            self._expired.append(oldest.scans[0][1])
            del oldest.scans[0]
            del oldest.scan_ts[0]
            self._n_scans -= 1
