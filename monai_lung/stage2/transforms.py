"""Stage-2 training transforms of our own."""

from __future__ import annotations

import os
from typing import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform

from monai_lung.stage2.bank import centre_view


class ContextSwapd(RandomizableTransform, MapTransform):
    """Give a crop the surroundings of a random negative crop, keeping its centre (and its label).

    A crop's label is decided by its centre, but a network also sees 32-48 mm of context; with a few dozen
    training nodules it learns their surroundings (hilum, pleura, vessel-rich regions) instead of the
    nodules. Replacing everything farther than a core radius from the centre by another scan's
    surroundings breaks that shortcut. The core keeps the whole nodule: its radius is at least the
    nodule's (``diameter_mm / 2``) plus ``margin_mm``, and otherwise uniform in ``radius_mm`` for
    positives and negatives alike (so the core size tells nothing about the label). The two parts are
    blended from 99 % to 1 % over +-``edge_mm`` around the core radius, so the seam is smooth. Donors are negatives only, so no nodule is pasted
    into the surroundings.

    Apply it first, on the stored (1, S, S, S) crop (1 mm voxels, point at voxel S // 2), before the
    final crop and spatial augmentation, so the seam is rotated and shifted like the rest.

    Args:
        keys: the crop key (``image``).
        bank_dir: the crop bank the donors come from (typically the training bank).
        data: data-list entries whose negatives are donors (None: the whole bank).
        prob: probability of swapping.
        radius_mm: (min, max) core radius in mm.
        margin_mm: core radius margin beyond a nodule's radius.
        diameter_key: item key holding the nodule diameter in mm (NaN or absent for negatives).
        edge_mm: half-width of the blend between core and surroundings.
    """

    backend = ["torch"]

    def __init__(
        self,
        keys: KeysCollection,
        bank_dir: str | os.PathLike,
        data: Sequence[Mapping] | None = None,
        prob: float = 0.5,
        radius_mm: Sequence[float] = (8.0, 16.0),
        margin_mm: float = 4.0,
        diameter_key: str = "diameter_mm",
        edge_mm: float = 1.5,
        allow_missing_keys: bool = False,
    ):
        from monai_lung.stage2.dataset import CropBankDataset

        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        donors = CropBankDataset(bank_dir, data=data)
        self.bank = donors.bank
        neg = donors.index[donors.index["label"] == 0]
        if len(neg) == 0:
            raise ValueError(f"{bank_dir}: no negative crops to take surroundings from")
        self.donor_uid = neg["seriesuid"].to_numpy(dtype=str)
        self.donor_row = neg["row"].to_numpy(dtype=np.int64)
        self.radius_mm, self.margin_mm = (float(radius_mm[0]), float(radius_mm[1])), float(margin_mm)
        self.diameter_key, self.edge_mm = diameter_key, float(edge_mm)
        self._crops: dict[str, np.ndarray] = {}
        self._donor = 0
        self._radius = self.radius_mm[0]
        self._masks: dict[tuple, torch.Tensor] = {}

    def randomize(self, data=None) -> None:
        super().randomize(None)
        self._donor = int(self.R.randint(len(self.donor_row)))
        self._radius = float(self.R.uniform(*self.radius_mm))

    def _donor_crop(self, size: int | None = None) -> np.ndarray:
        """The drawn donor's stored crop, its central ``size``³ (:func:`centre_view`; None: whole), as float32."""
        uid = self.donor_uid[self._donor]
        if uid not in self._crops:
            self._crops[uid] = self.bank.load_crops(uid)
        return np.asarray(centre_view(self._crops[uid][self.donor_row[self._donor]], size), dtype=np.float32)

    def _keep_mask(self, size: tuple, radius: float) -> torch.Tensor:
        """(S, S, S) weight of the own crop: ~1 within ``radius`` mm of the centre voxel S // 2, ~0 beyond.

        Cached per 0.5 mm of radius (the radius is random, the mask costs more than the blend).
        """
        key = (size, round(radius * 2) / 2)
        if key not in self._masks:
            axes = [torch.arange(s, dtype=torch.float32) - s // 2 for s in size]
            dist = torch.sqrt(sum(g**2 for g in torch.meshgrid(*axes, indexing="ij")))
            # logistic step from 99 % own crop at radius - edge_mm to 1 % at radius + edge_mm (logit(0.99) = 4.6)
            self._masks[key] = torch.sigmoid((key[1] - dist) * 4.6 / max(self.edge_mm, 1e-3))
        return self._masks[key]

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        self.randomize()
        if not self._do_transform:
            return d
        diameter = float(d.get(self.diameter_key, np.nan)) if self.diameter_key in d else np.nan
        radius = max(self._radius, diameter / 2.0 + self.margin_mm) if np.isfinite(diameter) else self._radius
        for key in self.key_iterator(d):
            img = d[key]
            size = img.shape[1:]
            donor = torch.from_numpy(self._donor_crop(size[-1])).to(img.dtype)
            if tuple(donor.shape) != tuple(size):
                raise ValueError(f"donor crop {tuple(donor.shape)} does not match the crop {tuple(size)}")
            keep = self._keep_mask(tuple(size), radius).to(img.dtype)
            d[key] = torch.lerp(donor[None], torch.as_tensor(img), keep[None])
        return d
