"""Pulmonary vessel trees grown inside the analytic lungs (world LPS mm throughout).

Each lung gets up to nine trunks, alternately arterial (from the hilum) and venous (from just below it),
each aimed at one k-means centre of the lung so that every region is supplied. A trunk is a chain of
tapered straight segments; every segment ends in a bifurcation whose child radii follow a Murray-like law
``r1**g + r2**g = r**g`` with g in [2.7, 3] (unequal children: one continuing almost straight, one branching
off at a wider angle, both pulled towards random lung points ahead of them), until the radius falls under
``r_min`` (about half an in-plane voxel). Segments are checked against the lung labels before they are
accepted: a branch that would leave the lung, or come closer to the pleura than about 1.5 radii + 2 mm, is
steered back, shortened or stopped, so the big vessels stay central and only thin ones reach the periphery
— vessel cross-sections are then the nodule-like blobs that cause most false positives, as in real CT.

Growth is breadth-first and vectorised over all growing tips of a generation, so a tree of thousands of
segments costs a few dozen label look-ups.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from monai_lung.synthetic.anatomy import LUNG, Anatomy


@dataclass
class VesselTree:
    """Centreline segments of all vessels of a scan (world LPS mm).

    Attributes:
        a, b: (M, 3) float64 segment start / end points (x, y, z) mm.
        r0, r1: (M,) float64 radius at the start / end, mm.
        generation: (M,) int, 0 for trunks.
        forks: (M,) bool, True where the segment ends in a bifurcation (its children start at ``b``).
        artery: (M,) bool, True for arterial segments (venous otherwise).
    """

    a: np.ndarray
    b: np.ndarray
    r0: np.ndarray
    r1: np.ndarray
    generation: np.ndarray
    forks: np.ndarray
    artery: np.ndarray

    def __len__(self) -> int:
        return len(self.r0)

    def surface_distance(self, points_xyz: np.ndarray) -> np.ndarray:
        """Distance (mm) from each point (N, 3) to the nearest vessel wall (negative inside a vessel); (N,)."""
        pts = np.atleast_2d(np.asarray(points_xyz, dtype=np.float64))
        if len(self) == 0:
            return np.full(len(pts), np.inf)
        ab = self.b - self.a
        L2 = np.einsum("ij,ij->i", ab, ab) + 1e-12
        out = np.empty(len(pts))
        for i, p in enumerate(pts):
            ap = p[None, :] - self.a
            t = np.clip(np.einsum("ij,ij->i", ap, ab) / L2, 0.0, 1.0)
            d = np.linalg.norm(ap - t[:, None] * ab, axis=1) - (self.r0 + t * (self.r1 - self.r0))
            out[i] = d.min()
        return out


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


def _perpendicular(rng: np.random.Generator, d: np.ndarray) -> np.ndarray:
    """Random unit vectors (N, 3) perpendicular to the unit vectors ``d`` (N, 3)."""
    r = rng.standard_normal(d.shape)
    r -= np.einsum("ij,ij->i", r, d)[:, None] * d
    bad = np.linalg.norm(r, axis=1) < 1e-6
    if bad.any():
        r[bad] = np.cross(d[bad], np.array([0.0, 0.0, 1.0]))
    return _unit(r)


def _rotate_towards(d: np.ndarray, e: np.ndarray, angle: np.ndarray) -> np.ndarray:
    """Rotate unit vectors ``d`` (N, 3) by ``angle`` (N,) radians towards the perpendicular unit vectors ``e``."""
    return _unit(d * np.cos(angle)[:, None] + e * np.sin(angle)[:, None])


def _kmeans(rng: np.random.Generator, pts: np.ndarray, k: int, iters: int = 12) -> np.ndarray:
    """k-means centres (k, 3) of points (N, 3), started from random points; empty clusters keep their centre."""
    k = min(k, len(pts))
    centres = pts[rng.choice(len(pts), size=k, replace=False)].copy()
    for _ in range(iters):
        lab = np.argmin(((pts[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2), axis=1)
        for j in range(k):
            m = lab == j
            if m.any():
                centres[j] = pts[m].mean(axis=0)
    return centres


def grow_vessels(rng: np.random.Generator, anat: Anatomy, max_segments: int = 9000) -> VesselTree:
    """Grow arterial and venous trees in both lungs of ``anat``; see the module docstring.

    Radii scale with the anatomy (``unit``, with a floor so that small test scans still get visible
    vessels); the smallest drawn radius is about half an in-plane voxel.
    """
    p = anat.p
    unit = p["unit"]
    sxy = anat.geom.spacing_xyz[0]
    r_scale = float(np.clip(unit, 0.25, 1.2))
    # fewer trunks in miniature (small ``size``) lungs, or the tree would fill them
    n_trunks = int(np.clip(round(9 * unit), 2, 9))
    r_min = max(0.45 * sxy, 0.35)
    gamma = rng.uniform(2.7, 3.0)

    starts, dirs, radii, arts, hila = [], [], [], [], []
    lo, hi = anat.lung_box()
    pts = rng.uniform(lo, hi, size=(6000, 3))
    pts = pts[anat.in_lung(pts)]
    for side in ("R", "L"):
        h = anat.hilum(side)
        mine = pts[(pts[:, 0] < p["xm"]) == (side == "R")]
        if len(mine) < 20:
            continue
        # one trunk per lung region: k-means centres of random lung points are the trunks' targets,
        # so that every part of the lung (apex, bases, costophrenic recesses) gets supplied
        targets = _kmeans(rng, mine, n_trunks)
        order = np.argsort(targets[:, 2])
        for k, j in enumerate(order):
            is_art = k % 2 == 0
            start = h + np.array([0.0, 0.0, 0.0 if is_art else -0.06 * p["H"]]) + rng.normal(0.0, 2.0 * unit, 3)
            starts.append(start)
            dirs.append(_unit(targets[j] - start + rng.normal(0.0, 3.0 * unit, 3)))
            radii.append(rng.uniform(3.6, 5.0) * r_scale * (1.0 if is_art else 0.9))
            arts.append(is_art)
            hila.append(h)
    if not starts:
        empty = np.zeros((0, 3))
        return VesselTree(empty, empty, np.zeros(0), np.zeros(0), np.zeros(0, int), np.zeros(0, bool), np.zeros(0, bool))
    pos = np.array(starts)
    dirv = np.array(dirs)
    rad = np.array(radii)
    art = np.array(arts)
    hil = np.array(hila)
    gen = np.zeros(len(rad), dtype=int)

    seg_a, seg_b, seg_r0, seg_r1, seg_gen, seg_fork, seg_art = [], [], [], [], [], [], []
    checks = np.array([0.25, 0.5, 0.75, 1.0])
    total = 0
    while len(rad) and total < max_segments:
        n = len(rad)
        length = rad * rng.uniform(4.0, 8.0, n) + rng.uniform(3.0, 7.0, n) * unit
        lookahead = 1.5 * rad + 2.0 * unit
        ok = np.zeros(n, dtype=bool)
        frac = np.zeros(n)
        d_use = dirv.copy()
        for attempt in range(4):
            todo = np.flatnonzero(~ok)
            if todo.size == 0:
                break
            d_try = dirv[todo].copy()
            if attempt:
                # steer back into the lung: towards the hemithorax centre, plus some randomness
                xl = np.where(pos[todo, 0] < p["xm"], p["xlR"], p["xlL"])
                centre = np.stack([xl, np.full(todo.size, p["yl"]), pos[todo, 2]], axis=1)
                pull = _unit(centre - pos[todo])
                e = _perpendicular(rng, d_try)
                ang = rng.uniform(0.3, 0.9, todo.size) * attempt / 2.0
                d_try = _unit(_rotate_towards(d_try, e, ang) + 0.6 * attempt * pull)
            L = length[todo]
            ts = np.concatenate([checks[None, :] * L[:, None], (L + lookahead[todo])[:, None]], axis=1)
            pts = pos[todo, None, :] + d_try[:, None, :] * ts[:, :, None]
            inside = anat.labels_at(pts[..., 0].ravel(), pts[..., 1].ravel(), pts[..., 2].ravel()).reshape(pts.shape[:2]) == LUNG
            if attempt == 0:
                # trunks start in the mediastinum: only their outer half has to be in the lung
                trunk = gen[todo] == 0
                inside[trunk, :2] = True
            good = inside.all(axis=1)
            ok[todo[good]] = True
            d_use[todo[good]] = d_try[good]
            # remember the longest inside prefix over the attempts, to shorten branches that never fit
            prefix = np.cumprod(inside[:, :4], axis=1).sum(axis=1)
            better = (prefix / 4.0) > frac[todo]
            upd = todo[better & ~good]
            frac[upd] = prefix[better & ~good] / 4.0
            d_use[upd] = d_try[better & ~good]
        frac[ok] = 1.0
        keep = frac > 0
        if not keep.any():
            break
        L = length * frac
        a = pos
        b = pos + d_use * L[:, None]
        r_end = rad * rng.uniform(0.90, 0.97, n)
        # bifurcation: a major child continuing nearly straight, a minor one at a wider angle
        f = np.flatnonzero(ok)
        lam1 = rng.uniform(0.80, 0.95, f.size)
        lam2 = (1.0 - lam1**gamma) ** (1.0 / gamma)
        e = _perpendicular(rng, d_use[f]) if f.size else np.zeros((0, 3))
        th1 = np.deg2rad(rng.uniform(8, 28, f.size))
        th2 = np.deg2rad(rng.uniform(35, 70, f.size))
        away = _unit(b[f] - hil[f])
        d1 = _unit(_rotate_towards(d_use[f], e, th1) + 0.15 * away)
        d2 = _unit(_rotate_towards(d_use[f], -e, th2) + 0.15 * away)
        # steer children towards random lung points ahead of them: fills the space the tree has not reached
        reach = (r_end[f] * 6.0 + 5.0 * unit)[:, None]
        for dk in (d1, d2):
            tgt = b[f] + dk * reach * rng.uniform(1.0, 2.5, (f.size, 1)) + rng.normal(0.0, 1.0, (f.size, 3)) * reach
            good = anat.in_lung(tgt)
            dk[good] = _unit(dk[good] + 0.8 * _unit(tgt[good] - b[f][good]))
        r1c, r2c = r_end[f] * lam1, r_end[f] * lam2
        forks = np.zeros(n, dtype=bool)
        forks[f] = r2c >= r_min  # both children survive: a real bifurcation
        seg_a.append(a[keep])
        seg_b.append(b[keep])
        seg_r0.append(rad[keep])
        seg_r1.append(r_end[keep])
        seg_gen.append(gen[keep])
        seg_fork.append(forks[keep])
        seg_art.append(art[keep])
        total += int(keep.sum())
        if f.size == 0:
            break
        new_rad = np.concatenate([r1c, r2c])
        live = new_rad >= r_min
        pos = np.concatenate([b[f], b[f]])[live]
        dirv = np.concatenate([d1, d2])[live]
        rad = new_rad[live]
        art = np.concatenate([art[f], art[f]])[live]
        hil = np.concatenate([hil[f], hil[f]])[live]
        gen = np.concatenate([gen[f], gen[f]])[live] + 1

    if not seg_a:
        empty = np.zeros((0, 3))
        return VesselTree(empty, empty, np.zeros(0), np.zeros(0), np.zeros(0, int), np.zeros(0, bool), np.zeros(0, bool))
    return VesselTree(
        a=np.concatenate(seg_a), b=np.concatenate(seg_b), r0=np.concatenate(seg_r0), r1=np.concatenate(seg_r1),
        generation=np.concatenate(seg_gen), forks=np.concatenate(seg_fork), artery=np.concatenate(seg_art),
    )
