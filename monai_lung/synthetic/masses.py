"""Lung masses: soft-tissue lesions of 3-8 cm (Lung-RADS 4B and up), opt-in in the generator.

LUNA16 annotates nodules of 3-30 mm only, so the default phantoms hold none of these; a scan asks for them by kind:

- ``"central"``: centred beside a hilum, on the lung side of the mediastinum, so that it touches the mediastinum
  and the hilar vessels;
- ``"peripheral"``: centred less than a radius from the chest wall (or diaphragm), so that its outer part lies
  against the pleura, flattened as a real one pushing against the wall.

A mass is a lobulated sphere at soft-tissue density drawn into the lung only (it replaces aerated lung and
engulfs the vessels in it; the wall and mediastinum it leans on keep their own tissue), so its true extent is
what was drawn: the drawing's voxel shares give its volume (partial volume included), centroid and mask.

Masses are placed with their own random generator, after everything else, so that a scan with masses is the same
chest as the scan without them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from monai_lung.synthetic.anatomy import ABDOMEN, LIVER, LUNG, NUM_LABELS, WALL_LUT, Anatomy

MASS_KINDS = ("central", "peripheral")
#: diameters of the drawn ball (mm): Lung-RADS calls solid lesions from 3 cm on masses
MASS_DIAMETER_MM = (30.0, 80.0)
MASS_HU = (20.0, 60.0)
#: the labels a mass is drawn into: it fills lung, not the wall or mediastinum it touches
MASS_OK_LUT = np.zeros(NUM_LABELS, dtype=bool)
MASS_OK_LUT[LUNG] = True

_DIRS = np.array([(i, j, k) for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1) if (i, j, k) != (0, 0, 0)], float)
_DIRS /= np.linalg.norm(_DIRS, axis=1, keepdims=True)


@dataclass
class Mass:
    """One mass to draw: ``centre`` world LPS (x, y, z) mm of the ball, its ``diameter`` (mm), ``kind``, ``hu``,
    P2 ``lobes`` (3, 3) with amplitudes ``lobe_amp`` (3,) as for nodules."""

    centre: np.ndarray
    diameter: float
    kind: str
    hu: float
    lobes: np.ndarray
    lobe_amp: np.ndarray


def max_mass_diameter(anat: Anatomy) -> float:
    """The largest mass (mm) a hemithorax holds: 0.9 of its width, 0.55 of its depth (it may flatten against the walls)."""
    p = anat.p
    return float(min(MASS_DIAMETER_MM[1], 0.9 * (p["Ac"] - p["wm"]), 1.1 * p["Bc"]))


def _lung_share(anat: Anatomy, c: np.ndarray, r: float) -> float:
    """Share of 26 points on the sphere (``c``, ``r``) that lie in the lung."""
    return float(anat.in_lung(c[None, :] + _DIRS * r).mean())


def _free(c: np.ndarray, r: float, taken) -> bool:
    return all(np.linalg.norm(c - c2) > r + r2 + 5.0 for c2, r2 in taken)


def _central(rng: np.random.Generator, anat: Anatomy, r: float, taken, tries: int = 40) -> np.ndarray | None:
    """A centre beside a hilum: lateral of it by a bit more than half a radius, so the mass reaches the mediastinum."""
    for _ in range(tries):
        side = "R" if rng.uniform() < 0.5 else "L"
        h = anat.hilum(side)
        lateral = np.array([-1.0 if side == "R" else 1.0, 0.0, 0.0])
        c = h + lateral * rng.uniform(0.55, 0.8) * r + np.array([0.0, rng.uniform(-0.3, 0.3) * r, rng.uniform(-0.4, 0.4) * r])
        c = np.round(c, 3)
        if not anat.in_lung(c[None, :])[0] or not _free(c, r, taken):
            continue
        if not 0.4 <= _lung_share(anat, c, r) <= 0.9:  # touching the mediastinum, mostly in the lung
            continue
        return c
    return None


def _peripheral(rng: np.random.Generator, anat: Anatomy, r: float, taken, tries: int = 40) -> np.ndarray | None:
    """A centre inside the lung less than a radius from the chest wall or diaphragm, found by walking a ray from a
    random lung point to where the lung ends."""
    lo, hi = anat.lung_box()
    for _ in range(tries):
        start = rng.uniform(lo, hi)
        if not anat.in_lung(start[None, :])[0]:
            continue
        d = rng.standard_normal(3)
        d[2] *= 0.35  # mostly towards the ribs
        d /= np.linalg.norm(d)
        s = np.arange(1, int(np.linalg.norm(hi - lo) / 1.0) + 1) * 1.0
        pts = start[None, :] + d[None, :] * s[:, None]
        lab = anat.labels_at_points(pts)
        k = int(np.argmax(lab != LUNG))
        if lab[k] == LUNG or not (WALL_LUT[lab[k]] or lab[k] in (LIVER, ABDOMEN)):
            continue
        c = np.round(pts[k] - d * rng.uniform(0.55, 0.85) * r, 3)
        if not anat.in_lung(c[None, :])[0] or not _free(c, r, taken):
            continue
        if _lung_share(anat, c, r) < 0.5:
            continue
        return c
    return None


def place_masses(rng: np.random.Generator, anat: Anatomy, kinds, taken=()) -> list[Mass]:
    """One mass per entry of ``kinds`` (:data:`MASS_KINDS`), diameters uniform in :data:`MASS_DIAMETER_MM` up to
    :func:`max_mass_diameter`, away from the ``taken`` ``(centre, radius)`` balls (nodules) and each other; a mass
    that finds no room is tried smaller, then dropped."""
    taken = list(taken)
    d_max = max_mass_diameter(anat)
    out = []
    for kind in kinds:
        if kind not in MASS_KINDS:
            raise ValueError(f"mass kind must be one of {', '.join(MASS_KINDS)}, got {kind!r}")
        d = float(np.round(rng.uniform(MASS_DIAMETER_MM[0], max(MASS_DIAMETER_MM[0], d_max)), 1))
        c = None
        for shrink in (1.0, 0.85, 0.7):
            dd = max(MASS_DIAMETER_MM[0], d * shrink)
            c = (_central if kind == "central" else _peripheral)(rng, anat, 0.5 * dd, taken)
            if c is not None:
                d = dd
                break
        if c is None:
            continue
        v = rng.standard_normal((3, 3))
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        out.append(Mass(c, d, kind, float(rng.uniform(*MASS_HU)), v, rng.uniform(-0.12, 0.12, 3)))
        taken.append((c, 0.5 * d))
    return out


def drawn_mass(box, alpha: np.ndarray, geom) -> dict:
    """The truth of a drawn mass from the canvas box (z, y, x slices) and its voxel shares: ``coord_xyz`` (the
    share-weighted centroid, world LPS mm), ``volume_mm3``, ``diameter_mm`` (equivalent sphere) and ``mask`` (the
    voxels at least half taken, bool, (z, y, x) within ``box``)."""
    spacing = np.asarray(geom.spacing_xyz, dtype=np.float64)
    total = float(alpha.sum())
    if total <= 0:
        return {"coord_xyz": (np.nan, np.nan, np.nan), "volume_mm3": 0.0, "diameter_mm": 0.0, "mask": alpha > 0.5}
    zyx = [np.arange(sl.start, sl.stop, dtype=np.float64) for sl in box]
    weights = [alpha.sum(axis=tuple(a for a in range(3) if a != axis)) for axis in range(3)]
    centre_zyx = [float((w * idx).sum() / total) for w, idx in zip(weights, zyx)]
    coord = np.asarray(geom.origin_xyz, dtype=np.float64) + np.asarray(centre_zyx[::-1]) * spacing
    volume = total * float(np.prod(spacing))
    return {"coord_xyz": tuple(float(v) for v in np.round(coord, 3)), "volume_mm3": volume,
            "diameter_mm": float(np.cbrt(6.0 * volume / np.pi)), "mask": alpha >= 0.5}
