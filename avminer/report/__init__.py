"""The browsable mining report: one static HTML page from the catalog and the decisions.

:func:`~avminer.report.build.write_report` gathers per-condition counts, mining rates against their
targets, the drift statistic and a gallery of mined frames (:mod:`avminer.report.collect`), renders
them (:mod:`avminer.report.page`) and copies the images beside the page, so the folder opens from
disk with no server. ``avminer report`` writes it for any catalog; ``avminer mine`` (embedded) and
``avminer demo`` write it for their run; :mod:`avminer.report.serve` serves it on 127.0.0.1.
"""

from __future__ import annotations

__all__ = ["write_report", "write_run_report"]


def __getattr__(name: str) -> object:
    # numpy and the catalog load only when a report is written, not on `import avminer.report`.
    if name in __all__:
        from avminer.report import build

        return getattr(build, name)
    raise AttributeError(name)
