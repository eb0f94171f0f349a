"""The report's HTML: one static page, inline CSS, inline SVG charts, a few lines of plain JavaScript.

Nothing is loaded from elsewhere (no CDN, no fonts): the page opens from disk or from
``avminer report --serve`` on a machine with no network. Every value that came from a message or the
catalog — ids, slices, reasons, model versions, labeler names — goes through :func:`text` (HTML
escaping, and control characters such as ESC shown as ``\\x1b`` instead of passed through) or, for
links, :func:`href`.
"""

from __future__ import annotations

import html
import json
import re
from datetime import UTC, datetime
from urllib.parse import quote

from avminer.report.collect import GalleryItem, ReportData, SliceSummary

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
SCORE_KEYS = ("mi", "shift", "radar", "novelty")
COLOURS = {"seen": "#8a8f98", "mined": "#d9590b", "labeled": "#18803a"}


def text(value: object) -> str:
    """``value`` as HTML text (or attribute) content: escaped, control characters made visible."""
    return html.escape(_CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(value)), quote=True)


def href(link: str) -> str:
    """A link for an ``href``/``src`` attribute: a relative path (percent-encoded) or an http(s) URL.

    Anything else (``javascript:``, ``data:``) becomes ``#``: links are built from files we wrote and
    from ``--labelstudio-url``, never taken from a message as they are.
    """
    if re.match(r"^https?://", link):
        return text(link)
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", link):
        return "#"
    return text(quote(link, safe="/._-~"))


def _time(us: int) -> str:
    try:
        return datetime.fromtimestamp(us / 1e6, UTC).strftime("%Y-%m-%d %H:%M:%S")
    except (OverflowError, OSError, ValueError):  # a timestamp from a message may be anything
        return f"{us} us"


def _fmt(x: float | None) -> str:
    return "—" if x is None else f"{x:.1f}"


def _chart(s: SliceSummary, width: int = 260, height: int = 64) -> str:
    """Cumulative frames seen / mined / labeled of one slice against frame time (inline SVG)."""
    if not s.series:
        return ""
    t0, t1 = s.series[0][0], s.series[-1][0]
    end = _time(t1)
    end = end if end.endswith(" us") else f"{end[11:]} UTC"  # the date is in the start label
    span = max(1, t1 - t0)
    top = max(1, s.series[-1][1])

    def x(t: int) -> float:
        return 4 + (width - 8) * (t - t0) / span

    def y(v: int) -> float:
        return height - 14 - (height - 20) * v / top

    lines = []
    for col, name in ((1, "seen"), (2, "mined"), (3, "labeled")):
        pts = [f"{x(t0):.1f},{y(0):.1f}"]
        prev = 0
        for point in s.series:
            pts.append(f"{x(point[0]):.1f},{y(prev):.1f}")  # a step: the count changes at the frame
            prev = point[col]
            pts.append(f"{x(point[0]):.1f},{y(prev):.1f}")
        dash = ' stroke-dasharray="4 2"' if name == "labeled" else ""  # visible where it runs on the mined line
        lines.append(f'<polyline fill="none" stroke="{COLOURS[name]}" stroke-width="1.6"{dash} points="{" ".join(pts)}">'
                     f"<title>{name}: {prev}</title></polyline>")
    return (
        f'<svg class="chart" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="frames seen, mined and labeled over time">'
        f'<line x1="4" y1="{y(0):.1f}" x2="{width - 4}" y2="{y(0):.1f}" stroke="#ccc"/>'
        + "".join(lines)
        + f'<text x="4" y="{height - 2}" font-size="9" fill="#666">{text(_time(t0))}</text>'
        f'<text x="{width - 4}" y="{height - 2}" font-size="9" fill="#666" text-anchor="end">'
        f"{text(end)}</text></svg>"
    )


def _rate_bar(s: SliceSummary) -> str:
    """The slice's mined fraction as a bar, its target as a tick on the same 0..1 scale."""
    if s.rate is None:
        return f'<span class="muted">target {s.target_rate:.3g}</span>'
    scale = max(s.rate, s.target_rate) * 1.15 or 1.0
    return (
        f'<div class="bar" title="mined {s.rate:.1%} of frames; target {s.target_rate:.1%}">'
        f'<div class="fill" style="width:{100 * s.rate / scale:.1f}%"></div>'
        f'<div class="tick" style="left:{100 * s.target_rate / scale:.1f}%"></div></div>'
        f'<span class="num">{s.rate:.1%} <span class="muted">/ target {s.target_rate:.1%}</span></span>'
    )


def _drift(s: SliceSummary, level: float) -> str:
    if s.drift is None:
        return '<span class="muted">—</span>'
    badge = ' <span class="alarm">alarm</span>' if s.drift_alarm else ""
    return (f'<span class="num" title="last {s.drift:.2f}, highest {s.drift_max:.2f}; alarm above {level:g}">'
            f"{s.drift:.1f}</span> <span class='muted'>max {_fmt(s.drift_max)}</span>{badge}")


def _slice_rows(data: ReportData) -> str:
    rows = []
    for s in data.slices:
        rows.append(
            f'<tr><td><a href="#gallery" class="slice-link" data-slice="{text(s.slice)}">{text(s.slice)}</a></td>'
            f'<td class="num">{s.seen}</td><td class="num">{s.mined}</td><td class="num">{s.labeled}</td>'
            f"<td>{_rate_bar(s)}</td><td>{_drift(s, data.drift_alarm_level)}</td><td>{_chart(s)}</td></tr>"
        )
    return "\n".join(rows)


def _links(g: GalleryItem) -> str:
    links = [(g.frame_href, "frame"), (g.uncertainty_href, "uncertainty map"), (g.request_href, "label request"),
             (g.labelstudio_href, "Label Studio task"), (g.cvat_href, "CVAT image")]
    return " · ".join(f'<a href="{href(h)}">{name}</a>' for h, name in links if h)


def _card(g: GalleryItem) -> str:
    scores = "".join(
        f"<tr><th>{text(k)}</th><td>{g.scores[k]:.4g}</td></tr>" for k in SCORE_KEYS if k in g.scores
    )
    reasons = "".join(f'<span class="reason">{text(r)}</span>' for r in g.reasons)
    label = text(g.state) + (f" by {text(g.labeler)}" if g.labeler else "")
    frame = (f'<img src="{href(g.frame_href)}" alt="frame {text(g.frame_id)}" loading="lazy">' if g.frame_href
             else '<div class="missing">frame not readable</div>')
    unc = (f'<img src="{href(g.uncertainty_href)}" alt="uncertainty map of {text(g.frame_id)}" loading="lazy">'
           if g.uncertainty_href else '<div class="missing">no uncertainty map</div>')
    return (
        f'<figure class="card" data-slice="{text(g.slice)}" data-reasons="{text(json.dumps(g.reasons))}">'
        f'<div class="pair">{frame}{unc}</div><figcaption>'
        f'<div class="fid" title="sample {text(g.sample_id)}">{text(g.frame_id)}</div>'
        f'<div class="muted">{text(g.slice)} · {text(_time(g.timestamp_us))}</div>'
        f'<div>{reasons} <span class="state state-{text(g.state)}">{label}</span></div>'
        f'<table class="scores">{scores}<tr><th>priority</th><td>{g.priority:.3g}</td></tr>'
        f"<tr><th>model</th><td>{text(g.model_version)}</td></tr></table>"
        f'<div class="links">{_links(g)}</div></figcaption></figure>'
    )


def _options(values: list[str], everything: str) -> str:
    return f'<option value="">{everything}</option>' + "".join(
        f'<option value="{text(v)}">{text(v)}</option>' for v in values
    )


CSS = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1f2328;background:#f6f7f9}
header{background:#1f2a37;color:#fff;padding:14px 24px}header h1{margin:0;font-size:20px}
header .meta{color:#c9d1d9;font-size:12px;margin-top:4px}main{padding:8px 24px 32px}
h2{font-size:16px;margin:22px 0 8px}table.slices{border-collapse:collapse;background:#fff;width:100%}
table.slices th,table.slices td{border-bottom:1px solid #e3e6ea;padding:6px 8px;text-align:left;vertical-align:middle}
table.slices th{font-size:12px;color:#57606a;font-weight:600}.num{font-variant-numeric:tabular-nums}
td.num{text-align:right}.muted{color:#6e7781;font-size:12px}
.bar{position:relative;display:inline-block;width:120px;height:10px;background:#eceff3;border-radius:3px;
vertical-align:middle;margin-right:6px}.bar .fill{height:100%;background:#d9590b;border-radius:3px}
.bar .tick{position:absolute;top:-3px;width:2px;height:16px;background:#1f2328}
.alarm{background:#cf222e;color:#fff;border-radius:3px;padding:0 5px;font-size:11px}
.legend span{display:inline-block;margin-right:12px;font-size:12px}.legend i{display:inline-block;width:14px;
height:3px;vertical-align:middle;margin-right:4px}
.filters{display:flex;gap:14px;align-items:center;margin:6px 0 12px}.filters select{font:inherit;padding:2px 4px}
#gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(340px,1fr));gap:12px}
.card{margin:0;background:#fff;border:1px solid #e3e6ea;border-radius:6px;padding:8px}
.card[hidden]{display:none}.pair{display:grid;grid-template-columns:1fr 1fr;gap:4px}
.pair img{width:100%;display:block;border-radius:3px;background:#000}
.missing{background:#eceff3;color:#6e7781;font-size:12px;padding:30px 6px;text-align:center}
figcaption{margin-top:6px}.fid{font-weight:600;word-break:break-all}
.reason{display:inline-block;background:#fff1e5;color:#953800;border-radius:10px;padding:0 7px;margin:2px 4px 2px 0;
font-size:12px}.state{font-size:12px;border-radius:10px;padding:0 7px;background:#eef1f4}
.state-labeled,.state-used{background:#dafbe1;color:#116329}
table.scores{font-size:12px;margin:4px 0;border-collapse:collapse}table.scores th{text-align:left;color:#57606a;
font-weight:500;padding-right:10px}.links{font-size:12px}.notes li{color:#6e7781;font-size:12px}
"""

JS = """
(function () {
  "use strict";
  var cards = Array.prototype.slice.call(document.querySelectorAll("#gallery .card"));
  var bySlice = document.getElementById("filter-slice");
  var byReason = document.getElementById("filter-reason");
  var count = document.getElementById("filter-count");
  function apply() {
    var shown = 0;
    cards.forEach(function (card) {
      var reasons = JSON.parse(card.getAttribute("data-reasons"));
      var ok = (!bySlice.value || card.getAttribute("data-slice") === bySlice.value) &&
               (!byReason.value || reasons.indexOf(byReason.value) >= 0);
      card.hidden = !ok;
      if (ok) { shown += 1; }
    });
    count.textContent = shown + " of " + cards.length + " mined frames shown";
  }
  bySlice.addEventListener("change", apply);
  byReason.addEventListener("change", apply);
  Array.prototype.forEach.call(document.querySelectorAll(".slice-link"), function (link) {
    link.addEventListener("click", function () { bySlice.value = link.getAttribute("data-slice"); apply(); });
  });
  apply();
})();
"""


def render(data: ReportData, generated_at_us: int) -> str:
    """The whole page as one HTML document."""
    seen = "" if data.seen_total is None else f"{data.seen_total} frames seen · "
    legend = "".join(f'<span><i style="background:{c}"></i>{n}</span>' for n, c in COLOURS.items())
    reference = (f"shift reference of model {text(data.drift_reference)}" if data.drift_reference
                 else "no shift reference")
    notes = "".join(f"<li>{text(n)}</li>" for n in data.notes)
    slices = sorted({g.slice for g in data.gallery})
    gallery = "\n".join(_card(g) for g in data.gallery) or '<p class="muted">No frame was mined.</p>'
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>{text(data.title)}</title><style>{CSS}</style></head>
<body><header><h1>{text(data.title)}</h1>
<div class="meta">{seen}{data.mined_total} mined · model {text(", ".join(data.model_versions) or "—")} ·
catalog {text(data.catalog)} · written {text(_time(generated_at_us))} UTC</div></header>
<main>
<h2>Conditions</h2>
<table class="slices"><thead><tr><th>condition slice</th><th>seen</th><th>mined</th><th>labeled</th>
<th>mining rate vs target</th><th>drift z (alarm &gt; {data.drift_alarm_level:g})</th>
<th>over frame time <span class="legend">{legend}</span></th></tr></thead>
<tbody>
{_slice_rows(data)}
</tbody></table>
<p class="muted">Drift: the windowed statistic of the miner (mean shift score of the slice's last frames, in
reference standard deviations from a typical training frame), replayed from the decisions with the
{reference}.</p>
<h2>Mined frames</h2>
<div class="filters"><label>slice <select id="filter-slice">{_options(slices, "all slices")}</select></label>
<label>reason <select id="filter-reason">{_options(data.reasons, "all reasons")}</select></label>
<span id="filter-count" class="muted"></span></div>
<div id="gallery">
{gallery}
</div>
{f'<h2>Notes</h2><ul class="notes">{notes}</ul>' if notes else ""}
</main>
<script>{JS}</script>
</body></html>
"""
