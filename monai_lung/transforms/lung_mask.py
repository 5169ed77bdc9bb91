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
    out = []
    for margin_mm in margins_mm:
        margin_r = max(0, int(round(margin_mm / work.mean())))
        grown = ndimage.binary_dilation(mask, structure=_ball(margin_r)) if margin_r else mask
        # back to full resolution: each coarse voxel covers `factor` fine voxels per axis
        full = grown.repeat(factor[0], 0).repeat(factor[1], 1).repeat(factor[2], 2)
        out.append(np.ascontiguousarray(full[: shape[0], : shape[1], : shape[2]]))
    return out
