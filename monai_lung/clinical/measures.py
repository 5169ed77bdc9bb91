"""Nodule sizes as Lung-RADS v2022 defines them, from a bool mask on a voxel grid.

Arrays are (i, j, k) voxel grids; ``affine`` (4x4) maps an (i, j, k) index to world mm (LPS or RAS: only lengths and
the direction of world z are used). Lung-RADS v2022 measures a nodule on the image where it is largest: its long axis
and the short axis perpendicular to it in the same plane, each to one decimal, and reports their mean to one decimal
(:func:`mean_diameter`); volumes may be used instead (:func:`monai_lung.detection.sizing.volume_mm3`). The plane here is the axial slice (constant
world z) with the longest long axis, the one radiologists measure on in screening.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from monai_lung.io.coords import slice_axis


def one_decimal(value: float) -> float:
    """``value`` rounded to one decimal, halves up (Lung-RADS reports sizes to one decimal)."""
    return math.floor(float(value) * 10.0 + 0.5) / 10.0


def axial_axes(mask: np.ndarray, affine: np.ndarray) -> tuple[float, float]:
    """``(long, short)`` axes in mm of a bool (i, j, k) ``mask``: on the axial slice where the long axis is longest,
    the longest chord between the centres of its edge voxels and the extent perpendicular to it, each plus one
    in-plane voxel (a caliper spans the edge voxels, not their centres). ``(0.0, 0.0)`` for an empty mask."""
    mask = np.asarray(mask, dtype=bool)
    linear = np.asarray(affine, dtype=np.float64)[:3, :3]
    axis = slice_axis(affine)
    plane = [a for a in range(3) if a != axis]
    step = float(np.mean(np.linalg.norm(linear[:, plane], axis=0)))
    # in-plane world offsets of the slice's two index axes, as 2D coordinates of the plane
    basis, _ = np.linalg.qr(linear[:, plane])
    to_2d = basis.T @ linear[:, plane]
    best = (0.0, 0.0)
    for s in np.flatnonzero(mask.any(axis=tuple(plane))):
        sl = np.take(mask, s, axis=axis)
        edge = sl & ~ndimage.binary_erosion(sl)
        pts = np.argwhere(edge).astype(np.float64) @ to_2d.T
        if len(pts) > 3:
            try:
                pts = pts[ConvexHull(pts).vertices]
            except QhullError:  # collinear pixels: every one of them is a hull point
                pass
        long_axis, short_axis = 0.0, 0.0
        if len(pts) > 1:
            diff = pts[:, None, :] - pts[None, :, :]
            dist = np.sqrt((diff**2).sum(-1))
            a, b = np.unravel_index(int(np.argmax(dist)), dist.shape)
            long_axis = float(dist[a, b])
            normal = np.array([-(pts[b] - pts[a])[1], (pts[b] - pts[a])[0]]) / max(long_axis, 1e-9)
            short_axis = float(np.ptp(pts @ normal))
        if long_axis + step > best[0]:
            best = (long_axis + step, short_axis + step)
    return best


def mean_diameter(mask: np.ndarray, affine: np.ndarray) -> float:
    """Lung-RADS v2022 mean diameter (mm, one decimal): the mean of :func:`axial_axes`, each rounded to one decimal."""
    long_axis, short_axis = axial_axes(mask, affine)
    return one_decimal((one_decimal(long_axis) + one_decimal(short_axis)) / 2.0)
