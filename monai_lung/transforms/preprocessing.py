"""The CT preprocessing every stage shares, as a MONAI transform chain.

The bundle configs spell the same chain out transform by transform (so that it is visible and
overridable there; `detect`, bundle inference and MONAI Label run it); Python callers (crop bank, hard-negative
miner, stage-2 scoring, benchmarks) build it here. Both give a (1, i, j, k) float32 MetaTensor on a ``spacing``
grid in RAS orientation, intensities ``hu_window`` -> [0, 1] clipped: ``tests/test_bundle_conformance.py`` holds
every bundle's chain equal to this one, voxel for voxel, on the shared real CT and on a phantom.
"""

from __future__ import annotations

from typing import Sequence

from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Orientationd, ScaleIntensityRanged, Spacingd

from monai_lung.io.sitk_reader import SimpleITKReader

DEFAULT_SPACING = (1.0, 1.0, 1.0)
DEFAULT_HU_WINDOW = (-1000.0, 400.0)


def ct_preprocessing(
    keys: str = "image", spacing: Sequence[float] = DEFAULT_SPACING, hu_window: Sequence[float] = DEFAULT_HU_WINDOW
) -> Compose:
    """``LoadImaged`` (SimpleITK, resampling to ``spacing`` mm on read) -> ``EnsureChannelFirstd`` ->
    ``Orientationd`` (RAS) -> ``Spacingd`` (a no-op safety net) -> ``ScaleIntensityRanged`` (clipped)."""
    return Compose(
        [
            LoadImaged(keys, reader=SimpleITKReader(spacing=spacing), image_only=True),
            EnsureChannelFirstd(keys),
            Orientationd(keys, axcodes="RAS", labels=None),
            Spacingd(keys, pixdim=spacing, mode="bilinear"),
            ScaleIntensityRanged(keys, a_min=hu_window[0], a_max=hu_window[1], b_min=0.0, b_max=1.0, clip=True),
        ]
    )
