"""Nodules (four kinds, six in the opt-in screening mix), small excluded findings, and where to put them.

Kinds and their HU before blur and noise (:data:`NODULE_HU`):

- ``solid``: a slightly lobulated sphere (three P2 lobes, stronger for bigger nodules), larger ones sometimes
  spiculated, entirely inside the lung and off the vessels;
- ``juxta_pleural``: the same, centred within one radius of the pleura so that it leans on (and is flattened
  against) the chest wall or diaphragm;
- ``juxta_vascular``: the same, touching the side of a 1.6–7 mm vessel;
- ``ground_glass``: a hazy blob with a wide soft edge, at least 5 mm, off the vessels.

The ``screening`` mix (:data:`KIND_MIXES`, opt-in: the default ``luna16`` mix draws exactly the scans it always
drew) adds the kinds Lung-RADS tells apart:

- ``part_solid``: a ground-glass blob (at least 6 mm) with a solid core of 30-60 % of its diameter near its
  centre (:data:`PART_SOLID_CORE_FRACTION`); its annotation also carries ``solid_diameter_mm``;
- ``calcified``: a solid nodule that is calcified throughout (``diffuse``) or in a central core
  (``central``, 30-50 % of its diameter), at :data:`CALCIFICATION_HU`; its annotation carries ``calcification``.

Diameters (3–30 mm, capped by half the width of a hemithorax in small scans) follow LUNA16's: ``d - 3`` is
log-normal (:data:`DIAMETER_LOG_MEAN`, :data:`DIAMETER_LOG_SD`), fitted to the nodules of LUNA16's
``annotations.csv`` (a public copy with 1,117 of its 1,186 rows: mean 8.3 mm, median 6.4 mm, 4% under 4 mm,
23% under 5 mm, 11% over 15 mm). The law gives 5% under 4 mm, 22% under 5 mm, 7% over 15 mm and a median of
6.7 mm. LUNA16 has few 3–4 mm nodules because its readers' consensus (3 of 4) keeps few of them, so
phantoms with more would make the detector look worse than it is on LUNA16.
Centres are snapped to within a fifth of a slice of a slice centre, as readers mark nodules on slices; that
also keeps a 3 mm nodule visible in the slice its annotation points at.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.special import ndtr, ndtri

from monai_lung.synthetic.anatomy import LUNG, WALL_LUT, LIVER, ABDOMEN, Anatomy
from monai_lung.synthetic.vessels import VesselTree

KINDS = ("solid", "juxta_pleural", "juxta_vascular", "ground_glass")
KIND_PROBS = (0.40, 0.25, 0.20, 0.15)
#: nodule kind mixes by name: ``luna16`` (the default, LUNA16-like) and ``screening`` (adds part-solid and calcified)
KIND_MIXES = {
    "luna16": (KINDS, KIND_PROBS),
    "screening": (KINDS + ("part_solid", "calcified"), (0.30, 0.15, 0.15, 0.15, 0.15, 0.10)),
}
#: solid core diameter of a part-solid nodule, as a fraction of the whole nodule's
PART_SOLID_CORE_FRACTION = (0.3, 0.6)
#: HU of a calcified nodule's calcification before partial volume, blur and noise
CALCIFICATION_HU = (300.0, 900.0)

#: HU ranges the nodule interiors are drawn with (before partial volume, blur and noise).
NODULE_HU = {
    "solid": (30.0, 80.0),
    "juxta_pleural": (30.0, 80.0),
    "juxta_vascular": (30.0, 80.0),
    "ground_glass": (-600.0, -400.0),
    "part_solid": (-600.0, -400.0),  # the ground-glass part; the core is drawn at "solid" HU
    "calcified": (30.0, 80.0),  # the soft-tissue part; the calcification is drawn at CALCIFICATION_HU
    "small": (40.0, 160.0),
}

#: HU the voxel at an annotated nodule centre has in the finished scan (after blur and noise), per kind.
#: Solid kinds lose a little to partial volume in thick slices; ground glass sits far above lung (-850).
CENTRE_HU_RANGE = {
    "solid": (-350.0, 300.0),
    "juxta_pleural": (-350.0, 300.0),
    "juxta_vascular": (-350.0, 300.0),
    "ground_glass": (-750.0, -250.0),
    "part_solid": (-350.0, 300.0),  # the centre lies in the solid core
    "calcified": (0.0, 1000.0),
}

D_MIN, D_MAX = 3.0, 30.0
#: ln(d - 3 mm) of LUNA16's annotated nodules: mean and standard deviation (module docstring)
DIAMETER_LOG_MEAN, DIAMETER_LOG_SD = 1.33, 0.83
GGO_MIN_D = 5.0

# 26 directions (cube faces, edges, corners) for checking that a sphere lies in the lung
_DIRS = np.array([(i, j, k) for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1) if (i, j, k) != (0, 0, 0)], float)
_DIRS /= np.linalg.norm(_DIRS, axis=1, keepdims=True)


@dataclass
class Nodule:
    """One nodule or small finding to draw. ``centre`` is world LPS (x, y, z) mm, sizes in mm, ``hu`` in HU."""

    centre: np.ndarray
    diameter: float
    kind: str
    hu: float
    edge_mm: float
    lobes: np.ndarray
    lobe_amp: np.ndarray
    spicules: list  # [(start (3,), end (3,), r0, r1)] world mm
    # blobs drawn over the nodule, brightening it: [(centre (3,) world mm, radius mm, hu, edge mm)]: a part-solid
    # nodule's solid core, a calcified nodule's central calcification
    inner: list = field(default_factory=list)
    extra: dict = field(default_factory=dict)  # kind-specific truth for the annotation (``solid_diameter_mm``, ...)

    def as_dict(self) -> dict:
        return {"coord_xyz": tuple(float(v) for v in self.centre), "diameter_mm": float(self.diameter), "kind": self.kind, **self.extra}


def sample_diameter(rng: np.random.Generator, d_max: float) -> float:
    """A diameter in [3, d_max] mm with LUNA16's size distribution (see the module docstring): the shifted
    log-normal truncated at ``d_max``, drawn by its inverse CDF from one uniform number (so the rest of a
    scan's random stream does not depend on the size drawn)."""
    d_max = float(np.clip(d_max, D_MIN + 0.1, D_MAX))
    top = ndtr((np.log(d_max - D_MIN) - DIAMETER_LOG_MEAN) / DIAMETER_LOG_SD)  # CDF at d_max: the truncation
    u = rng.uniform()
    d = D_MIN + np.exp(DIAMETER_LOG_MEAN + DIAMETER_LOG_SD * ndtri(np.clip(u * top, 1e-12, 1.0 - 1e-12)))
    return float(np.round(np.clip(d, D_MIN, d_max), 2))


def max_diameter(anat: Anatomy) -> float:
    """Largest nodule diameter (mm) that fits the scan's lungs comfortably: half a hemithorax width, at most 30."""
    p = anat.p
    return float(min(D_MAX, 0.5 * (p["Ac"] - p["wm"]), 0.5 * p["Bc"]))


class Placer:
    """Finds free spots for nodules in one scan's lungs, avoiding each other (and vessels where asked)."""

    def __init__(self, rng: np.random.Generator, anat: Anatomy, tubes: VesselTree, vessels: VesselTree):
        self.rng = rng
        self.anat = anat
        self.tubes = tubes  # vessels and airways: what solid and ground-glass nodules keep off
        self.vessels = vessels
        self.taken: list[tuple[np.ndarray, float]] = []  # (centre, radius)
        g = anat.geom
        self.oz, self.sz = g.origin_xyz[2], g.spacing_xyz[2]
        self.sxy = g.spacing_xyz[0]

    # -- helpers
    def lung_points(self, n: int) -> np.ndarray:
        """About ``n`` uniformly random lung points (M, 3) world mm (rejection sampling in the lung box)."""
        lo, hi = self.anat.lung_box()
        out = []
        got = 0
        for _ in range(20):
            pts = self.rng.uniform(lo, hi, size=(max(4 * n, 64), 3))
            pts = pts[self.anat.in_lung(pts)]
            out.append(pts)
            got += len(pts)
            if got >= n:
                break
        pts = np.concatenate(out) if out else np.zeros((0, 3))
        return pts[:n]

    def snap_z(self, c: np.ndarray) -> np.ndarray:
        c = c.copy()
        k = np.round((c[2] - self.oz) / self.sz)
        c[2] = self.oz + (k + self.rng.uniform(-0.2, 0.2)) * self.sz
        return c

    def lung_fraction(self, c: np.ndarray, r: float) -> float:
        """Share of 26 points on the sphere (``c``, 1.1 ``r`` + 1 mm) that lie in the lung."""
        pts = c[None, :] + _DIRS * (1.1 * r + 1.0)
        return float(self.anat.in_lung(pts).mean())

    def free(self, c: np.ndarray, r: float, gap: float = 3.0) -> bool:
        return all(np.linalg.norm(c - c2) > r + r2 + gap for c2, r2 in self.taken)

    def off_tubes(self, c: np.ndarray, margin: float) -> bool:
        return bool(self.tubes.surface_distance(c[None, :])[0] > margin)

    def round_centre(self, c: np.ndarray) -> np.ndarray:
        return np.round(c, 3)

    # -- kinds
    def inside(self, r: float, avoid_tubes: bool, tries: int = 60) -> np.ndarray | None:
        """A centre whose whole sphere of radius ``r`` lies in the lung (solid, ground glass, small findings)."""
        for c in self.lung_points(tries):
            c = self.round_centre(self.snap_z(c))
            if not self.free(c, r):
                continue
            if not self.anat.in_lung(c[None, :])[0] or self.lung_fraction(c, r) < 1.0:
                continue
            if avoid_tubes and not self.off_tubes(c, 1.5 + 0.1 * r):
                continue
            return c
        return None

    def pleural(self, r: float, tries: int = 48) -> np.ndarray | None:
        """A centre within ``r`` of the pleura (chest wall or diaphragm side), still in the lung."""
        starts = self.lung_points(tries)
        if len(starts) == 0:
            return None
        d = self.rng.standard_normal((len(starts), 3))
        d[:, 2] *= 0.35  # mostly sideways: towards the ribs rather than the apex
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        step = max(0.4, 0.5 * self.sxy)
        lo, hi = self.anat.lung_box()
        n_steps = int(np.ceil(np.linalg.norm(hi - lo) / step))
        s = np.arange(1, n_steps + 1) * step
        pts = starts[:, None, :] + d[:, None, :] * s[None, :, None]
        lab = self.anat.labels_at(pts[..., 0].ravel(), pts[..., 1].ravel(), pts[..., 2].ravel()).reshape(pts.shape[:2])
        out = lab != LUNG
        for i in range(len(starts)):
            k = int(np.argmax(out[i]))
            if not out[i, k]:
                continue
            exit_label = lab[i, k]
            if not (WALL_LUT[exit_label] or exit_label in (LIVER, ABDOMEN)):
                continue
            wall = starts[i] + d[i] * (s[k] - 0.5 * step)
            c = wall - d[i] * (self.rng.uniform(0.45, 0.85) * r)
            c = self.round_centre(self.snap_z(c))
            if not self.free(c, r) or not self.anat.in_lung(c[None, :])[0]:
                continue
            # the centre voxel must be well inside the lung, and most of the nodule too
            core = c[None, :] + _DIRS * min(0.5 * r, 1.5)
            if not self.anat.in_lung(core).all() or self.lung_fraction(c, r) < 0.35:
                continue
            if not self.off_tubes(c, 0.5):
                continue
            return c
        return None

    def vascular(self, r: float, tries: int = 60) -> np.ndarray | None:
        """A centre such that the nodule touches the side of a medium vessel (1.6–7 mm across)."""
        v = self.vessels
        if len(v) == 0:
            return None
        rm = 0.5 * (v.r0 + v.r1)
        cand = np.flatnonzero((rm >= 0.8) & (rm <= 3.5))
        if cand.size == 0:
            return None
        for j in self.rng.choice(cand, size=min(tries, cand.size), replace=False):
            t = self.rng.uniform(0.2, 0.8)
            q = v.a[j] + t * (v.b[j] - v.a[j])
            rv = v.r0[j] + t * (v.r1[j] - v.r0[j])
            axis = v.b[j] - v.a[j]
            axis = axis / max(np.linalg.norm(axis), 1e-9)
            e = self.rng.standard_normal(3)
            e -= (e @ axis) * axis
            e /= max(np.linalg.norm(e), 1e-9)
            c = q + e * (rv + self.rng.uniform(0.4, 0.85) * r)
            c = self.round_centre(self.snap_z(c))
            if not self.free(c, r) or not self.anat.in_lung(c[None, :])[0]:
                continue
            dist = v.surface_distance(c[None, :])[0]
            if not (0.0 < dist < 0.9 * r):  # touching the vessel, centre outside it
                continue
            if self.lung_fraction(c, r) < 0.85:
                continue
            return c
        return None


def _lobes(rng: np.random.Generator, diameter: float, kind: str) -> tuple[np.ndarray, np.ndarray]:
    v = rng.standard_normal((3, 3))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    a_max = 0.04 + 0.08 * min(1.0, (diameter - 3.0) / 15.0)
    if kind == "ground_glass":
        a_max *= 0.5
    return v, rng.uniform(-a_max, a_max, 3)


def _spicules(rng: np.random.Generator, c: np.ndarray, r: float, sxy: float) -> list:
    out = []
    for _ in range(int(rng.integers(4, 10))):
        d = rng.standard_normal(3)
        d /= np.linalg.norm(d)
        out.append((c + d * 0.7 * r, c + d * r * rng.uniform(1.3, 2.0), max(0.6, 0.8 * sxy), max(0.25, 0.4 * sxy)))
    return out


def _inner_blobs(rng: np.random.Generator, kind: str, c: np.ndarray, r: float, sxy: float) -> tuple[list, dict]:
    """The blobs drawn over a ``part_solid`` or ``calcified`` nodule (see :class:`Nodule`) and its annotation extras."""
    if kind == "part_solid":
        rc = float(np.round(r * rng.uniform(*PART_SOLID_CORE_FRACTION), 2))
        offset = rng.standard_normal(3)
        offset *= rng.uniform(0.0, 0.15) * r / max(np.linalg.norm(offset), 1e-9)
        return [(c + offset, rc, float(rng.uniform(*NODULE_HU["solid"])), sxy)], {"solid_diameter_mm": 2.0 * rc}
    pattern = str(rng.choice(("diffuse", "central")))
    hu = float(rng.uniform(*CALCIFICATION_HU))
    rc = r * (1.0 if pattern == "diffuse" else rng.uniform(0.3, 0.5))
    return [(c.copy(), float(rc), hu, sxy)], {"calcification": pattern}


def place_nodules(
    rng: np.random.Generator, anat: Anatomy, vessels: VesselTree, tubes: VesselTree, mean_count: float = 1.5,
    mix: str = "luna16", placer: Placer | None = None,
) -> tuple[list[Nodule], list[Nodule]]:
    """Draw the nodule count (Poisson, ``mean_count``, at most 6) and small findings (Poisson 0.8) and place them.

    ``mix`` names the kinds and their probabilities (:data:`KIND_MIXES`). A nodule that finds no room after a few
    tries at its size is tried smaller, then dropped. ``placer`` keeps the new nodules off the ones it placed before
    (a follow-up scan's new nodules). Returns (nodules, excluded findings).
    """
    if mix not in KIND_MIXES:
        raise ValueError(f"nodule mix must be one of {', '.join(KIND_MIXES)}, got {mix!r}")
    kinds, probs = KIND_MIXES[mix]
    placer = Placer(rng, anat, tubes, vessels) if placer is None else placer
    sxy = anat.geom.spacing_xyz[0]
    d_max = max_diameter(anat)
    nodules: list[Nodule] = []
    n = min(int(rng.poisson(mean_count)), 6)
    for _ in range(n):
        kind = str(rng.choice(kinds, p=probs))
        d = sample_diameter(rng, d_max)
        hazy = kind in ("ground_glass", "part_solid")  # drawn with a ground-glass edge; part-solid needs room for a core
        min_d = GGO_MIN_D + (1.0 if kind == "part_solid" else 0.0)
        if hazy:
            if d_max < min_d + 0.5:
                kind, hazy = "solid", False
            else:
                d = max(d, float(np.round(rng.uniform(min_d, min(10.0 if kind == "ground_glass" else 15.0, d_max)), 2)))
        c = None
        for shrink in (1.0, 0.8, 0.6):
            dd = float(np.round(max(D_MIN if not hazy else min_d, d * shrink), 2))
            r = 0.5 * dd
            if kind == "juxta_pleural":
                c = placer.pleural(r)
            elif kind == "juxta_vascular":
                c = placer.vascular(r)
            else:
                c = placer.inside(r, avoid_tubes=True)
            if c is not None:
                d = dd
                break
        if c is None:
            continue
        r = 0.5 * d
        lobes, amps = _lobes(rng, d, "ground_glass" if hazy else kind)
        if hazy:
            hu = rng.uniform(*NODULE_HU[kind])
            edge = 0.25 * r + sxy
        else:
            hu = rng.uniform(*NODULE_HU[kind])
            edge = sxy
        spic = _spicules(rng, c, r, sxy) if (kind == "solid" and d >= 8.0 and rng.uniform() < 0.35) else []
        inner, extra = _inner_blobs(rng, kind, c, r, sxy) if kind in ("part_solid", "calcified") else ([], {})
        nodules.append(Nodule(c, d, kind, float(hu), float(edge), lobes, amps, spic, inner, extra))
        placer.taken.append((c, r))

    excluded: list[Nodule] = []
    for _ in range(min(int(rng.poisson(0.8)), 4)):
        d = float(np.round(rng.uniform(1.5, 2.9), 2))
        c = placer.inside(0.5 * d, avoid_tubes=True, tries=30)
        if c is None:
            continue
        lobes, amps = _lobes(rng, 3.0, "small")
        excluded.append(Nodule(c, d, "small", float(rng.uniform(*NODULE_HU["small"])), float(sxy), lobes, amps * 0.5, []))
        placer.taken.append((c, 0.5 * d))
    return nodules, excluded
