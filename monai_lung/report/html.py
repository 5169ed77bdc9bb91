"""The review page of a detection run: ``report_dir/index.html``, one self-contained file.

Inline CSS only: no JavaScript, no external assets; images are the per-finding PNGs under
``report_dir/images/`` referenced by relative paths, so the folder can be copied or zipped as a whole.
All text taken from the inputs (series UIDs, paths, error messages) is HTML-escaped.
"""

from __future__ import annotations

import html
import math
import os
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence
from urllib.parse import quote

from monai_lung.findings import Finding, ScanResult, attributes, report_items
from monai_lung.io import atomic_path

#: display width of the finding PNGs in the page, CSS pixels (they also shrink to the window)
IMAGE_WIDTH_PX = 1040

_CSS = """
body { background: #121212; color: #e0e0e0; font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif;
       margin: 0 auto; padding: 1em 2em 4em; max-width: 1200px; }
h1 { font-size: 1.5em; margin: 0.3em 0; }
h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #444; padding-bottom: 0.2em; }
h3 { font-size: 1.05em; margin: 1.6em 0 0.3em; word-break: break-all; }
a { color: #7fc8ff; }
.meta { color: #9a9a9a; font-size: 0.9em; margin: 0.2em 0; word-break: break-all; }
.summary { display: flex; flex-wrap: wrap; gap: 0.8em; margin: 1em 0; }
.summary div { background: #1e1e1e; border: 1px solid #333; border-radius: 6px; padding: 0.5em 1em; }
.summary b { display: block; font-size: 1.4em; }
.bad { color: #ff7b72; }
table { border-collapse: collapse; width: 100%; font-size: 0.92em; }
th, td { border-bottom: 1px solid #333; padding: 0.3em 0.5em; text-align: left; vertical-align: top; }
th { background: #1e1e1e; position: sticky; top: 0; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.uid { word-break: break-all; }
tr.failed td { color: #ff7b72; }
.error { color: #ff7b72; white-space: pre-wrap; word-break: break-word; font-family: monospace; }
.warn { color: #f0b429; }
figure { margin: 0.8em 0 1.4em; }
figure img { max-width: 100%; height: auto; display: block; border: 1px solid #333; }
figcaption { font-variant-numeric: tabular-nums; margin-top: 0.3em; }
figcaption b { color: #ffd400; }
"""


def _esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _fmt(value: Any, digits: int) -> str:
    v = _number(value)
    return f"{v:.{digits}f}" if math.isfinite(v) else "n/a"


def _score(finding: Mapping[str, Any]) -> float:
    """A finding's probability for sorting; missing/NaN sort last."""
    p = _number(finding.get("probability"))
    return p if math.isfinite(p) else -math.inf


def _coord_text(coord: Any) -> str:
    """World LPS (x, y, z) mm as "(x, y, z)" with 1 decimal; "n/a" when not three numbers."""
    try:
        values = [float(c) for c in coord]
    except (TypeError, ValueError):
        return "n/a"
    if len(values) != 3:
        return "n/a"
    return "(" + ", ".join(_fmt(v, 1) for v in values) + ")"


def _timings_text(timings: Mapping[str, Any] | None) -> tuple[str, float]:
    """("stage 1.2 s · stage 3.4 s", total seconds) from a {stage: seconds} dict; total from "total" if given."""
    if not timings:
        return "", float("nan")
    parts = [f"{stage} {_fmt(sec, 1)} s" for stage, sec in timings.items()]
    if "total" in timings:
        total = _number(timings["total"])
    else:
        values = [_number(v) for v in timings.values()]
        total = sum(v for v in values if math.isfinite(v))
    return " · ".join(parts), total


def _best(scan: Mapping[str, Any]) -> float:
    return max((_score(f) for f in scan.get("findings") or ()), default=-math.inf)


def _sorted_findings(scan: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return sorted(scan.get("findings") or (), key=_score, reverse=True)


def _is_ok(scan: Mapping[str, Any]) -> bool:
    return str(scan.get("status", "ok")) == "ok"


def _img(report_dir: Path, png: Any, alt: str) -> str:
    """An ``<img>`` (linked to the full-size file) for a PNG path relative to report_dir, or a note if absent."""
    if not png:
        return '<p class="meta">no image</p>'
    if not (report_dir / str(png)).is_file():
        return f'<p class="meta">image not found: {_esc(png)}</p>'
    src = _esc(quote(Path(str(png)).as_posix(), safe="/"))
    return (f'<a href="{src}"><img src="{src}" width="{IMAGE_WIDTH_PX}" loading="lazy" '
            f'alt="{_esc(alt)}"></a>')


def _summary(scans: Sequence[Mapping[str, Any]], first_failed_id: str | None) -> str:
    n_failed = sum(not _is_ok(s) for s in scans)
    n_findings = sum(len(s.get("findings") or ()) for s in scans)
    n_with = sum(bool(s.get("findings")) for s in scans)
    best = max((_best(s) for s in scans), default=-math.inf)
    total_s = sum(t for t in (_timings_text(s.get("timings_s"))[1] for s in scans) if math.isfinite(t))
    failed = f'<b class="bad">{n_failed}</b>' if n_failed else "<b>0</b>"
    if n_failed and first_failed_id:
        failed = f'<a href="#{first_failed_id}">{failed}</a>'
    cards = [
        f"<div><b>{len(scans)}</b>scans</div>",
        f"<div><b>{len(scans) - n_failed}</b>processed</div>",
        f"<div>{failed}failed</div>",
        f"<div><b>{n_findings}</b>findings shown in {n_with} scans</div>",
        f"<div><b>{_fmt(best, 3) if math.isfinite(best) else 'n/a'}</b>best probability</div>",
        f"<div><b>{total_s / 60.0:.1f}</b>minutes of processing</div>",
    ]
    return '<div class="summary">' + "".join(cards) + "</div>"


def _scan_table(ordered: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
    rows = []
    for i, (anchor, scan) in enumerate(ordered, start=1):
        ok = _is_ok(scan)
        findings = scan.get("findings") or ()
        best = _best(scan)
        _, total = _timings_text(scan.get("timings_s"))
        error = scan.get("error")
        if ok:  # a processed scan may still carry an error, e.g. its pictures could not be drawn
            note = _esc(scan.get("image", "")) + (f'<br><span class="error">{_esc(error)}</span>' if error else "")
        else:
            note = f'<span class="error">{_esc(error or "failed")}</span>'
        rows.append(
            f'<tr class="{"ok" if ok else "failed"}"><td class="num">{i}</td>'
            f'<td class="uid"><a href="#{anchor}">{_esc(scan.get("seriesuid", ""))}</a></td>'
            f'<td>{_esc(scan.get("status", "ok"))}</td><td class="num">{len(findings)}</td>'
            f'<td class="num">{_fmt(best, 3) if math.isfinite(best) else "–"}</td>'
            f'<td class="num">{_fmt(total, 1) if math.isfinite(total) else "–"}</td><td class="uid">{note}</td></tr>'
        )
    head = ('<tr><th class="num">#</th><th>seriesuid</th><th>status</th><th class="num">findings</th>'
            '<th class="num">best p</th><th class="num">time (s)</th><th>image / error</th></tr>')
    return f"<table>\n<thead>{head}</thead>\n<tbody>\n" + "\n".join(rows) + "\n</tbody></table>"


def _scan_section(report_dir: Path, anchor: str, scan: Mapping[str, Any]) -> str:
    uid = scan.get("seriesuid", "")
    timings, _ = _timings_text(scan.get("timings_s"))
    parts = [f'<section id="{anchor}">', f"<h3>{_esc(uid)}</h3>",
             f'<p class="meta">{_esc(scan.get("image", ""))}{_markups_link(report_dir, scan.get("markups"))}</p>',
             f'<p class="meta">status: {_esc(scan.get("status", "ok"))}'
             + (f" · {_esc(timings)}" if timings else "") + "</p>"]
    if not _is_ok(scan):
        parts.append(f'<p class="error">{_esc(scan.get("error") or "failed (no error message)")}</p>')
    elif scan.get("error"):
        parts.append(f'<p class="error">{_esc(scan.get("error"))}</p>')
    for label, text in _scan_items(scan):
        parts.append(f'<p class="warn">{_esc(label)}: {_esc(text)}</p>')
    findings = _sorted_findings(scan)
    if _is_ok(scan) and not findings:
        parts.append('<p class="meta">no findings</p>')
    for k, f in enumerate(findings, start=1):
        items = [f"{_esc(label)} <b>{_esc(text)}</b>" if n == 0 else f"{_esc(label)} {_esc(text)}"
                 for n, (label, text) in enumerate(report_items(_record(f), skip_missing=True))]
        caption = " · ".join([f"<b>#{k}</b>", *items, f"world LPS (x, y, z) = {_esc(_coord_text(f.get('coord')))} mm"])
        alt = f"{uid} finding {k}"
        parts.append(f'<figure id="{anchor}-f{k}">{_img(report_dir, f.get("png"), alt)}'
                     f"<figcaption>{caption}</figcaption></figure>")
    parts.append("</section>")
    return "\n".join(parts)


def _markups_link(report_dir: Path, markups: Any) -> str:
    """`` · 3D Slicer points`` linking the scan's ``.mrk.json`` (path relative to report_dir), when it exists."""
    if not markups or not (report_dir / str(markups)).is_file():
        return ""
    return f' · <a href="{_esc(quote(Path(str(markups)).as_posix(), safe="/"))}">3D Slicer points (.mrk.json)</a>'


def _record(finding: Mapping[str, Any]) -> Finding:
    """A report row (a finding's JSON with its ``png``) as a :class:`~monai_lung.findings.record.Finding`."""
    return Finding.from_json({"coord": (math.nan,) * 3, "probability": math.nan, **finding})


def _scan_items(scan: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(label, text)`` of the scan's declared per-scan attributes that say something (e.g. its warnings)."""
    declared = {name: scan[name] for name, _ in attributes(ScanResult) if scan.get(name) is not None}
    return report_items(ScanResult(**declared))


def _all_findings(ordered: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
    items = []
    for anchor, scan in ordered:
        for k, f in enumerate(_sorted_findings(scan), start=1):
            items.append((_score(f), anchor, k, scan.get("seriesuid", ""), f))
    items.sort(key=lambda t: t[0], reverse=True)  # stable: equal scores keep scan order
    if not items:
        return '<p class="meta">no findings</p>'
    # one column per labelled finding attribute (the first, the probability, links to the finding's figure)
    specs = [spec for _, spec in attributes(Finding) if spec.label]
    rows = []
    for rank, (_, anchor, k, uid, f) in enumerate(items, start=1):
        cells = []
        for n, (spec, (_, text)) in enumerate(zip(specs, report_items(_record(f), with_defaults=True))):
            value = _esc(text.removesuffix(f" {spec.unit}") if spec.unit else text)
            cells.append(f'<td class="{"num" if spec.digits is not None else "txt"}">'
                         + (f'<a href="#{anchor}-f{k}">{value}</a>' if n == 0 else value) + "</td>")
        rows.append(
            f'<tr><td class="num">{rank}</td>{"".join(cells)}'
            f'<td class="num">{_esc(_coord_text(f.get("coord")))}</td>'
            f'<td class="uid"><a href="#{anchor}">{_esc(uid)}</a> #{k}</td></tr>'
        )
    head_cells = "".join(
        f'<th class="{"num" if spec.digits is not None else "txt"}">{_esc(spec.label)}' + (f" ({_esc(spec.unit)})" if spec.unit else "") + "</th>"
        for spec in specs
    )
    head = (f'<tr><th class="num">rank</th>{head_cells}'
            '<th class="num">world LPS (x, y, z) mm</th><th>scan, finding</th></tr>')
    return f"<table>\n<thead>{head}</thead>\n<tbody>\n" + "\n".join(rows) + "\n</tbody></table>"


def _ordered(scans: Iterable[Mapping[str, Any]]) -> list[tuple[str, Mapping[str, Any]]]:
    """Scans in display order with their anchor ids: processed scans by best probability (desc; scans
    without findings after), then failed scans; ties keep input order."""
    indexed = list(enumerate(scans))
    indexed.sort(key=lambda t: (not _is_ok(t[1]), -_best(t[1])))
    return [(f"scan-{i}", scan) for i, scan in indexed]


def write_index_html(report_dir: str | os.PathLike, scans: Sequence[Mapping[str, Any]],
                     title: str = "monai-lung detection review") -> Path:
    """Write ``report_dir/index.html`` (atomically) for the scans processed so far; returns its path.

    Args:
        report_dir: report folder; the findings' ``"png"`` paths are relative to it.
        scans: ``[{"seriesuid", "image": scan path, "status": "ok" | "failed", "error": str | None,
            "findings": [rows from :func:`monai_lung.report.findings.render_scan_findings`: "png" and a finding's
            JSON, "coord" world LPS x, y, z mm], "timings_s": {stage: seconds},
            "markups": optional path of the scan's 3D Slicer ``.mrk.json``, relative to report_dir, and the scan's
            declared attributes such as "warnings" (:class:`~monai_lung.findings.record.ScanResult`)}]``.
            An "ok" scan's "error" (e.g. its pictures failed) is shown too.
        title: page heading.

    The page holds a summary (scans, failures, findings), a table of scans (best finding's probability
    first, failed scans last with their error), per scan its findings by probability with their PNGs, world
    coordinates (mm, 1 decimal) and declared attributes (probabilities, sizes, ...) and the scan's warnings, and one
    table of all findings by probability.
    Safe to call again with a longer list: the file is replaced as a whole.
    """
    report_dir = Path(report_dir)
    ordered = _ordered(scans)
    first_failed = next((a for a, s in ordered if not _is_ok(s)), None)
    generated = datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
    body = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_esc(title)}</h1>",
        f'<p class="meta">generated {_esc(generated)} · coordinates are world LPS millimetres (LUNA16 convention) · '
        "images: lung window W 1500 / L −600, radiological orientation (patient left on image right) · "
        '<a href="#scans">scans</a> · <a href="#findings">findings by scan</a> · <a href="#all">all findings</a></p>',
        _summary([s for _, s in ordered], first_failed),
        '<h2 id="scans">Scans</h2>',
        _scan_table(ordered),
        '<h2 id="findings">Findings by scan</h2>',
        *(_scan_section(report_dir, anchor, scan) for anchor, scan in ordered),
        '<h2 id="all">All findings by probability</h2>',
        _all_findings(ordered),
        "</body></html>",
    ]
    out = report_dir / "index.html"
    with atomic_path(out) as tmp:
        tmp.write_text("\n".join(body) + "\n", encoding="utf-8")
        os.chmod(tmp, 0o644)  # readable like an ordinary file (mkstemp creates 0600)
    return out
