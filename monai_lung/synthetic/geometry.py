"""Scan geometry of a synthetic CT: matrix size, voxel spacing, origin, and LUNA16-like seriesuids.

Conventions: SimpleITK/ITK physical points (world LPS, mm) with an identity direction, so a voxel with
SimpleITK index ``(ix, iy, iz)`` (numpy array element ``[iz, iy, ix]``) has its centre at
``origin + index * spacing``; +x points to the patient's left, +y posterior, +z superior (head).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: LUNA16's seriesuids all start with this prefix (LIDC-IDRI's DICOM root), then 30 digits.
UID_PREFIX = "1.3.6.1.4.1.14519.5.2.1.6279.6001."

#: Slice spacings (mm) and how often they are drawn. The mean gives about 190 slices for 300 mm of z,
#: like LUNA16, where thin-slice scans are the minority.
SLICE_SPACINGS_MM = (1.0, 1.25, 1.5, 2.0, 2.5)
SLICE_SPACING_PROBS = (0.10, 0.25, 0.20, 0.20, 0.25)

#: Physical z extent (mm) of a default-size (512) scan; smaller ``size`` scales it by ``size / 512``.
Z_EXTENT_MM = (260.0, 340.0)


def random_seriesuid(rng: np.random.Generator) -> str:
    """A LUNA16-looking seriesuid: :data:`UID_PREFIX` + 30 digits (no leading zero), drawn from ``rng``."""
    digits = rng.integers(0, 10, size=30)
    digits[0] = rng.integers(1, 10)
    return UID_PREFIX + "".join(str(int(d)) for d in digits)


@dataclass(frozen=True)
class ScanGeometry:
    """Voxel grid of one scan.

    Attributes:
        shape_zyx: numpy array shape (z, y, x) in voxels.
        spacing_xyz: voxel spacing (x, y, z) in mm.
        origin_xyz: world LPS position (x, y, z) in mm of the centre of voxel index (0, 0, 0).
    """

    shape_zyx: tuple[int, int, int]
    spacing_xyz: tuple[float, float, float]
    origin_xyz: tuple[float, float, float]

    def axis_mm(self, axis: str) -> np.ndarray:
        """World coordinates (mm, float64, 1-D) of the voxel centres along ``axis`` ("x", "y" or "z")."""
        i = "xyz".index(axis)
        n = self.shape_zyx[2 - i]
        return self.origin_xyz[i] + np.arange(n, dtype=np.float64) * self.spacing_xyz[i]

    @property
    def extent_min_xyz(self) -> np.ndarray:
        """World (x, y, z) mm of the first voxel centre."""
        return np.asarray(self.origin_xyz, dtype=np.float64)

    @property
    def extent_max_xyz(self) -> np.ndarray:
        """World (x, y, z) mm of the last voxel centre."""
        n_xyz = np.asarray(self.shape_zyx[::-1], dtype=np.float64)
        return self.extent_min_xyz + (n_xyz - 1.0) * np.asarray(self.spacing_xyz)


def sample_geometry(
    rng: np.random.Generator, size: int = 512, slice_spacing_mm: float | None = None, num_slices: int | None = None
) -> ScanGeometry:
    """Draw a CT geometry: ``size`` x ``size`` in-plane, realistic spacing, z extent scaled by ``size / 512``.

    In-plane spacing U(0.6, 0.9) mm and slice spacing from :data:`SLICE_SPACINGS_MM` at every ``size``; the
    field of view (``size * spacing``) and the z extent shrink with ``size`` (the anatomy is scaled to
    fit, see :mod:`monai_lung.synthetic`). Origins are like LUNA16's: x, y about -(FOV / 2), z in
    about [-330, -60] mm. ``slice_spacing_mm`` and ``num_slices`` fix the slice grid instead (e.g. 0.6 mm and
    800 slices, the largest LUNA16 scans, for memory benchmarks); the anatomy then fills that z extent.
    """
    if size < 32:
        raise ValueError(f"size must be at least 32, got {size}")
    if slice_spacing_mm is not None and not slice_spacing_mm > 0:
        raise ValueError(f"slice_spacing_mm must be positive, got {slice_spacing_mm}")
    if num_slices is not None and num_slices < 12:
        raise ValueError(f"num_slices must be at least 12, got {num_slices}")
    scale = size / 512.0
    sxy = float(np.round(rng.uniform(0.6, 0.9), 4))
    sz = float(rng.choice(SLICE_SPACINGS_MM, p=SLICE_SPACING_PROBS))
    extent_z = rng.uniform(*Z_EXTENT_MM) * scale
    if slice_spacing_mm is not None:
        sz = float(slice_spacing_mm)
    nz = max(int(round(extent_z / sz)), 12) if num_slices is None else int(num_slices)
    ox = -0.5 * (size - 1) * sxy + rng.uniform(-12.0, 12.0) * scale
    oy = -0.5 * (size - 1) * sxy + rng.uniform(-20.0, 12.0) * scale
    oz = rng.uniform(-330.0, -60.0)
    origin = tuple(float(np.round(v, 4)) for v in (ox, oy, oz))
    return ScanGeometry(shape_zyx=(nz, size, size), spacing_xyz=(sxy, sxy, sz), origin_xyz=origin)
