"""``avminer bench``: the benchmark family; each module of ``avminer.cli.bench`` adds one subcommand."""

from __future__ import annotations

import argparse
from typing import Any

from avminer.cli import discover


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "bench", help="benchmarks that print figures (--json for one JSON object)"
    )
    bench_sub = parser.add_subparsers(dest="bench", metavar="BENCH")
    bench_sub.required = True
    for module in discover("avminer.cli.bench"):
        module.register(bench_sub)
