"""Evaluate a predictions CSV against LUNA16 annotations and write froc.json, froc.csv, froc.png, nodules.csv."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from monai_lung.evaluation.froc import (
    DEFAULT_EXCLUDED_DIAMETER_MM,
    DEFAULT_FP_RATES,
    DEFAULT_MAX_PREDICTIONS_PER_SCAN,
    FROCResult,
    evaluate_froc,
    format_rate,
)
from monai_lung.evaluation.plot import plot_froc
from monai_lung.io import DataError, read_annotations, read_excluded, read_predictions, write_csv_atomic, write_json_atomic

OUTPUT_FILES = ("froc.json", "froc.csv", "froc.png", "nodules.csv")


def _ci(low: float, high: float) -> str:
    if not (np.isfinite(low) and np.isfinite(high)):
        return "no CI"
    return f"95% CI {low:.3f}-{high:.3f}"


def summary_lines(result: FROCResult) -> list[str]:
    """Human-readable lines: counts, ignored predictions, the CPM and one line per FP rate (with 95% CIs)."""
    lines = [
        f"evaluated {result.num_scans} scans with {result.num_nodules} nodules: "
        f"{result.num_predictions_used} predictions used ({result.num_tp} nodules detected, {result.num_fp} false positives, "
        f"{result.num_ignored_excluded} ignored on excluded findings, {result.num_ignored_duplicate} duplicate hits ignored), "
        f"{result.num_dropped_by_cap} dropped by the {result.max_predictions_per_scan}-per-scan cap",
    ]
    uids = result.ignored_seriesuids
    shown = ", ".join(uids[:3]) + (f", ... ({len(uids) - 3} more)" if len(uids) > 3 else "")
    lines.append(
        f"ignored {result.num_ignored_outside} predictions on {len(uids)} scans not in the evaluated set"
        + (f": {shown}" if uids else "")
    )
    lines.append(f"CPM {result.cpm:.3f} ({_ci(result.cpm_ci_low, result.cpm_ci_high)}, {result.n_bootstrap_used} bootstrap draws)")
    for rate in result.fp_rates:
        lines.append(
            f"sensitivity at {format_rate(rate)} FPs/scan: {result.sensitivities[rate]:.3f} "
            f"({_ci(result.ci_low[rate], result.ci_high[rate])})"
        )
    return lines


def write_outputs(result: FROCResult, output_dir: str | os.PathLike, inputs: dict | None = None) -> dict[str, Path]:
    """Write froc.json (all figures), froc.csv (the curve), nodules.csv (per-nodule hits), froc.png; atomically.

    Returns the paths written, by file name.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: output_dir / name for name in OUTPUT_FILES}
    summary = result.to_dict(include_curve=False, include_nodules=False)
    summary["inputs"] = {k: (None if v is None else str(v)) for k, v in (inputs or {}).items()}
    summary["outputs"] = {
        "curve": "froc.csv (fps_per_scan, sensitivity, ci_low, ci_high, threshold): one row per distinct probability "
        "(predictions >= threshold accepted) after the origin; ci_low/ci_high bound the sensitivity at the row's "
        "FPs/scan, so rows sharing an FPs/scan value share the interval of the highest of them",
        "nodules": "nodules.csv (seriesuid, coordX, coordY, coordZ world mm, diameter_mm, hit, best_score, prediction_row)",
        "plot": "froc.png",
    }
    write_json_atomic(paths["froc.json"], summary)
    write_csv_atomic(paths["froc.csv"], result.curve_frame())
    write_csv_atomic(paths["nodules.csv"], result.nodules)
    plot_froc(result, paths["froc.png"])
    return paths


def run_evaluation(
    annotations_csv: str | os.PathLike,
    predictions_csv: str | os.PathLike,
    output_dir: str | os.PathLike,
    excluded_csv: str | os.PathLike | None = None,
    seriesuids: Sequence[str] | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    log: Callable[[str], object] = print,
    max_predictions_per_scan: int | None = DEFAULT_MAX_PREDICTIONS_PER_SCAN,
    fp_rates: Sequence[float] = DEFAULT_FP_RATES,
    excluded_default_diameter_mm: float = DEFAULT_EXCLUDED_DIAMETER_MM,
) -> FROCResult:
    """Read the LUNA16 CSVs (world mm, LPS), evaluate with :func:`evaluate_froc`, write the outputs, log a summary.

    Args:
        annotations_csv: ``seriesuid,coordX,coordY,coordZ,diameter_mm``.
        predictions_csv: ``seriesuid,coordX,coordY,coordZ,probability``; a header without rows is zero
            predictions.
        output_dir: receives froc.json, froc.csv, froc.png and nodules.csv (created if missing).
        excluded_csv: ``annotations_excluded.csv`` (negative diameter: size unknown), optional.
        seriesuids: the evaluated scans. None: every scan named in the annotations, excluded or
            predictions file -- scans with neither nodules nor predictions are then missed, which
            overstates FPs per scan; pass the list (``seriesuids.csv`` / a data list) whenever possible.
        n_bootstrap, seed: bootstrap resamples of the scans and their seed.
        log: called with each summary line (CPM and the sensitivities with 95% CIs, counts, ignored
            predictions on scans outside the evaluated set).
        max_predictions_per_scan, fp_rates, excluded_default_diameter_mm: see :func:`evaluate_froc`.

    Raises:
        DataError: a bad input file (the message names it) or no nodule in the evaluated scans.
    """
    annotations = read_annotations(annotations_csv)
    excluded = read_excluded(excluded_csv) if excluded_csv is not None else None
    predictions = read_predictions(predictions_csv)
    if seriesuids is None:
        named = [annotations["seriesuid"], predictions["seriesuid"]]
        if excluded is not None:
            named.append(excluded["seriesuid"])
        seriesuids = sorted(set().union(*(set(s) for s in named)))
        log(
            f"no seriesuid list given: evaluating the {len(seriesuids)} scans named in the input files "
            "(scans with neither nodules nor predictions are missed, which overstates FPs per scan)"
        )
    seriesuids = list(seriesuids)
    if not seriesuids:
        raise DataError(None, "no scans to evaluate (empty seriesuid list)")
    evaluated = set(str(u).strip() for u in seriesuids)
    if not annotations["seriesuid"].isin(evaluated).any():
        raise DataError(
            annotations_csv, f"no nodule annotated on any of the {len(evaluated)} evaluated scans: sensitivity is undefined"
        )
    result = evaluate_froc(
        annotations,
        excluded,
        predictions,
        seriesuids,
        max_predictions_per_scan=max_predictions_per_scan,
        fp_rates=fp_rates,
        n_bootstrap=n_bootstrap,
        seed=seed,
        excluded_default_diameter_mm=excluded_default_diameter_mm,
    )
    inputs = {"annotations": annotations_csv, "excluded": excluded_csv, "predictions": predictions_csv}
    paths = write_outputs(result, output_dir, inputs)
    for line in summary_lines(result):
        log(line)
    log(f"wrote {', '.join(str(p) for p in paths.values())}")
    return result
