"""Compare two prediction CSVs finding by finding: are they the same findings with the same scores?

    python benchmarks/compare_findings.py old/predictions.csv new/predictions.csv
    python benchmarks/compare_findings.py a.csv b.csv --position-tol 1e-3 --probability-tol 1e-4

For a refactoring or a change of hardware that must not change the detections: run ``monai-lung detect`` with the
same bundle before and after, then compare. Per scan (``seriesuid``), each finding of the first file is paired
with the nearest finding of the second (world mm); the pairing must be one-to-one (each one the other's nearest)
and the scans must hold equally many findings. Printed: the number of findings and scans, the largest position
difference (mm), the largest probability difference, the largest difference of every other numeric column both
files share (sizes), and the pairs with the largest differences. Exit status 0 when every pair is within the
tolerances and nothing is unpaired, else 1.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

COORDS = ["coordX", "coordY", "coordZ"]


def pair_findings(a: pd.DataFrame, b: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Pairs of findings of the same scan, nearest to each other in world mm: one row per finding of ``a`` with
    ``a``'s and ``b``'s columns (suffixes ``_a``, ``_b``) and ``distance_mm``; and the problems found (unequal
    counts, findings that are not each other's nearest)."""
    rows, problems = [], []
    groups_b = dict(tuple(b.groupby("seriesuid", sort=False)))
    for uid, fa in a.groupby("seriesuid", sort=False):
        fb = groups_b.pop(uid, b.iloc[:0])
        if len(fa) != len(fb):
            problems.append(f"{uid}: {len(fa)} findings in the first file, {len(fb)} in the second")
        if len(fb) == 0:
            continue
        pa, pb = fa[COORDS].to_numpy(np.float64), fb[COORDS].to_numpy(np.float64)
        dist, nearest = cKDTree(pb).query(pa)
        back = cKDTree(pa).query(pb)[1]
        mutual = back[nearest] == np.arange(len(fa))
        if not mutual.all():
            problems.append(f"{uid}: {int((~mutual).sum())} findings are not paired one-to-one")
        pair = pd.concat([fa.reset_index(drop=True).add_suffix("_a"), fb.iloc[nearest].reset_index(drop=True).add_suffix("_b")], axis=1)
        pair["seriesuid"] = uid
        pair["distance_mm"] = dist
        rows.append(pair)
    for uid, fb in groups_b.items():
        problems.append(f"{uid}: {len(fb)} findings only in the second file")
    return (pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()), problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("first", help="predictions CSV (seriesuid,coordX,coordY,coordZ,probability[,...])")
    parser.add_argument("second", help="predictions CSV to compare with the first")
    parser.add_argument("--position-tol", type=float, default=1e-3, help="largest allowed position difference, mm")
    parser.add_argument("--probability-tol", type=float, default=1e-4, help="largest allowed probability difference")
    parser.add_argument("--show", type=int, default=5, help="pairs with the largest differences to print")
    args = parser.parse_args(argv)
    a = pd.read_csv(args.first, dtype={"seriesuid": str})
    b = pd.read_csv(args.second, dtype={"seriesuid": str})
    pairs, problems = pair_findings(a, b)
    print(f"{args.first}: {len(a)} findings in {a['seriesuid'].nunique()} scans; {args.second}: {len(b)} in {b['seriesuid'].nunique()}")
    ok = not problems
    for line in problems:
        print(f"  problem: {line}")
    if len(pairs):
        pairs["probability_diff"] = (pairs["probability_a"] - pairs["probability_b"]).abs()
        print(f"largest position difference {pairs['distance_mm'].max():.3g} mm (tolerance {args.position_tol:g})")
        print(f"largest probability difference {pairs['probability_diff'].max():.3g} (tolerance {args.probability_tol:g})")
        shared = [c for c in a.columns if c in b.columns and c not in ("seriesuid", *COORDS, "probability")
                  and pd.api.types.is_numeric_dtype(a[c]) and pd.api.types.is_numeric_dtype(b[c])]
        for column in shared:
            diff = (pairs[f"{column}_a"] - pairs[f"{column}_b"]).abs()
            print(f"largest {column} difference {diff.max():.3g}")
        ok &= bool(pairs["distance_mm"].max() <= args.position_tol and pairs["probability_diff"].max() <= args.probability_tol)
        for key, unit in (("distance_mm", " mm"), ("probability_diff", "")):
            print(f"pairs with the largest {key}:")
            for _, r in pairs.nlargest(args.show, key).iterrows():
                print(f"  {r['seriesuid'][-12:]} ({r['coordX_a']:.3f}, {r['coordY_a']:.3f}, {r['coordZ_a']:.3f}) p {r['probability_a']:.6f} "
                      f"vs p {r['probability_b']:.6f}: {r[key]:.3g}{unit}")
    print("SAME findings within the tolerances" if ok else "DIFFERENT findings")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
