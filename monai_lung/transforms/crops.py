"""Fixed-size crops centred on candidate points, padded at the scan border (never dropped)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from monai.data import MetaTensor


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
