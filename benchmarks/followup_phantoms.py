"""Follow-up on phantom pairs: match rate, volume-change and VDT error, status and type accuracy, repeatability.

Pairs come from :mod:`monai_lung.synthetic.followup` (one patient re-posed by 2-6 degrees and 1-3 cm, re-sliced at
another slice step, re-noised; nodules stable, grown, shrunk, resolved, new), written once to ``--pairs-dir``.
Each pair goes through ``monai-lung followup``'s pipeline (:func:`monai_lung.clinical.followup.run_followup`) with the
detection bundle, or with ``--oracle`` with the truth's centres and diameters as findings (probability 1, no masks:
registration, matching, measurement and the rules alone).

Figures (over the truth nodules, world mm):
- match rate: nodules in both scans whose prior and current findings are paired with each other;
- status accuracy: reported nodules (a finding within half a diameter, at least 5 mm, of a truth nodule) whose
  status is the truth's; false rows: reported nodules that match no truth nodule;
- volume change error: |measured - true| percentage points, for correctly paired nodules; VDT error: |measured /
  true - 1| for grown and shrunk ones;
- type accuracy: reported nodules' type against the drawn kind;
- repeatability: the measured volume change of stable nodules (mean, SD, 95 % limits of agreement).

    python benchmarks/followup_phantoms.py --pairs-dir /tmp/pairs --num-pairs 20 [--det-bundle B | --oracle] [--threshold T]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time
from pathlib import Path

import numpy as np

from monai_lung.clinical.followup import ScanInput, run_followup
from monai_lung.clinical.detections import Detections, GivenFindings, scan_identity
from monai_lung.synthetic.followup import generate_pairs


def oracle(truth: dict, prior: ScanInput, current: ScanInput) -> GivenFindings:
    """Findings from a pair's truth: each nodule present in a scan, probability 1, no mask."""
    def found(label):
        return [{"coord": nd[label]["coord"], "probability": 1.0, "diameter_mm": nd[label]["diameter_mm"],
                 "volume_mm3": nd[label]["volume_mm3"]} for nd in truth["nodules"] if nd[label] is not None]

    return GivenFindings({prior.identity: found("prior"), current.identity: found("current")})


def _near(row_xyz, truth_side, tolerance=5.0) -> bool:
    if truth_side is None or row_xyz is None or any(v is None for v in row_xyz):
        return False
    return float(np.linalg.norm(np.asarray(row_xyz, float) - np.asarray(truth_side["coord"], float))) <= max(tolerance, 0.5 * truth_side["diameter_mm"])


def evaluate(rows: list[dict], truth: dict) -> dict:
    days = truth["interval_days"]
    out = {"matched": 0, "matchable": 0, "status_right": 0, "reported": 0, "type_right": 0, "false_rows": 0,
           "vol_err": [], "vdt_err": [], "stable_change": [], "by_status": {}}
    used = set()
    for nd in truth["nodules"]:
        both = nd["prior"] is not None and nd["current"] is not None
        out["matchable"] += both
        hit = None
        for n, r in enumerate(rows):
            p_ok = _near([r["prior_x"], r["prior_y"], r["prior_z"]], nd["prior"])
            c_ok = _near([r["current_x"], r["current_y"], r["current_z"]], nd["current"])
            if (p_ok or c_ok) and n not in used:
                hit = (n, r, p_ok and c_ok)
                break
        stats = out["by_status"].setdefault(nd["status"], {"n": 0, "reported": 0, "status_right": 0})
        stats["n"] += 1
        if hit is None:
            continue
        n, r, paired = hit
        used.add(n)
        out["reported"] += 1
        stats["reported"] += 1
        out["status_right"] += r["status"] == nd["status"]
        stats["status_right"] += r["status"] == nd["status"]
        truth_type = (nd["current"] or nd["prior"])["type"]
        out["type_right"] += r["type"] == truth_type
        if both and paired:
            out["matched"] += 1
            true_change = 100.0 * (nd["current"]["volume_mm3"] / nd["prior"]["volume_mm3"] - 1.0)
            if r["volume_change_pct"] is not None:
                out["vol_err"].append(abs(r["volume_change_pct"] - true_change))
                if nd["status"] == "stable":
                    out["stable_change"].append((nd["prior"]["diameter_mm"], r["volume_change_pct"]))
            if nd["status"] in ("grown", "shrunk") and r["vdt_days"] is not None:
                true_vdt = days * np.log(2.0) / np.log(nd["current"]["volume_mm3"] / nd["prior"]["volume_mm3"])
                out["vdt_err"].append(abs(r["vdt_days"] / true_vdt - 1.0))
    out["false_rows"] = len(rows) - len(used)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs-dir", type=Path, required=True)
    ap.add_argument("--num-pairs", type=int, default=20)
    ap.add_argument("--seed", type=int, default=44)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--det-bundle", type=Path)
    ap.add_argument("--oracle", action="store_true", help="truth centres and diameters as findings (no detector)")
    ap.add_argument("--threshold", type=float, default=None, help="default: followup's DEFAULT_THRESHOLD")
    ap.add_argument("--out", type=Path, default=None, help="followup outputs per pair (default: PAIRS_DIR/<mode>)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()
    from monai_lung.bundle_args import parse_overrides
    from monai_lung.clinical.followup import DEFAULT_THRESHOLD

    if bool(args.det_bundle) == bool(args.oracle):
        ap.error("give --det-bundle or --oracle")
    folders = sorted(p for p in args.pairs_dir.glob("pair_*") if (p / "truth.json").is_file())
    if len(folders) < args.num_pairs:
        print(f"generating {args.num_pairs} pairs (size {args.size}, seed {args.seed}) in {args.pairs_dir}", flush=True)
        folders = generate_pairs(args.pairs_dir, args.num_pairs, seed=args.seed, size=args.size, progress=True)
    folders = folders[: args.num_pairs]
    threshold = DEFAULT_THRESHOLD if args.threshold is None else args.threshold
    mode = "oracle" if args.oracle else "detector"
    out_root = args.out or args.pairs_dir / f"followup_{mode}"
    detector = None if args.oracle else Detections(args.det_bundle, out_root / "findings", "cpu", parse_overrides(args.set))
    total = {"matched": 0, "matchable": 0, "status_right": 0, "reported": 0, "type_right": 0, "false_rows": 0,
             "vol_err": [], "vdt_err": [], "stable_change": [], "by_status": {}, "times": []}
    for folder in folders:
        truth = json.loads((folder / "truth.json").read_text())
        prior = ScanInput("prior", str(folder / "prior.mhd"), str(folder / "prior.mhd"), dt.date.fromisoformat(truth["prior_date"]),
                          identity=scan_identity(folder / "prior.mhd"))
        current = ScanInput("current", str(folder / "current.mhd"), str(folder / "current.mhd"), dt.date.fromisoformat(truth["current_date"]),
                            identity=scan_identity(folder / "current.mhd"))
        dets = oracle(truth, prior, current) if args.oracle else detector
        t = time.perf_counter()
        result = run_followup(prior, current, dets, out_root / folder.name, threshold=threshold, report=False)
        got = evaluate(result["rows"], truth)
        total["times"].append(time.perf_counter() - t)
        for k in ("matched", "matchable", "status_right", "reported", "type_right", "false_rows"):
            total[k] += got[k]
        for k in ("vol_err", "vdt_err", "stable_change"):
            total[k] += got[k]
        for s, v in got["by_status"].items():
            acc = total["by_status"].setdefault(s, {"n": 0, "reported": 0, "status_right": 0})
            for k in acc:
                acc[k] += v[k]
        print(f"{folder.name}: {len(truth['nodules'])} truth nodules, {len(result['rows'])} rows, matched {got['matched']}/{got['matchable']}, "
              f"status {got['status_right']}/{got['reported']}, type {got['type_right']}/{got['reported']}, false rows {got['false_rows']}, "
              f"residual {result['registration']['residual_mm']} mm, {total['times'][-1]:.1f} s", flush=True)

    def pct(a, b):
        return f"{a}/{b} = {100.0 * a / max(b, 1):.1f} %"

    vol, vdt = np.asarray(total["vol_err"]), np.asarray(total["vdt_err"])
    change = np.asarray([c for _, c in total["stable_change"]])
    print(f"\n{mode}, {len(folders)} pairs, threshold {threshold}:")
    print(f"match rate (nodules in both scans paired): {pct(total['matched'], total['matchable'])}")
    print(f"status accuracy (reported truth nodules): {pct(total['status_right'], total['reported'])}")
    for s, v in sorted(total["by_status"].items()):
        print(f"  {s:9s} truth {v['n']:3d}, reported {v['reported']:3d}, status right {v['status_right']:3d}")
    print(f"type accuracy: {pct(total['type_right'], total['reported'])}; false rows: {total['false_rows']} "
          f"({total['false_rows'] / max(len(folders), 1):.2f} per pair)")
    if vol.size:
        print(f"volume change error (percentage points): median {np.median(vol):.1f}, mean {vol.mean():.1f}, 90th pct {np.percentile(vol, 90):.1f} (n={vol.size})")
    if vdt.size:
        print(f"VDT relative error: median {100 * np.median(vdt):.1f} %, mean {100 * vdt.mean():.1f} % (n={vdt.size}, grown and shrunk)")
    if change.size:
        print(f"stable nodules' measured volume change: median |change| {np.median(np.abs(change)):.1f} %, mean {change.mean():+.1f} %, "
              f"SD {change.std(ddof=1) if change.size > 1 else 0:.1f} %, 2.5-97.5th percentiles {np.percentile(change, 2.5):+.1f} / "
              f"{np.percentile(change, 97.5):+.1f} % (n={change.size})")
    print(f"time per pair: median {np.median(total['times']):.1f} s")


if __name__ == "__main__":
    main()
