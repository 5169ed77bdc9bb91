"""Where the source scan's slices lie on the resampled grid, carried through to training patches.

A scan with 2.5 mm slices, resampled to 1 mm, is still a 2.5 mm scan: along z every structure is a few
samples joined by linear ramps. Real nodules in it look like that; a synthetic nodule painted on the 1 mm grid
does not, and a UNet taught on such drawings learns that a nodule is smooth along z, then misses the real
small nodules of thick-slice scans, where a weak stage 1 misses most. :class:`~monai_lung.transforms.RandNoduleInsertiond` draws its nodules as the scan's
own slices would have recorded them, and needs two things this module provides:

- :class:`SourceSliceGridd` (deterministic, cached with the volume): per axis of the resampled (i, j, k) grid,
  the source's sample step in grid voxels and the grid position of one source sample (``source_slice_grid``);
- :class:`RandCropByPosNegLabelWithStartd`: MONAI's ``RandCropByPosNegLabeld`` that also records each patch's
  first voxel, so that the slice positions can be found inside the patch (``patch_slice_grid``).

Layout: a slice grid is a float32 (3, 2) array, row a = axis a of (i, j, k): (step, phase), both in grid
voxels; step 0 means the source samples that axis at least as finely as the grid (nothing to imitate).
"""

from __future__ import annotations

from typing import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandCropByPosNegLabeld
from monai.utils import fall_back_tuple

#: a source step this many grid voxels or less is not imitated: a ~1 mm scan on the 1 mm grid is the grid
COARSER_THAN = 1.2

# an axis of the source counts as lying along a grid axis when its direction is this close to it (cosine)
_ALIGNED = 0.99


def source_slice_grid(affine, original_affine) -> np.ndarray:
    """The source scan's sampling along each axis of the resampled grid.

    Args:
        affine: 4x4 grid voxel (i, j, k) -> world mm of the resampled image (MONAI's ``affine``).
        original_affine: 4x4 source voxel -> world mm of the file, in the same world frame (MONAI's
            ``original_affine``; reorienting and resampling leave it as read).

    Returns:
        float32 (3, 2): row a = (step, phase) along grid axis a, in grid voxels: the source's samples lie at
        grid positions ``phase + n * step`` (``0 <= phase < step``). Rows stay (0, 0) where the source step is
        at most :data:`COARSER_THAN` grid voxels, or where no source axis runs along that grid axis (oblique
        sources are not imitated).
    """
    grid_from_source = np.linalg.inv(np.asarray(affine, dtype=np.float64)) @ np.asarray(original_affine, dtype=np.float64)
    out = np.zeros((3, 2), dtype=np.float32)
    for b in range(3):  # each source axis: one step along it, in grid voxels
        column = grid_from_source[:3, b]
        a = int(np.argmax(np.abs(column)))
        step = abs(float(column[a]))
        if step <= COARSER_THAN or step < _ALIGNED * float(np.linalg.norm(column)):
            continue
        out[a] = (step, float(grid_from_source[a, 3]) % step)  # grid position of source sample 0, folded
    return out


def patch_slice_grid(grid, start) -> np.ndarray:
    """The slice grid of a patch whose first voxel is ``start`` (3,) on the volume of ``grid`` ((3, 2), see
    :func:`source_slice_grid`): same steps, phases counted from the patch's first voxel."""
    grid = np.asarray(grid, dtype=np.float32).reshape(3, 2).copy()
    start = np.asarray(start, dtype=np.float64).reshape(3)
    sliced = grid[:, 0] > 0
    grid[sliced, 1] = np.mod(grid[sliced, 1] - start[sliced], grid[sliced, 0])
    return grid


class SourceSliceGridd(MapTransform):
    """Add ``output_key``: the (3, 2) slice grid (:func:`source_slice_grid`) of the (1, i, j, k) MetaTensor under
    ``keys``, from its ``affine`` and ``meta["original_affine"]``. An image without ``original_affine`` gets
    the all-zero grid (nothing to imitate). Deterministic: cache it with the volume."""

    def __init__(self, keys: KeysCollection = "image", output_key: str = "slice_grid", allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.output_key = output_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            original = getattr(img, "meta", {}).get("original_affine")
            affine = getattr(img, "affine", None)
            if original is None or affine is None:
                d[self.output_key] = np.zeros((3, 2), dtype=np.float32)
            else:
                d[self.output_key] = source_slice_grid(np.asarray(affine), np.asarray(original))
        return d


class RandCropByPosNegLabelWithStartd(RandCropByPosNegLabeld):
    """MONAI's ``RandCropByPosNegLabeld``, and each output sample also gets ``start_key``: the (i, j, k) index of
    the patch's first voxel in the uncropped volume (int64 (3,)), where patch-level transforms need to know where
    the patch sat (the source's slice positions, :func:`patch_slice_grid`). Same arguments, same patches."""

    def __init__(self, *args, start_key: str = "patch_start", **kwargs):
        super().__init__(*args, **kwargs)
        self.start_key = start_key

    def __call__(self, data, lazy: bool | None = None) -> list[dict]:
        samples = super().__call__(data, lazy)
        shape = data[self.first_key(dict(data))].shape[1:]  # the uncropped volume's (i, j, k)
        size = np.asarray(fall_back_tuple(self.cropper.spatial_size, shape), dtype=np.int64)
        for sample, centre in zip(samples, self.cropper.centers):
            # MONAI's SpatialCrop: start = max(centre - size // 2, 0)
            sample[self.start_key] = np.maximum(np.asarray([int(c) for c in centre], dtype=np.int64) - size // 2, 0)
        return samples


def as_slice_grid(value) -> np.ndarray | None:
    """A (3, 2) float slice grid from a data dict's value (numpy, tensor, or a collated (1, 3, 2)); None for None."""
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=np.float32).reshape(3, 2)
