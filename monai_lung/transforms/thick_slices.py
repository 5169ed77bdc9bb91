"""Thick-slice reconstructions simulated from thinner CT: each thick slice averages its slab.

A CT slice of thickness T records the mean of the patient over a slab T mm deep (its slice-sensitivity profile),
not a point sample: a 4 mm nodule in 5 mm slices is a faint blob at most two slices high, and a vessel crossing a
slab obliquely becomes an elongated smudge that stage 1 can mistake for a nodule. Plain resampling to a coarser
grid keeps the thin slices' sharpness and teaches nothing of that, so here every thick slice is the average of the
thin data over its slab:

- the thin data's slice ``m`` is a box covering ``[m - 1/2, m + 1/2]`` voxels (slices as thick as they are apart,
  beyond the first and last slice the edge value continues);
- a thick slice centred at ``c`` (voxels) is the mean over ``[c - T/2, c + T/2]``: each thin slice weighted by its
  overlap with the slab. Averaging a source whose own slices are t <= T thick gives a trapezoid profile whose
  full width at half maximum is T, so the result is a T mm reconstruction whatever the (thinner) source was;
- on a training grid (:func:`thick_slice_operator`, :class:`RandThickSlicesd`), the thick slices, every ``step``
  mm at a random phase, are then linearly interpolated back onto the grid's voxels, which is what the reader does
  when it resamples a real thick-slice scan to the 1 mm grid.

:func:`thick_slice_image` makes a real thick-slice scan (a SimpleITK image on the thick slices) from a thin one:
the 5 mm phantoms and the shared real CT re-made at 5 mm of the benchmarks.

Layout: weights are (thick slices, thin slices) float64 matrices along one axis; volumes are (C, i, j, k) tensors
(MONAI's channel-first layout; the slice axis is the index axis along the patient's z, k on a RAS grid) or
SimpleITK images (slice axis z).
"""

from __future__ import annotations

from typing import Hashable, Mapping, Sequence

import numpy as np
import SimpleITK as sitk
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, RandomizableTransform

from monai_lung.io.coords import voxel_spacing
from monai_lung.transforms.slice_grid import as_slice_grid


def slab_weights(centres_vox, num_slices: int, thickness_vox: float) -> np.ndarray:
    """(P, num_slices) weights: row p averages the slab ``[c_p - T/2, c_p + T/2]`` (voxel units along the slice axis,
    slice ``m`` a box over ``[m - 1/2, m + 1/2]``; beyond the ends the edge slice continues). Rows sum to 1."""
    centres = np.asarray(centres_vox, dtype=np.float64).reshape(-1)
    half = 0.5 * max(float(thickness_vox), 1e-6)
    lo, hi = centres - half, centres + half
    # slices on a virtual grid that reaches past both ends, folded back onto the edge slices afterwards
    first = int(np.floor(min(lo.min(initial=0.0), 0.0))) - 1
    last = int(np.ceil(max(hi.max(initial=0.0), num_slices - 1.0))) + 1
    m = np.arange(first, last + 1, dtype=np.float64)
    overlap = np.minimum(hi[:, None], m[None, :] + 0.5) - np.maximum(lo[:, None], m[None, :] - 0.5)
    overlap = np.clip(overlap, 0.0, None) / (hi - lo)[:, None]
    weights = np.zeros((len(centres), num_slices))
    np.add.at(weights.T, np.clip(m.astype(int), 0, num_slices - 1), overlap.T)
    return weights


def interpolation_weights(num_slices: int, sample_positions_vox) -> np.ndarray:
    """(num_slices, P) linear interpolation from values at increasing ``sample_positions_vox`` (P,) to the voxel
    positions ``0 .. num_slices - 1``; outside the samples the nearest sample's value is kept."""
    samples = np.asarray(sample_positions_vox, dtype=np.float64)
    k = np.arange(num_slices, dtype=np.float64)
    out = np.zeros((len(k), len(samples)))
    if len(samples) == 1:
        out[:, 0] = 1.0
        return out
    n = np.clip(np.searchsorted(samples, k, side="right") - 1, 0, len(samples) - 2)
    w = np.clip((k - samples[n]) / (samples[n + 1] - samples[n]), 0.0, 1.0)
    rows = np.arange(len(k))
    out[rows, n] = 1.0 - w
    out[rows, n + 1] += w
    return out


def thick_slice_operator(num_slices: int, spacing_mm: float, thickness_mm: float, step_mm: float | None = None,
                         phase_mm: float = 0.0) -> np.ndarray:
    """(num_slices, num_slices) matrix along a grid axis of ``spacing_mm`` voxels: the data as a ``thickness_mm``
    reconstruction with slices every ``step_mm`` (default: the thickness, contiguous slices) centred at
    ``phase_mm + n * step_mm`` from voxel 0, interpolated back onto the grid (module docstring)."""
    if not (thickness_mm > 0 and spacing_mm > 0):
        raise ValueError(f"thickness_mm and spacing_mm must be positive, got {thickness_mm}, {spacing_mm}")
    step = float(step_mm or thickness_mm) / spacing_mm
    phase = (float(phase_mm) / spacing_mm) % step
    # thick slices from one step before voxel 0 to one after the last voxel, so every voxel lies between two
    centres = phase + step * np.arange(-1, int(np.ceil((num_slices - 1 - phase) / step)) + 2)
    return interpolation_weights(num_slices, centres) @ slab_weights(centres, num_slices, thickness_mm / spacing_mm)


def apply_along_axis(volume: torch.Tensor, matrix: np.ndarray, axis: int, exact: bool = False) -> torch.Tensor:
    """``matrix`` (n_out, n_in) applied along spatial ``axis`` (0, 1, 2) of a (C, i, j, k) tensor, in its dtype.
    ``exact``: sum in float64, so that the result does not depend on how the matrix product orders its sums (which
    varies with the axis length)."""
    dim = axis + 1
    dtype = torch.float64 if exact else torch.float32
    m = torch.as_tensor(matrix, dtype=dtype, device=volume.device)
    moved = volume.to(dtype).movedim(dim, -1)
    out = torch.matmul(moved, m.T).movedim(-1, dim)
    return out.to(volume.dtype)


def thick_slice_image(image: sitk.Image, thickness_mm: float, step_mm: float | None = None) -> sitk.Image:
    """A ``thickness_mm`` reconstruction of a thinner SimpleITK CT (slice axis: its z index), slices every
    ``step_mm`` (default: the thickness), each the average of the thin slices over its slab (module docstring).

    The thick slabs tile the thin scan's extent from its first slice's outer edge; the image keeps its in-plane
    grid, direction and world frame (world LPS mm), its origin moves to the first thick slice's centre, and the
    pixel type is kept (integer HU are rounded). Raises ``ValueError`` for a thickness thinner than the image's
    slices or a scan too short for one thick slice.
    """
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
    dz = float(spacing[2])
    if thickness_mm < dz - 1e-6:
        raise ValueError(f"thickness {thickness_mm} mm is thinner than the image's {dz} mm slices")
    step = float(step_mm or thickness_mm)
    n = image.GetSize()[2]
    t_vox, s_vox = thickness_mm / dz, step / dz
    first = -0.5 + 0.5 * t_vox  # the first slab starts at the first thin slice's outer edge
    count = int(np.floor((n - 0.5 - 0.5 * t_vox - first) / s_vox + 1e-6)) + 1
    if count < 1:
        raise ValueError(f"a {n}-slice image of {dz} mm slices is shorter than one {thickness_mm} mm slice")
    centres = first + s_vox * np.arange(count)
    weights = slab_weights(centres, n, t_vox)
    arr = sitk.GetArrayFromImage(image)  # (z, y, x)
    thick = np.tensordot(weights.astype(np.float32), arr.astype(np.float32), axes=(1, 0))
    if np.issubdtype(arr.dtype, np.integer):
        info = np.iinfo(arr.dtype)
        thick = np.clip(np.rint(thick), info.min, info.max)
    out = sitk.GetImageFromArray(thick.astype(arr.dtype))
    out.SetSpacing((float(spacing[0]), float(spacing[1]), step))
    out.SetDirection(image.GetDirection())
    out.SetOrigin(image.TransformContinuousIndexToPhysicalPoint((0.0, 0.0, float(centres[0]))))
    for key in image.GetMetaDataKeys():
        out.SetMetaData(key, image.GetMetaData(key))
    return out


class RandThickSlicesd(RandomizableTransform, MapTransform):
    """Training augmentation: with probability ``prob``, show a (C, i, j, k) patch or crop as a thicker
    reconstruction would (module docstring): slab averages ``thickness_mm`` deep (uniform in ``thickness_range``),
    every ``thickness * step_ratio`` mm (uniform in ``step_ratio_range``; 1: contiguous slices) at a random phase,
    interpolated back onto the grid along ``axis`` (2: k, the patient's z on a RAS grid; apply it before rotations
    that move z). Every key gets the same slices.

    ``spacing``: mm per voxel along ``axis`` when the data carry no affine (plain tensors, stage-2 bank crops);
    ``slice_grid_key``: a (3, 2) source slice grid (:func:`~monai_lung.transforms.source_slice_grid`); a source
    whose slices are already at least the drawn thickness apart is left alone.

    Labels are left as they are, on purpose: thick slices change how a nodule looks (lower contrast, spread along
    z), not where it is or whether it is one, and stage 1 is for recall, so its mask and a crop's class stay.
    """

    backend = ["torch"]

    def __init__(
        self,
        keys: KeysCollection = "image",
        prob: float = 0.3,
        thickness_range: Sequence[float] = (3.0, 5.0),
        step_ratio_range: Sequence[float] = (1.0, 1.0),
        axis: int = 2,
        spacing: float | Sequence[float] | None = None,
        slice_grid_key: str | None = None,
        allow_missing_keys: bool = False,
    ):
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.thickness_range = (float(thickness_range[0]), float(thickness_range[-1]))
        self.step_ratio_range = (float(step_ratio_range[0]), float(step_ratio_range[-1]))
        if not (0 < self.thickness_range[0] <= self.thickness_range[1]):
            raise ValueError(f"thickness_range must be positive and increasing, got {thickness_range}")
        if not (0 < self.step_ratio_range[0] <= self.step_ratio_range[1] <= 1.0):
            raise ValueError(f"step_ratio_range must lie in (0, 1], got {step_ratio_range}")
        if axis not in (0, 1, 2):
            raise ValueError(f"axis must be 0, 1 or 2, got {axis}")
        self.axis, self.spacing, self.slice_grid_key = int(axis), spacing, slice_grid_key
        self._thickness = self._step = self._phase = 0.0

    def randomize(self, data=None) -> None:
        super().randomize(None)
        if not self._do_transform:
            return
        self._thickness = float(self.R.uniform(*self.thickness_range))
        self._step = self._thickness * float(self.R.uniform(*self.step_ratio_range))
        self._phase = float(self.R.uniform(0.0, self._step))

    def _operator(self, n: int, spacing: float) -> np.ndarray:
        """The drawn slices on an ``n``-voxel axis, their phase counted from the axis's centre, so that a patch and a
        larger one around the same centre (a stage-2 bank crop and its view) get the same slices; positions are
        rounded to 1/64 voxel, which makes them exact binary fractions and the weights of a voxel the same bits
        whatever ``n`` is."""
        q = 64.0
        thickness, step, phase = (round(v / spacing * q) / q for v in (self._thickness, self._step, self._phase))
        return thick_slice_operator(n, 1.0, max(thickness, 1.0 / q), max(step, 1.0 / q), 0.5 * (n - 1) + phase)

    def _axis_spacing(self, img) -> float:
        if self.spacing is not None:
            values = np.atleast_1d(np.asarray(self.spacing, dtype=np.float64))
            return float(values[self.axis] if values.size == 3 else values[0])
        return float(voxel_spacing(img)[self.axis]) if isinstance(img, MetaTensor) else 1.0

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        self.randomize()
        if not self._do_transform:
            return d
        grid = as_slice_grid(d.get(self.slice_grid_key)) if self.slice_grid_key else None
        operators: dict = {}
        for key in self.key_iterator(d):
            img = d[key]
            spacing = self._axis_spacing(img)
            if grid is not None and grid[self.axis, 0] * spacing >= self._thickness:
                continue  # the source is already this thick
            n = int(img.shape[self.axis + 1])
            if (n, spacing) not in operators:
                operators[(n, spacing)] = self._operator(n, spacing)
            d[key] = apply_along_axis(img if isinstance(img, torch.Tensor) else torch.as_tensor(img), operators[(n, spacing)], self.axis,
                                      exact=True)
        return d
