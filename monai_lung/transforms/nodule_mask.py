"""Nodule sphere masks from world-coordinate annotations, on whatever grid the image is on now."""

from __future__ import annotations

import os
from typing import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from monai_lung.io.coords import inside, world_to_index
from monai_lung.io.errors import DataError


def nodule_arrays(nodules: Sequence[Mapping] | None) -> tuple[np.ndarray, np.ndarray]:
    """Data-list nodules ``[{"center": [x, y, z], "diameter_mm": d}, ...]`` -> (centres (N, 3) mm, diameters (N,) mm)."""
    if not nodules:
        return np.zeros((0, 3)), np.zeros((0,))
    centres = np.array([n["center"] for n in nodules], dtype=np.float64).reshape(-1, 3)
    diameters = np.array([n["diameter_mm"] for n in nodules], dtype=np.float64)
    return centres, diameters


def sphere_mask(
    spatial_shape: Sequence[int],
    affine: np.ndarray,
    centres_mm: np.ndarray,
    diameters_mm: np.ndarray,
    space: str = "RAS",
    points_space: str = "LPS",
    radius_scale: float = 1.0,
    source: str | None = None,
) -> np.ndarray:
    """0/1 mask of balls around world points, on the grid of an array with ``affine``.

    Args:
        spatial_shape: (i, j, k) shape of the MONAI array (no channel).
        affine: its 4x4 voxel -> world mm affine (into ``space``).
        centres_mm: (N, 3) world mm (x, y, z) in ``points_space`` (LUNA16: LPS).
        diameters_mm: (N,) diameters in mm; the ball's radius is ``radius_scale * d / 2`` measured in mm,
            so anisotropic spacing and oblique directions are honoured.
        source: file name for error messages.

    Returns:
        uint8 array of ``spatial_shape``; the voxel nearest each centre is always set, so a nodule
        smaller than a voxel still marks one.
    """
    shape = np.asarray(spatial_shape[:3], dtype=int)
    mask = np.zeros(tuple(shape), dtype=np.uint8)
    if len(centres_mm) == 0:
        return mask
    affine = np.asarray(affine, dtype=np.float64)
    linear = affine[:3, :3]
    voxel_mm = np.linalg.norm(linear, axis=0)  # mm per index step along i, j, k
    centres_idx = np.atleast_2d(world_to_index(centres_mm, affine, space=space, points_space=points_space))
    outside = ~inside(centres_idx, shape)
    if outside.any():
        n = int(np.flatnonzero(outside)[0])
        c = np.asarray(centres_mm)[n]
        raise DataError(
            source, f"nodule at world ({c[0]:.1f}, {c[1]:.1f}, {c[2]:.1f}) mm lies outside the image (shape {shape.tolist()})"
        )
    for centre, diameter in zip(centres_idx, diameters_mm):
        radius = radius_scale * float(diameter) / 2.0
        half = np.ceil(radius / voxel_mm).astype(int) + 1
        lo = np.maximum(np.floor(centre).astype(int) - half, 0)
        hi = np.minimum(np.ceil(centre).astype(int) + half + 1, shape)
        grids = np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij")
        offsets = np.stack([g - c for g, c in zip(grids, centre)], axis=-1)  # index units
        dist_mm = np.linalg.norm(offsets @ linear.T, axis=-1)
        mask[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] |= (dist_mm <= radius).astype(np.uint8)
        nearest = np.clip(np.rint(centre).astype(int), 0, shape - 1)
        mask[tuple(nearest)] = 1
    return mask


def label_file_mask(path: str | os.PathLike, image: MetaTensor) -> np.ndarray:
    """A label file (any format :class:`~monai_lung.io.SimpleITKReader` reads) as a (i, j, k) uint8 0/1
    mask on the grid of ``image`` ((C, i, j, k) MetaTensor with a RAS affine), matched by world position
    with nearest-neighbour resampling; voxels outside the file are 0."""
    from monai.transforms import LoadImage

    from monai_lung.io.sitk_reader import SimpleITKReader
    from monai_lung.transforms.restore import resample_to_grid

    if str(image.meta.get("space", "RAS")) != "RAS":
        raise DataError(str(path), "label files need a RAS image grid (run Orientationd/Spacingd from LoadImaged output)")
    label = LoadImage(reader=SimpleITKReader(), image_only=True, ensure_channel_first=True)(str(path))
    arr = resample_to_grid(np.asarray(label[:1]), label.affine.numpy(), image.affine.numpy(), image.shape[1:], linear=False)
    return (arr[0] > 0).astype(np.uint8)


class NoduleMaskd(MapTransform):
    """Write a 0/1 nodule mask under ``keys`` from the entry's world-coordinate nodules.

    Input: ``data[image_key]`` a channel-first MetaTensor (C, i, j, k) whose ``affine`` maps to world mm
    (any grid: before or after ``Orientationd``/``Spacingd``), and ``data[nodules_key]`` a list of
    ``{"center": [x, y, z] world LPS mm, "diameter_mm": d}`` (empty: an all-zero mask).
    Output: ``data[key]`` a uint8 MetaTensor (1, i, j, k) with the image's affine and meta.

    Entries without ``nodules_key`` whose ``data[key]`` is a label file path (what MONAI Label's trainer
    hands a bundle: ``{"image": ..., "label": ...}`` with masks drawn in Slicer) get that file instead,
    read with :class:`~monai_lung.io.SimpleITKReader`, resampled (nearest neighbour) onto the image's grid
    by world position and binarised (label > 0). Without either, the mask is all zero.
    """

    def __init__(
        self,
        keys: KeysCollection = "label",
        image_key: str = "image",
        nodules_key: str = "nodules",
        radius_scale: float = 1.0,
        points_space: str = "LPS",
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        self.image_key = image_key
        self.nodules_key = nodules_key
        self.radius_scale = radius_scale
        self.points_space = points_space

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        image = d[self.image_key]
        if not isinstance(image, MetaTensor):
            raise TypeError(f"NoduleMaskd needs a MetaTensor under {self.image_key!r} (run LoadImaged first)")
        space = str(image.meta.get("space", "RAS"))
        source = image.meta.get("filename_or_obj")
        label_file = next((d[k] for k in self.keys if isinstance(d.get(k), (str, os.PathLike))), None)
        if self.nodules_key not in d and label_file is not None:
            mask = label_file_mask(label_file, image)
        else:
            centres, diameters = nodule_arrays(d.get(self.nodules_key))
            mask = sphere_mask(
                image.shape[1:], image.affine.numpy(), centres, diameters, space, self.points_space, self.radius_scale, source
            )
        for key in self.keys:  # the mask key does not exist yet, so not key_iterator
            label = MetaTensor(torch.from_numpy(mask[None]), affine=image.affine.clone(), meta=dict(image.meta))
            d[key] = label
        return d
