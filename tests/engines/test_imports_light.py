"""The engine package, the ORT backend and hot-swap must not pull torch or tensorrt on import."""

from __future__ import annotations

import subprocess
import sys


def test_engine_modules_stay_light() -> None:
    modules = ["avminer.engines", "avminer.engines.base", "avminer.engines.ort", "avminer.engines.hotswap",
               "avminer.engines.tensorrt_backend", "avminer.engines.export", "avminer.cli.engine",
               "avminer.cli.bench.engine"]
    code = (
        "import sys, importlib\n"
        f"for m in {modules!r}:\n"
        "    importlib.import_module(m)\n"
        "print(','.join(sorted(m for m in ('torch', 'tensorrt') if m in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
