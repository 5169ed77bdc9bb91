"""Synthetic nodule insertion: paint soft ellipsoids into lung parenchyma as extra training positives.

A LUNA16 fold trains on ~1,000 nodules; a small data set (or the 20-scan demo) on a few dozen, which a
network memorises together with their surroundings. Drawing extra nodules into training patches and
crops gives every epoch new positives of every size and density, at every place of the lung (next to
vessels, the pleura, the hilum), so the network learns the shape of a nodule (a compact blob) against
what the real false positives are (vessels, tubes), instead of the few real nodules' contexts.

What is drawn (a prior about nodules, not a copy of any data): a randomly rotated ellipsoid (axes within
+-``elongation`` of the mean radius), diameter in ``diameter_mm`` (log-uniform, or skewed small by
``diameter_power``), a flat interior at a density drawn from ``solid_hu`` (or ``subsolid_hu`` with
``subsolid_prob``), a logistic edge ``edge_mm`` wide (partial volume and reconstruction blur), the local
noise level added inside, and max-blended so that denser tissue (a vessel it touches) stays on top. The
0/1 label is the ellipsoid itself (the sphere-mask convention of :class:`~monai_lung.transforms.NoduleMaskd`);
a drawing that mostly hides in denser tissue is undone rather than labelled.

The transforms work on the scaled (1, i, j, k) image (the lung window mapped to [0, 1], ``hu_window``),
on a RAS grid whose voxel size they read from the MetaTensor's affine, or take as ``spacing`` for plain
tensors (MONAI's meta tracking off, :class:`~monai_lung.transforms.ComposeRandomWithoutMeta`; 1 mm when neither). Keep the
probability low on data with many real nodules: the real ones are the better teachers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, RandomizableTransform

from monai_lung.io.coords import voxel_spacing
from monai_lung.transforms.slice_grid import as_slice_grid, patch_slice_grid
from monai_lung.transforms.preprocessing import DEFAULT_HU_WINDOW


def _copy(x) -> tuple[torch.Tensor, torch.Tensor]:
    """A copy of ``x`` (MetaTensor kept) and a plain-tensor view of it to draw into."""
    out = x.clone() if isinstance(x, torch.Tensor) else torch.as_tensor(x).clone()
    return out, (out.as_tensor() if isinstance(out, MetaTensor) else out)


def _random_rotation(rng: np.random.RandomState) -> np.ndarray:
    """A uniformly random 3x3 rotation (QR of a Gaussian matrix, signs fixed)."""
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _normalised_radius(axes_vox: Sequence[torch.Tensor], centre: np.ndarray, spacing: np.ndarray, rotation, radii_mm) -> torch.Tensor:
    """Ellipsoid radius (1 on its surface) at the grid of per-axis voxel positions ``axes_vox`` (three 1D float
    tensors, voxel index units): a tensor of shape (len(axes_vox[0]), len(axes_vox[1]), len(axes_vox[2])).

    The coordinate along each ellipsoid axis is a sum of three 1D terms, one per grid axis, so it is built by
    broadcasting instead of a (..., 3) grid times the rotation, which is several times faster."""
    rotation = np.asarray(rotation, dtype=np.float64)
    offsets = [ax - float(c) for ax, c in zip(axes_vox, centre)]
    rho2 = None
    for e in range(3):  # each ellipsoid axis: (mm offset . its direction) / its semi-axis, squared
        w = [float(sp * rotation[a, e] / radii_mm[e]) for a, sp in enumerate(spacing)]
        t = (offsets[0] * w[0])[:, None, None] + (offsets[1] * w[1])[None, :, None] + (offsets[2] * w[2])[None, None, :]
        rho2 = t * t if rho2 is None else rho2.addcmul_(t, t)
    return rho2.sqrt_()


def _resample_axis(values: torch.Tensor, axis: int, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Linear interpolation of ``values`` along ``axis`` from the positions ``source`` (equally spaced, at least two)
    to ``target`` (1D float tensors, voxel index units); targets beyond ``source`` take the nearest end's value."""
    step = float(source[1] - source[0])
    f = (target - source[0]) / step
    lo = torch.clamp(torch.floor(f), 0, len(source) - 2).long()
    w = (f - lo).clamp(0.0, 1.0)
    shape = [1] * values.ndim
    shape[axis] = -1
    w = w.reshape(shape)
    return values.index_select(axis, lo) * (1 - w) + values.index_select(axis, lo + 1) * w


def paint_nodule(
    image: torch.Tensor,
    centre_ijk: Sequence[float],
    radii_mm: Sequence[float],
    rotation: np.ndarray,
    value: float,
    edge_mm: float,
    noise_std: float,
    spacing: Sequence[float],
    rng: np.random.RandomState,
    slice_grid: np.ndarray | None = None,
) -> tuple[tuple[slice, ...], torch.Tensor]:
    """Draw one soft ellipsoid into ``image`` (i, j, k), in place.

    Args:
        image: (i, j, k) float tensor, scaled intensities.
        centre_ijk: centre, voxel index (may be fractional or outside the array).
        radii_mm: the three semi-axes in mm, along the columns of ``rotation``.
        rotation: (3, 3) rotation, columns = the ellipsoid's axes in (i, j, k) mm space.
        value: interior intensity (scaled).
        edge_mm: width of the logistic edge.
        noise_std: standard deviation of the Gaussian noise added inside (scaled units).
        spacing: (3,) voxel size, mm per (i, j, k) step.
        slice_grid: optional (3, 2) float, per (i, j, k) axis (step, phase) in voxels of ``image``: the positions
            ``phase + n * step`` where the scan's source sampled that axis (step 0: not imitated; see
            :mod:`monai_lung.transforms.slice_grid`). Along such an axis the nodule, noise included, is drawn
            as the source recorded it: at each sample the ellipsoid's mean over a slab one step thick is blended
            into the tissue there, and what that adds is linearly interpolated to the voxels, as resampling
            a thick-slice scan interpolated its real nodules.

    Returns:
        (box, inside): the box of ``image`` that was touched (a tuple of slices; empty slices when the
        ellipsoid misses the array) and ``inside``, the bool mask of the ellipsoid (normalised radius <= 1) in it,
        always on the voxels of ``image`` (the label of the drawing).
    """
    spacing = np.asarray(spacing, dtype=np.float64)
    centre = np.asarray(centre_ijk, dtype=np.float64)
    reach = (max(radii_mm) + 2.0 * edge_mm + 1.0) / spacing
    lo = np.maximum(np.floor(centre - reach).astype(int), 0)
    hi = np.minimum(np.ceil(centre + reach).astype(int) + 1, np.asarray(image.shape))
    box = tuple(slice(int(a), int(max(a, b))) for a, b in zip(lo, hi))
    if any(s.stop <= s.start for s in box):
        return box, torch.zeros(0, dtype=torch.bool)
    voxels = [torch.arange(s.start, s.stop, dtype=torch.float32) for s in box]
    grid = np.zeros((3, 2)) if slice_grid is None else np.asarray(slice_grid, dtype=np.float64).reshape(3, 2)
    steps, phases = grid[:, 0], grid[:, 1]
    # (a box one voxel thick along an axis has nothing to interpolate between)
    sliced = [a for a in range(3) if steps[a] > 0 and box[a].stop - box[a].start >= 2]
    mean_radius = float(np.mean(radii_mm))
    sharpness = mean_radius / max(edge_mm / 4.0, 1e-3)  # 12 % -> 88 % across edge_mm
    rho = _normalised_radius(voxels, centre, spacing, rotation, radii_mm)
    samples = list(voxels)
    if not sliced:
        alpha = torch.sigmoid((1.0 - rho) * sharpness)
    else:
        for a in sliced:  # the source's samples covering the box (at least two, to interpolate between)
            n0 = int(np.floor((box[a].start - phases[a]) / steps[a]))
            n1 = max(int(np.ceil((box[a].stop - 1 - phases[a]) / steps[a])), n0 + 1)
            samples[a] = torch.as_tensor(phases[a] + np.arange(n0, n1 + 1) * steps[a], dtype=torch.float32)
        # a sample is the mean over its slab: three points one third of a step apart per sliced axis
        offsets = [(-1.0 / 3.0, 0.0, 1.0 / 3.0) if a in sliced else (0.0,) for a in range(3)]
        alpha = 0.0
        for u in np.stack(np.meshgrid(*offsets, indexing="ij"), axis=-1).reshape(-1, 3):
            at = [s + float(ua * st) for s, ua, st in zip(samples, u, steps)]
            alpha = alpha + torch.sigmoid((1.0 - _normalised_radius(at, centre, spacing, rotation, radii_mm)) * sharpness)
        alpha = alpha / float(np.prod([len(o) for o in offsets]))
    old = image[box]
    shape = tuple(len(s) for s in samples)
    blob = torch.full(shape, float(value), dtype=old.dtype)
    if noise_std > 0:
        blob = blob + torch.as_tensor(rng.standard_normal(shape), dtype=old.dtype) * float(noise_std)
    alpha = alpha.to(old.dtype)
    if not sliced:
        image[box] = torch.maximum(old, old + alpha * (blob - old))
        return box, rho <= 1.0
    # what each source sample would have recorded on top of the tissue there (max-blended: never darker), then
    # interpolated to the voxels as the scan's resampling interpolated the samples themselves
    tissue = old
    for a in sliced:
        tissue = _resample_axis(tissue, a, voxels[a], samples[a])
    added = torch.clamp(alpha * (blob - tissue), min=0.0)
    for a in sliced:
        added = _resample_axis(added, a, samples[a], voxels[a])
    image[box] = old + added
    return box, rho <= 1.0


@dataclass
class NoduleAppearance:
    """What a synthetic nodule looks like: the ranges its parameters are drawn from.

    Args:
        diameter_mm: (min, max) diameter: ``min * (max / min) ** (u ** diameter_power)``, ``u`` uniform.
        diameter_power: 1 draws log-uniform diameters; above 1 favours small ones (1.6: median ~6 mm over
            3-25 mm, about a LUNA16 fold's, where log-uniform's is ~8.7 mm).
        elongation: semi-axes vary by up to this fraction of the mean radius.
        solid_hu / subsolid_hu: (min, max) interior density of solid / part-solid and ground-glass nodules.
        subsolid_prob: share of sub-solid nodules.
        edge_mm: (min, max) width of the soft edge.
        hu_window: the window the image was scaled with (``ScaleIntensityRanged``'s a_min, a_max).
    """

    diameter_mm: Sequence[float] = (3.0, 25.0)
    diameter_power: float = 1.0
    elongation: float = 0.2
    solid_hu: Sequence[float] = (-150.0, 120.0)
    subsolid_hu: Sequence[float] = (-700.0, -350.0)
    subsolid_prob: float = 0.2
    edge_mm: Sequence[float] = (0.5, 2.0)
    hu_window: Sequence[float] = DEFAULT_HU_WINDOW

    @classmethod
    def of(cls, value: "NoduleAppearance | Mapping | None") -> "NoduleAppearance":
        return value if isinstance(value, cls) else cls(**dict(value or {}))

    def draw(self, rng: np.random.RandomState) -> dict:
        """One nodule: ``diameter_mm``, ``radii_mm`` (3,), ``rotation`` (3, 3), ``value`` (scaled), ``edge_mm``."""
        lo, hi = float(self.diameter_mm[0]), float(self.diameter_mm[1])
        d = lo * (hi / lo) ** (rng.uniform() ** float(self.diameter_power))
        radii = 0.5 * d * (1.0 + rng.uniform(-self.elongation, self.elongation, 3))
        hu = rng.uniform(*(self.subsolid_hu if rng.uniform() < self.subsolid_prob else self.solid_hu))
        value = (hu - self.hu_window[0]) / (self.hu_window[1] - self.hu_window[0])
        return {
            "diameter_mm": d, "radii_mm": radii, "rotation": _random_rotation(rng),
            "value": float(np.clip(value, 0.0, 1.0)), "edge_mm": float(rng.uniform(*self.edge_mm)),
        }


def _parenchyma_noise(image: torch.Tensor, parenchyma_max: float) -> float:
    """Standard deviation of the voxels below ``parenchyma_max`` (lung texture and noise), clipped; from every
    second voxel per axis (an eighth of a patch is plenty for one number, and a whole one was a fifth of the
    insertion's time)."""
    image = image[::2, ::2, ::2]
    lung = image[image < parenchyma_max]
    if lung.numel() < 100:
        return 0.01
    return float(np.clip(float(lung.float().std()), 0.003, 0.05))


def _visible_fraction(after: torch.Tensor, before: torch.Tensor, inside: torch.Tensor, min_contrast: float) -> float:
    """Share of the ellipsoid's voxels (``inside``, bool, same shape as the boxes) that painting raised by ``min_contrast``."""
    return float(((after - before)[inside] >= min_contrast).float().mean())


#: share of parenchyma in the 7-voxel box around a bright voxel from which it counts as a vessel: a vessel up to
#: ~3 mm thick has more lung than that around it, a voxel on the chest wall's or the mediastinum's face ~0.5 or less
_VESSEL_LUNG_SHARE = 0.6


def _vessel_spots(vol: torch.Tensor, parenchyma_max: float, vessel_min: float, border: int) -> tuple[np.ndarray, np.ndarray]:
    """Vessel voxels of a scaled (i, j, k) patch and, for each, the gradient of the parenchyma share around it
    (per voxel step; it points to the lung side): ((N, 3) int voxel indices at least ``border`` from the
    faces, (N, 3) float). The box is 7 voxels wide, 7 mm on the 1 mm grid the bundles train on."""
    share = (vol < parenchyma_max).float()[None, None]
    for kernel in ((7, 1, 1), (1, 7, 1), (1, 1, 7)):  # separable box mean, ~15x cheaper than a 7^3 one
        share = F.avg_pool3d(share, kernel, stride=1, padding=tuple(k // 2 for k in kernel), count_include_pad=False)
    share = share[0, 0]
    inner = tuple(slice(border, n - border) for n in vol.shape)
    idx = torch.nonzero((vol[inner] >= vessel_min) & (share[inner] >= _VESSEL_LUNG_SHARE)) + border
    if len(idx) == 0:
        return np.zeros((0, 3), dtype=int), np.zeros((0, 3))
    grads = torch.stack(torch.gradient(share), dim=-1)[idx[:, 0], idx[:, 1], idx[:, 2]]
    return idx.numpy(), grads.double().numpy()


def _clear_of_labels(label: torch.Tensor, centre: np.ndarray, clearance_mm: float, spacing) -> bool:
    """No voxel of ``label`` (i, j, k) is set in the box reaching ``clearance_mm`` around voxel ``centre`` (int (3,))."""
    reach = np.ceil(clearance_mm / np.asarray(spacing, dtype=np.float64)).astype(int)
    box = tuple(slice(max(0, int(a - r)), int(a + r + 1)) for a, r in zip(centre, reach))
    return not bool((label[box] > 0).any())


def _spacing(image, fallback: Sequence[float] | None) -> np.ndarray:
    """mm per (i, j, k) step: the MetaTensor's affine, else ``fallback``, else 1 mm."""
    if getattr(image, "affine", None) is None and fallback is not None:
        return np.asarray(fallback, dtype=np.float64)
    return voxel_spacing(image)


class RandNoduleInsertiond(RandomizableTransform, MapTransform):
    """Draw up to ``max_nodules`` synthetic nodules into a training patch and its segmentation label.

    ``keys``: the scaled (1, i, j, k) image; ``label_key``: its (1, i, j, k) 0/1 nodule mask, set to 1 inside
    every drawn ellipsoid. Each nodule is centred on a parenchyma voxel (image < ``parenchyma_max``; 0.2
    is -720 HU in the default window) at least ``border`` voxels from the patch faces and away from the
    label's nodules; a patch with no such voxel (outside the lungs) is left as it is.

    A labelled nodule must show, as in :class:`RandCentreNoduled`: painting is max-blended, so the part of
    an ellipsoid that reaches into denser tissue (the chest wall, the aorta beside the spine, a vessel) leaves
    the image as it was. Labelling that part taught the UNet that the soft tissue bordering the lung is
    nodule, so that it scored the aorta's bulge into the lung beside the spine as one. A drawing is kept only when at least ``min_visible_fraction`` of the
    ellipsoid's voxels rose by ``min_contrast`` (scaled units; 0.04 is 56 HU in the default window), as a
    real juxta-pleural nodule does; otherwise it is undone and up to ``max_tries`` new ones are drawn.

    A share ``vessel_prob`` of the drawings can be placed against a vessel rather than at a random parenchyma
    voxel (juxta-vascular nodules: the small nodules a stage 1 misses are mostly 3-4 mm blobs on a vessel's
    side or fork; the segmentation bundle keeps it off, as it did not raise stage-1 recall). A vessel voxel is one of at least ``vessel_min`` (scaled; 0.5 is -300 HU in the default window)
    with mostly parenchyma around it (``_VESSEL_LUNG_SHARE`` of a 7-voxel box), which leaves out the chest
    wall and the mediastinum; the centre goes from it towards the parenchyma by 0.5-1 radius, so the
    ellipsoid overlaps the vessel's side, and the visibility rule still applies.

    Args:
        prob: probability of drawing into a patch (then 1..``max_nodules`` nodules).
        appearance: a :class:`NoduleAppearance` or a dict of its fields (sizes, densities, edges, ``hu_window``).
        min_contrast: rise (scaled units) that makes a voxel of the drawing count as showing.
        min_visible_fraction: share of the ellipsoid's voxels that must show for the drawing to be kept.
        max_tries: drawings tried per nodule before giving it up.
        vessel_prob: share of drawings placed against a vessel (0: all at random parenchyma voxels).
        vessel_min: scaled intensity from which a voxel with parenchyma around it counts as vessel.
        spacing: (3,) mm per (i, j, k) step for images without an affine (plain tensors); a MetaTensor's
            affine wins. None: 1 mm.
        slice_grid_key: the data key of the volume's source slice grid ((3, 2), from
            :class:`~monai_lung.transforms.SourceSliceGridd`); when the entry has it, drawings are made as the
            scan's own slices recorded its real nodules (:func:`paint_nodule`'s ``slice_grid``), instead of as
            smooth 1 mm ellipsoids that, in a 2.5 mm scan, no real nodule looks like. None: never.
        start_key: the data key of the patch's first voxel in the volume (int (3,), from
            :class:`~monai_lung.transforms.RandCropByPosNegLabelWithStartd`), which places the slices in the
            patch; without it the patch is taken to start at the volume's first voxel. Run this transform after
            the crop and before any other spatial transform, so that the slices are where the grid says.
    """

    backend = ["torch"]

    def __init__(
        self,
        keys: KeysCollection = "image",
        label_key: str = "label",
        prob: float = 0.5,
        max_nodules: int = 2,
        appearance: NoduleAppearance | Mapping | None = None,
        parenchyma_max: float = 0.2,
        border: int = 4,
        min_contrast: float = 0.04,
        min_visible_fraction: float = 0.5,
        max_tries: int = 3,
        vessel_prob: float = 0.0,
        vessel_min: float = 0.5,
        spacing: Sequence[float] | None = None,
        slice_grid_key: str | None = "slice_grid",
        start_key: str = "patch_start",
        allow_missing_keys: bool = False,
    ):
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.spacing = spacing
        self.slice_grid_key, self.start_key = slice_grid_key, start_key
        self.label_key, self.max_nodules = label_key, int(max_nodules)
        self.appearance = NoduleAppearance.of(appearance)
        self.parenchyma_max, self.border = float(parenchyma_max), int(border)
        self.min_contrast, self.min_visible_fraction = float(min_contrast), float(min_visible_fraction)
        self.max_tries = max(1, int(max_tries))
        if not 0.0 <= float(vessel_prob) <= 1.0:
            raise ValueError(f"vessel_prob must lie in [0, 1], got {vessel_prob}")
        self.vessel_prob, self.vessel_min = float(vessel_prob), float(vessel_min)

    def _free_spot(self, spots: torch.Tensor, label: torch.Tensor, clearance_mm: float, spacing) -> np.ndarray | None:
        """A (fractional) voxel centre among ``spots`` (N, 3) with no label voxel within ``clearance_mm``; a few tries."""
        for _ in range(8):
            c = spots[int(self.R.randint(len(spots)))].numpy()
            if _clear_of_labels(label, c, clearance_mm, spacing):
                return c + self.R.uniform(-0.5, 0.5, 3)
        return None

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        for key in self.key_iterator(d):
            img, img_view = _copy(d[key])
            label, label_view = _copy(d[self.label_key])
            spacing = _spacing(d[key], self.spacing)
            vol, lab = img_view[0], label_view[0]
            b = self.border
            inner = tuple(slice(b, n - b) for n in vol.shape)  # not [b:-b], which is empty for border 0
            spots = torch.nonzero(vol[inner] < self.parenchyma_max) + b  # parenchyma off the faces
            if len(spots) == 0:
                continue
            noise = _parenchyma_noise(vol, self.parenchyma_max)
            grid = self._patch_slice_grid(d)
            vessels = None  # found on the first drawing that wants them
            for _ in range(int(self.R.randint(1, self.max_nodules + 1))):
                for _ in range(self.max_tries):
                    nodule = self.appearance.draw(self.R)
                    clearance = nodule["diameter_mm"] / 2 + 2.0
                    centre = None
                    if self.vessel_prob > 0 and self.R.uniform() < self.vessel_prob:
                        if vessels is None:
                            vessels = _vessel_spots(vol, self.parenchyma_max, self.vessel_min, b)
                        centre = self._beside_vessel(vessels, lab, nodule, clearance, spacing, vol.shape)
                    if centre is None:
                        centre = self._free_spot(spots, lab, clearance, spacing)
                    if centre is None:
                        break
                    if self._paint_visible(vol, lab, centre, nodule, noise, spacing, grid):
                        break
            d[key], d[self.label_key] = img, label
        return d

    def _beside_vessel(self, vessels, lab, nodule, clearance_mm: float, spacing, shape) -> np.ndarray | None:
        """A (fractional) voxel centre 0.5-1 radius from a vessel voxel towards the parenchyma, with no label
        voxel within ``clearance_mm``, inside the patch; None when the patch has no vessel or no such spot is found."""
        spots, towards_lung = vessels
        if len(spots) == 0:
            return None
        spacing = np.asarray(spacing, dtype=np.float64)
        radius = nodule["diameter_mm"] / 2
        for _ in range(4):
            n = int(self.R.randint(len(spots)))
            normal = towards_lung[n] / spacing  # per voxel step -> per mm
            normal = normal / max(float(np.linalg.norm(normal)), 1e-6)
            direction = normal + 0.5 * self.R.standard_normal(3)  # mm space, jittered around the surface normal
            direction /= max(float(np.linalg.norm(direction)), 1e-6)
            centre = spots[n] + direction * radius * self.R.uniform(0.5, 1.0) / spacing
            if np.any(centre < 0) or np.any(centre > np.asarray(shape) - 1):
                continue
            if _clear_of_labels(lab, np.round(centre).astype(int), clearance_mm, spacing):
                return centre
        return None

    def _patch_slice_grid(self, d: Mapping) -> np.ndarray | None:
        """The patch's (3, 2) source slice grid (phases from its first voxel), or None when the entry has none."""
        grid = as_slice_grid(d.get(self.slice_grid_key)) if self.slice_grid_key else None
        if grid is None or not (grid[:, 0] > 0).any():
            return None
        start = d.get(self.start_key)
        start = np.zeros(3) if start is None else np.asarray(torch.as_tensor(start).cpu(), dtype=np.float64).reshape(3)
        return patch_slice_grid(grid, start)

    def _paint_visible(self, vol, lab, centre, nodule, noise, spacing, grid=None) -> bool:
        """Paint ``nodule`` into ``vol`` (i, j, k) at voxel ``centre`` and label it in ``lab``; undo it if it does not
        show. ``grid``: the patch's source slice grid (:func:`paint_nodule`'s ``slice_grid``) or None."""
        before = vol.clone()
        box, inside = paint_nodule(
            vol, centre, nodule["radii_mm"], nodule["rotation"], nodule["value"], nodule["edge_mm"], noise, spacing, self.R,
            slice_grid=grid,
        )
        shows = bool(inside.any())
        shows = shows and _visible_fraction(vol[box], before[box], inside, self.min_contrast) >= self.min_visible_fraction
        if not shows:
            vol[box] = before[box]  # the soft edge may have touched voxels even when the ellipsoid missed
            return False
        lab[box] = torch.where(inside, torch.ones_like(lab[box]), lab[box])
        return True


class RandCentreNoduled(RandomizableTransform, MapTransform):
    """Turn a negative stage-2 crop into a positive by drawing a synthetic nodule at its centre.

    ``keys``: the (1, S, S, S) crop, candidate point at voxel S // 2; ``label_key``: its scalar class
    (only crops with class 0 are changed, to class 1); ``diameter_key`` gets the drawn diameter. The
    nodule centre is jittered by up to ``jitter_fraction`` of its radius, so that the candidate point
    lies inside it as the LUNA16 hit rule requires. ``appearance``: as :class:`RandNoduleInsertiond`.

    A nodule must show to count: painting is max-blended, so one drawn inside something at least as
    dense (a vessel or the chest wall under a candidate point, where hard negatives sit) leaves the crop
    unchanged, and labelling that crop 1 teaches the classifier that a plain vessel is a nodule some of
    the time (hard-negative crops, cut on vessels and the chest wall, are where this happens most). A drawing counts only when at least ``min_visible_fraction`` of the
    ellipsoid's voxels rose by ``min_contrast`` (scaled units; 0.04 is 56 HU in the default window);
    otherwise up to ``max_tries`` new nodules are drawn, and a crop where none shows stays a negative.
    ``spacing``: as :class:`RandNoduleInsertiond`.
    """

    backend = ["torch"]

    def __init__(
        self,
        keys: KeysCollection = "image",
        label_key: str = "label",
        diameter_key: str = "diameter_mm",
        prob: float = 0.25,
        appearance: NoduleAppearance | Mapping | None = None,
        jitter_fraction: float = 0.5,
        parenchyma_max: float = 0.2,
        min_contrast: float = 0.04,
        min_visible_fraction: float = 0.5,
        max_tries: int = 3,
        spacing: Sequence[float] | None = None,
        allow_missing_keys: bool = False,
    ):
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.spacing = spacing
        RandomizableTransform.__init__(self, prob)
        self.label_key, self.diameter_key = label_key, diameter_key
        self.appearance = NoduleAppearance.of(appearance)
        self.jitter_fraction, self.parenchyma_max = float(jitter_fraction), float(parenchyma_max)
        self.min_contrast, self.min_visible_fraction = float(min_contrast), float(min_visible_fraction)
        self.max_tries = max(1, int(max_tries))
        if len(self.keys) != 1:
            raise ValueError(f"RandCentreNoduled draws into one crop, got keys {self.keys}")

    def _draw_visible(self, crop: torch.Tensor) -> tuple[torch.Tensor, float] | None:
        """A copy of ``crop`` (1, S, S, S) with a visible nodule near its centre and the nodule's diameter, or None."""
        spacing = _spacing(crop, self.spacing)
        before = (crop.as_tensor() if isinstance(crop, MetaTensor) else torch.as_tensor(crop))[0]  # never painted into
        noise = _parenchyma_noise(before, self.parenchyma_max)
        for _ in range(self.max_tries):
            nodule = self.appearance.draw(self.R)
            img, view = _copy(crop)
            vol = view[0]
            offset = self.R.standard_normal(3)
            offset *= self.R.uniform(0, self.jitter_fraction * nodule["diameter_mm"] / 2) / max(np.linalg.norm(offset), 1e-6)
            centre = np.asarray(vol.shape) // 2 + offset / spacing
            box, inside = paint_nodule(
                vol, centre, nodule["radii_mm"], nodule["rotation"], nodule["value"], nodule["edge_mm"], noise, spacing, self.R
            )
            if not bool(inside.any()):  # also an empty mask: the ellipsoid missed the crop
                continue
            if _visible_fraction(vol[box], before[box], inside, self.min_contrast) >= self.min_visible_fraction:
                return img, nodule["diameter_mm"]
        return None

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        if int(torch.as_tensor(d[self.label_key])) != 0:
            return d
        self.randomize(None)
        if not self._do_transform:
            return d
        keys = list(self.key_iterator(d))
        if not keys:
            return d
        drawn = self._draw_visible(d[keys[0]])
        if drawn is None:  # nothing visible could be drawn here (dense tissue under the point): stays negative
            return d
        d[keys[0]], diameter = drawn
        d[self.label_key] = torch.as_tensor(1, dtype=torch.as_tensor(d[self.label_key]).dtype)
        d[self.diameter_key] = diameter
        return d
