"""A scan's CT in HU on its own voxels, for measuring findings: crops around them, a coarse copy for the lungs.

Conventions: world LPS mm (ITK physical points, the frame of the findings). Arrays handed out are (i, j, k) voxel
grids in ITK index order (x, y, z; ``sitk.GetArrayFromImage`` transposed) with a 4x4 ``affine`` mapping (i, j, k)
to world LPS mm.
"""

from __future__ import annotations

import os

import numpy as np
import SimpleITK as sitk

from monai_lung.clinical.composition import partial_volume_mm
from monai_lung.io.sitk_reader import lps_affine, read_sitk_image

#: HU given to crop voxels outside the scan (air)
OUTSIDE_HU = -1024.0
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def to_lps_affine(affine: np.ndarray, space: str) -> np.ndarray:
    """A 4x4 index -> world affine re-expressed to map into world LPS (``space`` "RAS" or "LPS")."""
    affine = np.asarray(affine, dtype=np.float64)
    return _RAS_TO_LPS @ affine if space.upper() == "RAS" else affine


def crop_spacing_mm(diameter_mm: float) -> float:
    """Isotropic voxel size (mm) of a finding's crop: fine enough for a 3 mm nodule (0.5 mm) and for the thin ground
    glass of a large one (0.8 mm at most, about a CT's pixel), coarse enough that a 30 mm one stays quick."""
    return float(np.clip(diameter_mm / 20.0, 0.5, 0.8))


def sample_mask(mask: np.ndarray, mask_affine: np.ndarray, target_affine: np.ndarray, target_shape) -> np.ndarray:
    """A bool (i, j, k) ``mask`` (index -> world affine ``mask_affine``) sampled, nearest voxel, at the voxel centres of
    the grid (``target_affine``, ``target_shape``); both affines map into the same world frame. Outside: False."""
    from scipy import ndimage

    to_mask = np.linalg.inv(np.asarray(mask_affine, dtype=np.float64)) @ np.asarray(target_affine, dtype=np.float64)
    out = ndimage.affine_transform(np.asarray(mask, dtype=np.uint8), to_mask[:3, :3], offset=to_mask[:3, 3],
                                   output_shape=tuple(int(n) for n in target_shape), order=0, mode="constant", cval=0)
    return out.astype(bool)


class ScanCT:
    """The CT of one scan in HU (a ``sitk.Image``, world LPS), read once, cropped per finding.

    Args:
        image: the scan as SimpleITK reads it (any direction, any pixel type; HU after DICOM rescale).
        source: its path, for messages.
    """

    def __init__(self, image: sitk.Image, source: str | os.PathLike | None = None):
        if image.GetDimension() != 3:
            raise ValueError(f"expected a 3D CT, got {image.GetDimension()}D")
        self.image = image
        self.source = None if source is None else str(source)
        self.affine = lps_affine(image)
        direction = np.abs(np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3))
        # the scan's voxel extent along world x, y, z (LPS): what a crop axis inherits as partial-volume blur
        self.voxel_mm_lps = direction @ np.asarray(image.GetSpacing(), dtype=np.float64)

    @classmethod
    def read(cls, path: str | os.PathLike) -> "ScanCT":
        """Read a scan file or a folder holding one DICOM series (:func:`~monai_lung.io.read_sitk_image`)."""
        return cls(read_sitk_image(path), path)

    def blur_mm(self) -> np.ndarray:
        """(3,) partial-volume width along world x, y, z, for crops (:func:`~.composition.partial_volume_mm`)."""
        return partial_volume_mm(self.voxel_mm_lps)

    def crop(self, centre_lps, half_mm: float, spacing_mm: float) -> tuple[np.ndarray, np.ndarray]:
        """``(hu, affine)``: the CT resampled (linear) on an axis-aligned grid of ``spacing_mm`` voxels covering
        ``centre_lps`` +- ``half_mm`` (world LPS mm); ``hu`` is float32 (i, j, k) = (x, y, z), :data:`OUTSIDE_HU`
        beyond the scan."""
        n = int(2 * np.ceil(half_mm / spacing_mm) + 1)
        origin = np.asarray(centre_lps, dtype=np.float64) - (n - 1) / 2.0 * spacing_mm
        out = sitk.Resample(self.image, [n, n, n], sitk.Transform(), sitk.sitkLinear, tuple(float(v) for v in origin),
                            (float(spacing_mm),) * 3, tuple(np.eye(3).ravel()), OUTSIDE_HU, sitk.sitkFloat32)
        affine = np.diag([spacing_mm, spacing_mm, spacing_mm, 1.0])
        affine[:3, 3] = origin
        return sitk.GetArrayFromImage(out).transpose(2, 1, 0), affine

    def coarse(self, target_mm: float = 4.0) -> tuple[np.ndarray, np.ndarray]:
        """``(hu, affine)``: the CT averaged over blocks of about ``target_mm`` (``sitk.BinShrink``, on the scan's own
        axes), float32 (i, j, k) with its LPS affine: enough for the lungs and for registering two scans."""
        factors = [max(1, int(round(target_mm / s))) for s in self.image.GetSpacing()]
        small = sitk.Cast(sitk.BinShrink(self.image, factors), sitk.sitkFloat32)
        return sitk.GetArrayFromImage(small).transpose(2, 1, 0), lps_affine(small)
