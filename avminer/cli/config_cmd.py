"""``avminer config``: show the effective settings or document every field."""

from __future__ import annotations

import argparse
from typing import Any

import yaml


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser("config", help="show effective settings / field docs")
    cs = parser.add_subparsers(dest="config_cmd", metavar="ACTION")
    cs.required = True
    show = cs.add_parser("show", help="print the effective settings as YAML (secrets masked)")
    show.set_defaults(func=_show)
    fields = cs.add_parser("fields", help="list every field with its default and meaning")
    fields.set_defaults(func=_fields)


def _show(args: argparse.Namespace) -> int:
    from avminer.config import load_settings

    print(yaml.safe_dump(load_settings(args.config).as_dict(), sort_keys=False), end="")
    return 0


def _fields(args: argparse.Namespace) -> int:
    from avminer.config import describe_fields

    for name, default, text in describe_fields():
        print(f"{name:40s} {default:28s} {text}")
    return 0
