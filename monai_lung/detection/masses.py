"""Lung masses (soft-tissue lesions over 30 mm): their own segmentation, so they are sized and typed as masses.

Stage 1 marks a mass with a nodule-sized component somewhere in it (its networks learnt nodules of 3-30 mm), so the
nodule sizing, which grows a component by 2 mm at most, reports a 7 cm tumour as a 17 mm nodule. Here a finding's
lesion is segmented on its own, from the CT around it:

1. on a coarse grid (about ``work_mm``), the lesion tissue: voxels at soft-tissue density (``soft_hu``, which leaves
   out fat) or, within ``edge_mm`` of aerated lung, above the lung-tissue half-contrast ``edge_hu``, inside the lung
   region (:func:`~monai_lung.transforms.lung_mask.lung_masks` keeps a mass lying in the lung inside it, so the chest
   wall and the mediastinum it touches stay out);
2. its core: where a ball of ``core_mm`` radius fits (vessels, up to twice that across, do not), the core's component
   nearest the finding's component; the lesion is that core grown back by the same ball (a morphological opening,
   done with distance transforms);
3. a mass that replaced most of a lung's cross-section against the wall lies outside what is left of that lung's
   hull, so the lung region is re-made from the per-slice hull of the lung with the lesion found so far, and steps
   1-2 repeat until the lesion grows by less than ``settle``; where the wall curves, a slice's hull cuts the mass
   along a chord, so the region also holds what has this lung both above and below it within ``enclose_mm`` in its
   column (the pleura runs on past the mass; the liver dome and the heart have no lung below them);
4. on the finding's own grid, the lesion tissue (``edge_hu``) within one coarse voxel of that: its partial-volume
   edge, and no more than that of the vessels that run into it.

A finding with lung around it is turned down first on a small crop (:func:`has_core_near`), since segmenting costs
a few hundred milliseconds. A lesion that still reaches the edge of its largest crop (``box_mm`` beyond the finding)
is not measured: a mass of up to 8 cm fits in it, while a finding on an organ the lung lies on (the liver dome, the
spleen, the heart) grows into that organ.

A lesion whose longest axial diameter exceeds :data:`MASS_MIN_DIAMETER_MM` is a mass (Lung-RADS: a solid lesion of 3
cm or more); anything smaller keeps its nodule sizing. Arrays are (i, j, k) voxels of a grid whose ``affine`` maps
them to world mm; HU arrays may be given as a callable ``slices -> HU crop``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from monai_lung.detection.sizing import measure_mask
from monai_lung.transforms.lung_mask import enclosed_along_k, fill_convex_2d

#: a lesion whose longest axial diameter is above this (mm) is a mass
MASS_MIN_DIAMETER_MM = 30.0


def _pool(volume: np.ndarray, factor: np.ndarray, mode: str) -> np.ndarray:
    """(i, j, k) array pooled by ``factor`` per axis (ceil): the mean for HU, any-voxel for masks."""
    t = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))[None, None]
    k = tuple(int(f) for f in factor)
    out = F.avg_pool3d(t, k, k, ceil_mode=True) if mode == "mean" else F.max_pool3d(t, k, k, ceil_mode=True)
    return out[0, 0].numpy()


def _slice_hulls(mask: np.ndarray) -> np.ndarray:
    """(i, j, k) bool: each axial slice (k) of ``mask`` filled to its convex hull."""
    out = np.zeros_like(mask)
    for k in np.flatnonzero(mask.any(axis=(0, 1))):
        out[:, :, k] = fill_convex_2d(np.argwhere(mask[:, :, k]), mask.shape[:2])
    return out


def _touching_lung(aerated: np.ndarray, seed: np.ndarray) -> np.ndarray:
    """The aerated-lung component nearest the finding: the lung whose outline a mass there dents."""
    labels, n = ndimage.label(aerated)
    if n == 0:
        return np.zeros_like(aerated)
    _, nearest = ndimage.distance_transform_edt(labels == 0, return_indices=True)
    hits = labels[tuple(idx[seed] for idx in nearest)]
    return labels == int(np.bincount(hits[hits > 0], minlength=n + 1).argmax()) if (hits > 0).any() else np.zeros_like(aerated)


def _opened_lesion(tissue: np.ndarray, to_seed: np.ndarray, spacing: np.ndarray, core_mm: float, edge_mm: float) -> np.ndarray | None:
    """The lesion tissue around the core nearest the finding (``to_seed``: mm from its component), opened by a ball
    of ``core_mm``; None when no core reaches the component."""
    core = ndimage.distance_transform_edt(tissue, sampling=spacing) > core_mm
    labels, n = ndimage.label(core)
    if n == 0:
        return None
    nearest = ndimage.minimum(to_seed, labels, index=np.arange(1, n + 1))
    best = int(np.argmin(nearest))
    if nearest[best] > core_mm + edge_mm:
        return None
    return (ndimage.distance_transform_edt(labels != best + 1, sampling=spacing) <= core_mm) & tissue


def segment_lesion(
    hu, lung_region: np.ndarray, seed: np.ndarray, affine: np.ndarray, seed_lo=(0, 0, 0), box_mm: float = 60.0,
    work_mm: float = 1.5, core_mm: float = 8.0, edge_mm: float = 2.0, soft_hu: float = -60.0, edge_hu: float = -400.0,
    bone_hu: float = 180.0, max_rounds: int = 4, settle: float = 0.02, enclose_mm: float = 60.0,
) -> tuple[np.ndarray | None, tuple[slice, ...] | None]:
    """The lesion around a finding, segmented on its own (module docstring): ``(mask, box)`` with ``mask`` an (i, j, k)
    bool crop of the grid at ``box`` (slices), or ``(None, None)`` when no lesion core (nothing at least
    ``2 * core_mm`` thick) lies at the finding.

    Args:
        hu: (i, j, k) CT in HU on the grid, or a callable ``slices -> HU crop``.
        lung_region: (i, j, k) bool lungs with the lesions that lie in them (no margin); its shape is the grid's.
        seed: (i, j, k) bool, the finding's stage-1 component: the grid's shape, or a crop of it whose first voxel
            is ``seed_lo``.
        affine: the grid's (i, j, k) -> world mm affine (only voxel sizes are used).
        box_mm: how far beyond the seed (mm) the lesion may reach.
        enclose_mm: how far above and below a voxel (mm, along k: the patient's z on the detector's grid) lung must lie
            for it to join the lung region.
    """
    spacing = np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)
    seed, seed_lo = np.asarray(seed, dtype=bool), np.asarray(seed_lo, dtype=int)
    where = np.argwhere(seed) + seed_lo
    if where.size == 0:
        return None, None
    shape = np.asarray(lung_region.shape)
    reach = np.ceil(box_mm / spacing).astype(int)
    lo, hi = np.maximum(where.min(axis=0) - reach, 0), np.minimum(where.max(axis=0) + reach + 1, shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    get_hu = hu if callable(hu) else (lambda sl: np.asarray(hu[sl]))
    ct = np.asarray(get_hu(box), dtype=np.float32)
    region = np.asarray(lung_region[box], dtype=bool)
    seed_box = np.zeros(ct.shape, dtype=bool)
    a, b = np.maximum(seed_lo, lo), np.minimum(seed_lo + seed.shape, hi)
    seed_box[tuple(slice(int(x - l), int(y - l)) for x, y, l in zip(a, b, lo))] = seed[tuple(slice(int(x - s), int(y - s)) for x, y, s in zip(a, b, seed_lo))]

    factor = np.maximum(1, np.round(work_mm / spacing)).astype(int)
    coarse = spacing * factor
    ct_c = _pool(ct, factor, "mean")
    lungs_c = _pool(region, factor, "max") > 0
    seed_c = _pool(seed_box, factor, "max") > 0
    aerated = (ct_c < edge_hu) & lungs_c
    near_air = ndimage.distance_transform_edt(~aerated, sampling=coarse) <= edge_mm
    tissue_any = (ct_c < bone_hu) & ((ct_c >= soft_hu) | (near_air & (ct_c >= edge_hu)))
    to_seed = ndimage.distance_transform_edt(~seed_c, sampling=coarse)
    side = _touching_lung(aerated, seed_c)

    base = lungs_c | enclosed_along_k(side, max(1, int(round(enclose_mm / coarse[2]))))
    region_c, lesion_c, volume = base | _slice_hulls(side | seed_c), None, 0
    for _ in range(max_rounds):
        lesion = _opened_lesion(tissue_any & region_c, to_seed, coarse, core_mm, edge_mm)
        if lesion is None:
            return None, None
        grown = int(lesion.sum())
        if lesion_c is not None and grown <= volume * (1.0 + settle):
            lesion_c = lesion
            break
        lesion_c, volume = lesion, grown
        # a mass that replaced much of a lung's slice lies outside what is left of its hull: take the hull of the
        # lung with the lesion found so far, slice by slice, and look again
        region_c = base | _slice_hulls(side | seed_c | lesion_c)

    # back on the grid: the lesion tissue within a coarse voxel of the coarse lesion, connected to its core
    near = ndimage.binary_dilation(lesion_c, iterations=1)
    near = near.repeat(factor[0], 0).repeat(factor[1], 1).repeat(factor[2], 2)[: ct.shape[0], : ct.shape[1], : ct.shape[2]]
    region_full = region_c.repeat(factor[0], 0).repeat(factor[1], 1).repeat(factor[2], 2)[: ct.shape[0], : ct.shape[1], : ct.shape[2]]
    mask = near & (region | region_full) & (ct >= edge_hu) & (ct < bone_hu)
    labels, n = ndimage.label(mask)
    if n > 1:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        mask = labels == int(np.argmax(sizes))
    return mask, box


def _reaches_edge(mask: np.ndarray, box: tuple[slice, ...], grid_shape) -> bool:
    """Whether a lesion crop touches a face of its box that is not the grid's own border (it may go on beyond)."""
    for axis, (sl, n) in enumerate(zip(box, grid_shape)):
        faces = ([0] if sl.start > 0 else []) + ([mask.shape[axis] - 1] if sl.stop < n else [])
        if any(np.take(mask, f, axis=axis).any() for f in faces):
            return True
    return False


def has_core_near(hu, seed: np.ndarray, affine: np.ndarray, seed_lo=(0, 0, 0), grid_shape=None, reach_mm: float = 12.0,
                  work_mm: float = 2.0, core_mm: float = 8.0, soft_hu: float = -60.0, bone_hu: float = 180.0) -> bool:
    """Whether soft tissue at least ``2 * core_mm`` thick lies within ``reach_mm`` of the finding's component (on a
    ``work_mm`` grid, lung region or not): what a mass needs and a nodule with lung around it lacks. The cheap first
    test of :func:`measure_lesion` (milliseconds on a crop the size of the component)."""
    spacing = np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)
    seed, seed_lo = np.asarray(seed, dtype=bool), np.asarray(seed_lo, dtype=int)
    where = np.argwhere(seed) + seed_lo
    if where.size == 0:
        return False
    reach = np.ceil((reach_mm + core_mm) / spacing).astype(int)
    shape = np.asarray(grid_shape if grid_shape is not None else seed.shape)
    lo, hi = np.maximum(where.min(axis=0) - reach, 0), np.minimum(where.max(axis=0) + reach + 1, shape)
    get_hu = hu if callable(hu) else (lambda sl: np.asarray(hu[sl]))
    factor = np.maximum(1, np.round(work_mm / spacing)).astype(int)
    ct = _pool(np.asarray(get_hu(tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))), dtype=np.float32), factor, "mean")
    tissue = (ct >= soft_hu) & (ct < bone_hu)
    core = ndimage.distance_transform_edt(tissue, sampling=spacing * factor) > core_mm
    if not core.any():
        return False
    centre = ((where.min(axis=0) + where.max(axis=0)) / 2.0 - lo) / factor
    span = (where.max(axis=0) - where.min(axis=0)) / 2.0 * spacing + reach_mm
    near = np.argwhere(core)
    return bool((np.abs((near - centre) * spacing * factor) <= span).all(axis=1).any())


def measure_lesion(hu, lung_region: np.ndarray, seed: np.ndarray, affine: np.ndarray, seed_lo=(0, 0, 0), **kwargs) -> dict | None:
    """``{"mask", "box", "volume_mm3", "diameter_mm", "longest_axial_mm"}`` of the finding's lesion when it is a mass
    (its longest axial diameter over :data:`MASS_MIN_DIAMETER_MM`), else None. Arguments: :func:`segment_lesion`'s.

    A nodule with lung around it is turned down first by :func:`has_core_near`, which costs milliseconds; only a
    finding in or beside something at least ``2 * core_mm`` thick is segmented in full."""
    gate = {k: kwargs[k] for k in ("core_mm", "soft_hu", "bone_hu") if k in kwargs}
    if not has_core_near(hu, seed, affine, seed_lo, lung_region.shape, **gate):
        return None
    # most lesions that pass are a nodule against a vessel or the heart: settle those on a smaller crop, and take the
    # full one only for a lesion that reaches the small crop's edge
    small = {**kwargs, "box_mm": min(kwargs.get("box_mm", 60.0), 35.0)}
    mask, box = segment_lesion(hu, lung_region, seed, affine, seed_lo, **small)
    if mask is not None and _reaches_edge(mask, box, lung_region.shape) and small["box_mm"] < kwargs.get("box_mm", 60.0):
        mask, box = segment_lesion(hu, lung_region, seed, affine, seed_lo, **kwargs)
        if mask is not None and _reaches_edge(mask, box, lung_region.shape):
            return None  # no lesion of a size to measure: an organ the lung lies on (liver dome, spleen, heart)
    if mask is None or not mask.any():
        return None
    sizes = measure_mask(mask, affine)
    if sizes["longest_axial_mm"] <= MASS_MIN_DIAMETER_MM:
        return None
    return {"mask": mask, "box": box, **sizes}


def _flip(points: np.ndarray, space: str) -> np.ndarray:
    """World points between LPS and ``space`` (RAS flips x and y both ways; LPS stays)."""
    return points * np.array([-1.0, -1.0, 1.0]) if space.upper() == "RAS" else points


def type_masses(findings: list, hu, lungs: np.ndarray, affine: np.ndarray, space: str = "RAS", top_k: int = 20) -> list:
    """The findings with every mass among the ``top_k`` most probable found, sized and typed (:func:`measure_lesion`,
    seeded by each finding's own mask): such a finding becomes ``kind="mass"`` with the lesion's sizes, mask and
    centroid (world LPS mm), and the other findings lying in the same lesion are folded into it, since they are
    pieces of one tumour (it keeps the most probable one's scores and place in the order).

    ``findings``: :class:`~monai_lung.findings.Finding` records sorted by probability, their masks on the grid of
    ``affine`` (``space`` its world frame); ``hu``: that grid's CT in HU (array or ``slices -> HU crop``); ``lungs``:
    the grid's lungs with the lesions in them (no margin)."""
    from dataclasses import replace

    from monai_lung.findings import FindingMask

    affine = np.asarray(affine, dtype=np.float64)
    inverse = np.linalg.inv(affine)
    out = list(findings)
    n = 0
    while n < min(len(out), top_k):
        finding = out[n]
        if finding.kind == "mass" or finding.mask is None or not finding.mask.array.any():
            n += 1
            continue
        seed_lo = np.rint(inverse[:3, :3] @ np.asarray(finding.mask.affine)[:3, 3] + inverse[:3, 3]).astype(int)
        lesion = measure_lesion(hu, lungs, finding.mask.array, affine, seed_lo=seed_lo)
        if lesion is None:
            n += 1
            continue
        lo = np.array([sl.start for sl in lesion["box"]])
        # the findings whose centre lies in the lesion: this one and its other pieces
        centres = np.array([_flip(np.array(f.coord), space) for f in out])
        index = np.rint((centres @ inverse[:3, :3].T + inverse[:3, 3]) - lo).astype(int)
        inside = np.all((index >= 0) & (index < lesion["mask"].shape), axis=1)
        inside[inside] = lesion["mask"][tuple(index[inside].T)]
        inside[n] = True
        members = np.flatnonzero(inside)
        first = int(members[0])  # the most probable piece (the list is sorted)
        centroid = affine[:3, :3] @ (np.argwhere(lesion["mask"]).mean(axis=0) + lo) + affine[:3, 3]
        shift = np.eye(4)
        shift[:3, 3] = lo
        mass = replace(
            out[first], coord=tuple(_flip(centroid, space)), kind="mass", diameter_mm=lesion["diameter_mm"],
            volume_mm3=lesion["volume_mm3"], longest_axial_mm=lesion["longest_axial_mm"],
            mask=FindingMask(lesion["mask"], affine @ shift, space),
        )
        folded = set(members.tolist())
        out = [f for m, f in enumerate(out) if m not in folded]
        out.insert(first, mass)
        n = n + 2 - int(np.count_nonzero(members <= n))  # the first finding after this one not yet looked at
    return out
