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
) -> pd.DataFrame:
    """Connected components of ``prob > threshold`` as candidates.

    Args:
        prob: (i, j, k) nodule probability on the grid of ``affine``.
        affine: 4x4 voxel -> world mm (``space``) affine of ``prob``.
        threshold: probability above which a voxel belongs to a component.
        min_voxels: smaller components are dropped (noise).
        max_candidates: keep the components with the highest peak probability (None: all).

    Returns:
        DataFrame with :data:`CANDIDATE_FIELDS`, one row per component, sorted by ``peak_prob``
        (descending). The centre is the probability-weighted centre of mass; ``diameter_mm`` is the
        diameter of the ball with the component's volume.
    """
    prob = np.asarray(prob, dtype=np.float32)
    labels, n = ndimage.label(prob > threshold)
    if n == 0:
        return pd.DataFrame({c: pd.Series(dtype=float) for c in CANDIDATE_FIELDS})
    index = np.arange(1, n + 1)
    counts = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    keep = counts >= min_voxels
    index, counts = index[keep], counts[keep]
    if index.size == 0:
        return pd.DataFrame({c: pd.Series(dtype=float) for c in CANDIDATE_FIELDS})
    centres = np.array(ndimage.center_of_mass(prob, labels, index)).reshape(-1, 3)
    peaks = np.asarray(ndimage.maximum(prob, labels, index), dtype=np.float64).reshape(-1)
    sums = np.asarray(ndimage.sum(prob, labels, index), dtype=np.float64).reshape(-1)
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
