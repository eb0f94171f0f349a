"""Command line: one module per subcommand, each exposing ``register(subparsers)``.

:func:`discover` finds the modules of this package (and of ``avminer.cli.bench`` for the
``avminer bench ...`` family). Modules import their heavy dependencies inside the command function so
that ``avminer --help`` stays fast.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType


def discover(package: str) -> list[ModuleType]:
    """Import every command module of ``package`` that defines ``register``, sorted by name."""
    pkg = importlib.import_module(package)
    modules = []
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        if info.name.startswith("_") or info.name == "main":
            continue
        module = importlib.import_module(f"{package}.{info.name}")
        if hasattr(module, "register"):
            modules.append(module)
    return modules
