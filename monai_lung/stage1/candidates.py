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
    "elongation", "shape_score",  # see extract_candidates
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
        diameter of the ball with the component's volume. ``elongation`` is sqrt(largest / smallest
        eigenvalue) of the component's covariance in mm (1 for a ball, large for a vessel segment; each voxel
        counts with its own extent, so one-voxel-thin components stay finite). ``shape_score`` =
        ``mean_prob * volume_mm3 ** 0.3 / elongation`` ranks components for stage-1-only use (sure, big and
        round first): on the demo's stage 1 it put more nodules among a scan's 30 best than ``peak_prob``
        (``benchmarks/stage1_recall.py --rank-by shape``), where hundreds of vessel segments peak above 0.99.
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
    elongation = _elongation(lab, coords, n, index, counts, linear)
    mean = sums / counts
    world = np.atleast_2d(index_to_world(centres, affine, space=space, points_space="LPS"))
    frame = pd.DataFrame(
        {
            "coordX": world[:, 0], "coordY": world[:, 1], "coordZ": world[:, 2],
            "index_i": centres[:, 0], "index_j": centres[:, 1], "index_k": centres[:, 2],
            "diameter_mm": np.cbrt(6.0 * volume / np.pi), "volume_mm3": volume,
            "peak_prob": peaks, "mean_prob": mean, "num_voxels": counts,
            "elongation": elongation, "shape_score": mean * volume**0.3 / elongation,
            **{f"bbox_lo_{a}": box_lo[index, n_] for n_, a in enumerate("ijk")},
            **{f"bbox_hi_{a}": box_hi[index, n_] for n_, a in enumerate("ijk")},
        }
    )
    frame = frame.sort_values("peak_prob", ascending=False, kind="stable").reset_index(drop=True)
    return frame if max_candidates is None else frame.head(max_candidates).reset_index(drop=True)


def _elongation(lab: np.ndarray, coords: tuple, n: int, index: np.ndarray, counts: np.ndarray, linear: np.ndarray) -> np.ndarray:
    """sqrt(largest / smallest eigenvalue) of each component's voxel covariance in mm.

    ``lab``: label of each foreground voxel; ``coords``: their (i, j, k) indices (three arrays); ``n``: number
    of labels; ``index``: the labels wanted; ``counts``: their voxel counts; ``linear``: the 3x3 voxel -> mm
    part of the affine. A voxel is a box, not a point: its own covariance, 1/12 voxel^2 per axis, is added, so a
    one-voxel component is round on an isotropic grid and a thin line has a finite ratio.
    """
    counts = np.asarray(counts, dtype=np.float64)
    x = [np.asarray(c, dtype=np.float64) for c in coords]
    means = [np.bincount(lab, weights=c, minlength=n + 1)[index] / counts for c in x]
    cov = np.empty((index.size, 3, 3))
    for a in range(3):
        for b in range(a, 3):
            second = np.bincount(lab, weights=x[a] * x[b], minlength=n + 1)[index] / counts
            cov[:, a, b] = cov[:, b, a] = second - means[a] * means[b] + (1.0 / 12.0 if a == b else 0.0)
    cov_mm = linear @ cov @ linear.T
    eig = np.linalg.eigvalsh(cov_mm)  # ascending
    return np.sqrt(eig[:, 2] / np.maximum(eig[:, 0], 1e-12))


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
