"""Back to the scan's own grid: resample a result from the processing grid onto the source image's grid.

Our reader resamples to 1 mm while reading (fast, SimpleITK); it keeps the file's geometry in the meta
(``original_affine``, ``spatial_shape``). This transform uses it to put predictions back on the scan's
voxels, so a saved mask overlays the CT exactly in any viewer, and MONAI Label's ``Restored`` (which
only resizes) finds nothing left to change.
"""

from __future__ import annotations

from typing import Hashable, Mapping, Sequence

import numpy as np
import SimpleITK as sitk
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform
from monai.utils import MetaKeys

_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _sitk_grid(affine_ras: np.ndarray, shape: Sequence[int]) -> sitk.Image:
    lps = _RAS_TO_LPS @ np.asarray(affine_ras, dtype=np.float64)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    ref = sitk.Image([int(s) for s in shape[:3]], sitk.sitkUInt8)
    ref.SetSpacing(tuple(spacing))
    ref.SetOrigin(tuple(lps[:3, 3]))
    ref.SetDirection(tuple((lps[:3, :3] / spacing).ravel()))
    return ref


def resample_to_grid(
    array: np.ndarray, affine_ras: np.ndarray, target_affine_ras: np.ndarray, target_shape: Sequence[int], linear: bool, fill: float = 0.0
) -> np.ndarray:
    """Resample a (C, i, j, k) array on ``affine_ras`` onto the grid (``target_affine_ras``, ``target_shape`` (i, j, k)).

    Both affines map MONAI indices to RAS world mm. Linear interpolation, or nearest neighbour for labels.
    Returns (C, *target_shape) float32 (or the input dtype for nearest neighbour).
    """
    out = []
    target = _sitk_grid(target_affine_ras, target_shape)
    for channel in np.asarray(array):
        moving = sitk.GetImageFromArray(np.ascontiguousarray(channel.transpose(2, 1, 0)))  # (i, j, k) -> sitk (x, y, z)
        grid = _sitk_grid(affine_ras, channel.shape)
        moving.CopyInformation(grid)
        res = sitk.Resample(moving, target, sitk.Transform(), sitk.sitkLinear if linear else sitk.sitkNearestNeighbor, float(fill))
        out.append(sitk.GetArrayFromImage(res).transpose(2, 1, 0))
    return np.stack(out)


class RestoreSourceGridd(MapTransform):
    """Resample ``keys`` (C, i, j, k) MetaTensors onto the source scan's grid (``original_affine``, ``spatial_shape``).

    Run it after ``Invertd`` (which undoes ``Orientationd``/``Spacingd``). ``mode``: "bilinear" for
    probabilities, "nearest" for labels (one per key or one for all).
    """

    def __init__(self, keys: KeysCollection, mode: str | Sequence[str] = "nearest", allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.mode = [mode] * len(self.keys) if isinstance(mode, str) else list(mode)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key, mode in self.key_iterator(d, self.mode):
            img = d[key]
            meta = dict(img.meta)
            target_affine = np.asarray(meta.get(MetaKeys.ORIGINAL_AFFINE, img.affine.numpy()), dtype=np.float64)
            target_shape = [int(s) for s in np.asarray(meta.get(MetaKeys.SPATIAL_SHAPE, img.shape[1:]))]
            if tuple(target_shape) == tuple(img.shape[1:]) and np.allclose(target_affine, img.affine.numpy(), atol=1e-4):
                continue
            arr = img.detach().cpu().numpy()
            if mode != "nearest":
                arr = arr.astype(np.float32)
            out = resample_to_grid(arr, img.affine.numpy(), target_affine, target_shape, linear=mode != "nearest")
            meta[MetaKeys.AFFINE] = torch.as_tensor(target_affine)
            d[key] = MetaTensor(torch.from_numpy(out), affine=torch.as_tensor(target_affine), meta=meta)
        return d
