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


def _configure_logging(args: argparse.Namespace) -> None:
    """Log to stderr at ``log_level`` (INFO when the settings do not load: the command then reports why).

    Every handler masks the settings' secrets, whichever library logs them.
    """
    from avminer.config import SecretFilter, load_settings

    level = logging.INFO
    try:
        settings = load_settings(getattr(args, "config", None))
        level = int(logging.getLevelName(settings.log_level.upper()))
    except (AvminerError, ValueError):
        settings = None
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if settings is not None:
        secrets = SecretFilter(settings)
        for handler in logging.getLogger().handlers:
            handler.addFilter(secrets)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args)
    try:
        rc = args.func(args)
    except AvminerError as exc:
        # One line, whatever a wrapped library's message looked like (psycopg's span several).
        print("avminer: error: " + " ".join(part.strip() for part in str(exc).splitlines()), file=sys.stderr)
        return 2
    except OSError as exc:  # a path that cannot be written or read: the user's to fix, not a bug to trace
        if args.verbose:
            raise
        where = f": {exc.filename}" if exc.filename else ""
        print(f"avminer: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
