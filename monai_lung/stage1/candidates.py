"""Stage-1 probability map -> candidate list (connected components with centre, size and scores), near-duplicates
merged."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import ndimage

from monai_lung.io.coords import index_to_world

CANDIDATE_FIELDS = [
    "coordX", "coordY", "coordZ",  # world LPS mm (LUNA16 convention)
    "index_i", "index_j", "index_k",  # continuous voxel index on the probability map's grid
    "diameter_mm", "volume_mm3", "peak_prob", "mean_prob", "num_voxels",
    "bbox_lo_i", "bbox_lo_j", "bbox_lo_k", "bbox_hi_i", "bbox_hi_j", "bbox_hi_k",  # inclusive voxel box of the component
]


def _box_of(mask: np.ndarray) -> tuple[slice, ...] | None:
    """Slices of the bounding box of ``mask``'s True voxels (None when there are none), from its projections."""
    box = []
    for axis in range(mask.ndim):
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        if hits.size == 0:
            return None
        box.append(slice(int(hits[0]), int(hits[-1]) + 1))
    return tuple(box)


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
    above = prob > threshold
    empty = pd.DataFrame({c: pd.Series(dtype=float) for c in CANDIDATE_FIELDS})
    # label only the box around the voxels above threshold: most of a scan's map is background, and labelling
    # took most of this function's time on a whole scan
    box = _box_of(above)
    if box is None:
        return empty
    labels, n = ndimage.label(above[box])
    if n == 0:
        return empty
    # statistics over the foreground voxels only: scipy's per-label functions scan the whole volume
    fg = np.flatnonzero(labels)
    lab = labels.ravel()[fg]
    local = np.unravel_index(fg, labels.shape)
    p = prob[box][local].astype(np.float64)
    coords = tuple(c + b.start for c, b in zip(local, box))  # (i, j, k) of each foreground voxel
    counts_all = np.bincount(lab, minlength=n + 1)
    sums_all = np.bincount(lab, weights=p, minlength=n + 1)
    coms_all = np.stack(
        [np.bincount(lab, weights=p * ax, minlength=n + 1) for ax in coords], axis=1
    ) / np.maximum(sums_all, 1e-12)[:, None]
    peaks_all = np.zeros(n + 1)
    np.maximum.at(peaks_all, lab, p)
    box_lo = np.full((n + 1, 3), np.iinfo(np.int64).max)
    box_hi = np.zeros((n + 1, 3), dtype=np.int64)
    for axis, c in enumerate(coords):
        np.minimum.at(box_lo[:, axis], lab, c)
        np.maximum.at(box_hi[:, axis], lab, c)
    keep = counts_all >= max(min_voxels, 1)
    if region is not None:
        region = np.asarray(region, dtype=bool)
        if region.shape != prob.shape:
            raise ValueError(f"region shape {region.shape} differs from the probability map's {prob.shape}")
        keep &= np.bincount(lab, weights=region[box][local], minlength=n + 1) > 0
    index = np.flatnonzero(keep)
    index = index[index > 0]
    if index.size == 0:
        return empty
    counts, sums, centres, peaks = counts_all[index], sums_all[index], coms_all[index], peaks_all[index]
    linear = np.asarray(affine, dtype=np.float64)[:3, :3]
    volume = counts * abs(float(np.linalg.det(linear)))
    mean = sums / counts
    world = np.atleast_2d(index_to_world(centres, affine, space=space, points_space="LPS"))
    frame = pd.DataFrame(
        {
            "coordX": world[:, 0], "coordY": world[:, 1], "coordZ": world[:, 2],
            "index_i": centres[:, 0], "index_j": centres[:, 1], "index_k": centres[:, 2],
            "diameter_mm": np.cbrt(6.0 * volume / np.pi), "volume_mm3": volume,
            "peak_prob": peaks, "mean_prob": mean, "num_voxels": counts,
            **{f"bbox_lo_{a}": box_lo[index, n_] for n_, a in enumerate("ijk")},
            **{f"bbox_hi_{a}": box_hi[index, n_] for n_, a in enumerate("ijk")},
        }
    )
    frame = frame.sort_values("peak_prob", ascending=False, kind="stable").reset_index(drop=True)
    return frame if max_candidates is None else frame.head(max_candidates).reset_index(drop=True)


def merge_close_candidates(frame: pd.DataFrame, distance_mm: float) -> pd.DataFrame:
    """Greedy non-maximum suppression in world mm: keep the highest ``peak_prob``, drop candidates within
    ``distance_mm`` of a kept one. ``frame`` has world ``coordX/Y/Z`` columns; order is kept."""
    if distance_mm <= 0 or len(frame) < 2:
        return frame
    from scipy.spatial import cKDTree

    frame = frame.sort_values("peak_prob", ascending=False, kind="stable").reset_index(drop=True)
    pts = frame[["coordX", "coordY", "coordZ"]].to_numpy(dtype=np.float64)
    # each candidate's neighbours closer than distance_mm, found once (a pairwise loop took seconds at ~1,000)
    neighbours = cKDTree(pts).query_ball_point(pts, r=distance_mm)
    suppressed = np.zeros(len(frame), dtype=bool)
    kept = []
    for i in range(len(frame)):  # strongest first; only a kept candidate suppresses others
        if suppressed[i]:
            continue
        kept.append(i)
        near = np.asarray(neighbours[i], dtype=np.int64)
        near = near[np.linalg.norm(pts[near] - pts[i], axis=1) < distance_mm]  # the ball includes the radius itself
        suppressed[near] = True
    return frame.iloc[kept].reset_index(drop=True)
