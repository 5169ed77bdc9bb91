"""Where a finding lies: lung side, zone (upper, middle or lower third of that lung's height), pleural contact.

Lobes need a lobe segmentation, which no package here ships: they are left out.

Arrays are (i, j, k) voxel grids with a 4x4 ``affine`` mapping (i, j, k) to world LPS mm (+x patient left, +z head).
The lungs come from :func:`monai_lung.transforms.lung_mask.lung_masks` (air components not touching the scan's
sides, closed, holes filled) on a coarse copy of the CT (:meth:`~monai_lung.clinical.ct.ScanCT.coarse`), with no
margin: its surface is the pleura to within about the coarse voxel.

Rules:

- **side**: the lungs are the two largest lung components once the airways (and an anterior junction) joining them are
  eroded away (the second at least :data:`SECOND_LUNG_SHARE` of the first), told apart by world x; every lung voxel
  goes to the nearer one (when erosion does not part them, the cut is where fewest lung voxels lie between the
  quartiles of their x). A finding belongs to the lung nearest its centre;
- **zone**: its centre's height within that lung's cranio-caudal extent, in thirds: ``upper``, ``middle``, ``lower``.
  A scan that does not cover a lung's apex or base shifts the thirds;
- **pleura**: the finding touches the pleura when soft tissue (>= :data:`TISSUE_HU`) within :data:`CONTACT_MM` of
  its mask belongs to the chest wall, mediastinum or diaphragm: within :data:`NEIGHBOURHOOD_MM` of the finding, a
  soft-tissue region of at least :data:`WALL_MIN_MM3` that lies mostly outside the lungs. A vessel touching the
  finding is smaller and lies inside them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from monai_lung.clinical.ct import sample_mask
from monai_lung.transforms.lung_mask import lung_masks

SECOND_LUNG_SHARE = 0.2
ZONES = ("lower", "middle", "upper")  # by thirds of height, from the base up
TISSUE_HU = -400.0
CONTACT_MM = 1.0
WALL_MIN_MM3 = 200.0
NEIGHBOURHOOD_MM = 6.0


@dataclass
class Lungs:
    """The lungs of one scan on a coarse grid: ``side`` (i, j, k) uint8, 0 outside, 1 right lung, 2 left lung;
    ``affine`` (i, j, k) -> world LPS mm; ``z_range`` per side name, (lowest, highest) world z (mm)."""

    side: np.ndarray
    affine: np.ndarray
    z_range: dict

    @property
    def mask(self) -> np.ndarray:
        return self.side > 0

    def found(self) -> bool:
        return bool(self.z_range)


def _world(idx: np.ndarray, affine: np.ndarray) -> np.ndarray:
    return np.asarray(idx, dtype=np.float64) @ affine[:3, :3].T + affine[:3, 3]


def _two_lungs(mask: np.ndarray, max_erosions: int = 8):
    """The two lungs' cores, bool (i, j, k) each: the two largest components of ``mask`` eroded as little as splits it
    into two of comparable size (:data:`SECOND_LUNG_SHARE`); None when no erosion does."""
    eroded = mask
    for _ in range(max_erosions + 1):
        labels, n = ndimage.label(eroded)
        if n >= 2:
            sizes = np.bincount(labels.ravel())[1:]
            order = np.argsort(sizes)[::-1]
            if sizes[order[1]] >= SECOND_LUNG_SHARE * sizes[order[0]]:
                return labels == order[0] + 1, labels == order[1] + 1
        eroded = ndimage.binary_erosion(eroded)
        if not eroded.any():
            break
    return None


def find_lungs(hu: np.ndarray, affine: np.ndarray) -> Lungs:
    """The right and left lung of a CT (``hu``: (i, j, k) HU on ``affine``, world LPS), see the module docstring."""
    affine = np.asarray(affine, dtype=np.float64)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    mask = lung_masks(hu, spacing, (0.0,), hu_window=None)[0]
    side = np.zeros(mask.shape, dtype=np.uint8)
    if mask.all() or not mask.any():  # lung_masks found no lung
        return Lungs(side, affine, {})
    # the two lungs: the two largest air regions, once the airways joining them are eroded away (on the lungs' box)
    where = np.argwhere(mask)
    lo, hi = where.min(axis=0), where.max(axis=0) + 1
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    cores = _two_lungs(mask[box])
    if cores is not None:
        a, b = cores
        shift = affine.copy()
        shift[:3, 3] = affine[:3, :3] @ lo + affine[:3, 3]
        mean_x = lambda m: _world(np.argwhere(m), shift)[:, 0].mean()  # noqa: E731
        right, left = (a, b) if mean_x(a) < mean_x(b) else (b, a)  # LPS: patient right has the smaller x
        # every lung voxel goes to the nearer core
        nearer_right = ndimage.distance_transform_edt(~right) <= ndimage.distance_transform_edt(~left)
        side[box][mask[box] & nearer_right] = 1
        side[box][mask[box] & ~nearer_right] = 2
    else:  # one region that erosion does not split: cut it where the fewest lung voxels lie between its x quartiles
        points = np.argwhere(mask)
        x = _world(points, affine)[:, 0]
        step = 1.5 * float(np.abs(affine[0, :3]).max())  # a bin holds at least one voxel column
        bins = np.arange(np.percentile(x, 25), np.percentile(x, 75) + step, step)
        split = float(np.median(x))
        if len(bins) > 2:
            counts, _ = np.histogram(x, bins=bins)
            split = float(bins[int(np.argmin(counts))] + 0.5 * step)
        side[tuple(points.T)] = np.where(x < split, 1, 2)
    z_range = {}
    for value, name in ((1, "right"), (2, "left")):
        where = np.argwhere(side == value)
        if len(where):
            z = _world(where, affine)[:, 2]
            z_range[name] = (float(z.min()), float(z.max()))
    return Lungs(side, affine, z_range)


def side_and_zone(lungs: Lungs, centre_lps) -> tuple[str, str]:
    """``(side, zone)`` of a world LPS point: ``("right" | "left", "upper" | "middle" | "lower")``, ``("", "")``
    when the scan has no lungs."""
    if not lungs.found():
        return "", ""
    centre = np.asarray(centre_lps, dtype=np.float64)
    ijk = np.linalg.inv(lungs.affine) @ np.append(centre, 1.0)
    idx = np.clip(np.rint(ijk[:3]).astype(int), 0, np.asarray(lungs.side.shape) - 1)
    value = int(lungs.side[tuple(idx)])
    if value == 0:  # outside the coarse lungs (at the pleura): the nearest lung voxel decides
        points = np.argwhere(lungs.side > 0)
        world = _world(points, lungs.affine)
        nearest = points[int(np.argmin(np.linalg.norm(world - centre, axis=1)))]
        value = int(lungs.side[tuple(nearest)])
    name = "right" if value == 1 else "left"
    lo, hi = lungs.z_range[name]
    t = (centre[2] - lo) / max(hi - lo, 1e-6)
    return name, ZONES[int(np.clip(np.floor(3.0 * t), 0, 2))]


def touches_pleura(hu: np.ndarray, affine: np.ndarray, nodule: np.ndarray, lungs: Lungs) -> bool:
    """Whether a finding (``nodule``: (i, j, k) bool on the crop ``hu``/``affine``, world LPS) touches the pleura
    (module docstring). False when the scan has no lungs."""
    if not lungs.found() or not np.any(nodule):
        return False
    affine = np.asarray(affine, dtype=np.float64)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    # only the finding's neighbourhood counts: farther on, every vessel joins the mediastinum
    where = np.argwhere(nodule)
    margin = np.ceil(NEIGHBOURHOOD_MM / spacing).astype(int)
    lo, hi = np.maximum(where.min(axis=0) - margin, 0), np.minimum(where.max(axis=0) + margin + 1, nodule.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    nodule, hu = np.asarray(nodule)[box], np.asarray(hu)[box]
    shift = np.eye(4)
    shift[:3, 3] = lo
    near = (ndimage.distance_transform_edt(~nodule, sampling=spacing) <= CONTACT_MM) & ~nodule
    tissue = (hu >= TISSUE_HU) & ~nodule
    labels, n = ndimage.label(tissue)
    touching = np.unique(labels[near & tissue])
    touching = touching[touching > 0]
    if touching.size == 0:
        return False
    inside = sample_mask(lungs.mask, lungs.affine, affine @ shift, hu.shape)
    voxel = float(np.prod(spacing))
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    outside = np.bincount(labels[~inside].ravel(), minlength=n + 1)
    wall = (sizes[touching] * voxel >= WALL_MIN_MM3) & (outside[touching] >= 0.5 * sizes[touching])
    return bool(np.any(wall))
