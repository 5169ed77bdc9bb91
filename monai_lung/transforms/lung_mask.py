"""A fast lung mask: threshold, connected components and closing at 4 mm, then back to full resolution.

Used to spend the sliding window only where nodules can be. It is deliberately generous: holes
(vessels, nodules) are closed and the mask is dilated by a margin so that juxta-pleural nodules, the
ones a tight lung mask cuts off, stay inside.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from monai_lung.transforms.preprocessing import DEFAULT_HU_WINDOW

#: mm the lungs are grown by, by default: keeps juxta-pleural nodules inside
LUNG_MARGIN_MM = 8.0


def _ball(radius: int) -> np.ndarray:
    r = np.arange(-radius, radius + 1)
    return (r[:, None, None] ** 2 + r[None, :, None] ** 2 + r[None, None, :] ** 2) <= radius**2


def lung_mask(
    volume: torch.Tensor | np.ndarray,
    spacing_mm: Sequence[float] = (1.0, 1.0, 1.0),
    threshold: float = -400.0,
    hu_window: Sequence[float] | None = DEFAULT_HU_WINDOW,
    work_mm: float = 4.0,
    close_mm: float = 12.0,
    margin_mm: float = LUNG_MARGIN_MM,
    min_fraction: float = 0.1,
) -> np.ndarray:
    """Boolean lung mask of a CT volume.

    Args:
        volume: (i, j, k) or (1, i, j, k) CT; HU, or scaled to [0, 1] by the lung window ``hu_window``
            (pass ``hu_window=None`` for HU input).
        spacing_mm: voxel size (i, j, k) in mm.
        threshold: HU below which a voxel is air or lung.
        work_mm: resolution of the morphology (the volume is average-pooled to about this voxel size).
        close_mm: closing radius that fills vessels, nodules and the hilum inside the lungs.
        margin_mm: dilation added around the lungs (keeps juxta-pleural nodules inside).
        min_fraction: air components smaller than this share of the largest one are not lung.

    Returns:
        (i, j, k) bool array, same shape as the input's spatial shape; all True when no lung is found
        (the caller then simply processes the whole scan).
    """
    return lung_masks(volume, spacing_mm, (margin_mm,), threshold, hu_window, work_mm, close_mm, min_fraction)[0]


def lung_masks(
    volume: torch.Tensor | np.ndarray,
    spacing_mm: Sequence[float] = (1.0, 1.0, 1.0),
    margins_mm: Sequence[float] = (LUNG_MARGIN_MM, 2.0),
    threshold: float = -400.0,
    hu_window: Sequence[float] | None = DEFAULT_HU_WINDOW,
    work_mm: float = 4.0,
    close_mm: float = 12.0,
    min_fraction: float = 0.1,
    keep_lesions: bool = True,
) -> list[np.ndarray]:
    """:func:`lung_mask` at several margins from one segmentation, e.g. a generous one for where the
    sliding window runs and a tight one that a candidate's component must reach into. Returns one (i, j, k)
    bool array per entry of ``margins_mm`` (mm); the other arguments are :func:`lung_mask`'s."""
    vol = torch.as_tensor(np.asarray(volume) if not isinstance(volume, torch.Tensor) else volume).float()
    if isinstance(vol, MetaTensor):
        vol = vol.as_tensor()
    if vol.ndim == 4:
        vol = vol[0]
    shape = tuple(vol.shape)
    thr = threshold if hu_window is None else (threshold - hu_window[0]) / (hu_window[1] - hu_window[0])
    factor = [max(1, int(round(work_mm / s))) for s in spacing_mm]
    small = F.avg_pool3d(vol[None, None], kernel_size=factor, stride=factor, ceil_mode=True)[0, 0].numpy()
    air = small < thr
    labels, n = ndimage.label(air)
    if n == 0:
        return [np.ones(shape, dtype=bool) for _ in margins_mm]
    # air touching the in-plane border is outside the body (and the table); z borders may cut the lungs
    border = np.unique(np.concatenate([labels[0].ravel(), labels[-1].ravel(), labels[:, 0].ravel(), labels[:, -1].ravel()]))
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    sizes[0] = 0
    sizes[border] = 0
    if sizes.max() == 0:
        return [np.ones(shape, dtype=bool) for _ in margins_mm]
    keep = np.flatnonzero(sizes >= min_fraction * sizes.max())
    mask = np.isin(labels, keep)
    work = np.asarray(spacing_mm) * np.asarray(factor)
    close_r = max(1, int(round(close_mm / work.mean())))
    padded = np.pad(mask, close_r)  # closing must not be cut by the volume border
    mask = ndimage.binary_closing(padded, structure=_ball(close_r))[close_r:-close_r, close_r:-close_r, close_r:-close_r]
    mask = ndimage.binary_fill_holes(mask)
    if keep_lesions:
        mask |= lesion_pockets(mask, work)
    out = []
    for margin_mm in margins_mm:
        margin_r = max(0, int(round(margin_mm / work.mean())))
        grown = ndimage.binary_dilation(mask, structure=_ball(margin_r)) if margin_r else mask
        # back to full resolution: each coarse voxel covers `factor` fine voxels per axis
        full = grown.repeat(factor[0], 0).repeat(factor[1], 1).repeat(factor[2], 2)
        out.append(np.ascontiguousarray(full[: shape[0], : shape[1], : shape[2]]))
    return out


def fill_convex_2d(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(rows, cols) bool image of the convex hull of integer pixel ``points`` (N, 2), edges included."""
    out = np.zeros(shape, dtype=bool)
    if len(points) < 3:
        out[tuple(points.T)] = True
        return out
    try:
        hull = ConvexHull(points)
    except QhullError:  # collinear pixels: their own line is the hull
        out[tuple(points.T)] = True
        return out
    lo, hi = points.min(axis=0), points.max(axis=0) + 1
    grid = np.stack(np.meshgrid(np.arange(lo[0], hi[0]), np.arange(lo[1], hi[1]), indexing="ij"), axis=-1).reshape(-1, 2)
    inside = (grid @ hull.equations[:, :2].T + hull.equations[:, 2] <= 1e-6).all(axis=1)
    out[lo[0]:hi[0], lo[1]:hi[1]] = inside.reshape(hi[0] - lo[0], hi[1] - lo[1])
    return out


def lesion_pockets(
    lungs: np.ndarray, spacing_mm: Sequence[float], detach_mm: float = 8.0, enclose_mm: float = 60.0, max_pocket_mm: float = 90.0,
) -> np.ndarray:
    """What a lesion in the lung takes from the lungs' outline: per axial slice (k, the patient's z on a RAS grid),
    each lung's convex hull minus the lungs, where lung lies above and below. A mass growing from the pleura or the
    hilum replaces aerated lung, so the air mask is dented where it lies; the chest wall is convex in axial slices,
    so each lung's hull closes the dent along the pleura and the mass stays in the lung region instead of being cut
    away as chest wall. The hull also spans what is not a dent: the liver's dome inside the crescent of a lung base
    and the heart inside the left lung's notch; those have no lung below them, so a hull voxel counts only with lung
    within ``enclose_mm`` above and below it in its column, or in a dent no wider than ``max_pocket_mm`` along every
    axis (a mass on the diaphragm has no lung below it either, but it is a dent of its own size, while the liver's
    dome spans the whole base).

    ``lungs``: (i, j, k) bool lungs (closed, filled) on a grid of ``spacing_mm``. The two lungs are told apart as the
    two largest components after an opening by ``detach_mm`` (which cuts the trachea and main bronchi off, so that no
    hull bridges the mediastinum); a single component is split at the midline between the lungs. Returns the added
    (i, j, k) bool voxels."""
    spacing = np.asarray(spacing_mm, dtype=np.float64)
    radius = max(1, int(round(detach_mm / spacing[:2].mean())))
    disk = _ball(radius)[:, :, radius]  # opened slice by slice: the apices and bases keep their thin slices
    opened = ndimage.binary_opening(lungs, structure=disk[:, :, None])
    labels, n = ndimage.label(opened)
    if n == 0:
        return np.zeros_like(lungs)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    sizes[0] = 0
    order = np.argsort(sizes)[::-1]
    sides = [labels == order[0]]
    if n > 1 and sizes[order[1]] >= 0.2 * sizes[order[0]]:
        sides.append(labels == order[1])
    else:  # the lungs touch (anterior junction): split at the emptiest column between them
        profile = sides[0].sum(axis=(1, 2)).astype(np.float64)
        cols = np.flatnonzero(profile)
        lo, hi = cols[0] + (cols[-1] - cols[0]) // 4, cols[-1] - (cols[-1] - cols[0]) // 4
        mid = lo + int(np.argmin(profile[lo:hi + 1])) if hi > lo else cols[len(cols) // 2]
        whole = sides[0]
        sides = [whole.copy(), whole.copy()]
        sides[0][mid:] = False
        sides[1][:mid] = False
    added = np.zeros_like(lungs)
    for side in sides:
        for k in np.flatnonzero(side.any(axis=(0, 1))):
            added[:, :, k] |= fill_convex_2d(np.argwhere(side[:, :, k]), side.shape[:2])
    added &= ~lungs
    # a dent no wider than a large mass is kept whole: one lying on the diaphragm has no lung below it either. Dents
    # are told apart after an opening, since the thin slivers the hulls add along the ribs join them all up
    ball = _ball(radius)
    thick = ndimage.binary_opening(added, structure=ball)
    pockets, n = ndimage.label(thick)
    small = np.zeros(n + 1, dtype=bool)
    for index, box in enumerate(ndimage.find_objects(pockets), start=1):
        small[index] = all((sl.stop - sl.start) * sp <= max_pocket_mm for sl, sp in zip(box, spacing))
    small[0] = False
    whole = ndimage.binary_dilation(small[pockets], structure=ball) & added
    return whole | (added & enclosed_along_k(lungs, max(1, int(round(enclose_mm / spacing[2])))))


def enclosed_along_k(mask: np.ndarray, reach: int) -> np.ndarray:
    """(i, j, k) bool: the voxels with ``mask`` both within ``reach`` voxels above them, in (k, k + reach], and within
    ``reach`` below them, in [k - reach, k), along k (the patient's z on a RAS grid): what lies between lung above and
    lung below in its column."""
    n = mask.shape[2]
    count = np.concatenate([np.zeros(mask.shape[:2] + (1,), np.int32), np.cumsum(mask, axis=2, dtype=np.int32)], axis=2)
    k = np.arange(n)
    above = count[:, :, np.minimum(k + reach, n)] - count[:, :, k + 1]
    below = count[:, :, k] - count[:, :, np.maximum(k - reach, 0)]
    return (above > 0) & (below > 0)

