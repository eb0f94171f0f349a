"""Command line: one module per subcommand, each exposing ``register(subparsers)``.

``avminer.cli.main`` discovers the modules of this package (and of ``avminer.cli.bench`` for the
``avminer bench ...`` family). Modules import their heavy dependencies inside the command function so
that ``avminer --help`` stays fast.
"""
