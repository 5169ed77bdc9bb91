"""Stage-2 ROC AUC on a detection run's own candidates: nodules vs stage-1 false positives.

    python benchmarks/stage2_candidate_auc.py --scans-dir demo_output/detect/predictions_scans \
        --datalist demo_output/datalist/datalist.json --key test

Reads the per-scan JSON files that ``monai-lung detect`` writes (every stage-1 candidate with its stage-1
peak and stage-2 probability, not only the 100 per scan the submission CSV keeps) of the scans in the data
list's ``--key`` list. Candidates are labelled as the hard-negative miner labels them
(:func:`monai_lung.stage2.label_candidates`: positive within an annotated nodule's radius, the LUNA16 hit
rule; ignored when only on an excluded finding; negative otherwise). Prints the ROC AUC of the stage-2
probability (and, for comparison, of the stage-1 peak), the counts, and how many annotated nodules no
candidate hit (stage-1 misses, which no stage-2 score can recover).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from monai_lung.datalist import load_datalist_entries
from monai_lung.detection.batch import ledger_findings
from monai_lung.io.annotations import away_from_findings, finding_arrays
from monai_lung.stage2.mining import label_candidates
from stage2_auc import roc_auc


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scans-dir", type=Path, required=True, help="the <output>_scans folder of monai-lung detect")
    p.add_argument("--datalist", type=Path, required=True, help="data list whose entries carry nodules and excluded findings")
    p.add_argument("--key", default="test")
    args = p.parse_args()
    findings = ledger_findings(args.scans_dir)
    if findings.empty:
        raise SystemExit(f"{args.scans_dir}: no per-scan JSON results with findings")
    labelled, missed, total, scans = [], 0, 0, 0
    for entry in load_datalist_entries(args.datalist, args.key):
        cands = findings[findings["seriesuid"] == entry["seriesuid"]]
        if not (args.scans_dir / f"{entry['seriesuid']}.json").is_file():
            continue  # not detected (failed or not run): nothing to score
        scans += 1
        labelled.append(label_candidates(cands, entry))
        pts = cands[["coordX", "coordY", "coordZ"]].to_numpy(dtype=np.float64)
        centres, radii = finding_arrays(entry.get("nodules"))
        total += len(centres)
        missed += sum(bool(away_from_findings(pts, c[None], r[None]).all()) for c, r in zip(centres, radii))
    if not scans:
        raise SystemExit(f"{args.scans_dir}: no result for any scan of {args.datalist} [{args.key}]")
    table = pd.concat(labelled, ignore_index=True)
    table = table[table["label"] >= 0]  # candidates on excluded findings count neither way
    y = table["label"].to_numpy(copy=True)
    print(f"{scans} scans: {int((y == 1).sum())} candidates on nodules, {int((y == 0).sum())} false positives "
          f"({(y == 0).sum() / scans:.0f} per scan); {total - missed}/{total} nodules hit by some candidate")
    print(f"stage-2 ROC AUC (nodule candidates vs stage-1 false positives): {roc_auc(y, table['stage2_prob'].to_numpy(copy=True)):.4f}")
    print(f"stage-1 peak probability ROC AUC on the same candidates:        {roc_auc(y, table['stage1_peak'].to_numpy(copy=True)):.4f}")


if __name__ == "__main__":
    main()
