"""Nodule size from a finding's segmentation: volume, equivalent-sphere diameter, longest axial diameter.

A finding's stage-1 component (voxels of the probability map above the detector's threshold) is the seed. Its
edge depends on the network's calibration, so the size is measured on a refined mask: voxels of the CT at or
above a half-contrast threshold (half-way between the lung around the finding and the seed's core, in HU)
that are connected to the seed within ``reach_mm`` of it and, outside the seed, within ``reach_mm`` of the lung. The
reach bounds how far a refinement may grow into a touching vessel or chest wall, and the distance to the lung keeps
it out of the wall under a juxta-pleural nodule's base; the half-contrast edge is where a blurred boundary between
two tissues sits.

Sizes (all world mm, from the grid's affine, any orientation):

- ``volume_mm3``: voxel count x voxel volume;
- ``diameter_mm``: the diameter of the ball with that volume (equivalent-sphere diameter);
- ``longest_axial_mm``: the longest in-plane chord on any axial slice (planes of constant world z), measured
  between voxel centres plus one in-plane voxel, the way a reader's caliper spans the edge voxels.

:func:`size_band_lungrads_2022` names the Lung-RADS v2022 size band of a solid nodule's volume. This is research
output: Lung-RADS categories also need the nodule's type, growth and a radiologist.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from monai_lung.io.coords import slice_axis

#: columns a measured finding carries (world mm)
SIZE_FIELDS = ("diameter_mm", "volume_mm3", "longest_axial_mm")

#: Lung-RADS v2022 baseline size bands of a solid nodule by volume (mm^3, upper bounds exclusive) and mean diameter
LUNGRADS_2022_SOLID_BANDS = ((113.0, "<6 mm"), (268.0, "6-<8 mm"), (1767.0, "8-<15 mm"), (math.inf, ">=15 mm"))

LUNG_HU = -850.0  # aerated lung parenchyma, used when a crop holds too little lung to estimate it
THRESHOLD_RANGE_HU = (-700.0, -300.0)  # the half-contrast threshold is clipped to this


def size_band_lungrads_2022(volume_mm3: float) -> str:
    """Lung-RADS v2022 baseline size band of a solid nodule from its volume (research use, not a category)."""
    for bound, band in LUNGRADS_2022_SOLID_BANDS:
        if volume_mm3 < bound:
            return band
    return LUNGRADS_2022_SOLID_BANDS[-1][1]


def volume_mm3(mask: np.ndarray, affine: np.ndarray) -> float:
    """Voxel count x voxel volume (mm^3) of a bool (i, j, k) ``mask`` on ``affine``."""
    return float(np.count_nonzero(mask)) * abs(float(np.linalg.det(np.asarray(affine, dtype=np.float64)[:3, :3])))


def equivalent_diameter(volume: float) -> float:
    """Diameter (mm) of the ball of ``volume`` mm^3."""
    return float(np.cbrt(6.0 * max(volume, 0.0) / np.pi))


def longest_axial_diameter(mask: np.ndarray, affine: np.ndarray) -> float:
    """Longest in-plane chord (mm) of a 3D bool ``mask`` (i, j, k) over its axial slices; ``affine`` maps (i, j, k)
    to world mm (RAS or LPS: only lengths are used). 0 for an empty mask."""
    mask = np.asarray(mask, dtype=bool)
    linear = np.asarray(affine, dtype=np.float64)[:3, :3]
    axis = slice_axis(linear)
    plane = tuple(a for a in range(3) if a != axis)
    step = float(np.mean(np.linalg.norm(linear[:, list(plane)], axis=0)))
    best = 0.0
    for s in np.flatnonzero(mask.any(axis=plane)):
        sl = np.take(mask, s, axis=axis)
        edge = sl & ~ndimage.binary_erosion(sl)
        ij = np.argwhere(edge).astype(np.float64)
        pts = ij @ linear[:, list(plane)].T  # in-plane offsets in world mm
        if len(pts) > 3:
            try:
                pts = pts[ConvexHull(pts[:, :2] if np.ptp(pts[:, 2]) < 1e-6 else _project(pts)).vertices]
            except QhullError:  # collinear pixels: the chord is among them all
                pass
        chord = 0.0
        if len(pts) > 1:
            diff = pts[:, None, :] - pts[None, :, :]
            chord = float(np.sqrt((diff**2).sum(-1).max()))
        best = max(best, chord + step)
    return best


def _project(pts: np.ndarray) -> np.ndarray:
    """2D coordinates of points on a tilted plane (a gantry-tilted or oblique grid) for the convex hull."""
    centred = pts - pts.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[:2].T


def measure_mask(mask: np.ndarray, affine: np.ndarray) -> dict:
    """``{"volume_mm3", "diameter_mm" (equivalent sphere), "longest_axial_mm"}`` of a bool (i, j, k) mask on ``affine``."""
    volume = volume_mm3(mask, affine)
    return {
        "volume_mm3": volume,
        "diameter_mm": equivalent_diameter(volume),
        "longest_axial_mm": longest_axial_diameter(mask, affine),
    }


def _ball(radius_vox: np.ndarray) -> np.ndarray:
    r = np.maximum(np.asarray(radius_vox, dtype=np.float64), 0.5)
    half = np.floor(r).astype(int)
    grids = np.meshgrid(*[np.arange(-h, h + 1) / rr for h, rr in zip(half, r)], indexing="ij")
    return sum(g**2 for g in grids) <= 1.0 + 1e-9


def refine_mask(hu: np.ndarray, affine: np.ndarray, seed: np.ndarray, reach_mm: float = 2.0) -> tuple[np.ndarray, float]:
    """The measured segmentation of a finding on a crop: ``(mask, threshold_hu)``.

    Args:
        hu: (i, j, k) CT in HU around the finding (at least ``reach_mm`` beyond the seed on every side).
        affine: (i, j, k) -> world mm of the crop (only the voxel size is used).
        seed: (i, j, k) bool, the finding's stage-1 component on the same crop (non-empty).
        reach_mm: how far beyond the seed the mask may grow.

    Voxels with HU >= the half-contrast threshold (the mean of the seed's core, its 75th HU percentile, and the lung
    around it, clipped to :data:`THRESHOLD_RANGE_HU`) within ``reach_mm`` of the seed and, outside it, within
    ``reach_mm`` of a voxel below the threshold, connected to the seed's voxels above the threshold. Falls back to the seed when no seed voxel reaches the threshold.
    """
    seed = np.asarray(seed, dtype=bool)
    spacing = np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)
    if seed.any():  # work on the seed's box grown by what the steps below look at
        margin = np.ceil((reach_mm + 8.0) / spacing).astype(int)
        where = np.argwhere(seed)
        lo, hi = np.maximum(where.min(axis=0) - margin, 0), np.minimum(where.max(axis=0) + margin + 1, seed.shape)
        box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        if any(b - a < n for a, b, n in zip(lo, hi, seed.shape)):
            mask = np.zeros_like(seed)
            mask[box], threshold = refine_mask(np.asarray(hu)[box], affine, seed[box], reach_mm)
            return mask, threshold
    hu = np.asarray(hu, dtype=np.float32)
    values = hu[seed]
    core = float(np.percentile(values, 75)) if values.size else 0.0
    near = ndimage.binary_dilation(seed, _ball(reach_mm / spacing))
    around = hu[~ndimage.binary_dilation(near, _ball(3.0 / spacing))]
    lung = around[around < -500.0]
    background = float(np.median(lung)) if lung.size >= 20 else LUNG_HU
    threshold = float(np.clip(0.5 * (core + background), *THRESHOLD_RANGE_HU))
    above = (hu >= threshold) & near
    # growth beyond the seed also stays within reach_mm of the lung: an edge the seed missed faces lung, while the
    # chest wall or mediastinum under a juxta-pleural nodule's base does not
    to_lung = ndimage.distance_transform_edt(hu >= threshold, sampling=spacing)
    above &= seed | (to_lung <= reach_mm)
    labels, n = ndimage.label(above)
    if n == 0:
        return seed.copy(), threshold
    touched = np.unique(labels[seed & above])
    touched = touched[touched > 0]
    if touched.size == 0:
        return seed.copy(), threshold
    return np.isin(labels, touched), threshold


def component_crop(prob: np.ndarray, threshold: float, bbox_lo, bbox_hi, num_voxels: int, centre_ijk, margin: np.ndarray):
    """A stage-1 component on a crop of its probability map: ``(lo (3,) int, crop slices, seed bool crop)``.

    ``bbox_lo``/``bbox_hi``: the component's inclusive (i, j, k) bounding box; the crop extends it by ``margin``
    voxels per axis (clipped to the map). Inside the box the component is the connected part of
    ``prob > threshold`` with ``num_voxels`` voxels (every path between its voxels stays in its box); ties go to
    the one nearest ``centre_ijk``.
    """
    shape = np.asarray(prob.shape)
    lo_box = np.asarray(bbox_lo, dtype=int)
    hi_box = np.asarray(bbox_hi, dtype=int) + 1
    lo = np.maximum(lo_box - margin, 0)
    hi = np.minimum(hi_box + margin, shape)
    crop = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    inner = tuple(slice(int(a - l), int(b - l)) for a, b, l in zip(lo_box, hi_box, lo))
    fg = np.zeros(tuple(int(v) for v in hi - lo), dtype=bool)
    fg[inner] = np.asarray(prob[tuple(slice(int(a), int(b)) for a, b in zip(lo_box, hi_box))]) > threshold
    labels, n = ndimage.label(fg)
    if n == 0:
        return lo, crop, fg
    counts = np.bincount(labels.ravel(), minlength=n + 1)
    counts[0] = 0
    wanted = np.flatnonzero(counts == int(num_voxels))
    if wanted.size == 0:
        wanted = np.array([int(np.argmax(counts))])
    if wanted.size > 1:
        centres = np.asarray(ndimage.center_of_mass(fg, labels, wanted)) + lo
        wanted = wanted[[int(np.argmin(np.linalg.norm(centres - np.asarray(centre_ijk), axis=1)))]]
    return lo, crop, labels == int(wanted[0])


def measure_findings(
    prob: np.ndarray, hu, affine: np.ndarray, cands, threshold: float, reach_mm: float = 2.0, refine=None
) -> tuple[dict, list]:
    """Sizes and masks of candidates from :func:`~monai_lung.stage1.candidates.extract_candidates`.

    Args:
        prob: (i, j, k) stage-1 probability map; ``hu``: (i, j, k) CT in HU on the same grid (array or a callable
            ``slices -> HU crop``, so a windowed tensor need not be converted whole).
        affine: the grid's (i, j, k) -> world mm affine; ``cands``: a frame with ``bbox_lo_*``, ``bbox_hi_*``,
            ``num_voxels`` and ``index_*`` columns; ``threshold``: the probability the components were cut at.
        refine: (N,) bool, which candidates get their component refined on the CT (:func:`refine_mask`); the others
            are measured on their stage-1 component as it is. None: all.

    Returns ``({field: (N,) array for SIZE_FIELDS}, [(lo (3,) int, bool mask crop) per candidate])``: masks in
    (i, j, k) voxels of ``prob``'s grid, offset by ``lo``.
    """
    affine = np.asarray(affine, dtype=np.float64)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    margin = np.ceil((reach_mm + 8.0) / spacing).astype(int)
    sizes = {k: np.zeros(len(cands)) for k in SIZE_FIELDS}
    masks = []
    get_hu = hu if callable(hu) else (lambda sl: np.asarray(hu[sl]))
    for n, row in enumerate(cands.itertuples(index=False)):
        lo, crop, seed = component_crop(
            prob, threshold, (row.bbox_lo_i, row.bbox_lo_j, row.bbox_lo_k), (row.bbox_hi_i, row.bbox_hi_j, row.bbox_hi_k),
            row.num_voxels, (row.index_i, row.index_j, row.index_k), margin,
        )
        refined = refine is None or bool(refine[n])
        mask, _ = refine_mask(get_hu(crop), affine, seed, reach_mm) if refined and seed.any() else (seed, 0.0)
        for key, value in measure_mask(mask, affine).items():
            sizes[key][n] = value
        masks.append((lo, mask))
    return sizes, masks
