"""A scan on another voxel grid over the same world box: stage 1 and stage 2 each run on their own zoom of the
preprocessed scan."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from monai_lung.io.coords import voxel_spacing


def check_grid_spacing(spacing, name: str) -> tuple[float, float, float] | None:
    """``spacing`` as three positive finite mm values (or None), else ValueError naming ``name``."""
    if spacing is None:
        return None
    values = tuple(float(v) for v in np.ravel(np.asarray(spacing, dtype=np.float64)))
    if len(values) != 3 or not all(np.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"{name}: three positive voxel sizes in mm (i, j, k) or null, got {spacing!r}")
    return values


def zoom_to_spacing(image: torch.Tensor, spacing_mm: Sequence[float]) -> torch.Tensor:
    """A (1, i, j, k) scan trilinearly resampled to about ``spacing_mm`` (i, j, k) mm per voxel.

    The grid keeps the first and last voxel centres of each axis (nothing is extrapolated): ``m = floor((n - 1)
    * s / spacing) + 1`` voxels where the source has ``n`` of ``s`` mm, so the exact step is ``(n - 1) * s /
    (m - 1)`` mm, within a voxel's width over the scan of what was asked. ``image`` is a MetaTensor whose
    ``affine`` maps voxel index to world mm; the result's affine maps its own indices to the same world
    points (the source affine with each column scaled by the step in source voxels). Plain tensors are taken
    as 1 mm grids and come back as plain tensors. Same dtype as ``image`` (computed in float32).
    """
    from monai.data import MetaTensor

    spacing_mm = check_grid_spacing(spacing_mm, "spacing_mm")
    source = np.asarray(voxel_spacing(image), dtype=np.float64) if isinstance(image, MetaTensor) else np.ones(3)
    n = np.asarray(image.shape[1:], dtype=np.int64)
    m = np.maximum(np.floor((n - 1) * source / np.asarray(spacing_mm) + 1e-6).astype(np.int64) + 1, 1)
    if np.array_equal(m, n):
        return image
    x = image.as_tensor() if isinstance(image, MetaTensor) else image
    out = torch.nn.functional.interpolate(
        x[None].float(), size=tuple(int(v) for v in m), mode="trilinear", align_corners=True
    )[0].to(x.dtype)
    if not isinstance(image, MetaTensor):
        return out
    # align_corners: output index t sits at source index t * (n - 1) / (m - 1) (1 when an axis has one voxel)
    step = np.where(m > 1, (n - 1) / np.maximum(m - 1, 1), 1.0)
    affine = np.asarray(image.affine, dtype=np.float64).copy()
    affine[:3, :3] = affine[:3, :3] * step[None, :]
    meta = {k: v for k, v in image.meta.items() if k != "affine"}
    return MetaTensor(out, affine=torch.as_tensor(affine), meta=meta)
