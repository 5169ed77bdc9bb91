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


def _block(kind, kinds, diameter_mm, spacing_xyz, rng, margin_mm):
    """``(rng, spacing (3,), radius, shape, shift)`` of a phantom block: ``margin_mm`` of lung beyond the lesion's
    radius, its centre ``shift`` mm off the voxel grid."""
    if kind not in kinds:
        raise ValueError(f"kind must be one of {', '.join(kinds)}, got {kind!r}")
    rng = np.random.default_rng(0) if rng is None else rng
    spacing = np.asarray(spacing_xyz, dtype=np.float64)
    r = diameter_mm / 2.0
    shape = tuple(int(2 * np.ceil((r + margin_mm) / s) + 1) for s in spacing)
    return rng, spacing, r, shape, rng.uniform(-0.5, 0.5, 3) * spacing


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
    rng, spacing, r, shape, shift = _block(kind, PHANTOM_KINDS, diameter_mm, spacing_xyz, rng, margin_mm=8.0)

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
    return _finish(hu, nodule, spacing, shift, diameter_mm, rng, noise_hu, blur_mm)


def _finish(hu, truth, spacing, shift, diameter_mm, rng, noise_hu, blur_mm) -> dict:
    """A phantom's blurred, noisy HU (the point-spread, then noise) and its truth, on a block centred at world 0."""
    hu = ndimage.gaussian_filter(hu, blur_mm / spacing) + rng.normal(0.0, noise_hu, hu.shape)
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = -((np.asarray(hu.shape) - 1) / 2.0) * spacing
    volume = float(truth.sum() * np.prod(spacing))
    return {
        "hu": hu.astype(np.float32), "affine": affine, "truth": truth, "volume_mm3": volume,
        "diameter_mm": float(np.cbrt(6.0 * volume / np.pi)), "longest_axial_mm": float(diameter_mm),
        "centre_ijk": (np.asarray(hu.shape) - 1) / 2.0 + shift / spacing,
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


MASS_PHANTOM_KINDS = ("peripheral", "central")
MED_FAT_HU, VESSEL_HU = -90.0, 40.0


def _tube(p0, p1, radius):
    """``inside(x, y, z)`` of a cylinder of ``radius`` mm around the infinite line through ``p0`` and ``p1`` (mm)."""
    p0, d = np.asarray(p0, dtype=np.float64), np.asarray(p1, dtype=np.float64) - np.asarray(p0, dtype=np.float64)
    d = d / np.linalg.norm(d)

    def inside(x, y, z):
        rx, ry, rz = x - p0[0], y - p0[1], z - p0[2]
        t = rx * d[0] + ry * d[1] + rz * d[2]
        return (rx - t * d[0]) ** 2 + (ry - t * d[1]) ** 2 + (rz - t * d[2]) ** 2 <= radius**2

    return inside


def mass_phantom(
    kind: str, diameter_mm: float, spacing_xyz=(0.8, 0.8, 1.25), rng: np.random.Generator | None = None,
    noise_hu: float = 20.0, blur_mm: float = 0.6,
) -> dict:
    """A lung mass of ``diameter_mm`` (a ball at soft-tissue HU) in a block of lung with vessels running into it.

    ``"peripheral"``: the ball's centre lies 0.6 radius from a flat chest wall (x beyond ``wall_x``, soft tissue), so
    its outer part is buried in the wall and only the lung side is mass; ``"central"``: the same against a mediastinum
    of fat with a 20 mm vessel running along the pleura, so the mass touches both. Three 4-8 mm vessels cross the
    lung through the mass. Returns :func:`size_phantom`'s keys (the truth counts the mass in the lung only) and
    ``"lung"``: (i, j, k) bool, the block's lung side of the wall (a perfect lung region, mass included).
    """
    rng, spacing, r, shape, shift = _block(kind, MASS_PHANTOM_KINDS, diameter_mm, spacing_xyz, rng, margin_mm=25.0)
    wall_x = shift[0] + 0.6 * r

    def in_lung(x, y, z):
        return (x < wall_x) & (y == y) & (z == z)

    ball = lambda x, y, z: ((x - shift[0]) ** 2 + (y - shift[1]) ** 2 + (z - shift[2]) ** 2) <= r**2  # noqa: E731
    mass = _fractions(shape, spacing, lambda x, y, z: ball(x, y, z) & in_lung(x, y, z))
    lung = _fractions(shape, spacing, in_lung)
    vessels = np.zeros(shape, dtype=np.float32)
    for _ in range(3):  # vessels through the mass, from lung to lung
        d = rng.standard_normal(3)
        d[0] = -abs(d[0]) - 0.3
        inside = _tube(shift, shift + d, rng.uniform(2.0, 4.0))
        vessels = np.maximum(vessels, _fractions(shape, spacing, lambda x, y, z, f=inside: f(x, y, z) & in_lung(x, y, z), supersample=2))
    beyond = 1.0 - lung
    if kind == "central":  # fat, and a large vessel along the mediastinal pleura
        big = _fractions(shape, spacing, lambda x, y, z: _tube((wall_x + 11.0, shift[1] + r, 0.0), (wall_x + 11.0, shift[1] + r, 1.0), 10.0)(x, y, z)
                         & ~in_lung(x, y, z))
        hu = LUNG_HU * lung + MED_FAT_HU * (beyond - big) + VESSEL_HU * big
    else:
        hu = LUNG_HU * lung + WALL_HU * beyond
    soft = np.maximum(mass, vessels * lung)
    hu = hu + (SOLID_HU - LUNG_HU) * soft
    return {**_finish(hu, mass, spacing, shift, diameter_mm, rng, noise_hu, blur_mm), "lung": lung >= 0.5}
