"""The probability threshold for ``monai-lung followup``: the one that gives about one false positive per scan on
held-out scans (LUNA16 hit rules, :func:`monai_lung.evaluation.froc.evaluate_froc`).

Give the predictions of ``monai-lung detect`` on scans the bundle did not train on (the demo's validation and
test scans) and their annotations; prints, for 0.5, 1 and 2 false positives per scan, the threshold (the lowest
probability still accepted with at most that many) and the sensitivity there.

    python benchmarks/followup_threshold.py --predictions val.csv test.csv --data-dir demo_output/data
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from monai_lung.evaluation.froc import evaluate_froc
from monai_lung.io import read_annotations, read_excluded


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--predictions", type=Path, nargs="+", required=True, help="predictions CSVs of monai-lung detect")
    ap.add_argument("--data-dir", type=Path, required=True, help="holds annotations.csv and annotations_excluded.csv")
    ap.add_argument("--scans", type=Path, nargs="*", default=[], help="per-scan JSON folders (<output>_scans): the evaluated scans, "
                    "also those without predictions (default: the scans the CSVs name)")
    args = ap.parse_args()
    preds = pd.concat([pd.read_csv(p, dtype={"seriesuid": str}) for p in args.predictions], ignore_index=True)
    uids = sorted({p.stem for d in args.scans for p in Path(d).glob("*.json")} or set(preds["seriesuid"]))
    result = evaluate_froc(read_annotations(args.data_dir / "annotations.csv"), read_excluded(args.data_dir / "annotations_excluded.csv"),
                           preds, uids, n_bootstrap=0)
    fps, sens, thr = np.asarray(result.fps_per_scan), np.asarray(result.sensitivity), np.asarray(result.thresholds)
    print(f"{result.num_scans} scans, {result.num_nodules} nodules, CPM {result.cpm:.3f}")
    for rate in (0.5, 1.0, 2.0):
        k = int(np.flatnonzero(fps <= rate)[-1])
        print(f"at most {rate:g} FP/scan: threshold {thr[k]:.4f} -> {fps[k]:.2f} FP/scan, sensitivity {sens[k]:.3f}")


if __name__ == "__main__":
    main()
