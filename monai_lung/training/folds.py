"""``monai-lung train --fold all``: every fold in turn, then their test predictions merged and evaluated together."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from monai_lung.io import DataError, find_scans, write_json_atomic
from monai_lung.templates import DET_NAME
from monai_lung.training.recipe import TrainingRun, TrainOptions
from monai_lung.training.steps import SUMMARY


def fold_numbers(data_dir: Path) -> list[int]:
    """The folds of ``--fold all``: every ``subsetK`` folder holding scans (LUNA16: 0-9)."""
    subsets = sorted({s for s, _ in find_scans(data_dir).values() if s is not None})
    if not subsets:
        raise DataError(data_dir, "--fold all: no subsetK folders with scans (LUNA16 layout)")
    return subsets


def run_all_folds(opts: TrainOptions) -> dict:
    """``--fold all``: every fold in turn (each resumable, under ``<work>/fold<K>`` into
    ``<output-bundle>/lung_nodule_ct_two_stage_detection_fold<K>``), then the test predictions of every fold
    merged into one submission and evaluated on all tested scans (``<work>/all_folds``: FROC plot, CPM)."""
    import pandas as pd

    from monai_lung.evaluation.run import run_evaluation
    from monai_lung.io import read_predictions, write_csv_atomic

    folds = fold_numbers(Path(opts.data_dir))
    runs = []
    for k in folds:  # every fold checked before the first one trains
        fold_opts = dataclasses.replace(opts, fold=k, work_dir=Path(opts.work_dir) / f"fold{k}",
                                        output_bundle=Path(opts.output_bundle) / f"{DET_NAME}_fold{k}", log_prefix=f"[train fold {k}]")
        run = TrainingRun(fold_opts)
        run.check()
        run.check_work_dir()
        runs.append(run)
    start = time.perf_counter()
    for run in runs:
        run.run()
    out = Path(opts.work_dir).resolve() / "all_folds"
    out.mkdir(parents=True, exist_ok=True)
    merged = pd.concat([read_predictions(run.predictions) for run in runs], ignore_index=True)
    write_csv_atomic(out / "predictions.csv", merged)
    uids = [e["seriesuid"] for run in runs for e in json.loads(run.datalist_file.read_text(encoding="utf-8"))["test"]]
    print(f"[train] all folds: {len(merged)} predictions on {len(uids)} test scans of {len(runs)} folds -> {out / 'predictions.csv'}", flush=True)
    result = run_evaluation(opts.annotations, out / "predictions.csv", out / "froc", excluded_csv=opts.excluded, seriesuids=uids,
                            n_bootstrap=int(opts.settings["bootstrap"]), log=lambda line: print(f"[train]   {line}", flush=True))
    summary = {"folds": folds, "cpm": result.cpm, "num_scans": len(uids), "predictions": str(out / "predictions.csv"),
               "froc": str(out / "froc"), "fold_summaries": [str(run.work / SUMMARY) for run in runs],
               "seconds": round(time.perf_counter() - start, 1)}
    write_json_atomic(out / "summary.json", summary)
    return summary
