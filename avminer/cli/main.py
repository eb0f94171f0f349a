"""Entry point of the ``avminer`` console script."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from avminer import __version__
from avminer.cli import discover
from avminer.errors import AvminerError

log = logging.getLogger("avminer")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="avminer",
        description="Fleet data mining for AV perception: mine confusing and shifted frames, label, retrain.",
    )
    parser.add_argument("--version", action="version", version=f"avminer {__version__}")
    parser.add_argument("-c", "--config", help="YAML settings file (else $AVMINER_CONFIG, then defaults)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in discover("avminer.cli"):
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        rc = args.func(args)
    except AvminerError as exc:
        print(f"avminer: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
