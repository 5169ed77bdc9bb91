"""Stage-2 scoring: the nodule probability of world points in a preprocessed scan, from crops around them
(:func:`score_points`: the detector's stage 2), and of a CSV of points over their scans (:func:`score_points_csv`:
the classification bundle's inference and ``monai-lung score``)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from monai_lung.bundle_args import flag
from monai_lung.datalist import entry_seriesuid, read_datalist
from monai_lung.io import DataError, find_scans, world_to_index
from monai_lung.io.luna16_csv import PREDICTION_COLUMNS, read_points, write_luna_csv
from monai_lung.transforms.crops import extract_crops
from monai_lung.transforms.preprocessing import ct_preprocessing

logger = logging.getLogger(__name__)


def _probabilities(logits: torch.Tensor) -> torch.Tensor:
    logits = logits.float()
    if logits.ndim == 1 or logits.shape[1] == 1:
        return torch.sigmoid(logits.reshape(-1))  # one-logit networks
    return torch.softmax(logits, dim=1)[:, 1]


@torch.no_grad()
def score_points(
    network: torch.nn.Module,
    image,
    points_lps: np.ndarray,
    batch_size: int = 64,
    device: torch.device | str | None = None,
    amp: bool = True,
    tta: bool = False,
    crop_size: Sequence[int] = (32, 32, 32),
    points_space: str = "LPS",
) -> np.ndarray:
    """Nodule probability of each point.

    Args:
        network: stage-2 classifier taking (B, 1, *crop_size) crops, returning (B, 2) logits (class 1 =
            nodule) or (B, 1) logits; set to eval mode here.
        image: (1, i, j, k) preprocessed scan (MetaTensor from the shared CT preprocessing: 1 mm grid,
            scaled to [0, 1]; its ``affine`` maps voxel index to world mm in ``meta["space"]``, RAS by default).
        points_lps: (N, 3) world (x, y, z) mm in ``points_space`` (LUNA16 CSVs: LPS).
        batch_size: crops per forward pass (crops are cut batch by batch, memory stays bounded).
        device: where the network runs (default: where its parameters are).
        amp: float16 autocast on CUDA (ignored on CPU).
        tta: average over the identity and a flip of each spatial axis (4 passes).
        crop_size: crop edge (i, j, k) in voxels; the point sits at voxel ``crop_size // 2``, crops are
            padded with 0 (air) beyond the scan border.

    Returns:
        (N,) float64 probabilities in [0, 1], in the order of ``points_lps``.
    """
    points = np.asarray(points_lps, dtype=np.float64).reshape(-1, 3)
    if len(points) == 0:
        return np.zeros(0, dtype=np.float64)
    if device is None:
        param = next(network.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    device = torch.device(device)
    network.eval()
    affine = image.affine.numpy() if hasattr(image, "affine") else np.eye(4)
    space = str(image.meta.get("space", "RAS")) if hasattr(image, "meta") else "RAS"
    idx = np.atleast_2d(world_to_index(points, affine, space=space, points_space=points_space))
    vol = image.as_tensor() if hasattr(image, "as_tensor") else torch.as_tensor(image)
    flips = [None, (2,), (3,), (4,)] if tta else [None]
    out = np.zeros(len(points), dtype=np.float64)
    use_amp = amp and device.type == "cuda"
    for start in range(0, len(points), batch_size):
        crops = extract_crops(vol, idx[start : start + batch_size], tuple(crop_size), pad_value=0.0).float().to(device)
        prob = torch.zeros(len(crops), device=device)
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
            for dims in flips:
                x = crops if dims is None else torch.flip(crops, dims)
                prob += _probabilities(network(x))
        out[start : start + len(crops)] = (prob / len(flips)).cpu().numpy()
    return out


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
