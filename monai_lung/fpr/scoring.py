"""Stage-2 scoring of a CSV of world points over their scans (the classification bundle's inference); the per-scan
scoring itself is :func:`monai_lung.detection.scoring.score_points`."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from monai_lung.bundle_args import flag
from monai_lung.detection.scoring import score_points
from monai_lung.datalist import entry_seriesuid, read_datalist
from monai_lung.io import DataError, find_scans
from monai_lung.io.luna16_csv import PREDICTION_COLUMNS, read_points, write_luna_csv
from monai_lung.transforms.preprocessing import ct_preprocessing

logger = logging.getLogger(__name__)


def find_scan_paths(
    dataset_dir: str | os.PathLike | None = None,
    data_list_file_path: str | os.PathLike | None = None,
    keys: Sequence[str] | None = None,
) -> dict[str, Path]:
    """Map seriesuid -> scan path.

    With ``data_list_file_path``: the entries of its ``keys`` lists (all lists when None), image paths
    relative to ``dataset_dir`` (default: the JSON's folder). Without: every scan under ``dataset_dir``
    (LUNA16 ``subsetK/<uid>.mhd`` layout, see :func:`monai_lung.io.find_scans`).
    """
    if data_list_file_path:
        path = Path(data_list_file_path)
        lists = read_datalist(path)
        base = Path(dataset_dir) if dataset_dir else path.parent
        names = list(keys) if keys else [k for k, v in lists.items() if isinstance(v, list)]
        out: dict[str, Path] = {}
        for name in names:
            for entry in lists.get(name, []):
                if isinstance(entry, dict) and "image" in entry:
                    image = Path(entry["image"])
                    out[entry_seriesuid(entry)] = image if image.is_absolute() else base / image
        return out
    if not dataset_dir:
        raise DataError(None, "scoring needs a dataset_dir or a data list to find the scans")
    return {uid: path for uid, (_, path) in find_scans(dataset_dir).items()}


def score_points_csv(
    network: torch.nn.Module,
    points_csv: str | os.PathLike,
    output_csv: str | os.PathLike,
    scans: dict[str, str | os.PathLike],
    preprocessing: Callable | None = None,
    batch_size: int = 64,
    device: torch.device | str | None = None,
    amp: bool = True,
    tta: bool = False,
    crop_size: Sequence[int] = (32, 32, 32),
    log: Callable[[str], None] | None = None,
) -> pd.DataFrame:
    """Score a CSV of candidate points and write ``seriesuid,coordX,coordY,coordZ,probability`` atomically.

    Args:
        points_csv: ``seriesuid,coordX,coordY,coordZ`` (world LPS mm; extra columns are ignored).
        output_csv: one row per input row, in the input order.
        scans: seriesuid -> scan path (see :func:`find_scan_paths`); a seriesuid without a scan is an error.
        preprocessing: dict transform ``{"image": path} -> {"image": (1, i, j, k) MetaTensor}``; default
            :func:`~monai_lung.transforms.ct_preprocessing` (the bundle passes its own, identical chain).
        Others: as :func:`score_points`.

    Returns:
        The written DataFrame.
    """
    log = log or logger.info
    amp, tta = flag(amp, "amp"), flag(tta, "tta")  # bundle overrides may be the strings "true"/"false"
    points = read_points(points_csv)
    missing = sorted(set(points["seriesuid"]) - set(scans))
    if missing:
        raise DataError(points_csv, f"{len(missing)} seriesuid(s) have no scan, first {missing[0]}")
    preprocessing = preprocessing or ct_preprocessing("image")
    prob = np.full(len(points), np.nan)
    groups = points.groupby("seriesuid", sort=False).indices
    for n, (uid, rows) in enumerate(groups.items(), start=1):
        image = preprocessing({"image": str(scans[uid])})["image"]
        xyz = points.loc[rows, ["coordX", "coordY", "coordZ"]].to_numpy()
        prob[rows] = score_points(network, image, xyz, batch_size=batch_size, device=device, amp=amp, tta=tta, crop_size=crop_size)
        log(f"[{n}/{len(groups)}] {uid}: {len(rows)} points scored")
    out = points[["seriesuid", "coordX", "coordY", "coordZ"]].copy()
    out["probability"] = prob
    write_luna_csv(output_csv, out, PREDICTION_COLUMNS)
    return out
