"""``avminer bench codec``: event codec messages/s for a camera frame and a small decision record.

Encodes and decodes the same record repeatedly in one process (one core) and prints msgs/s and
MB/s. The default frame carries a 40 KB image, the size of a CamVid JPEG (480x360).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser("codec", help="event codec encode/decode msgs/s")
    parser.add_argument("--image-kb", type=int, default=40, help="image size of the camera frame in KB (default 40)")
    parser.add_argument("--seconds", type=float, default=1.0, help="time per measurement (default 1)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=_run)


def _rate(fn: Any, seconds: float) -> float:
    fn()  # warm-up: schemas parse and compile on first use
    n, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        for _ in range(100):
            fn()
        n += 100
    return n / elapsed


def _run(args: argparse.Namespace) -> int:
    from avminer.events import codec
    from avminer.events.records import CameraFrame, Conditions, Decision, GpsFix

    frame = CameraFrame(
        vehicle_id="camvid-0001TP", camera_id="front", timestamp_us=1_212_436_800_000_000,
        frame_id="0001TP_006690", width=480, height=360, image=os.urandom(args.image_kb * 1000),
        gps=GpsFix(52.2, 0.12, 15.0, 90.0, 6.0), conditions=Conditions("dusk", "clear", "urban", "cambridge_uk"),
        metadata={"source": "camvid"},
    )
    decision = Decision("0" * 32, "0001TP_006690", "camvid-0001TP", "front", 1, "m-1", "dusk/clear/cambridge_uk",
                        True, {"mi": 0.31, "entropy": 1.2, "shift": 2.5}, ["uncertainty"], "avminer.frames", 2, 17)
    result: dict[str, Any] = {}
    for name, record in (("camera_frame", frame), ("decision", decision)):
        data = codec.encode(record)
        result[name] = {
            "bytes": len(data),
            "encode_msgs_per_s": round(_rate(lambda r=record: codec.encode(r), args.seconds)),
            "encode_unvalidated_msgs_per_s": round(_rate(lambda r=record: codec.encode(r, validate=False),
                                                         args.seconds)),
            "decode_msgs_per_s": round(_rate(lambda d=data: codec.decode(d), args.seconds)),
        }
        result[name]["decode_mb_per_s"] = round(result[name]["decode_msgs_per_s"] * len(data) / 1e6, 1)
    if args.json:
        print(json.dumps(result))
        return 0
    for name, row in result.items():
        print(f"{name:13s} {row['bytes']:7d} B  encode {row['encode_msgs_per_s']:8d} msg/s "
              f"(unvalidated {row['encode_unvalidated_msgs_per_s']})  decode {row['decode_msgs_per_s']:8d} msg/s "
              f"({row['decode_mb_per_s']} MB/s)")
    return 0
