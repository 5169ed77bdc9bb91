"""Clinical attributes of a scan's findings: type, calcification, sizes as Lung-RADS measures them, location.

:func:`describe_finding` is the whole measurement of one finding, from the scan's CT (:class:`~.ct.ScanCT`), its
lungs (:class:`~.location.Lungs`) and the finding's centre (world LPS mm) and, when the detector gave one, its mask.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from monai_lung.clinical.composition import Composition, _reach_mm, nodule_composition
from monai_lung.clinical.ct import ScanCT, crop_spacing_mm, sample_mask, to_lps_affine
from monai_lung.clinical.location import Lungs, side_and_zone, touches_pleura
from monai_lung.findings import FindingMask

#: context (mm) around a finding's reach in its crop: the lung the composition rule compares it with
CONTEXT_MM = 8.0
#: the largest diameter (mm) a crop is sized for: Lung-RADS nodules end at 30 mm
MAX_DIAMETER_MM = 40.0


@dataclass
class Described:
    """One finding measured: :class:`~.composition.Composition` plus location; ``crop``/``crop_affine`` the CT around
    it (for pictures)."""

    composition: Composition
    side: str
    zone: str
    pleural: bool
    crop: np.ndarray = field(repr=False)
    crop_affine: np.ndarray = field(repr=False)

    def summary(self) -> dict:
        return {**self.composition.summary(), "side": self.side, "zone": self.zone, "touches_pleura": bool(self.pleural)}


def point_seed(hu: np.ndarray, affine: np.ndarray, centre_lps, diameter_mm: float) -> np.ndarray:
    """A seed for a finding known only by its centre and diameter: the ball of 0.45 of its diameter (0.75 mm at least)
    around the centre, less what is lung (below -650 HU) unless nothing else is left: the detector's refinement
    (:func:`~monai_lung.detection.sizing.refine_mask`) grows a solid nodule's seed by 2 mm at most."""
    affine = np.asarray(affine, dtype=np.float64)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in hu.shape], indexing="ij"), axis=-1)
    dist = np.linalg.norm(grid @ affine[:3, :3].T + affine[:3, 3] - np.asarray(centre_lps, dtype=np.float64), axis=-1)
    ball = dist <= max(0.45 * float(diameter_mm), 0.75)
    if not ball.any():
        ball = dist == dist.min()
    seed = ball & (np.asarray(hu) >= -650.0)
    return seed if seed.any() else ball


def describe_finding(ct: ScanCT, lungs: Lungs, centre_lps, diameter_mm: float, mask: FindingMask | None = None) -> Described:
    """Measure one finding (centre world LPS mm, the detector's diameter estimate in mm, its mask if any: a
    :class:`~monai_lung.findings.FindingMask`, on any grid)."""
    diameter = float(np.clip(diameter_mm, 3.0, MAX_DIAMETER_MM))  # a mass beyond 40 mm is measured within that reach
    spacing = crop_spacing_mm(diameter)
    half = 0.5 * diameter + _reach_mm(diameter) + CONTEXT_MM
    hu, affine = ct.crop(centre_lps, half, spacing)
    seed = None
    if mask is not None and np.any(mask.array):
        mask_affine = to_lps_affine(mask.affine, mask.space)
        seed = sample_mask(mask.array, mask_affine, affine, hu.shape)
        if not seed.any():  # a mask thinner than the crop's voxels: the voxel at its centroid
            centroid = mask_affine @ np.append(np.argwhere(mask.array).mean(axis=0), 1.0)
            seed = point_seed(hu, affine, centroid[:3], spacing)
    if seed is None:
        seed = point_seed(hu, affine, centre_lps, diameter)
    outside = ~sample_mask(lungs.mask, lungs.affine, affine, hu.shape) if lungs.found() else None
    comp = nodule_composition(hu, affine, seed, ct.blur_mm(), outside)
    side, zone = side_and_zone(lungs, centre_lps)
    return Described(comp, side, zone, touches_pleura(hu, affine, comp.mask, lungs), hu, affine)
