"""Nodule type (solid, part-solid, non-solid) and calcification, judged from the CT in and around a finding.

Arrays are (i, j, k) voxel grids of one crop around a finding: ``hu`` float HU, ``seed`` bool (the detector's mask of
the finding, or a small ball at its centre), ``affine`` (4x4) maps (i, j, k) to world mm (only voxel sizes are used).
``blur_mm`` (3,) is, per crop axis, how far a tissue edge is smeared in the scan the crop was cut from: half a scan
voxel plus the point-spread (:func:`partial_volume_mm`), so a 2.5 mm slice smears edges along z far more than a
0.7 mm pixel does in-plane.

The rule, in this one place (:func:`nodule_composition`):

1. **Nodule**: voxels of the lightly smoothed CT at least :data:`GROUND_GLASS_DELTA_HU` above the lung around the
   finding, connected to the seed, within reach of it (:func:`_reach_mm`), not deep in the chest wall, with thin
   attachments (vessels, also the stubs a detector's mask carries) opened off, holes filled.
2. **Solid** voxels: smoothed HU >= :data:`SOLID_HU`, anywhere in the crop. **Real ground glass**: the nodule's voxels
   more than :data:`RIM_BLUR_WIDTHS` partial-volume widths (``blur_mm``, per axis) from every solid voxel, less
   threads thinner than twice :data:`OPEN_BLUR_WIDTHS` widths (a small vessel's or a spicule's blurred edge).
3. **Type**: *non-solid* when the nodule's largest solid component is smaller than a ball of
   :data:`MIN_SOLID_DIAMETER_MM`; *solid* when less than :data:`GROUND_GLASS_FRACTION` of the nodule is real ground
   glass; *part-solid* otherwise. Reason: every edge of soft tissue (a solid nodule's, a vessel's, the chest wall's)
   blends through ground-glass values into the lung over the scan's partial-volume width, so only ground glass
   farther from soft tissue than that is a ground-glass component a reader would see.
4. **Calcified**: at least :data:`CALCIFIED_FRACTION` of the nodule, and :data:`CALCIFIED_MIN_MM3`, at or above
   :data:`CALCIFIED_HU`; its pattern is ``complete`` (half the nodule or more), ``central`` (centred within
   :data:`CENTRAL_FRACTION` of the nodule's radius) or ``other``. Lung-RADS takes complete, central, popcorn and
   laminated calcification as benign; only the first two are measurable here, so ``other`` is left to a reader.

Sizes: a solid nodule's are measured as the detector measures them (:func:`~monai_lung.detection.sizing.refine_mask`:
the half-contrast edge, kept out of the chest wall); a sub-solid one's on the half-contrast edge between the lung and
its ground glass, which a solid-tissue threshold would cut away. Known limits: a solid nodule of 4 mm or less in
thick (2.5 mm) slices is blurred to ground-glass values and comes out non-solid; a calcification smaller than about
1 mm^3 is not seen; a vessel crossing a ground-glass nodule reads as a solid component.
A part-solid nodule also gets its solid component's volume and Lung-RADS mean diameter (:mod:`.measures`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from monai_lung.clinical.measures import mean_diameter
from monai_lung.detection.sizing import equivalent_diameter, refine_mask, volume_mm3

#: nodule types, as the outputs spell them
TYPES = ("solid", "part-solid", "non-solid")
#: smoothed HU at or above which a voxel is solid (soft tissue), below it ground glass or lung
SOLID_HU = -300.0
#: the nodule's voxels are at least this many HU above the surrounding lung (faint ground glass still counts)
GROUND_GLASS_DELTA_HU = 150.0
#: ground glass this many partial-volume widths (``blur_mm``) or more from the solid part is real ground glass
RIM_BLUR_WIDTHS = 1.5
#: a solid piece making up this share of the nodule is its own, however far it runs on outside (the chest wall)
OWN_SHARE = 0.3
#: real ground glass thinner than twice this many partial-volume widths is a thread (a small vessel's or a spicule's
#: blurred edge), not a ground-glass component
OPEN_BLUR_WIDTHS = 0.5
#: a nodule with less than this share of real ground glass is solid
GROUND_GLASS_FRACTION = 0.17
#: a solid component smaller than a ball of this diameter (mm) is noise or a vessel's cross-section: non-solid
MIN_SOLID_DIAMETER_MM = 2.0
#: smoothed HU at or above which a voxel is calcified
CALCIFIED_HU = 200.0
#: a calcified nodule has at least this share of its voxels calcified ...
CALCIFIED_FRACTION = 0.02
#: ... and at least this volume (mm^3)
CALCIFIED_MIN_MM3 = 1.0
#: a calcification whose centroid lies within this fraction of the nodule's radius of its centroid is central
CENTRAL_FRACTION = 0.3
#: smoothing (mm, counting the scan voxel's own averaging) before thresholds: noise must not make single voxels
#: solid or calcified
SMOOTH_MM = 0.5
#: a CT scanner's point-spread (mm, a Gaussian's sigma), beyond the averaging over a voxel
PSF_MM = 0.5
#: lung HU when too little lung surrounds a finding to measure it
LUNG_HU = -850.0
#: growth beyond the seed stays within this distance (mm) of the lung (less for a small seed): the chest wall under a
#: nodule's base is not nodule
WALL_REACH_MM = 2.0


@dataclass
class Composition:
    """What :func:`nodule_composition` found. Volumes mm^3, diameters mm; masks (i, j, k) bool on the crop."""

    type: str
    calcified: bool
    calcification: str  # "", "complete", "central" or "other"
    volume_mm3: float
    mean_diameter_mm: float  # Lung-RADS: mean of long and short axis, one decimal
    solid_volume_mm3: float  # the largest solid component (0 for non-solid)
    solid_mean_diameter_mm: float
    ground_glass_fraction: float  # share of the nodule that is ground glass beyond the solid part's partial-volume rim
    calcified_fraction: float
    lung_hu: float  # the lung around the finding
    mask: np.ndarray = field(repr=False)
    solid_mask: np.ndarray = field(repr=False)

    def summary(self) -> dict:
        """JSON-ready measurements (no masks); solid-component sizes only for a part-solid nodule."""
        part = self.type == "part-solid"
        return {
            "type": self.type, "calcified": bool(self.calcified), "calcification": self.calcification,
            "volume_mm3": round(self.volume_mm3, 1), "mean_diameter_mm": self.mean_diameter_mm,
            "solid_volume_mm3": round(self.solid_volume_mm3, 1) if part else None,
            "solid_mean_diameter_mm": self.solid_mean_diameter_mm if part else None,
            "ground_glass_fraction": round(self.ground_glass_fraction, 3), "calcified_fraction": round(self.calcified_fraction, 3),
        }


def partial_volume_mm(scan_spacing_mm, psf_mm: float = None) -> np.ndarray:
    """Per axis, how far (mm) a scan with voxel ``scan_spacing_mm`` (3,) smears a tissue edge: half a voxel plus
    ``psf_mm`` (default :data:`PSF_MM`), the scanner's point-spread."""
    return 0.5 * np.asarray(scan_spacing_mm, dtype=np.float64) + (PSF_MM if psf_mm is None else psf_mm)


# morphology with ellipsoids of ``radii`` mm per axis on a grid of ``spacing`` mm, through distance transforms (the
# structuring-element versions take seconds on a crop)
def _dilate(mask: np.ndarray, radii, spacing) -> np.ndarray:
    return ndimage.distance_transform_edt(~mask, sampling=np.asarray(spacing) / np.asarray(radii)) <= 1.0


def _erode(mask: np.ndarray, radii, spacing) -> np.ndarray:
    return ndimage.distance_transform_edt(mask, sampling=np.asarray(spacing) / np.asarray(radii)) > 1.0


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """``mask`` with every background region that does not reach the array's border filled."""
    labels, n = ndimage.label(~mask)
    if n == 0:
        return mask
    border = np.unique(np.concatenate([np.take(labels, i, axis=a).ravel() for a in range(3) for i in (0, -1)]))
    return mask | ~np.isin(labels, border)


#: the largest nodule (mm) the reach allows for: Lung-RADS's table ends at 30 mm
MAX_NODULE_MM = 35.0


def _reach_mm(seed_diameter_mm: float) -> float:
    """How far (mm) the nodule may extend beyond the seed: a part-solid nodule's ground glass can reach well beyond
    a seed that covers only its solid part (three quarters of the seed's size), but not make the nodule larger than
    :data:`MAX_NODULE_MM`; 3 mm at least."""
    return max(3.0, min(0.75 * seed_diameter_mm, 0.5 * (MAX_NODULE_MM - seed_diameter_mm)))


def _connected_to(mask: np.ndarray, seed: np.ndarray) -> np.ndarray:
    labels, n = ndimage.label(mask)
    if n == 0:
        return mask
    touched = np.unique(labels[seed & mask])
    return np.isin(labels, touched[touched > 0])


def _largest(mask: np.ndarray) -> np.ndarray:
    labels, n = ndimage.label(mask)
    if n <= 1:
        return mask
    return labels == (1 + int(np.argmax(np.bincount(labels.ravel())[1:])))


def nodule_composition(
    hu: np.ndarray, affine: np.ndarray, seed: np.ndarray, blur_mm=(1.0, 1.0, 1.0), outside: np.ndarray | None = None
) -> Composition:
    """Type, calcification and sizes of the finding ``seed`` marks on a crop (see the module docstring).

    Args:
        hu: (i, j, k) CT in HU around the finding, at least the reach (:func:`_reach_mm`) plus 8 mm beyond the seed.
        affine: (i, j, k) -> world mm of the crop.
        seed: (i, j, k) bool, part of the finding (non-empty).
        blur_mm: (3,) partial-volume width per crop axis (:func:`partial_volume_mm` of the scan's voxel size).
        outside: (i, j, k) bool, what lies outside the lungs (:mod:`.location`), if known: only there can soft tissue
            be chest wall rather than nodule.
    """
    seed = np.asarray(seed, dtype=bool)
    if not seed.any():
        raise ValueError("the seed of a finding is empty")
    affine = np.asarray(affine, dtype=np.float64)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    voxel = float(np.prod(spacing))
    blur = np.asarray(blur_mm, dtype=np.float64)
    own = np.sqrt(np.maximum(SMOOTH_MM**2 - (blur - PSF_MM) ** 2, 0.0))  # a thick slice averages enough by itself
    smooth = ndimage.gaussian_filter(np.asarray(hu, dtype=np.float32), own / spacing, mode="nearest")

    # the lung around the finding: what is below -500 HU between 3 and 8 mm outside the seed
    to_seed = ndimage.distance_transform_edt(~seed, sampling=spacing)
    shell = smooth[(to_seed > 3.0) & (to_seed <= 8.0)]
    lung = shell[shell < -500.0]
    lung_hu = float(np.median(lung)) if lung.size >= 20 else LUNG_HU

    # 1. the nodule: ground glass and above, near the seed, facing lung, vessels opened off, holes filled
    seed_d = equivalent_diameter(np.count_nonzero(seed) * voxel)
    low = lung_hu + GROUND_GLASS_DELTA_HU
    above = smooth >= low
    candidate = above & (to_seed <= _reach_mm(seed_d))
    # beyond the seed, soft tissue (outside the lungs, where known) must face lung: the chest wall under a nodule's
    # base is not nodule; ground glass and the lungs' inside never are wall
    wall = smooth >= SOLID_HU
    if outside is not None:
        wall &= outside
    candidate &= seed | ~wall | (ndimage.distance_transform_edt(above, sampling=spacing) <= WALL_REACH_MM)
    opening = np.clip(0.2 * seed_d, 0.5, 1.5)  # mm: detaches vessels thinner than twice this
    opened = _dilate(_erode(candidate, opening, spacing), opening, spacing)
    # the seed may carry a vessel's stub (a detector's component does): only what survives the opening counts
    nodule = _fill_holes(_connected_to(opened, seed))
    if not nodule.any():
        nodule = _fill_holes(_connected_to(opened | (candidate & seed), seed))
    if not nodule.any():
        nodule = seed.copy()

    # 2. solid voxels (anywhere: the chest wall's and vessels' partial-volume edges are no ground glass), the nodule's
    # ground glass beyond partial-volume reach of them (distances in blur widths), and its own solid part: solid pieces
    # of the nodule that do not run on outside it (a vessel crossing ground glass is no solid component)
    solid_any = smooth >= SOLID_HU
    beyond = nodule & (ndimage.distance_transform_edt(~solid_any, sampling=spacing / blur) > RIM_BLUR_WIDTHS)
    # a ground-glass component is a layer, not a thread: what an opening of OPEN_BLUR_WIDTHS removes (a small vessel's
    # or a spicule's blurred edge) is not counted
    opening = OPEN_BLUR_WIDTHS * blur
    beyond = _dilate(_erode(beyond, opening, spacing), opening, spacing) & beyond
    ground_glass_fraction = float(np.count_nonzero(beyond)) / float(np.count_nonzero(nodule))
    solid_labels, _ = ndimage.label(solid_any)
    pieces = np.unique(solid_labels[nodule & solid_any])
    pieces = pieces[pieces > 0]
    grown = _dilate(nodule, blur, spacing)
    inside = ndimage.sum_labels(grown, solid_labels, pieces) if pieces.size else np.zeros(0)
    total = ndimage.sum_labels(np.ones_like(grown), solid_labels, pieces) if pieces.size else np.zeros(0)
    # a piece is the nodule's own when most of it lies in the nodule, or when it makes up much of the nodule (a solid
    # nodule leaning on the chest wall or a vessel)
    own = pieces[(inside >= 0.5 * total) | (inside >= OWN_SHARE * np.count_nonzero(nodule))]
    solid_part = _largest(nodule & np.isin(solid_labels, own)) if own.size else np.zeros_like(nodule)
    any_solid_d = equivalent_diameter(np.count_nonzero(_largest(nodule & solid_any)) * voxel)
    solid_d = equivalent_diameter(np.count_nonzero(solid_part) * voxel)

    # 3. type
    if any_solid_d < MIN_SOLID_DIAMETER_MM:
        kind = "non-solid"
    elif ground_glass_fraction < GROUND_GLASS_FRACTION:
        kind = "solid"
        solid_part = _largest(nodule & solid_any)
    elif solid_d >= MIN_SOLID_DIAMETER_MM:
        kind = "part-solid"
    else:
        kind = "non-solid"

    # sizes: a solid nodule's as the detector measures it (the half-contrast edge, kept out of the chest wall); a
    # sub-solid one's on the half-contrast edge between the lung and its ground glass
    level = float(np.median(smooth[beyond])) if kind == "part-solid" and beyond.any() else float(np.percentile(smooth[nodule], 75))
    half = min(max(0.5 * (lung_hu + level), low), SOLID_HU)
    body = nodule & (smooth >= half)
    if kind == "solid":
        mask, _ = refine_mask(hu, affine, seed)
    else:  # less the vessels crossing or touching it, with their partial-volume rims
        foreign = np.isin(solid_labels, np.setdiff1d(pieces, own)) & ~solid_part
        foreign = _dilate(foreign, blur, spacing) & ~solid_part
        mask = _fill_holes(_connected_to(body & ~foreign, seed | solid_part))
    if not mask.any():
        mask = nodule

    # 4. calcification
    # counted inside the nodule, away from its edge, where a rib or a neighbour's partial volume cannot reach
    own_part = _erode(mask, blur, spacing)
    own_part = own_part if own_part.any() else mask
    if outside is not None:
        own_part = own_part & ~outside
    calc = own_part & (smooth >= CALCIFIED_HU)
    n_mask, n_calc = np.count_nonzero(own_part), np.count_nonzero(calc)
    calc_fraction = n_calc / max(n_mask, 1)
    calcified = calc_fraction >= CALCIFIED_FRACTION and n_calc * voxel >= CALCIFIED_MIN_MM3
    pattern = ""
    if calcified:
        radius = 0.5 * equivalent_diameter(np.count_nonzero(mask) * voxel)
        offset = (np.argwhere(calc).mean(axis=0) - np.argwhere(mask).mean(axis=0)) * spacing
        pattern = "complete" if calc_fraction >= 0.5 else ("central" if np.linalg.norm(offset) <= CENTRAL_FRACTION * radius else "other")

    part = kind == "part-solid"
    return Composition(
        type=kind, calcified=bool(calcified), calcification=pattern,
        volume_mm3=volume_mm3(mask, affine), mean_diameter_mm=mean_diameter(mask, affine),
        solid_volume_mm3=volume_mm3(solid_part, affine) if kind != "non-solid" else 0.0,
        solid_mean_diameter_mm=mean_diameter(solid_part, affine) if part else 0.0,
        ground_glass_fraction=ground_glass_fraction, calcified_fraction=float(calc_fraction), lung_hu=lung_hu,
        mask=mask, solid_mask=solid_part,
    )
