"""``import avminer`` (and the light layers) must not pull torch or tensorrt."""

from __future__ import annotations

import subprocess
import sys

LIGHT = [
    "avminer",
    "avminer.config",
    "avminer.errors",
    "avminer.metrics",
    "avminer.events.records",
    "avminer.engines.bundle",
    "avminer.cli.main",
]


def test_light_imports_do_not_load_torch_or_tensorrt() -> None:
    code = (
        "import sys, importlib\n"
        f"for m in {LIGHT!r}:\n"
        "    importlib.import_module(m)\n"
        "heavy = sorted(m for m in ('torch', 'tensorrt') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_cli_help_does_not_load_torch() -> None:
    code = (
        "import sys\n"
        "from avminer.cli.main import build_parser\n"
        "build_parser()\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
