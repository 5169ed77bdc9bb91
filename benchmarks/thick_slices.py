"""Thick slices against thin ones, the same chests: CPM, false positives per scan at the nodules' ranks, candidates
per scan against the cap, and seconds per scan.

    python benchmarks/thick_slices.py --det-bundle B --work-dir W               # 10 phantoms + the real CT
    python benchmarks/thick_slices.py --det-bundle B --work-dir W --phantoms 20 --seed 4711 --thickness 3 --thickness 5
    python benchmarks/thick_slices.py --det-bundle B --work-dir W --tag after --set phantoms_5_mm --set real_5_mm
    python benchmarks/thick_slices.py --det-bundle B --work-dir W --tag after --no-detect   # the table of what is there

Sets (written once into ``W`` and reused):

- phantoms: ``--phantoms`` chests drawn on 1 mm slices (``monai-lung synth --slice-spacing 1``), and the same chests
  as ``--thickness`` mm reconstructions (slab averages of the 1 mm slices, ``--slice-thickness``);
- the real LIDC-IDRI-0001 chest CT of ``../shared/real_ct`` as it is (2.5 mm slices) and re-made at each thickness
  by averaging its slices (:func:`monai_lung.transforms.thick_slices.thick_slice_image`), its LUNA16 nodule the
  ground truth.

Every set runs as ``monai-lung detect`` runs it (one scan at a time, nothing read ahead, so the seconds are each
scan's own; its outputs go to ``<set>/detect/<tag>``, and an interrupted run goes on where it stopped, ``--fresh``
starts it again) and is scored with the LUNA16 FROC (``monai_lung.evaluation``). Printed per set: CPM and the sensitivity at
1/8 and 1 FP per scan; "FPs/scan at rank": for each nodule found, the false positives per scan of the whole set
scoring at least its probability (the FP rate a reader works at to see it), median and worst, and for the one real
nodule the false positives ranked above it; candidates per scan (mean, max) against ``max_candidates``; seconds per
scan (mean wall clock, and mean CPU seconds of the process: with ``OMP_NUM_THREADS=1`` the figure that other jobs on
a shared machine do not inflate), and for the phantoms the thick-slice time over the 1 mm time of the same chest.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

REAL = Path(__file__).resolve().parents[1] / ".." / "shared" / "real_ct"


def phantom_sets(work: Path, count: int, seed: int, thicknesses) -> dict[str, Path]:
    """``{"phantoms 1 mm": folder, "phantoms T mm": folder, ...}``: LUNA16-layout sets of the same chests."""
    from monai_lung.synthetic import generate_dataset

    sets = {}
    for thickness in [None, *thicknesses]:
        name = "phantoms 1 mm" if thickness is None else f"phantoms {thickness:g} mm"
        folder = work / name.replace(" ", "_")
        if not (folder / "annotations.csv").is_file():
            t = time.perf_counter()
            generate_dataset(folder, num_scans=count, seed=seed, num_subsets=1, slice_spacing_mm=1.0, slice_thickness_mm=thickness)
            print(f"wrote {name} to {folder} in {time.perf_counter() - t:.0f} s", flush=True)
        sets[name] = folder
    return sets


def real_sets(work: Path, thicknesses) -> dict[str, Path]:
    """The shared real CT as it is and re-made at each thickness (LUNA16 layout, its own annotations)."""
    from monai_lung.io import write_image_atomic
    from monai_lung.io.sitk_reader import read_sitk_image
    from monai_lung.transforms.thick_slices import thick_slice_image

    dicom = REAL / "LIDC-IDRI-0001" / "dicom"
    if not dicom.is_dir():
        print(f"real CT not found at {REAL} (../shared absent): phantoms only")
        return {}
    uid = pd.read_csv(REAL / "annotations.csv")["seriesuid"][0]
    image = None
    sets = {}
    for thickness in [None, *thicknesses]:
        name = "real 2.5 mm" if thickness is None else f"real {thickness:g} mm"
        folder = work / name.replace(" ", "_")
        path = folder / "subset0" / f"{uid}.mhd"
        if not path.is_file():
            image = read_sitk_image(dicom) if image is None else image
            write_image_atomic(path, image if thickness is None else thick_slice_image(image, thickness))
            for csv in ("annotations.csv", "annotations_excluded.csv"):
                (folder / csv).write_text((REAL / csv).read_text())
        sets[name] = folder
    return sets


def detect_set(detector, preprocess, folder: Path, run_dir: Path, limit: int | None = None) -> tuple[pd.DataFrame, list[dict]] | None:
    """Findings (LUNA16 rows) and per-scan results of the first ``limit`` scans in ``folder`` (``monai-lung detect``'s
    path), written to ``run_dir`` with each scan's CPU seconds (``cpu_seconds.json``: the process's CPU time, which a
    shared machine's other jobs do not inflate as they do the wall-clock ``timings_s``); without a detector only
    what ``run_dir`` holds of a finished run (``None`` if it is not finished)."""
    from monai_lung.detection.batch import items_from_paths, run_batch, scan_steps

    out = run_dir / "preds.csv"
    items = items_from_paths(sorted(folder.glob("subset*/*.mhd")))[:limit]
    if detector is not None:
        prepare, detect = scan_steps(detector, preprocess)
        cpu_file = run_dir / "cpu_seconds.json"
        cpu = json.loads(cpu_file.read_text()) if cpu_file.is_file() else {}

        def timed_prepare(item):
            cpu[item.seriesuid] = -time.process_time()
            return prepare(item)

        def timed_detect(item, prepared):
            result = detect(item, prepared)
            cpu[item.seriesuid] += time.process_time()
            cpu_file.write_text(json.dumps(cpu))  # before run_batch records the scan as done
            return result

        run_batch(timed_detect, items, out, progress=False, prepare=timed_prepare, prefetch=0)
    elif not out.is_file() or not all((out.parent / "preds_scans" / f"{item.seriesuid}.json").is_file() for item in items):
        return None
    results = [json.loads((out.parent / "preds_scans" / f"{item.seriesuid}.json").read_text()) for item in items]
    preds = pd.read_csv(out)
    return preds[preds["seriesuid"].isin([item.seriesuid for item in items])], results


def fps_at_nodules(result) -> np.ndarray:
    """For each nodule found: false positives per scan among the predictions scoring at least its best score."""
    preds = result.predictions
    fp_scores = np.sort(preds.loc[preds["outcome"] == "fp", "probability"].to_numpy())[::-1]
    found = result.nodules.loc[result.nodules["hit"], "best_score"].to_numpy()
    return np.array([np.count_nonzero(fp_scores >= s) for s in found], dtype=np.float64) / result.num_scans


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--det-bundle", type=Path, required=True, help="the trained two-stage detection bundle")
    p.add_argument("--work-dir", type=Path, required=True, help="the sets are written here once and reused")
    p.add_argument("--phantoms", type=int, default=10)
    p.add_argument("--seed", type=int, default=4711)
    p.add_argument("--thickness", type=float, action="append", help="thick-slice reconstructions to compare (default 5)")
    p.add_argument("--no-real", action="store_true")
    p.add_argument("--set", action="append", dest="sets", metavar="FOLDER",
                   help="detect only these sets, by folder name (phantoms_1_mm, phantoms_5_mm, real_2.5_mm, real_5_mm); default all")
    p.add_argument("--limit", type=int, help="only the first LIMIT scans of each set (sorted by name)")
    p.add_argument("--tag", help="name of this bundle's runs, <set>/detect/<tag> (default: the bundle's parent folder)")
    p.add_argument("--fresh", action="store_true", help="start this bundle's runs again rather than go on")
    p.add_argument("--no-detect", action="store_true", help="print the figures of the finished runs only")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args()
    thicknesses = args.thickness or [5.0]
    tag = args.tag or args.det_bundle.resolve().parent.name

    from monai_lung.detection.loading import load_detector
    from monai_lung.evaluation.froc import evaluate_froc
    from monai_lung.io.luna16_csv import read_annotations, read_excluded
    from monai_lung.transforms.preprocessing import ct_preprocessing

    args.work_dir.mkdir(parents=True, exist_ok=True)
    sets = phantom_sets(args.work_dir, args.phantoms, args.seed, thicknesses) if args.phantoms else {}
    if not args.no_real:
        sets.update(real_sets(args.work_dir, thicknesses))
    detector, prep = load_detector(args.det_bundle, device="cpu")
    preprocess = ct_preprocessing("image", spacing=prep["spacing"], hu_window=prep["hu_window"])
    cap = detector.config.max_candidates
    rows, seconds = [], {}
    for name, folder in sets.items():
        run_dir = folder / "detect" / tag
        run_it = not args.no_detect and (not args.sets or folder.name in args.sets)
        if run_it and args.fresh and run_dir.exists():  # the per-scan ledger would skip the scans done before
            for f in sorted(run_dir.rglob("*"), reverse=True):
                f.unlink() if f.is_file() else f.rmdir()
        done = detect_set(detector if run_it else None, preprocess, folder, run_dir, args.limit)
        if done is None:
            print(f"{name}: no finished run in {run_dir}", flush=True)
            continue
        preds, results = done
        uids = [r["seriesuid"] for r in results]
        result = evaluate_froc(read_annotations(folder / "annotations.csv"), read_excluded(folder / "annotations_excluded.csv"),
                               preds, uids, n_bootstrap=0)
        at_rank = fps_at_nodules(result)
        cands = np.array([r["num_candidates"] for r in results])
        secs = np.array([sum(v for k, v in r["timings_s"].items() if k != "report") for r in results])
        cpu_file = run_dir / "cpu_seconds.json"
        cpu = json.loads(cpu_file.read_text()) if cpu_file.is_file() else {}
        cpu_secs = np.array([cpu.get(u, np.nan) for u in uids])
        seconds[name] = dict(zip(uids, cpu_secs if np.isfinite(cpu_secs).all() else secs))
        rows.append({
            "set": name, "scans": len(uids), "nodules": result.num_nodules, "found": int(result.nodules["hit"].sum()),
            "cpm": result.cpm, "sens@1/8": result.sensitivities[0.125], "sens@1": result.sensitivities[1.0],
            "fps_at_rank_median": float(np.median(at_rank)) if at_rank.size else float("nan"),
            "fps_at_rank_max": float(at_rank.max()) if at_rank.size else float("nan"),
            "candidates_mean": float(cands.mean()), "candidates_max": int(cands.max()), "at_cap": int((cands >= cap).sum()),
            "seconds_mean": float(secs.mean()), "cpu_s_mean": float(cpu_secs.mean()),
        })
        print(f"{name}: done ({len(uids)} scans, {secs.sum():.0f} s)", flush=True)
    table = pd.DataFrame(rows)
    for thickness in thicknesses:
        thin, thick = seconds.get("phantoms 1 mm"), seconds.get(f"phantoms {thickness:g} mm")
        if thin and thick:
            ratio = np.array([thick[u] / thin[u] for u in thin if u in thick])
            print(f"phantoms {thickness:g} mm / 1 mm seconds per chest (CPU seconds where both runs have them, else wall): "
                  f"mean {ratio.mean():.2f}, max {ratio.max():.2f}, over {ratio.size} chests")
    pd.set_option("display.width", 200)
    print(f"\ndetector {args.det_bundle} (runs '{tag}'), max_candidates {cap}\n")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if args.json:
        args.json.write_text(table.to_json(orient="records", indent=1))


if __name__ == "__main__":
    main()
