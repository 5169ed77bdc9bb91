"""FROC figure: the curve with its bootstrap band, the seven LUNA16 operating points and the CPM.

Uses matplotlib's object API with the Agg canvas (no pyplot, no global backend change), so it works
headless and in threads.
"""

from __future__ import annotations

import os

import numpy as np

from monai_lung.evaluation.froc import format_rate, interpolate_froc
from monai_lung.io import atomic_path


def plot_froc(result, path: str | os.PathLike, title: str | None = None, dpi: int = 120) -> None:
    """Draw ``result``'s FROC curve to ``path`` (PNG, or any format matplotlib infers from the suffix), atomically.

    Args:
        result: a :class:`monai_lung.evaluation.FROCResult`; uses its curve arrays ``fps_per_scan`` (FPs per
            scan, (P,)), ``sensitivity``, ``curve_ci_low``, ``curve_ci_high`` (fractions, (P,)), the
            ``fp_rates`` with ``sensitivities``/``ci_low``/``ci_high`` and ``cpm``.
        path: output file.
        title: replaces the default title (which states the CPM and its 95% CI).
        dpi: resolution.

    The FP axis is logarithmic from 1/16 to at least 8 FPs per scan (further when the curve goes further).
    Between curve points the line follows the curve's linear interpolation only approximately (straight in
    display space); the marked points are the exact values at the FP rates.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rates = np.asarray(result.fp_rates, dtype=float)
    fps = np.asarray(result.fps_per_scan, dtype=float)
    sens = np.asarray(result.sensitivity, dtype=float)
    lo = np.asarray(result.curve_ci_low, dtype=float)
    hi = np.asarray(result.curve_ci_high, dtype=float)
    x_min = min(1.0 / 16.0, rates.min() / 2.0)
    x_max = max(8.0, rates.max(), float(fps.max(initial=0.0))) * 1.25

    # The visible part of the curve: the value at the left edge, every point inside, the value at the right edge.
    inside = (fps > x_min) & (fps < x_max)
    xs = np.concatenate([[x_min], fps[inside], [x_max]])
    ys = np.concatenate([interpolate_froc(fps, sens, [x_min]), sens[inside], interpolate_froc(fps, sens, [x_max])])
    have_band = np.isfinite(lo).any()
    if have_band:
        los = np.concatenate([interpolate_froc(fps, lo, [x_min]), lo[inside], interpolate_froc(fps, lo, [x_max])])
        his = np.concatenate([interpolate_froc(fps, hi, [x_min]), hi[inside], interpolate_froc(fps, hi, [x_max])])

    fig = Figure(figsize=(7.0, 5.0))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    if have_band:
        ax.fill_between(xs, los, his, color="tab:blue", alpha=0.2, linewidth=0, label="95% CI (bootstrap over scans)")
    ax.plot(xs, ys, color="tab:blue", linewidth=1.8, label="FROC")
    point = np.array([result.sensitivities[r] for r in result.fp_rates])
    err_lo = np.array([result.ci_low[r] for r in result.fp_rates])
    err_hi = np.array([result.ci_high[r] for r in result.fp_rates])
    if np.isfinite(err_lo).all() and np.isfinite(err_hi).all():
        yerr = np.vstack([np.clip(point - err_lo, 0, None), np.clip(err_hi - point, 0, None)])
        ax.errorbar(rates, point, yerr=yerr, fmt="o", color="tab:red", capsize=3, label="LUNA16 operating points")
    else:
        ax.plot(rates, point, "o", color="tab:red", label="LUNA16 operating points")
    for r, s in zip(rates, point):
        ax.annotate(f"{s:.3f}", (r, s), textcoords="offset points", xytext=(5, -11), ha="left", fontsize=7)
    ax.set_xscale("log")
    ax.set_xlim(x_min, x_max)
    ax.set_ylim(0.0, 1.02)
    ax.set_xticks(rates)
    ax.set_xticklabels([format_rate(r) for r in rates])
    ax.minorticks_off()
    ax.set_xlabel("Average number of false positives per scan")
    ax.set_ylabel("Sensitivity")
    ax.grid(True, which="major", linestyle=":", linewidth=0.8)
    if title is None:
        ci = ""
        if np.isfinite(result.cpm_ci_low) and np.isfinite(result.cpm_ci_high):
            ci = f" (95% CI {result.cpm_ci_low:.3f}-{result.cpm_ci_high:.3f})"
        title = f"FROC: CPM {result.cpm:.3f}{ci}; {result.num_scans} scans, {result.num_nodules} nodules"
    ax.set_title(title, fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi)
