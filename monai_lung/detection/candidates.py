"""Stage-1 probability map -> candidate list (connected components with centre, size and scores)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import ndimage

from monai_lung.io.coords import index_to_world

CANDIDATE_FIELDS = [
    "coordX", "coordY", "coordZ",  # world LPS mm (LUNA16 convention)
    "index_i", "index_j", "index_k",  # continuous voxel index on the probability map's grid
    "diameter_mm", "volume_mm3", "peak_prob", "mean_prob", "num_voxels",
]


def extract_candidates(
    prob: np.ndarray,
    affine: np.ndarray,
    threshold: float = 0.5,
    min_voxels: int = 1,
    max_candidates: int | None = 200,
    space: str = "RAS",
    region: np.ndarray | None = None,
) -> pd.DataFrame:
    """Connected components of ``prob > threshold`` as candidates.

    Args:
        prob: (i, j, k) nodule probability on the grid of ``affine``.
        affine: 4x4 voxel -> world mm (``space``) affine of ``prob``.
        threshold: probability above which a voxel belongs to a component.
        min_voxels: smaller components are dropped (noise).
        max_candidates: keep the components with the highest peak probability (None: all).
        space: world frame of ``affine`` ("RAS" or "LPS"); the output coordinates are LPS either way.
        region: optional (i, j, k) bool mask on ``prob``'s grid: only components with at least one voxel
            in it are kept (the lungs: a large juxta-pleural nodule's centre can lie outside a lung mask, since
            the mask's closing does not fill a bite that wide, but the nodule always reaches into the lung).

    Returns:
        DataFrame with :data:`CANDIDATE_FIELDS`, one row per component, sorted by ``peak_prob``
        (descending). The centre is the probability-weighted centre of mass; ``diameter_mm`` is the
        diameter of the ball with the component's volume.
    """
    prob = np.asarray(prob, dtype=np.float32)
    labels, n = ndimage.label(prob > threshold)
    empty = pd.DataFrame({c: pd.Series(dtype=float) for c in CANDIDATE_FIELDS})
    if n == 0:
        return empty
    # statistics over the foreground voxels only: scipy's per-label functions scan the whole volume
    fg = np.flatnonzero(labels)
    lab = labels.ravel()[fg]
    p = prob.ravel()[fg].astype(np.float64)
    counts_all = np.bincount(lab, minlength=n + 1)
    sums_all = np.bincount(lab, weights=p, minlength=n + 1)
    coms_all = np.stack(
        [np.bincount(lab, weights=p * ax, minlength=n + 1) for ax in np.unravel_index(fg, prob.shape)], axis=1
    ) / np.maximum(sums_all, 1e-12)[:, None]
    peaks_all = np.zeros(n + 1)
    np.maximum.at(peaks_all, lab, p)
    keep = counts_all >= max(min_voxels, 1)
    if region is not None:
        region = np.asarray(region, dtype=bool)
        if region.shape != prob.shape:
            raise ValueError(f"region shape {region.shape} differs from the probability map's {prob.shape}")
        keep &= np.bincount(lab, weights=region.ravel()[fg], minlength=n + 1) > 0
    index = np.flatnonzero(keep)
    index = index[index > 0]
    if index.size == 0:
        return empty
    counts, sums, centres, peaks = counts_all[index], sums_all[index], coms_all[index], peaks_all[index]
    voxel_mm3 = abs(float(np.linalg.det(np.asarray(affine, dtype=np.float64)[:3, :3])))
    volume = counts * voxel_mm3
    world = np.atleast_2d(index_to_world(centres, affine, space=space, points_space="LPS"))
    frame = pd.DataFrame(
        {
            "coordX": world[:, 0], "coordY": world[:, 1], "coordZ": world[:, 2],
            "index_i": centres[:, 0], "index_j": centres[:, 1], "index_k": centres[:, 2],
            "diameter_mm": np.cbrt(6.0 * volume / np.pi), "volume_mm3": volume,
            "peak_prob": peaks, "mean_prob": sums / counts, "num_voxels": counts,
        }
    )
    frame = frame.sort_values("peak_prob", ascending=False, kind="stable").reset_index(drop=True)
    return frame if max_candidates is None else frame.head(max_candidates).reset_index(drop=True)

