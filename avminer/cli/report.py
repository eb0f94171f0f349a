"""``avminer report``: a browsable HTML page of what was mined (no server needed).

Examples::

    avminer report                                  # the run in sinks.output_dir -> avminer-out/report/
    avminer report --run avminer-demo --profile sample
    avminer report --catalog postgresql://miner@db/avminer --out report/ --serve 8000
    avminer report --labelstudio-tasks tasks.json --cvat-export cvat/

The page shows, per condition slice, the frames seen, mined and labeled over frame time, the mining
rate against its target, the drift statistic, and a gallery of the mined frames (with their
uncertainty maps, reasons, scores, model version and label status) that filters by slice and reason.
Frames seen come from the run's ``decisions.jsonl``, or from the decisions topic when
``kafka.bootstrap_servers`` is set; without them only the catalog's mined frames count.
Targets are those of the settings (``--profile sample`` for a run made with that profile).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from avminer.cli.catalog import add_catalog_argument


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "report", help="write a static HTML report of what was mined (optionally serve it on 127.0.0.1)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--run", help="output directory of the run (default: sinks.output_dir)")
    add_catalog_argument(parser)
    parser.add_argument("--decisions", help="decisions JSON-lines file (default: RUN/decisions.jsonl)")
    parser.add_argument("--decisions-topic", nargs="?", const="", metavar="TOPIC",
                        help="read the decisions from Kafka (TOPIC, default topics.decisions) instead of a file; "
                             "the default when kafka.bootstrap_servers is set and --decisions is not given")
    parser.add_argument("--requests", help="label requests JSON-lines file (default: RUN/requests.jsonl)")
    parser.add_argument("--out", help="report folder to write (default: RUN/report)")
    parser.add_argument("--profile", choices=["sample"], help="targets of this profile (the run used it)")
    parser.add_argument("--bundle", help="model bundle whose shift reference scales the drift statistic")
    parser.add_argument("--labelstudio-tasks", help="Label Studio task file to link frames to")
    parser.add_argument("--labelstudio-url", help="Label Studio project URL (http://host:8080/projects/N)")
    parser.add_argument("--cvat-export", help="CVAT export directory (avminer export cvat --out) to link to")
    parser.add_argument("--limit", type=int, default=200, help="gallery frames at most (default 200)")
    parser.add_argument("--serve", type=int, nargs="?", const=0, metavar="PORT",
                        help="then serve the report on 127.0.0.1 (PORT, default a free one) until Ctrl-C")
    parser.set_defaults(func=_report)


def _report(args: argparse.Namespace) -> int:
    from avminer.catalog import default_catalog_url
    from avminer.catalog.catalog import open_catalog
    from avminer.config import load_settings
    from avminer.mining.profiles import profile_overrides
    from avminer.report.build import write_report

    overrides: dict[str, Any] = {"sinks": {"output_dir": args.run}} if args.run else {}
    if args.profile:
        overrides.update(profile_overrides(args.profile, load_settings(args.config).selection))
    settings = load_settings(args.config, overrides=overrides)
    run = Path(settings.sinks.output_dir).expanduser()
    out = Path(args.out) if args.out else run / "report"
    topic = args.decisions_topic
    if topic is None and not args.decisions and not settings.embedded:
        topic = ""  # a miner on Kafka writes its decisions to the topic, not to a file
    if topic == "":
        topic = settings.topics.decisions
    with open_catalog(args.catalog or default_catalog_url(settings)) as catalog:
        index = write_report(
            settings, out, catalog, decisions_topic=topic,
            decisions=Path(args.decisions) if args.decisions else run / "decisions.jsonl",
            requests=Path(args.requests) if args.requests else run / "requests.jsonl",
            labelstudio_tasks=Path(args.labelstudio_tasks) if args.labelstudio_tasks else None,
            labelstudio_url=args.labelstudio_url,
            cvat_export=Path(args.cvat_export) if args.cvat_export else None,
            bundle=args.bundle, limit=args.limit,
        )
    print(f"report: {index.resolve()}")
    if args.serve is not None:
        from avminer.report.serve import make_server

        server = make_server(out, args.serve)
        port = server.server_address[1]
        print(f"serving {out}/ on http://127.0.0.1:{port}/ (Ctrl-C stops)", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
    return 0
