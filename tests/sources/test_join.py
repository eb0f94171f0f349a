"""Radar scans join camera frames of the same vehicle within the window; late radar is tolerated."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from avminer.events.records import RadarScan
from avminer.sources.join import RadarJoiner

MS = 1000  # microseconds


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def scan(vehicle: str, t_ms: int) -> RadarScan:
    return RadarScan(vehicle_id=vehicle, sensor_id="front", timestamp_us=t_ms * MS)


def test_frame_joins_nearest_scan_of_its_vehicle_once_radar_passed_the_window() -> None:
    j: RadarJoiner[str, str] = RadarJoiner(window_ms=100, wait_ms=50, clock=Clock())
    j.add_radar(scan("v1", 950), "r950")
    j.add_radar(scan("other", 1000), "x")
    j.add_frame("v1", 1000 * MS, "f1")
    assert j.pop_ready() == []  # radar of v1 may still bring a closer scan (up to t + 100 ms)
    j.add_radar(scan("v1", 1030), "r1030")
    assert j.pop_ready() == []
    j.add_radar(scan("v1", 1101), "r1101")  # past t + window: nothing closer can come
    ((payload, joined),) = j.pop_ready()
    assert payload == "f1" and joined is not None and joined.timestamp_us == 1030 * MS


def test_frame_waits_at_most_wait_ms_for_late_radar() -> None:
    clock = Clock()
    j: RadarJoiner[str, str] = RadarJoiner(window_ms=100, wait_ms=50, clock=clock)
    j.add_frame("v1", 1000 * MS, "f1")
    clock.t = 0.049
    j.tick()
    assert j.pop_ready() == []
    assert j.next_deadline() == 0.05
    clock.t = 0.05
    j.tick()
    assert j.pop_ready() == [("f1", None)]  # missing radar is tolerated


def test_scan_outside_the_window_does_not_join() -> None:
    j: RadarJoiner[str, str] = RadarJoiner(window_ms=100, wait_ms=50, clock=Clock())
    j.add_radar(scan("v1", 800), "r")
    j.add_radar(scan("v1", 1200), "r2")
    j.add_frame("v1", 1000 * MS, "f")
    assert j.pop_ready() == [("f", None)]


def test_scans_expire_once_frames_moved_past_them_and_on_flush() -> None:
    j: RadarJoiner[str, str] = RadarJoiner(window_ms=100, wait_ms=0, clock=Clock())
    for t in (1000, 1100, 1200):
        j.add_radar(scan("v1", t), f"r{t}")
    j.add_frame("v1", 1350 * MS, "f")
    # Frames are at 1350 ms: scans older than 1350 - 2 * 100 ms cannot join anything any more.
    assert j.pop_expired() == ["r1000", "r1100"]
    j.tick(flush=True)
    assert j.pop_expired() == ["r1200"]
    assert j.buffered_scans == 0


def test_buffer_is_bounded() -> None:
    j: RadarJoiner[str, int] = RadarJoiner(window_ms=100, wait_ms=50, max_scans=10, clock=Clock())
    for i in range(25):
        j.add_radar(scan(f"v{i % 3}", i), i)
    assert j.buffered_scans == 10
    assert sorted(j.pop_expired()) == list(range(15))


def test_drop_forgets_revoked_partitions() -> None:
    j: RadarJoiner[str, str] = RadarJoiner(window_ms=100, wait_ms=50, clock=Clock())
    j.add_frame("v1", 1000 * MS, "f-p0", part=("frames", 0))
    j.add_frame("v2", 1000 * MS, "f-p1", part=("frames", 1))
    j.add_radar(scan("v1", 990), "r-p0", part=("radar", 0))
    assert j.drop({("frames", 0), ("radar", 0)}) == 2
    j.tick(flush=True)
    assert j.pop_ready() == [("f-p1", None)]
    assert j.pop_expired() == []


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(0, 2000), min_size=1, max_size=30),
    st.lists(st.integers(0, 2000), min_size=0, max_size=30),
)
def test_in_order_streams_join_the_nearest_scan_and_every_scan_expires_once(
    frames: list[int], scans: list[int]
) -> None:
    clock = Clock()
    # A long wait: frames leave only when radar passed their window (or on the final flush).
    j: RadarJoiner[int, int] = RadarJoiner(window_ms=100, wait_ms=60_000, clock=clock)
    events = sorted([(t, "s", i) for i, t in enumerate(scans)] + [(t, "f", i) for i, t in enumerate(frames)])
    out: list[tuple[int, RadarScan | None]] = []
    expired: list[int] = []
    for t, kind, i in events:
        if kind == "s":
            j.add_radar(scan("v", t), i)
        else:
            j.add_frame("v", t * MS, i)
        j.tick()
        out += j.pop_ready()
        expired += j.pop_expired()
    j.tick(flush=True)
    out += j.pop_ready()
    expired += j.pop_expired()
    assert sorted(i for i, _ in out) == list(range(len(frames)))
    assert sorted(expired) == list(range(len(scans)))
    for i, s in out:
        best = min((abs(t - frames[i]) for t in scans), default=None)
        if best is None or best > 100:
            assert s is None
        else:
            assert s is not None and abs(s.timestamp_us // MS - frames[i]) == best
