"""The follow-up report: ``index.html`` with, per nodule, its prior and current crops side by side.

Each picture is an axial slice (world z through the nodule's centre) of each scan, the same size in mm, displayed
radiologically (patient right on the left, anterior up: an LPS-aligned crop shown rows = y, columns = x), with the
measured outline. A new nodule's prior panel and a resolved one's current panel show the registered position.
Figures use matplotlib's object API on the Agg canvas (headless).
"""

from __future__ import annotations

import html
import os
from pathlib import Path

import numpy as np

from monai_lung.io.atomic import atomic_path, write_text_atomic

WINDOW_HU = (-1350.0, 150.0)  # lung window: width 1500, level -600


def _panel(ax, hu: np.ndarray, affine: np.ndarray, mask: np.ndarray | None, title: str) -> None:
    k = hu.shape[2] // 2
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    half_x, half_y = hu.shape[0] * spacing[0] / 2, hu.shape[1] * spacing[1] / 2
    extent = (-half_x, half_x, half_y, -half_y)
    ax.imshow(hu[:, :, k].T, cmap="gray", vmin=WINDOW_HU[0], vmax=WINDOW_HU[1], extent=extent, interpolation="nearest")
    if mask is not None and mask[:, :, k].any():
        xs = -half_x + (np.arange(hu.shape[0]) + 0.5) * spacing[0]
        ys = -half_y + (np.arange(hu.shape[1]) + 0.5) * spacing[1]
        ax.contour(xs, ys, mask[:, :, k].T.astype(float), levels=[0.5], colors=["#ff5050"], linewidths=1.0)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.text(0.02, 0.5, "R", color="yellow", transform=ax.transAxes, fontsize=8, va="center")
    ax.text(0.95, 0.5, "L", color="yellow", transform=ax.transAxes, fontsize=8, va="center")


def _crop_like(side, described, centre) -> tuple[np.ndarray, np.ndarray]:
    """The CT of ``side`` around ``centre`` on a grid the size of ``described``'s crop."""
    spacing = float(np.linalg.norm(described.crop_affine[:3, 0]))
    half = (described.crop.shape[0] - 1) / 2.0 * spacing
    return side.ct.crop(centre, half, spacing)


def render_pair(path: Path, row: dict, prior, current, registration, dates: tuple[str, str]) -> None:
    """One PNG: the nodule of ``row`` in the prior scan (left) and the current scan (right)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    a, b = row["_described"]
    p_centre = [row["prior_x"], row["prior_y"], row["prior_z"]] if a else None
    c_centre = [row["current_x"], row["current_y"], row["current_z"]] if b else None
    if a is None:  # new: the prior at the registered position
        p_centre = registration.current_to_prior(c_centre)[0]
        p_hu, p_aff, p_mask = *_crop_like(prior, b, p_centre), None
    else:
        p_hu, p_aff, p_mask = a.crop, a.crop_affine, a.composition.mask
    if b is None:  # resolved: the current scan at the registered position
        c_centre = registration.prior_to_current(p_centre)[0]
        c_hu, c_aff, c_mask = *_crop_like(current, a, c_centre), None
    else:
        c_hu, c_aff, c_mask = b.crop, b.crop_affine, b.composition.mask
    fig = Figure(figsize=(6.4, 3.6))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    size = lambda v, d: f"{v:.0f} mm3, {d:.1f} mm" if v is not None else "absent"  # noqa: E731
    _panel(axes[0], p_hu, p_aff, p_mask, f"prior {dates[0]}: {size(row['prior_volume_mm3'], row['prior_mean_diameter_mm'] or 0)}")
    _panel(axes[1], c_hu, c_aff, c_mask, f"current {dates[1]}: {size(row['current_volume_mm3'], row['current_mean_diameter_mm'] or 0)}")
    change = "" if row["volume_change_pct"] is None else f", volume {row['volume_change_pct']:+.0f} %"
    vdt = "" if row["vdt_days"] is None else f", VDT {row['vdt_days']:.0f} d"
    fig.suptitle(f"{row['status']} {row['type']} nodule{change}{vdt}; Lung-RADS {row['lungrads'] or '-'} (research use only)", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)


def _cell(value) -> str:
    return "" if value is None else html.escape(str(value))


def write_report(report_dir: str | os.PathLike, rows: list[dict], prior, current, registration, summary: dict) -> Path:
    """``report_dir/index.html`` and ``images/nodule_NN.png`` for ``rows``; returns the HTML's path."""
    report_dir = Path(report_dir)
    dates = (summary["prior"]["date"], summary["current"]["date"])
    body = []
    for n, row in enumerate(rows, start=1):
        png = Path("images") / f"nodule_{n:02d}.png"
        error = ""
        try:
            render_pair(report_dir / png, row, prior, current, registration, dates)
        except Exception as err:  # a picture must not cost the comparison
            error = f"<p class=err>picture failed: {html.escape(str(err))}</p>"
        details = row["details"]["current"] or row["details"]["prior"]
        review = ", ".join((row["details"]["lungrads"] or {}).get("review", [])) or ""
        body.append(
            f"<tr><td>{n}</td><td>{_cell(row['status'])}</td><td><b>{_cell(row['lungrads'])}</b></td><td>{_cell(row['type'])}"
            f"{' calcified' if details.get('calcified') else ''}</td><td>{_cell(details.get('side'))} {_cell(details.get('zone'))}"
            f"{' (pleura)' if details.get('touches_pleura') else ''}</td><td>{_cell(row['prior_mean_diameter_mm'])} / "
            f"{_cell(row['current_mean_diameter_mm'])}</td><td>{_cell(row['prior_volume_mm3'])} / {_cell(row['current_volume_mm3'])}</td>"
            f"<td>{_cell(row['volume_change_pct'])}</td><td>{_cell(row['vdt_days'])}</td><td>{_cell(row['probability'])}</td>"
            f"<td>{_cell(review)}</td><td>{error or f'<img src={png.as_posix()!r} width=480>'}</td></tr>"
        )
    exam = summary["exam"]
    page = f"""<!DOCTYPE html><html><head><meta charset="utf-8"><title>monai_lung follow-up</title>
<style>body{{font-family:sans-serif;margin:1em}} td,th{{border-bottom:1px solid #ccc;padding:4px;vertical-align:top;font-size:13px}}
.err{{color:#b00}} .ruo{{color:#b00;font-weight:bold}}</style></head><body>
<h1>Follow-up: {html.escape(dates[0])} &rarr; {html.escape(dates[1])} ({summary['interval_days']} days)</h1>
<p class=ruo>RESEARCH USE ONLY - not for diagnosis. Lung-RADS categories are proposals for a radiologist.</p>
<p>Exam: Lung-RADS v2022 <b>{html.escape(exam['category'])}</b> ({html.escape(exam['management'])}); for review:
{html.escape(', '.join(exam['review']) or 'none')}; findings no table row covers: {exam['undecided']}.</p>
<p>Prior: {html.escape(summary['prior']['path'])}<br>Current: {html.escape(summary['current']['path'])}<br>
Registration residual {summary['registration']['residual_mm']} mm (mean lung-surface distance); probability threshold
{summary['thresholds']['probability']}; volume repeatability {summary['thresholds']['volume_repeatability_pct']} %.</p>
<table><tr><th>#</th><th>status</th><th>Lung-RADS</th><th>type</th><th>location</th><th>mean diameter mm<br>prior / current</th>
<th>volume mm3<br>prior / current</th><th>volume change %</th><th>VDT days</th><th>probability</th><th>for review</th><th>prior | current</th></tr>
{''.join(body)}</table></body></html>
"""
    write_text_atomic(report_dir / "index.html", page)
    return report_dir / "index.html"
