"""Write a whole synthetic data set in LUNA16's layout: ``subsetK/<seriesuid>.mhd/.raw`` and the three CSVs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from monai_lung.io import ANNOTATION_COLUMNS, CANDIDATE_COLUMNS, write_csv_atomic, write_image_atomic
from monai_lung.synthetic.geometry import random_seriesuid
from monai_lung.synthetic.scan import generate_scan
from monai_lung.transforms.thick_slices import thick_slice_image


#: with a nodule mix other than ``luna16``: each annotated nodule's kind (world LPS mm, as annotations.csv)
KINDS_CSV = "nodule_kinds.csv"
KINDS_COLUMNS = ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm", "kind", "solid_diameter_mm", "calcification"]


def _rows(uid: str, items: list[dict], last: str) -> list[list]:
    return [[uid, *(float(v) for v in it["coord_xyz"]), it[last]] for it in items]


#: ``masses.csv``: each mass's centroid (world LPS mm) and drawn sizes (see :func:`generate_dataset`)
MASS_COLUMNS = ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm", "volume_mm3", "location", "drawn_diameter_mm"]


def _mass_label_image(scan) -> sitk.Image:
    """uint8 (z, y, x) labels of a scan's masses (mass n is n, in the order of ``scan.masses``) on its drawing grid."""
    labels = np.zeros(sitk.GetArrayViewFromImage(scan.image).shape, dtype=np.uint8)
    for n, m in enumerate(scan.masses, start=1):
        labels[m["box"]][m["mask"]] = n
    out = sitk.GetImageFromArray(labels)
    out.CopyInformation(scan.image)
    return out


def generate_dataset(
    out_dir: str | os.PathLike,
    num_scans: int = 10,
    seed: int = 0,
    size: int = 512,
    num_subsets: int = 10,
    progress: bool = False,
    nodule_mix: str = "luna16",
    masses=(),
    slice_spacing_mm: float | None = None,
    slice_thickness_mm: float | None = None,
) -> dict:
    """Generate ``num_scans`` synthetic scans into ``out_dir`` in the LUNA16 layout.

    Writes ``out_dir/subsetK/<seriesuid>.mhd`` + ``.raw`` (scan ``i`` in subset ``i % num_subsets``),
    ``annotations.csv`` (nodules >= 3 mm), ``annotations_excluded.csv`` (findings < 3 mm) and ``candidates.csv``
    (nodules as class 1, vessel / lung / chest-wall points as class 0), and with another ``nodule_mix`` than
    ``luna16`` :data:`KINDS_CSV` (each nodule's kind); every file is written atomically.

    Scan ``i`` is drawn from child ``i`` of ``numpy.random.SeedSequence(seed)``, so it does not depend on
    ``num_scans``, and the same ``seed`` gives byte-identical files. Files of other scans already in
    ``out_dir`` are left alone (the CSVs list only this run's scans). ``nodule_mix`` is opt-in (see
    :func:`~monai_lung.synthetic.scan.generate_scan`): the default ``"luna16"`` writes exactly the files it wrote
    before the ``"screening"`` mix existed, which a test pins.

    Opt-in (the defaults write the scans above unchanged):

    - ``masses``: kinds of lung masses per scan, e.g. ``("central", "peripheral")`` (:mod:`.masses`), drawn with
      their own generator (child 2 of the scan's seed), so the chest is the same as without them. They are
      lesions to find: rows in ``annotations.csv`` (equivalent-sphere diameter) and ``candidates.csv`` (class 1),
      their drawn sizes in ``masses.csv`` (``seriesuid, coordX, coordY, coordZ, diameter_mm, volume_mm3,
      location, drawn_diameter_mm``) and their voxels in ``masses/<seriesuid>.mha`` (mass n labelled n, on the
      drawing grid).
    - ``slice_spacing_mm``: draw on this slice grid instead of a random one;
    - ``slice_thickness_mm``: then write the scan as a reconstruction of this thickness (slab averages of the drawn
      slices, :func:`~monai_lung.transforms.thick_slices.thick_slice_image`): with ``slice_spacing_mm`` 1 and a
      thickness of 5, the same chests as the 1 mm set, in 5 mm slices.

    Returns:
        ``{"num_scans", "num_nodules", "num_excluded", "num_candidates", "scans": [{"seriesuid", "path",
        "shape_zyx", "spacing_xyz", "origin_xyz", "num_nodules"}]}`` (JSON-serialisable; spacing and origin
        are (x, y, z) mm, world LPS).
    """
    if num_scans < 0:
        raise ValueError(f"num_scans must be >= 0, got {num_scans}")
    if num_subsets < 1:
        raise ValueError(f"num_subsets must be >= 1, got {num_subsets}")
    out = Path(out_dir)
    for k in range(num_subsets):  # all subset folders exist, like LUNA16's ten, even if some stay empty
        (out / f"subset{k}").mkdir(parents=True, exist_ok=True)
    children = np.random.SeedSequence(seed).spawn(num_scans)

    bar = None
    if progress:
        try:
            from tqdm import tqdm

            bar = tqdm(total=num_scans, desc="synthetic scans", unit="scan", file=sys.stderr)
        except ImportError:  # tqdm is a dependency, but a plain line per scan will do without it
            bar = None

    ann, exc, cand, kinds, scans, seen, mass_rows = [], [], [], [], [], set(), []
    for i, child in enumerate(children):
        uid_seq, scan_seq, mass_seq = child.spawn(3)  # the first two are what spawn(2) gives
        uid_rng = np.random.default_rng(uid_seq)
        uid = random_seriesuid(uid_rng)
        while uid in seen:  # 30 random digits practically never collide; stay deterministic if they do
            uid = random_seriesuid(uid_rng)
        seen.add(uid)
        scan = generate_scan(np.random.default_rng(scan_seq), size=size, seriesuid=uid, nodule_mix=nodule_mix,
                             slice_spacing_mm=slice_spacing_mm, masses=tuple(masses), mass_rng=np.random.default_rng(mass_seq))
        path = out / f"subset{i % num_subsets}" / f"{uid}.mhd"
        img = scan.image if slice_thickness_mm is None else thick_slice_image(scan.image, slice_thickness_mm)
        write_image_atomic(path, img)
        ann += _rows(uid, scan.nodules + scan.masses, "diameter_mm")
        exc += _rows(uid, scan.excluded, "diameter_mm")
        cand += _rows(uid, scan.candidates, "class") + [[uid, *m["coord_xyz"], 1] for m in scan.masses]
        kinds += [[uid, *(float(v) for v in nd["coord_xyz"]), nd["diameter_mm"], nd["kind"], nd.get("solid_diameter_mm", ""),
                   nd.get("calcification", "")] for nd in scan.nodules]
        if masses:
            mass_rows += [[uid, *m["coord_xyz"], m["diameter_mm"], m["volume_mm3"], m["location"], m["drawn_diameter_mm"]] for m in scan.masses]
            write_image_atomic(out / "masses" / f"{uid}.mha", _mass_label_image(scan))
        scans.append({
            "seriesuid": uid,
            "path": str(path),
            "shape_zyx": [int(v) for v in img.GetSize()[::-1]],
            "spacing_xyz": [float(v) for v in img.GetSpacing()],
            "origin_xyz": [float(v) for v in img.GetOrigin()],
            "num_nodules": len(scan.nodules),
            **({"num_masses": len(scan.masses)} if masses else {}),
        })
        del scan, img
        if bar is not None:
            bar.update(1)
        elif progress:
            print(f"[{i + 1}/{num_scans}] {path} ({scans[-1]['num_nodules']} nodules)", file=sys.stderr, flush=True)
    if bar is not None:
        bar.close()

    ann_df = pd.DataFrame(ann, columns=ANNOTATION_COLUMNS)
    exc_df = pd.DataFrame(exc, columns=ANNOTATION_COLUMNS)
    cand_df = pd.DataFrame(cand, columns=CANDIDATE_COLUMNS).astype({"class": "int64"})
    write_csv_atomic(out / "annotations.csv", ann_df)
    write_csv_atomic(out / "annotations_excluded.csv", exc_df)
    write_csv_atomic(out / "candidates.csv", cand_df)
    if nodule_mix != "luna16":  # the default mix writes LUNA16's files only
        write_csv_atomic(out / KINDS_CSV, pd.DataFrame(kinds, columns=KINDS_COLUMNS))
    if masses:
        write_csv_atomic(out / "masses.csv", pd.DataFrame(mass_rows, columns=MASS_COLUMNS))
    return {
        "num_scans": num_scans,
        "num_nodules": len(ann),
        "num_excluded": len(exc),
        "num_candidates": len(cand),
        "scans": scans,
    }
