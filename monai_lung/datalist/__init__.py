"""LUNA16 subsets -> cross-validation folds -> a MONAI Decathlon-style data list (JSON).

The JSON has ``training``, ``validation`` and ``test`` lists that ``monai.data.load_decathlon_datalist``
reads (pass ``base_dir=<data dir>``: image paths are relative to the data folder). Each entry::

    {"image": "subset3/<uid>.mhd", "seriesuid": "<uid>", "subset": 3,
     "nodules":  [{"center": [x, y, z], "diameter_mm": d}, ...],   # world LPS mm (LUNA16 convention)
     "excluded": [{"center": [x, y, z], "diameter_mm": d}, ...]}   # annotations_excluded.csv, if given

``monai-lung datalist --hard-negatives DIR`` also gives training and validation entries
``"hard_negatives": [{"center": [x, y, z]}, ...]`` (world LPS mm): the false-positive components that a
trained stage 1 found in that scan (``DIR/<seriesuid>.csv`` from ``monai-lung crops``, or the one CSV of
``monai-lung hard-negatives``), which stage-1 fine-tuning samples background patches around
(``NoduleSamplingIndicesd``).

Folds follow LUNA16's subsets: fold K tests on subset K, validates on the next subset present after K
(subset K+1 mod 10 on a full download), and trains on the rest. Scans outside ``subsetK`` folders
always train.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from monai_lung.io import (
    DataError,
    find_scans,
    read_annotations,
    read_excluded,
    read_image_header,
    read_mined_candidates,
    seriesuid_of,
    world_to_sitk_index,
    write_json_atomic,
)

NODULE_FORMAT = "center: world mm (x, y, z), ITK/LPS physical point as in LUNA16 CSVs; diameter_mm: mm"


def fold_subsets(subsets: list[int], fold: int) -> tuple[int | None, int | None]:
    """(test subset, validation subset) of ``fold`` among the ``subsets`` present.

    Validation is the next present subset after ``fold`` in cyclic order (``fold + 1 mod 10`` when all ten
    are present); None when only the test subset exists.
    """
    present = sorted(set(subsets))
    if fold not in present:
        raise DataError(None, f"fold {fold}: no folder subset{fold} (present: {', '.join(f'subset{s}' for s in present) or 'none'})")
    later = [s for s in present if s != fold]
    if not later:
        return fold, None
    val = min(later, key=lambda s: (s - fold) % 10)
    return fold, val


def _check_inside(path: Path, points: np.ndarray, source: str, uid: str) -> None:
    """Raise when a world LPS point (N, 3) mm lies outside the scan at ``path`` (header only, no voxels read)."""
    if len(points) == 0:
        return
    header = read_image_header(path)
    image = sitk.Image([1] * header.GetDimension(), sitk.sitkUInt8)
    image.SetOrigin(header.GetOrigin())
    image.SetSpacing(header.GetSpacing())
    image.SetDirection(header.GetDirection())
    idx = np.rint(np.atleast_2d(world_to_sitk_index(image, points)))
    size = np.asarray(header.GetSize())[:3]
    for point, index in zip(points, idx):
        if np.any(index < 0) or np.any(index >= size):
            raise DataError(
                source,
                f"nodule of {uid} at world ({point[0]:.1f}, {point[1]:.1f}, {point[2]:.1f}) mm lies outside its scan "
                f"{path.name} (voxel index {index.astype(int).tolist()}, size {size.tolist()})",
            )


def _findings(frame: pd.DataFrame | None, uid: str) -> list[dict]:
    if frame is None:
        return []
    rows = frame[frame["seriesuid"] == uid]
    return [
        {"center": [float(r.coordX), float(r.coordY), float(r.coordZ)], "diameter_mm": float(r.diameter_mm)}
        for r in rows.itertuples()
    ]


def build_datalist(
    data_dir: str | os.PathLike,
    annotations_csv: str | os.PathLike,
    excluded_csv: str | os.PathLike | None = None,
    fold: int = 0,
    allow_missing_scans: bool = False,
    check_inside: bool = True,
) -> dict:
    """Build the Decathlon-style dict for ``fold`` (see the module docstring for the entry format).

    Raises :class:`DataError` when an annotation names a seriesuid with no scan (unless
    ``allow_missing_scans``, for partial downloads) or a nodule centre lies outside its scan.
    """
    data_dir = Path(data_dir)
    scans = find_scans(data_dir)
    if not scans:
        raise DataError(data_dir, "no scans found (expected subset0..subset9/<seriesuid>.mhd)")
    annotations = read_annotations(annotations_csv)
    excluded = read_excluded(excluded_csv) if excluded_csv else None
    missing = sorted(set(annotations["seriesuid"]) - set(scans))
    if missing and not allow_missing_scans:
        raise DataError(
            annotations_csv,
            f"{len(missing)} seriesuid(s) have no scan under {data_dir}, first {missing[0]} "
            "(pass --allow-missing-scans for a partial download)",
        )
    subsets = [s for s, _ in scans.values() if s is not None]
    test_subset, val_subset = fold_subsets(subsets, fold) if subsets else (None, None)
    out = {
        "name": "LUNA16-layout lung nodule data list",
        "fold": fold,
        "test_subset": test_subset,
        "validation_subset": val_subset,
        "nodule_format": NODULE_FORMAT,
        "training": [],
        "validation": [],
        "test": [],
    }
    for uid, (subset, path) in sorted(scans.items(), key=lambda kv: (kv[1][0] is None, kv[1][0] or 0, kv[0])):
        nodules = _findings(annotations, uid)
        if check_inside:
            _check_inside(path, np.array([n["center"] for n in nodules]).reshape(-1, 3), str(annotations_csv), uid)
        entry = {
            "image": path.relative_to(data_dir).as_posix(),
            "seriesuid": uid,
            "subset": subset,
            "nodules": nodules,
            "excluded": _findings(excluded, uid),
        }
        key = "test" if subset is not None and subset == test_subset else (
            "validation" if subset is not None and subset == val_subset else "training"
        )
        out[key].append(entry)
    return out


def add_hard_negatives(
    datalist: dict,
    mined: str | os.PathLike,
    per_scan: int = 64,
    min_peak: float = 0.5,
    keys: tuple[str, ...] = ("training", "validation"),
) -> int:
    """Give the ``keys`` entries of ``datalist`` (in place) their stage-1 false positives.

    ``mined`` is a mined-candidate table (``seriesuid, coordX, coordY, coordZ`` world LPS mm,
    ``peak_prob``, ``label``: 0 a false positive, 1 a nodule, -1 an excluded finding), as
    ``monai-lung hard-negatives`` writes it, or a folder of them per scan (``<seriesuid>.csv``, the crop
    bank's ``hard_negatives/``). The ``per_scan`` false positives with the highest ``peak_prob`` (at least
    ``min_peak``) become the entry's ``hard_negatives``; a scan without mined rows gets none. Test entries
    are never touched. Returns the number of points added.
    """
    mined = Path(mined)
    if not mined.exists():
        raise DataError(mined, "mined hard negatives not found (run `monai-lung crops` or `monai-lung hard-negatives` first)")
    per_uid = dict(tuple(read_mined_candidates(mined).groupby("seriesuid"))) if mined.is_file() else None
    added = 0
    for key in keys:
        for entry in datalist.get(key, []):
            uid = str(entry["seriesuid"])
            if per_uid is not None and uid in per_uid:
                frame = per_uid[uid]
            elif per_uid is None and (mined / f"{uid}.csv").is_file():
                frame = read_mined_candidates(mined / f"{uid}.csv")
            else:
                continue
            fps = frame[(frame["label"] == 0) & (frame["peak_prob"] >= min_peak)]
            fps = fps.sort_values("peak_prob", ascending=False, kind="stable").head(per_scan)
            entry["hard_negatives"] = [
                {"center": [float(r.coordX), float(r.coordY), float(r.coordZ)]} for r in fps.itertuples()
            ]
            added += len(fps)
    return added


def write_datalist(output: str | os.PathLike, datalist: dict) -> None:
    """Write a data list JSON atomically."""
    write_json_atomic(output, datalist)


def read_datalist(datalist_file: str | os.PathLike) -> dict:
    """The data-list JSON object (lists such as ``training``, ``validation``, ``test`` of entries), checked to be one."""
    path = Path(datalist_file)
    if not path.is_file():
        raise DataError(path, "data list file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(path, f"data list is not readable JSON ({err})") from None
    if not isinstance(data, dict):
        raise DataError(path, "data list must be a JSON object with lists such as training/validation/test")
    return data


def entry_seriesuid(entry: dict) -> str:
    """A data-list entry's seriesuid: its ``seriesuid`` field, else its image's file name without the image suffix
    (``subset3/<uid>.mhd`` -> ``<uid>``)."""
    return str(entry.get("seriesuid") or seriesuid_of(entry["image"]))


def load_datalist_entries(datalist_file: str | os.PathLike, key: str, data_dir: str | os.PathLike | None = None) -> list[dict]:
    """Entries of list ``key`` with absolute image paths (``data_dir`` defaults to the JSON's folder)."""
    from monai.data import load_decathlon_datalist

    path = Path(datalist_file)
    if not path.is_file():
        raise DataError(path, "data list file not found")
    try:
        return load_decathlon_datalist(path, is_segmentation=False, data_list_key=key, base_dir=data_dir)
    except ValueError as err:
        raise DataError(path, str(err)) from None
