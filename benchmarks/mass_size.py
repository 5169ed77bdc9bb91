"""Lung mass size error: masses of 3-8 cm, central and peripheral, sized from their own segmentation
(:mod:`monai_lung.detection.masses`).

    python benchmarks/mass_size.py --work-dir W                       # block phantoms + 6 chests with 2 masses each
    python benchmarks/mass_size.py --work-dir W --det-bundle B        # also: found by the detector? at which rank?

Block phantoms (:func:`monai_lung.synthetic.size_phantom.mass_phantom`, 30-80 mm, against a chest wall or a
mediastinum with a large vessel, vessels running through the mass): the lesion from a 16 mm stage-1-like component
at the mass's centre, with a lung region that holds the mass and with one that lost it (aerated lung only).

Chests (``monai-lung synth --masses central peripheral``, 512x512, written once into ``W/chests_with_masses_<seed>``
and reused): each mass's lesion on the detector's stage-1 grid (0.75 mm), inside the detector's lung region (the lung
mask that keeps lesions), from a 16 mm component at the drawn mass's centroid; with ``--det-bundle``, also the detector's own
result: the best finding on the mass (within its equivalent radius of its centroid), its rank, kind and reported
size.
Truth: the drawn mass (its voxel shares' volume; the longest axial diameter of ``masses/<uid>.mha``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk


def block_phantoms() -> list[dict]:
    from monai_lung.detection.masses import measure_lesion
    from monai_lung.synthetic.size_phantom import MASS_PHANTOM_KINDS, mass_phantom

    rows = []
    for kind in MASS_PHANTOM_KINDS:
        for d in (30.0, 40.0, 50.0, 60.0, 70.0, 80.0):
            ph = mass_phantom(kind, d, rng=np.random.default_rng(int(d)))
            seed = _ball(ph["truth"] >= 0.5, ph["centre_ijk"], ph["affine"], 8.0)
            for region_name, region in (("lung with mass", ph["lung"]), ("aerated lung only", (ph["hu"] < -400) & ph["lung"])):
                out = measure_lesion(ph["hu"], region, seed, ph["affine"])
                rows.append({"phantom": f"block {kind}", "drawn_mm": d, "region": region_name, **_errors(out, ph["volume_mm3"], d)})
    return rows


def _ball(inside: np.ndarray, centre_ijk, affine, radius_mm: float) -> np.ndarray:
    spacing = np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)
    ii = np.indices(inside.shape, sparse=True)
    return (sum(((ii[a] - centre_ijk[a]) * spacing[a]) ** 2 for a in range(3)) <= radius_mm**2) & inside


def _errors(out: dict | None, volume: float, axial: float) -> dict:
    if out is None:
        return {"mass": False, "volume_err_pct": np.nan, "axial_err_mm": np.nan}
    return {"mass": True, "volume_err_pct": 100.0 * (out["volume_mm3"] / volume - 1.0), "axial_err_mm": out["longest_axial_mm"] - axial}


def chest_phantoms(work: Path, count: int, seed: int, det_bundle: Path | None) -> list[dict]:
    from monai_lung.detection.detector import DetectorConfig
    from monai_lung.detection.masses import measure_lesion
    from monai_lung.transforms.zoom import zoom_to_spacing
    from monai_lung.detection.sizing import measure_mask
    from monai_lung.io.coords import voxel_spacing, world_to_index
    from monai_lung.synthetic import generate_dataset
    from monai_lung.transforms import ct_preprocessing, lung_masks

    folder = work / f"chests_with_masses_{seed}"
    if not (folder / "masses.csv").is_file():
        t = time.perf_counter()
        generate_dataset(folder, num_scans=count, seed=seed, num_subsets=1, masses=("central", "peripheral"))
        print(f"wrote {count} chests with masses to {folder} in {time.perf_counter() - t:.0f} s", flush=True)
    masses = pd.read_csv(folder / "masses.csv")
    detector = None
    cfg = DetectorConfig()
    if det_bundle is not None:
        from monai_lung.detection.loading import load_detector

        detector, _ = load_detector(det_bundle, device="cpu")
        cfg = detector.config
    preprocess = ct_preprocessing()
    lo_hu, hi_hu = cfg.hu_window
    rows = []
    for uid, group in masses.groupby("seriesuid", sort=False):
        image = preprocess({"image": str(folder / "subset0" / f"{uid}.mhd")})["image"]
        grid = zoom_to_spacing(image, cfg.seg_spacing)
        affine = grid.affine.numpy()
        hu = lo_hu + (hi_hu - lo_hu) * grid[0].numpy()
        region = lung_masks(grid, voxel_spacing(grid), (0.0,), hu_window=cfg.hu_window)[0]
        labels_img = sitk.ReadImage(str(folder / "masses" / f"{uid}.mha"))
        labels = sitk.GetArrayFromImage(labels_img).transpose(2, 1, 0)  # (x, y, z) = SimpleITK index order
        label_affine = np.eye(4)
        label_affine[:3, :3] = np.asarray(labels_img.GetDirection()).reshape(3, 3) @ np.diag(labels_img.GetSpacing())
        label_affine[:3, 3] = labels_img.GetOrigin()
        found = detector.detect(image).findings if detector is not None else None
        for n, m in enumerate(group.itertuples(index=False), start=1):
            truth_axial = measure_mask(labels == n, label_affine)["longest_axial_mm"]
            centre = world_to_index(np.array([m.coordX, m.coordY, m.coordZ]), affine, space="RAS", points_space="LPS")
            seed_mask = _ball(hu >= -400, centre, affine, 8.0)
            t = time.perf_counter()
            out = measure_lesion(hu, region, seed_mask, affine)
            row = {"phantom": f"chest {m.location}", "drawn_mm": m.drawn_diameter_mm, "region": "detector's lung mask",
                   **_errors(out, m.volume_mm3, truth_axial), "seconds": time.perf_counter() - t}
            if found is not None:
                row.update(_detected(found, m, truth_axial))
            rows.append(row)
        print(f"{uid}: {len(group)} masses", flush=True)
    return rows


def _detected(found: list, m, truth_axial: float) -> dict:
    """The best finding within the mass's equivalent radius of its centroid (``monai-lung detect``'s findings): its
    rank, kind and the size the detector reports."""
    if not found:
        return {"rank": np.nan}
    d = np.linalg.norm(np.array([f.coord for f in found]) - np.array([m.coordX, m.coordY, m.coordZ]), axis=1)
    hits = np.flatnonzero(d <= 0.5 * m.diameter_mm)
    if hits.size == 0:
        return {"rank": np.nan}
    best = found[int(hits[0])]
    return {"rank": int(hits[0]) + 1, "probability": best.probability, "kind": best.kind,
            "detector_volume_err_pct": 100.0 * (best.volume_mm3 / m.volume_mm3 - 1.0),
            "detector_axial_err_mm": best.longest_axial_mm - truth_axial}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work-dir", type=Path, required=True)
    p.add_argument("--chests", type=int, default=6, help="512x512 phantoms with a central and a peripheral mass each")
    p.add_argument("--seed", type=int, default=31)
    p.add_argument("--det-bundle", type=Path, help="also run the detector on the chests")
    args = p.parse_args()
    rows = block_phantoms() + (chest_phantoms(args.work_dir, args.chests, args.seed, args.det_bundle) if args.chests else [])
    table = pd.DataFrame(rows)
    pd.set_option("display.width", 220)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.1f}"))
    for (phantom, region), g in table.groupby(["phantom", "region"], sort=False):
        err = g["volume_err_pct"].abs()
        print(f"{phantom:18s} {region:22s} typed mass {int(g['mass'].sum())}/{len(g)}, |volume error| mean {err.mean():.1f}% "
              f"max {err.max():.1f}%, within 15% {int((err <= 15).sum())}/{len(g)}")
        if "rank" in g and phantom.startswith("chest"):  # the detector runs on the chests only
            det = g["detector_volume_err_pct"].abs() if "detector_volume_err_pct" in g else pd.Series(dtype=float)
            print(f"{'':18s} {'detector':22s} found {int(g['rank'].notna().sum())}/{len(g)} (ranks {g['rank'].tolist()}), "
                  f"reported as mass {int((g.get('kind') == 'mass').sum())}, |volume error| mean {det.mean():.1f}% max {det.max():.1f}%, "
                  f"within 15% {int((det <= 15).sum())}/{len(g)}")


if __name__ == "__main__":
    main()
