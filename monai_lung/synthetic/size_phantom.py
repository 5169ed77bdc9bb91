"""A single nodule of known size in a block of lung, for checking size measurements.

Kinds: ``"solid"`` (a ball at soft-tissue HU), ``"part_solid"`` (a ground-glass ball with a solid core of half its
diameter, off-centre), ``"juxta_pleural"`` (a solid ball whose centre lies half a radius from a flat chest wall, so
that a third of it is buried in the wall and only the lung side counts as nodule); for nodule types also
``"ground_glass"`` (a ball at ground-glass HU) and ``"calcified"`` (a solid ball with a calcified central core of
half its diameter). Voxels get the exact
partial-volume fraction of the shapes (supersampled), then a Gaussian blur like a CT's point-spread and noise.

Arrays are (i, j, k) = (x, y, z) voxel indices, the ``affine`` maps them to world LPS mm (axis-aligned).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

SIZE_PHANTOM_KINDS = ("solid", "part_solid", "juxta_pleural")
#: every kind :func:`size_phantom` draws: the size kinds and two more for checking nodule types
PHANTOM_KINDS = SIZE_PHANTOM_KINDS + ("ground_glass", "calcified")
LUNG_HU, SOLID_HU, GROUND_GLASS_HU, WALL_HU, CALCIFIED_HU = -850.0, 40.0, -550.0, 40.0, 600.0


def _fractions(shape, spacing, inside, supersample: int = 3) -> np.ndarray:
    """Fraction of each voxel (i, j, k) for which ``inside(x, y, z)`` (mm offsets from the block centre) holds."""
    out = np.zeros(shape, dtype=np.float32)
    centre = (np.asarray(shape) - 1) / 2.0
    axes = [(np.arange(n) - c) * s for n, c, s in zip(shape, centre, spacing)]
    offsets = (np.arange(supersample) + 0.5) / supersample - 0.5
    for a in offsets:
        for b in offsets:
            for c in offsets:
                x = (axes[0] + a * spacing[0])[:, None, None]
                y = (axes[1] + b * spacing[1])[None, :, None]
                z = (axes[2] + c * spacing[2])[None, None, :]
                out += inside(x, y, z)
    return out / supersample**3


def size_phantom(
    kind: str,
    diameter_mm: float,
    spacing_xyz=(0.7, 0.7, 1.25),
    rng: np.random.Generator | None = None,
    noise_hu: float = 20.0,
    blur_mm: float = 0.6,
) -> dict:
    """One nodule of ``diameter_mm`` in lung. Returns ``{"hu": (i, j, k) float32, "affine": 4x4 LPS,
    "truth": (i, j, k) float32 nodule fraction per voxel, "volume_mm3", "diameter_mm" (equivalent sphere),
    "longest_axial_mm", "centre_ijk"}``; the truth sizes count only the nodule (the lung side for juxta-pleural)."""
    if kind not in PHANTOM_KINDS:
        raise ValueError(f"kind must be one of {', '.join(PHANTOM_KINDS)}, got {kind!r}")
    rng = np.random.default_rng(0) if rng is None else rng
    spacing = np.asarray(spacing_xyz, dtype=np.float64)
    r = diameter_mm / 2.0
    half = r + 8.0
    shape = tuple(int(2 * np.ceil(half / s) + 1) for s in spacing)
    shift = rng.uniform(-0.5, 0.5, 3) * spacing  # the centre off the voxel grid

    def ball(radius, dx=0.0):
        return lambda x, y, z: ((x - shift[0] - dx) ** 2 + (y - shift[1]) ** 2 + (z - shift[2]) ** 2) <= radius**2

    wall_x = shift[0] + 0.5 * r
    if kind == "juxta_pleural":
        nodule = _fractions(shape, spacing, lambda x, y, z: ball(r)(x, y, z) & (x < wall_x))
        wall = _fractions(shape, spacing, lambda x, y, z: (x >= wall_x) & (y == y) & (z == z))
        hu = LUNG_HU + (SOLID_HU - LUNG_HU) * nodule + (WALL_HU - LUNG_HU) * wall
    elif kind == "part_solid":
        nodule = _fractions(shape, spacing, ball(r))
        core = _fractions(shape, spacing, ball(r / 2.0, dx=r / 4.0))
        hu = LUNG_HU + (GROUND_GLASS_HU - LUNG_HU) * nodule + (SOLID_HU - GROUND_GLASS_HU) * core
    elif kind == "ground_glass":
        nodule = _fractions(shape, spacing, ball(r))
        hu = LUNG_HU + (GROUND_GLASS_HU - LUNG_HU) * nodule
    elif kind == "calcified":
        nodule = _fractions(shape, spacing, ball(r))
        core = _fractions(shape, spacing, ball(r / 2.0))
        hu = LUNG_HU + (SOLID_HU - LUNG_HU) * nodule + (CALCIFIED_HU - SOLID_HU) * core
    else:
        nodule = _fractions(shape, spacing, ball(r))
        hu = LUNG_HU + (SOLID_HU - LUNG_HU) * nodule
    hu = ndimage.gaussian_filter(hu, blur_mm / spacing) + rng.normal(0.0, noise_hu, shape)
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = -((np.asarray(shape) - 1) / 2.0) * spacing
    volume = float(nodule.sum() * np.prod(spacing))
    return {
        "hu": hu.astype(np.float32), "affine": affine, "truth": nodule, "volume_mm3": volume,
        "diameter_mm": float(np.cbrt(6.0 * volume / np.pi)), "longest_axial_mm": float(diameter_mm),
        "centre_ijk": (np.asarray(shape) - 1) / 2.0 + shift / spacing,
    }


def phantom_seed(phantom: dict, shrink_mm: float = 1.0) -> np.ndarray:
    """A stage-1-like component for a phantom: the nodule's voxels shrunk by ``shrink_mm`` (grown when negative),
    at least the voxel at the centre."""
    truth = phantom["truth"] >= 0.5
    spacing = np.linalg.norm(phantom["affine"][:3, :3], axis=0)
    if shrink_mm > 0:
        seed = ndimage.distance_transform_edt(truth, sampling=spacing) > shrink_mm
    else:
        seed = ndimage.distance_transform_edt(~truth, sampling=spacing) <= -shrink_mm
        seed &= phantom["hu"] > -1e9
    centre = tuple(int(round(c)) for c in phantom["centre_ijk"])
    seed[centre] = True
    return seed
