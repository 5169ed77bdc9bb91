"""Drawing tapered tubes and lobulated blobs into a float32 HU volume, each only inside its own bounding box.

All volumes are numpy float32 (z, y, x) in HU with a matching uint8 (z, y, x) label volume; positions and
sizes are world LPS millimetres, converted with a :class:`~monai_lung.synthetic.geometry.ScanGeometry`.
Edges are anti-aliased over about one in-plane voxel (``edge_mm``) so that thin vessels and small nodules
get partial-volume values instead of jagged staircases.
"""

from __future__ import annotations

import math

import numpy as np

from monai_lung.synthetic.geometry import ScanGeometry


def _blend(view: np.ndarray, alpha: np.ndarray, hu: float, mode: str) -> None:
    """Move ``view`` (HU) towards ``hu`` by ``alpha`` in [0, 1], only brightening ("max") or only darkening ("min")."""
    if mode == "max":
        delta = hu - view
        np.maximum(delta, 0.0, out=delta)
    else:
        delta = hu - view
        np.minimum(delta, 0.0, out=delta)
    delta *= alpha
    view += delta


class Canvas:
    """A float32 (z, y, x) HU volume with its uint8 (z, y, x) labels and geometry, for drawing in world mm.

    Voxel-centre coordinates of each axis are computed once, and bounding boxes in plain Python: with
    thousands of small vessel segments per scan, per-call overhead matters more than voxel work.
    """

    def __init__(self, vol: np.ndarray, labels: np.ndarray, geom: ScanGeometry):
        self.vol, self.labels, self.geom = vol, labels, geom
        self.origin = tuple(float(v) for v in geom.origin_xyz)
        self.spacing = tuple(float(v) for v in geom.spacing_xyz)
        self.n_xyz = tuple(int(v) for v in geom.shape_zyx[::-1])
        self.axes = [(self.origin[i] + np.arange(self.n_xyz[i]) * self.spacing[i]).astype(np.float32) for i in range(3)]

    def box(self, lo, hi):
        """Slices (z, y, x) of the voxels with centres in the world box [lo, hi] mm (x, y, z); None if empty."""
        out = []
        for i in range(3):
            o, s, n = self.origin[i], self.spacing[i], self.n_xyz[i]
            i0 = max(0, math.ceil((lo[i] - o) / s - 1e-9))
            i1 = min(n, math.floor((hi[i] - o) / s + 1e-9) + 1)
            if i1 <= i0:
                return None
            out.append(slice(i0, i1))
        return out[2], out[1], out[0]

    def rel_axes(self, box, c):
        """Voxel-centre offsets from ``c`` (world mm) over ``box``: float32 z (n,1,1), y (1,n,1), x (1,1,n)."""
        bz, by, bx = box
        z = (self.axes[2][bz] - np.float32(c[2]))[:, None, None]
        y = (self.axes[1][by] - np.float32(c[1]))[None, :, None]
        x = (self.axes[0][bx] - np.float32(c[0]))[None, None, :]
        return z, y, x

    def tube(self, a, b, r0: float, r1: float, hu: float, allowed: np.ndarray, edge_mm: float, mode: str = "max") -> None:
        """Draw a tube from ``a`` to ``b`` (world (x, y, z) mm), radius ``r0`` -> ``r1`` mm (a cone with round caps), at ``hu``.

        Only voxels whose label is ``allowed`` (bool look-up table over labels) change; ``mode`` "max" brightens
        towards ``hu`` (vessels, airway walls), "min" darkens (airway lumen).
        """
        a0, a1, a2 = float(a[0]), float(a[1]), float(a[2])
        b0, b1, b2 = float(b[0]), float(b[1]), float(b[2])
        m = max(r0, r1) + edge_mm
        box = self.box((min(a0, b0) - m, min(a1, b1) - m, min(a2, b2) - m), (max(a0, b0) + m, max(a1, b1) + m, max(a2, b2) + m))
        if box is None:
            return
        pz, py, px = self.rel_axes(box, (a0, a1, a2))
        e0, e1, e2 = b0 - a0, b1 - a1, b2 - a2
        L2 = e0 * e0 + e1 * e1 + e2 * e2 + 1e-12
        # projection on the axis and squared distance to the nearest axis point, broadcast over the box
        proj = (pz * np.float32(e2) + py * np.float32(e1)) + px * np.float32(e0)
        t = proj * np.float32(1.0 / L2)
        np.clip(t, 0.0, 1.0, out=t)
        d2 = (pz * pz + py * py) + px * px
        proj *= 2.0
        proj -= t * np.float32(L2)
        proj *= t
        d2 -= proj
        np.maximum(d2, 0.0, out=d2)
        np.sqrt(d2, out=d2)
        # alpha = 0.5 + (r(t) - d) / edge, clipped: anti-aliased edge about one voxel wide
        t *= np.float32((r1 - r0) / edge_mm)
        t += np.float32(r0 / edge_mm + 0.5)
        d2 *= np.float32(1.0 / edge_mm)
        t -= d2
        np.clip(t, 0.0, 1.0, out=t)
        t *= allowed[self.labels[box]]
        _blend(self.vol[box], t, hu, mode)

    def blob_alpha(self, centre, radius: float, edge_mm: float, lobes=None, lobe_amp=None):
        """``(box, alpha)``: the (z, y, x) slices of a lobulated sphere's bounding box and the share in [0, 1] of each
        of its voxels that the sphere covers (see :meth:`blob`); ``None`` when the box misses the volume."""
        c = tuple(float(v) for v in centre)
        amp_total = 0.0 if lobe_amp is None else float(np.sum(np.abs(lobe_amp)))
        m = radius * (1.0 + amp_total) + edge_mm
        box = self.box(tuple(v - m for v in c), tuple(v + m for v in c))
        if box is None:
            return None
        pz, py, px = self.rel_axes(box, c)
        d = np.sqrt((pz * pz + py * py) + px * px)
        surface = np.full(d.shape, np.float32(radius), dtype=np.float32)
        if lobes is not None and len(lobes):
            inv = 1.0 / np.maximum(d, np.float32(1e-3))
            for v, amp in zip(np.asarray(lobes, dtype=np.float32), lobe_amp):
                cos = ((pz * v[2] + py * v[1]) + px * v[0]) * inv
                surface += np.float32(radius * amp) * (1.5 * cos * cos - 0.5)
        alpha = surface - d
        alpha *= np.float32(1.0 / edge_mm)
        alpha += 0.5
        np.clip(alpha, 0.0, 1.0, out=alpha)
        return box, alpha

    def blob(self, centre, radius: float, hu: float, allowed: np.ndarray, edge_mm: float, lobes=None, lobe_amp=None):
        """Lobulated sphere (a nodule) of mean ``radius`` mm at ``centre`` (world (x, y, z) mm), brightened to ``hu``.

        The surface radius in direction ``u`` is ``radius * (1 + sum_j amp_j * P2(u . v_j))`` with unit vectors
        ``lobes`` (k, 3), amplitudes ``lobe_amp`` (k,) and the Legendre polynomial ``P2(c) = 1.5 c^2 - 0.5``;
        ``edge_mm`` is the width of the soft edge (wide for fuzzy ground-glass nodules).

        Returns ``(box, alpha)``: the (z, y, x) slices drawn in and the float32 share of each voxel the blob took
        (0 where its label is not ``allowed``), or None when the blob misses the volume.
        """
        drawn = self.blob_alpha(centre, radius, edge_mm, lobes, lobe_amp)
        if drawn is None:
            return None
        box, alpha = drawn
        alpha *= allowed[self.labels[box]]
        _blend(self.vol[box], alpha, hu, "max")
        return box, alpha
