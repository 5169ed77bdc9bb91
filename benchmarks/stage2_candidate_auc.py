"""Stage-2 ROC AUC on a detection run's own candidates: nodules vs stage-1 false positives.

    python benchmarks/stage2_candidate_auc.py --scans-dir demo_output/predictions_scans \
        --annotations demo_output/data/annotations.csv [--excluded demo_output/data/annotations_excluded.csv]

Reads the per-scan JSON files that ``monai-lung detect`` writes (every stage-1 candidate with its stage-1
peak and stage-2 probability, not only the 100 per scan the submission CSV keeps). A candidate is positive
when its centre lies within the radius of an annotated nodule (the LUNA16 hit rule), ignored when it hits
only an excluded finding, negative otherwise. Prints the ROC AUC of the stage-2 probability (and, for
comparison, of the stage-1 peak), the counts, and how many annotated nodules no candidate hit (stage-1
misses, which no stage-2 score can recover).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from monai_lung.evaluation.froc import DEFAULT_EXCLUDED_DIAMETER_MM


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mann-Whitney ROC AUC of ``scores`` (N,) for binary ``labels`` (N,); ties count one half."""
    from scipy.stats import rankdata

    pos, neg = labels == 1, labels == 0
    if not pos.any() or not neg.any():
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[pos].sum() - pos.sum() * (pos.sum() + 1) / 2) / (pos.sum() * neg.sum()))


def label_candidates(cands: pd.DataFrame, nodules: pd.DataFrame, excluded: pd.DataFrame) -> np.ndarray:
    """1 (hits a nodule), 0 (false positive) or -1 (hits only an excluded finding) per candidate row.

    All coordinates are world LPS mm (``coordX/Y/Z``); radii are ``diameter_mm / 2`` (excluded findings
    with a negative diameter use the same 5 mm default radius as ``monai-lung evaluate``).
    """
    pts = cands[["coordX", "coordY", "coordZ"]].to_numpy(dtype=float)
    labels = np.zeros(len(pts), dtype=int)

    def hits(table: pd.DataFrame) -> np.ndarray:
        if len(table) == 0 or len(pts) == 0:
            return np.zeros(len(pts), dtype=bool)
        centres = table[["coordX", "coordY", "coordZ"]].to_numpy(dtype=float)
        radii = table["diameter_mm"].to_numpy(dtype=float) / 2
        radii = np.where(radii > 0, radii, DEFAULT_EXCLUDED_DIAMETER_MM / 2)
        dist = np.linalg.norm(pts[:, None] - centres[None], axis=2)
        return (dist <= radii[None]).any(axis=1)

    labels[hits(excluded)] = -1
    labels[hits(nodules)] = 1
    return labels


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scans-dir", type=Path, required=True, help="the <output>_scans folder of monai-lung detect")
    p.add_argument("--annotations", type=Path, required=True)
    p.add_argument("--excluded", type=Path, default=None)
    args = p.parse_args()
    ann = pd.read_csv(args.annotations, dtype={"seriesuid": str})
    exc = pd.read_csv(args.excluded, dtype={"seriesuid": str}) if args.excluded else ann.iloc[:0]
    scores, peaks, labels = [], [], []
    missed = total = scans = 0
    for path in sorted(args.scans_dir.glob("*.json")):
        record = json.loads(path.read_text(encoding="utf-8"))
        if record.get("status", "ok") != "ok":
            continue
        uid = record["seriesuid"]
        findings = record.get("findings", [])
        cands = pd.DataFrame(
            [(*f["coord"], f["stage1_peak"], f["stage2_prob"]) for f in findings],
            columns=["coordX", "coordY", "coordZ", "stage1_peak", "stage2_prob"],
        )
        nod, ex = ann[ann.seriesuid == uid], exc[exc.seriesuid == uid]
        lab = label_candidates(cands, nod, ex)
        keep = lab >= 0
        scores.append(cands["stage2_prob"].to_numpy(dtype=float)[keep])
        peaks.append(cands["stage1_peak"].to_numpy(dtype=float)[keep])
        labels.append(lab[keep])
        # nodules that no candidate hit
        pts = cands[["coordX", "coordY", "coordZ"]].to_numpy(dtype=float)
        for row in nod.itertuples():
            total += 1
            if not len(pts) or np.linalg.norm(pts - [row.coordX, row.coordY, row.coordZ], axis=1).min() > row.diameter_mm / 2:
                missed += 1
        scans += 1
    if not scans:
        raise SystemExit(f"{args.scans_dir}: no per-scan JSON results")
    s, pk, y = np.concatenate(scores), np.concatenate(peaks), np.concatenate(labels)
    print(f"{scans} scans: {int((y == 1).sum())} candidates on nodules, {int((y == 0).sum())} false positives "
          f"({(y == 0).sum() / scans:.0f} per scan); {total - missed}/{total} nodules hit by some candidate")
    print(f"stage-2 ROC AUC (nodule candidates vs stage-1 false positives): {roc_auc(s, y):.4f}")
    print(f"stage-1 peak probability ROC AUC on the same candidates:        {roc_auc(pk, y):.4f}")


if __name__ == "__main__":
    main()
