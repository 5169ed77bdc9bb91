"""Stage 1 over a whole scan: MONAI ``sliding_window_inference`` of the UNet, spent only where the lungs are."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from monai.inferers import sliding_window_inference

from monai_lung.bundle_args import flag
from monai_lung.io.coords import voxel_spacing


class LungGatedPredictor(torch.nn.Module):
    """Runs ``network`` only on windows that contain lung.

    Input (B, 2, *roi): channel 0 the scaled CT window, channel 1 the lung mask. Windows without any lung
    voxel get confident background logits instead of a network pass, so time is not spent on air and
    body wall. Output (B, out_channels, *roi) logits.
    """

    def __init__(self, network: torch.nn.Module, out_channels: int = 2, background_logit: float = 20.0):
        super().__init__()
        self.network, self.out_channels, self.background_logit = network, out_channels, background_logit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        image, gate = x[:, :1], x[:, 1:]
        has_lung = gate.flatten(1).amax(dim=1) > 0
        out = x.new_zeros((x.shape[0], self.out_channels, *x.shape[2:]))
        out[:, 0] = self.background_logit
        if has_lung.any():
            out[has_lung] = self.network(image[has_lung]).to(out.dtype)
        return out


def _bbox(mask: np.ndarray, margin: Sequence[int], shape: Sequence[int]) -> tuple[slice, ...]:
    where = np.argwhere(mask)
    if where.size == 0:
        return tuple(slice(0, s) for s in shape)
    lo = np.maximum(where.min(axis=0) - margin, 0)
    hi = np.minimum(where.max(axis=0) + 1 + np.asarray(margin), shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def lung_gated_logits(
    network: torch.nn.Module,
    image: torch.Tensor,
    lung: np.ndarray | None = None,
    roi_size: Sequence[int] = (96, 96, 96),
    sw_batch_size: int = 4,
    overlap: float = 0.25,
    mode: str = "gaussian",
    device: torch.device | str | None = None,
    sw_device: torch.device | str | None = None,
    amp: bool = True,
    out_channels: int = 2,
    background_logit: float = 20.0,
) -> torch.Tensor:
    """Sliding-window logits of a whole scan, computed only over the lungs' bounding box.

    Args:
        network: the stage-1 UNet (``out_channels`` outputs), on ``sw_device``.
        image: (1, i, j, k) scaled CT (MONAI channel-first).
        lung: optional (i, j, k) bool lung mask: the window grid covers its bounding box (plus a quarter
            window of margin) and windows without lung are skipped (:class:`LungGatedPredictor`). None:
            the whole scan.
        device: where the stitched output lives (keep "cpu" for large scans: the volume stays in host
            memory while windows run on ``sw_device``).
        amp: float16 autocast on CUDA.

    Returns:
        (out_channels, i, j, k) float32 logits on ``device``; outside the box, confident background.
    """
    img = image.as_tensor() if hasattr(image, "as_tensor") else torch.as_tensor(image)
    img = img.float()
    shape = tuple(img.shape[1:])
    sw_device = torch.device(sw_device) if sw_device is not None else img.device
    device = torch.device(device) if device is not None else img.device
    if lung is not None:
        box = _bbox(lung, [r // 4 for r in roi_size], shape)
        gate = torch.as_tensor(np.ascontiguousarray(lung[box]), dtype=torch.float32, device=img.device)[None]
        x = torch.cat([img[(slice(None), *box)], gate], dim=0)
        predictor = LungGatedPredictor(network, out_channels, background_logit)
    else:
        box = tuple(slice(0, s) for s in shape)
        x, predictor = img, network
    use_amp = amp and sw_device.type == "cuda"
    with torch.autocast(device_type=sw_device.type, dtype=torch.float16, enabled=use_amp):
        logits = sliding_window_inference(
            x[None], list(roi_size), sw_batch_size, predictor, overlap=overlap, mode=mode, sw_device=sw_device, device=device
        )
    out = torch.zeros((out_channels, *shape), dtype=torch.float32, device=device)
    out[0] = background_logit
    out[(slice(None), *box)] = logits[0].float()
    return out


def check_grid_spacing(spacing, name: str) -> tuple[float, float, float] | None:
    """``spacing`` as three positive finite mm values (or None), else ValueError naming ``name``."""
    if spacing is None:
        return None
    values = tuple(float(v) for v in np.ravel(np.asarray(spacing, dtype=np.float64)))
    if len(values) != 3 or not all(np.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"{name}: three positive voxel sizes in mm (i, j, k) or null, got {spacing!r}")
    return values


def zoom_to_spacing(image: torch.Tensor, spacing_mm: Sequence[float]) -> torch.Tensor:
    """A (1, i, j, k) scan trilinearly resampled to about ``spacing_mm`` (i, j, k) mm per voxel.

    The grid keeps the first and last voxel centres of each axis (nothing is extrapolated): ``m = floor((n - 1)
    * s / spacing) + 1`` voxels where the source has ``n`` of ``s`` mm, so the exact step is ``(n - 1) * s /
    (m - 1)`` mm, within a voxel's width over the scan of what was asked. ``image`` is a MetaTensor whose
    ``affine`` maps voxel index to world mm; the result's affine maps its own indices to the same world
    points (the source affine with each column scaled by the step in source voxels). Plain tensors are taken
    as 1 mm grids and come back as plain tensors. Same dtype as ``image`` (computed in float32).
    """
    from monai.data import MetaTensor

    spacing_mm = check_grid_spacing(spacing_mm, "spacing_mm")
    source = np.asarray(voxel_spacing(image), dtype=np.float64) if isinstance(image, MetaTensor) else np.ones(3)
    n = np.asarray(image.shape[1:], dtype=np.int64)
    m = np.maximum(np.floor((n - 1) * source / np.asarray(spacing_mm) + 1e-6).astype(np.int64) + 1, 1)
    if np.array_equal(m, n):
        return image
    x = image.as_tensor() if isinstance(image, MetaTensor) else image
    out = torch.nn.functional.interpolate(
        x[None].float(), size=tuple(int(v) for v in m), mode="trilinear", align_corners=True
    )[0].to(x.dtype)
    if not isinstance(image, MetaTensor):
        return out
    # align_corners: output index t sits at source index t * (n - 1) / (m - 1) (1 when an axis has one voxel)
    step = np.where(m > 1, (n - 1) / np.maximum(m - 1, 1), 1.0)
    affine = np.asarray(image.affine, dtype=np.float64).copy()
    affine[:3, :3] = affine[:3, :3] * step[None, :]
    meta = {k: v for k, v in image.meta.items() if k != "affine"}
    return MetaTensor(out, affine=torch.as_tensor(affine), meta=meta)


def check_flip_axes(axes: Sequence[int], name: str = "flip_axes") -> tuple[int, ...]:
    """``axes`` as a tuple of distinct spatial axes 0, 1, 2 of the (i, j, k) grid, else ValueError naming ``name``."""
    axes = tuple(int(a) for a in axes)
    if any(a not in (0, 1, 2) for a in axes) or len(set(axes)) != len(axes):
        raise ValueError(f"{name}: distinct spatial axes among 0, 1, 2 of the (i, j, k) grid, got {axes}")
    return axes


@torch.no_grad()
def segment_probability(
    network: torch.nn.Module,
    image: torch.Tensor,
    lung: np.ndarray | None = None,
    roi_size: Sequence[int] = (96, 96, 96),
    sw_batch_size: int = 4,
    overlap: float = 0.25,
    mode: str = "gaussian",
    device: torch.device | str | None = None,
    sw_device: torch.device | str | None = None,
    amp: bool = True,
    flip_axes: Sequence[int] = (),
) -> np.ndarray:
    """Nodule probability of every voxel of a preprocessed (1, i, j, k) scan, as an (i, j, k) float32 array.

    See :func:`lung_gated_logits` for the arguments; the probability is the softmax of channel 1.
    ``flip_axes``: test-time augmentation over distinct spatial axes (0, 1, 2 = i, j, k): the scan (and its
    lung mask) is also run flipped along each of these axes, one pass per axis, and the flipped-back
    probabilities are averaged with the plain pass; () runs once.
    """
    img = image.as_tensor() if hasattr(image, "as_tensor") else torch.as_tensor(image)
    views = [None, *check_flip_axes(flip_axes)]
    prob = None
    for axis in views:
        x, gate = img, lung
        if axis is not None:
            x = torch.flip(img, dims=(axis + 1,))
            gate = None if lung is None else np.ascontiguousarray(np.flip(lung, axis=axis))
        logits = lung_gated_logits(network, x, gate, roi_size, sw_batch_size, overlap, mode, device or "cpu", sw_device or "cpu", amp)
        p = torch.softmax(logits, dim=0)[1].cpu()
        p = p if axis is None else torch.flip(p, dims=(axis,))
        prob = p if prob is None else prob.add_(p)
    return prob.div_(len(views)).numpy()


class LungSlidingWindowInferer:
    """A MONAI-style inferer: ``inferer(inputs, network)`` -> logits, with the window grid restricted to
    the lungs (:func:`lung_gated_logits`). For bundles' ``inferer`` / ``validate#inferer``.

    ``inputs``: (B, 1, i, j, k) scaled CT (MetaTensor: its affine gives the voxel size for the lung mask).
    Returns (B, 2, i, j, k) logits with the input's meta (so ``Invertd`` works on them).
    """

    def __init__(
        self,
        roi_size: Sequence[int] = (96, 96, 96),
        sw_batch_size: int = 4,
        overlap: float = 0.25,
        mode: str = "gaussian",
        use_lung_mask: bool = True,
        hu_window: Sequence[float] = (-1000.0, 400.0),
        sw_device: torch.device | str | None = None,
        device: torch.device | str | None = None,
    ):
        self.roi_size, self.sw_batch_size, self.overlap, self.mode = tuple(roi_size), sw_batch_size, overlap, mode
        self.use_lung_mask = flag(use_lung_mask, "use_lung_mask")  # a bundle override may be the string "false"
        self.hu_window, self.sw_device, self.device = tuple(hu_window), sw_device, device

    def __call__(self, inputs: torch.Tensor, network: torch.nn.Module, *args, **kwargs) -> torch.Tensor:
        from monai.utils import convert_to_dst_type

        from monai_lung.transforms.lung_mask import lung_mask

        outs = []
        for b in range(inputs.shape[0]):
            image = inputs[b]
            lung = None
            if self.use_lung_mask:
                # a batched (B, 4, 4) affine is not one scan's grid: 1 mm then, as for no affine
                spacing = voxel_spacing(image) if np.ndim(getattr(image, "affine", None)) == 2 else np.ones(3)
                lung = lung_mask(image.detach().cpu(), spacing, hu_window=self.hu_window)
            outs.append(
                lung_gated_logits(
                    network, image, lung, self.roi_size, self.sw_batch_size, self.overlap, self.mode,
                    device=self.device or inputs.device, sw_device=self.sw_device or inputs.device, amp=False,
                )
            )
        out = torch.stack(outs)
        return convert_to_dst_type(out, inputs, device=out.device)[0] if hasattr(inputs, "meta") else out
