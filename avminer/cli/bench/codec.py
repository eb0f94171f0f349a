"""``avminer bench codec``: event codec messages/s (:func:`avminer.evaluation.throughput.codec_bench`)."""

from __future__ import annotations

import argparse
import json
from typing import Any


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser("codec", help="event codec encode/decode msgs/s")
    parser.add_argument("--image-kb", type=int, default=40, help="image size of the camera frame in KB (default 40)")
    parser.add_argument("--seconds", type=float, default=1.0, help="time per measurement (default 1)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from avminer.evaluation.throughput import codec_bench, format_codec_report

    result = codec_bench(args.image_kb, args.seconds)
    print(json.dumps(result) if args.json else format_codec_report(result))
    return 0
