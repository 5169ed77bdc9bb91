"""Fixed-size crops centred on candidate points, padded at the scan border (never dropped)."""

from __future__ import annotations

from typing import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from monai_lung.io.coords import world_to_index


def crop_bounds(centre_idx: np.ndarray, size: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Start (inclusive) and stop (exclusive) voxel indices of a crop of ``size`` around ``centre_idx`` (3,).

    The centre voxel ``round(centre_idx)`` lands at index ``size // 2`` of the crop (24 for 48).
    """
    size = np.asarray(size, dtype=int)
    start = np.rint(np.asarray(centre_idx, dtype=np.float64)).astype(int) - size // 2
    return start, start + size


def extract_crops(
    volume: torch.Tensor | np.ndarray, centres_idx: np.ndarray, size: Sequence[int] = (48, 48, 48), pad_value: float = 0.0
) -> torch.Tensor:
    """Crops of ``size`` around continuous voxel indices, zero-copy where inside, padded where outside.

    Args:
        volume: (C, i, j, k) array (MONAI channel-first).
        centres_idx: (N, 3) continuous (i, j, k) indices into ``volume``.
        size: crop size (i, j, k) in voxels.
        pad_value: value outside the scan (0 = air after the lung window scaling).

    Returns:
        (N, C, *size) float tensor; crop ``n`` has the voxel nearest ``centres_idx[n]`` at ``size // 2``.
    """
    vol = torch.as_tensor(volume)
    if isinstance(vol, MetaTensor):
        vol = vol.as_tensor()
    centres = np.atleast_2d(np.asarray(centres_idx, dtype=np.float64)).reshape(-1, 3)
    shape = np.asarray(vol.shape[1:])
    out = torch.full((len(centres), vol.shape[0], *size), float(pad_value), dtype=vol.dtype)
    for n, centre in enumerate(centres):
        start, stop = crop_bounds(centre, size)
        lo, hi = np.maximum(start, 0), np.minimum(stop, shape)
        if np.any(hi <= lo):
            continue  # entirely outside: all padding
        dst = tuple(slice(a - s, b - s) for a, b, s in zip(lo, hi, start))
        src = tuple(slice(a, b) for a, b in zip(lo, hi))
        out[(n, slice(None), *dst)] = vol[(slice(None), *src)]
    return out


class CandidateCropd(MapTransform):
    """Crop ``keys`` (C, i, j, k) around a world point, padded at the border.

    ``data[point_key]`` is a world (x, y, z) mm point in ``points_space`` (LUNA16: LPS); the image's
    ``affine`` locates it. Output: (C, *size) MetaTensor whose affine is the crop's, so the point sits at
    voxel ``size // 2``.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        point_key: str = "point",
        size: Sequence[int] = (48, 48, 48),
        pad_value: float = 0.0,
        points_space: str = "LPS",
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        self.point_key, self.size, self.pad_value, self.points_space = point_key, tuple(size), pad_value, points_space

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            affine = img.affine.numpy() if isinstance(img, MetaTensor) else np.eye(4)
            space = str(img.meta.get("space", "RAS")) if isinstance(img, MetaTensor) else self.points_space
            centre = world_to_index(np.asarray(d[self.point_key], dtype=np.float64), affine, space, self.points_space)
            crop = extract_crops(img, centre[None], self.size, self.pad_value)[0]
            start, _ = crop_bounds(centre, self.size)
            crop_affine = affine.copy()
            crop_affine[:3, 3] = affine[:3, :3] @ start + affine[:3, 3]
            meta = dict(img.meta) if isinstance(img, MetaTensor) else {}
            d[key] = MetaTensor(crop, affine=torch.as_tensor(crop_affine), meta=meta)
        return d
