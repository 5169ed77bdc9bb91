"""Where training patches are cut: balanced per-nodule foreground indices and tissue-biased background indices.

``RandCropByPosNegLabeld`` picks a foreground voxel uniformly over *all* foreground voxels, so a 30 mm
nodule (~14,000 voxels at 1 mm) would be picked ~1,000 times as often as a 3 mm one (~14 voxels), and
small nodules are what stage 1 misses. :class:`NoduleSamplingIndicesd` instead lists the same number
of voxels for every nodule (drawn with replacement inside it), so every nodule is equally likely, and
moves each one by a random offset of up to ``max_offset`` voxels per axis. Without that offset the nodule
always sits at the patch centre, and the UNet learns "nodule = the middle of the patch" from how far the
zero padding is: it then finds a nodule in a centred 48^3 patch but not in the 96^3 windows of
whole-scan inference. It also lists a bounded background sample,
half of it on dense tissue inside the (dilated) lungs (vessels, the pleura: where false positives come
from) and half anywhere in them, instead of the ~40 M background indices ``RandCropByPosNegLabeld`` would otherwise build per call.
With ``thick_fraction`` a share is first drawn from the cores of thick vessels (:func:`thick_structure_mask`):
cut across, a 4-8 mm hilar vessel is a bright disc like a nodule, and it is too rare among the dense voxels
for the tissue half to draw it often.
When the data-list entry names known false positives (``hard_negatives``), a share of the background
centres is drawn around those instead: stage-1 fine-tuning on its own mistakes.

The indices are flat indices into the spatial (i, j, k) array, the format ``RandCropByPosNegLabeld``'s
``fg_indices_key`` / ``bg_indices_key`` take. The sample is seeded from the entry, so the transform is
deterministic and its output can be cached (``PersistentDataset``) with the volume.
"""

from __future__ import annotations

import zlib
from typing import Hashable, Mapping

import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform
from scipy import ndimage

from monai_lung.io.coords import voxel_spacing, world_to_index
from monai_lung.transforms.preprocessing import DEFAULT_HU_WINDOW
from monai_lung.transforms.lung_mask import LUNG_MARGIN_MM, lung_masks


def balanced_indices(
    label: np.ndarray,
    image: np.ndarray,
    per_nodule: int = 64,
    num_background: int = 4096,
    tissue_threshold: float = 0.3,
    body_threshold: float = 0.02,
    seed: int = 0,
    region: np.ndarray | None = None,
    max_offset: int = 0,
    hard_points: np.ndarray | None = None,
    hard_fraction: float = 0.5,
    thick_mask: np.ndarray | None = None,
    thick_fraction: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Flat (i, j, k) indices for foreground and background crop centres.

    Args:
        label: (i, j, k) 0/1 nodule mask.
        image: (i, j, k) intensities, already scaled (the lung window maps -1000 HU to 0, 400 HU to 1).
        per_nodule: indices drawn (with replacement) inside each connected nodule component.
        num_background: background indices. The ``hard_fraction`` and ``thick_fraction`` shares (below) are
            taken first; of the rest, half where ``image > tissue_threshold`` (dense tissue), half where
            ``image > body_threshold`` (anything but outside air), both outside the label.
        seed: random seed (deterministic output for caching).
        region: optional (i, j, k) bool mask (the lungs, generously dilated) that background centres must
            fall in: the detector only looks inside it, and vessels inside it are the false positives
            that matter, so patches of body wall far from the lungs would only waste training time.
        max_offset: each foreground centre is a voxel of the nodule moved by a uniform random offset in
            [-max_offset, max_offset] voxels per axis (clipped to the volume), so that the nodule lands
            anywhere in the patch; keep it <= patch_size / 2 - 8 so the drawn voxel stays inside the patch.
        hard_points: optional (N, 3) voxel indices (i, j, k) of known false positives (a trained stage 1's,
            see ``monai-lung datalist --hard-negatives``). ``hard_fraction`` of the background indices are
            drawn around them, moved by the same ``max_offset`` as nodules so that a false positive is not
            always at the patch centre (that would teach "centre = not a nodule"); points outside the
            volume are ignored.
        hard_fraction: share of ``num_background`` taken around ``hard_points`` (when there are any).
        thick_mask: optional (i, j, k) bool mask of the cores of thick dense structures in the lungs (see
            :func:`thick_structure_mask`): thick vessels are what a young stage 1 mistakes for nodules, and
            they are too small a share of the dense tissue to be drawn often by chance.
        thick_fraction: share of ``num_background`` drawn (moved by ``max_offset``) from ``thick_mask``,
            outside the label.

    Returns:
        (fg, bg) int64 flat indices; fg is empty for a scan without nodules. With ``max_offset > 0``
        foreground centres may fall outside the nodule (the patch around them still contains it).
    """
    rng = np.random.default_rng(seed)
    shape = label.shape
    components, _ = ndimage.label(label > 0)
    fg = []
    for c, box in enumerate(ndimage.find_objects(components), start=1):
        local = np.nonzero(components[box] == c)  # indices inside the component's bounding box
        pick = rng.integers(0, local[0].size, size=per_nodule)
        centres = np.stack([ax[pick] + sl.start for ax, sl in zip(local, box)], axis=1)
        fg.append(_moved_flat(centres, rng, max_offset, shape))
    fg_idx = np.concatenate(fg).astype(np.int64) if fg else np.zeros(0, dtype=np.int64)

    hard = np.zeros(0, dtype=np.int64)
    if hard_points is not None and len(hard_points) and hard_fraction > 0:
        pts = np.rint(np.asarray(hard_points, dtype=np.float64).reshape(-1, 3)).astype(np.int64)
        pts = pts[np.all((pts >= 0) & (pts < np.asarray(shape)), axis=1)]
        if len(pts):
            centres = pts[rng.integers(0, len(pts), size=int(round(num_background * min(hard_fraction, 1.0))))]
            hard = _moved_flat(centres, rng, max_offset, shape)
    num_background -= hard.size

    label_flat = label.reshape(-1)
    thick = np.zeros(0, dtype=np.int64)
    if thick_mask is not None and thick_fraction > 0:
        thick_flat = np.asarray(thick_mask, dtype=bool).reshape(-1)
        centres = _sample_where(
            rng, lambda idx: thick_flat[idx] & (label_flat[idx] == 0), label_flat.size,
            int(round(num_background * min(thick_fraction, 1.0))),
        )
        thick = _moved_flat(np.stack(np.unravel_index(centres, shape), axis=1), rng, max_offset, shape)
    num_background -= thick.size

    values = image.reshape(-1)
    inside = np.ones(values.size, dtype=bool) if region is None else np.asarray(region, dtype=bool).reshape(-1)
    tissue = _sample_where(
        rng, lambda idx: (values[idx] > tissue_threshold) & (label_flat[idx] == 0) & inside[idx], values.size, num_background // 2
    )
    # whatever the tissue pool could not give is taken from the whole region
    body = _sample_where(
        rng, lambda idx: (values[idx] > body_threshold) & (label_flat[idx] == 0) & inside[idx], values.size, num_background - tissue.size
    )
    bg = [hard, thick, tissue, body]
    bg_idx = np.concatenate(bg).astype(np.int64)
    return fg_idx, bg_idx


def thick_structure_mask(
    image: np.ndarray,
    spacing_mm,
    region: np.ndarray,
    tissue_threshold: float = 0.3,
    min_radius_mm: float = 2.0,
) -> np.ndarray:
    """(i, j, k) bool: voxels of dense tissue (``image > tissue_threshold``, ``image`` scaled as in
    :func:`balanced_indices`) inside ``region`` (i, j, k bool, the lungs) that lie at least ``min_radius_mm``
    from the structure's edge, i.e. the cores of vessels (and nodules) at least ~2 x ``min_radius_mm``
    thick. ``spacing_mm``: the voxel size along (i, j, k). The distance transform runs on the bounding box
    of those dense voxels only."""
    dense = (np.asarray(image) > tissue_threshold) & np.asarray(region, dtype=bool)
    out = np.zeros(dense.shape, dtype=bool)
    if not dense.any():
        return out
    box = ndimage.find_objects(dense.astype(np.uint8))[0]
    # padding keeps a structure cut by the box (or the volume) border from reading as thick there
    depth = np.pad(dense[box], 1)
    depth = ndimage.distance_transform_edt(depth, sampling=tuple(float(s) for s in spacing_mm))[1:-1, 1:-1, 1:-1]
    out[box] = depth >= min_radius_mm
    return out


def _moved_flat(centres: np.ndarray, rng: np.random.Generator, max_offset: int, shape) -> np.ndarray:
    """Flat int64 indices of (N, 3) voxel ``centres`` (i, j, k) inside ``shape``, each moved by a uniform
    offset in [-max_offset, max_offset] voxels per axis and clipped to the volume (unmoved for 0)."""
    if max_offset > 0:
        centres = centres + rng.integers(-max_offset, max_offset + 1, size=centres.shape)
        centres = np.clip(centres, 0, np.asarray(shape) - 1)
    return np.ravel_multi_index(tuple(centres.T), shape).astype(np.int64)


def _sample_where(rng: np.random.Generator, accept, n_total: int, count: int) -> np.ndarray:
    """Up to ``count`` distinct flat indices in [0, n_total) for which ``accept(indices)`` holds.

    Rejection sampling first (cheap on a 40 M voxel volume), an exhaustive scan only when the accepted
    voxels are too rare for it.
    """
    if count <= 0 or n_total == 0:
        return np.zeros(0, dtype=np.int64)
    for _ in range(4):
        draw = np.unique(rng.integers(0, n_total, size=count * 16))
        good = draw[accept(draw)]
        if good.size >= count:
            return rng.choice(good, size=count, replace=False)
    pool = np.flatnonzero(accept(np.arange(n_total)))
    return rng.choice(pool, size=min(count, pool.size), replace=False) if pool.size else pool.astype(np.int64)


class NoduleSamplingIndicesd(MapTransform):
    """Add ``{label_key}_fg_indices`` / ``{label_key}_bg_indices`` for ``RandCropByPosNegLabeld``.

    ``keys`` is the label key: a (1, i, j, k) 0/1 mask (from :class:`NoduleMaskd`); ``image_key`` the
    scaled (1, i, j, k) image. See :func:`balanced_indices` for the sampling; ``max_offset`` (voxels, 16
    for 48^3 patches) moves foreground crop centres off the nodule centre. When the entry has
    ``hard_negatives_key`` (a list of ``{"center": [x, y, z]}`` or ``[x, y, z]`` in world LPS mm: a trained
    stage 1's false positives, see ``monai-lung datalist --hard-negatives``), ``hard_fraction`` of the
    background centres are drawn around them (moved by the same ``max_offset``). ``thick_fraction`` of the
    rest come from the cores of dense structures in the lungs at least ``thick_min_radius_mm`` from their
    edge (thick vessels; :func:`thick_structure_mask`, on the lung mask without margin).
    """

    def __init__(
        self,
        keys: KeysCollection = "label",
        image_key: str = "image",
        per_nodule: int = 64,
        num_background: int = 4096,
        tissue_threshold: float = 0.3,
        body_threshold: float = 0.02,
        use_lung_mask: bool = True,
        hu_window=DEFAULT_HU_WINDOW,
        max_offset: int = 16,
        hard_negatives_key: str = "hard_negatives",
        hard_fraction: float = 0.5,
        thick_fraction: float = 0.0,
        thick_min_radius_mm: float = 2.0,
        fg_postfix: str = "_fg_indices",
        bg_postfix: str = "_bg_indices",
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        self.image_key = image_key
        self.kwargs = dict(
            per_nodule=per_nodule,
            num_background=num_background,
            tissue_threshold=tissue_threshold,
            body_threshold=body_threshold,
            max_offset=max_offset,
        )
        self.fg_postfix, self.bg_postfix = fg_postfix, bg_postfix
        self.use_lung_mask, self.hu_window = use_lung_mask, hu_window
        self.hard_negatives_key, self.hard_fraction = hard_negatives_key, hard_fraction
        self.thick_fraction, self.thick_min_radius_mm = thick_fraction, thick_min_radius_mm

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        img = d[self.image_key]
        image = np.asarray(img[0], dtype=np.float32)
        region = thick = None
        if self.use_lung_mask or self.thick_fraction > 0:
            spacing = voxel_spacing(img)
            # one segmentation: the grown lungs (lung_mask's region) and the lungs themselves (thick vessels)
            grown, lungs = lung_masks(image, spacing, (LUNG_MARGIN_MM, 0.0), hu_window=self.hu_window)
            region = grown if self.use_lung_mask else None
            if self.thick_fraction > 0:
                thick = thick_structure_mask(
                    image, spacing, lungs, self.kwargs["tissue_threshold"], self.thick_min_radius_mm
                )
        hard = None
        if d.get(self.hard_negatives_key):
            # world LPS mm (x, y, z) as in the data list -> (i, j, k) on this resampled grid
            world = np.asarray([p["center"] if isinstance(p, Mapping) else p for p in d[self.hard_negatives_key]], dtype=np.float64)
            hard = world_to_index(world.reshape(-1, 3), img.affine, space=str(img.meta.get("space", "RAS")), points_space="LPS")
        for key in self.key_iterator(d):
            label = np.asarray(d[key][0])
            seed = zlib.crc32(str(d.get("seriesuid", d[self.image_key].meta.get("filename_or_obj", ""))).encode())
            fg, bg = balanced_indices(
                label, image, seed=seed, region=region, hard_points=hard, hard_fraction=self.hard_fraction,
                thick_mask=thick, thick_fraction=self.thick_fraction, **self.kwargs,
            )
            d[f"{key}{self.fg_postfix}"] = fg
            d[f"{key}{self.bg_postfix}"] = bg
        return d
