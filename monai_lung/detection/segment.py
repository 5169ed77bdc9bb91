"""Stage 1 over a whole scan: the UNet on MONAI's sliding-window grid over the lungs' box, run only on windows holding lung."""

from __future__ import annotations

import copy
from typing import Sequence

import numpy as np
import torch
from monai.data.utils import compute_importance_map, dense_patch_slices
from monai.inferers import sliding_window_inference

from monai_lung.bundle_args import flag
from monai_lung.io.coords import voxel_spacing
from monai_lung.transforms.preprocessing import DEFAULT_HU_WINDOW
from monai_lung.transforms.lung_mask import lung_mask


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


def lung_box(mask: np.ndarray, margin: Sequence[int], shape: Sequence[int]) -> tuple[slice, ...]:
    """(i, j, k) slices of ``mask``'s bounding box grown by ``margin`` voxels per axis, within ``shape``; the
    whole volume when ``mask`` is empty. Found from the mask's projections on each axis (one pass, no index list)."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return tuple(slice(0, s) for s in shape)
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        lo, hi = max(int(hits[0]) - int(margin[axis]), 0), min(int(hits[-1]) + 1 + int(margin[axis]), int(shape[axis]))
        box.append(slice(lo, hi))
    return tuple(box)


def window_slices(size: Sequence[int], roi_size: Sequence[int], overlap: float) -> list[tuple[slice, ...]]:
    """The windows MONAI's ``sliding_window_inference`` visits on a (padded) volume of ``size`` voxels: a step
    of ``int(roi * (1 - overlap))`` per axis (the whole axis when it is one window), the last window flush
    with the end."""
    interval = []
    for n, r in zip(size, roi_size):
        interval.append(int(r) if int(r) == int(n) else max(int(r * (1 - overlap)), 1))
    return [tuple(s) for s in dense_patch_slices(tuple(int(n) for n in size), tuple(int(r) for r in roi_size), tuple(interval))]


def _fold_batch_norm(conv: torch.nn.Module, norm: torch.nn.Module) -> bool:
    """Fold an eval-mode BatchNorm that directly follows ``conv`` into the conv's weight and bias (in place);
    False, and nothing changed, when the pair is not one this knows how to fold."""
    if not isinstance(norm, torch.nn.modules.batchnorm._BatchNorm) or norm.training or norm.running_mean is None:
        return False
    if not isinstance(conv, (torch.nn.Conv3d, torch.nn.ConvTranspose3d)) or conv.groups != 1:
        return False
    scale = torch.rsqrt(norm.running_var.double() + norm.eps)
    if norm.weight is not None:
        scale = scale * norm.weight.double()
    shift = -norm.running_mean.double() * scale
    if norm.bias is not None:
        shift = shift + norm.bias.double()
    out_axis = 1 if isinstance(conv, torch.nn.ConvTranspose3d) else 0  # ConvTranspose3d weights are (in, out, ...)
    shape = [1] * conv.weight.ndim
    shape[out_axis] = -1
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
    with torch.no_grad():
        conv.weight.copy_((conv.weight.double() * scale.view(shape)).to(conv.weight.dtype))
        conv.bias = torch.nn.Parameter((bias * scale + shift).to(conv.weight.dtype), requires_grad=False)
    return True


def inference_network(network: torch.nn.Module, device: torch.device | str = "cpu") -> torch.nn.Module:
    """A copy of ``network`` for inference on ``device``: eval mode, every BatchNorm that directly follows a
    convolution folded into it (the same function up to float rounding, one pass over the activations less), on a
    CPU in channels-last memory layout (oneDNN's fast 3D kernels). On this project's networks on 2 CPU cores: the
    stage-1 UNet ~2x, the stage-2 ResNet ~1.9x. The given network is not changed, so weights loaded into it later
    are never shadowed. Folded: MONAI ``Convolution`` blocks (conv, then ``adn`` starting with its norm), MONAI
    ResNet blocks (``convN`` then ``bnN``) and conv-norm pairs in a ``Sequential``."""
    from monai.networks.nets import resnet

    device = torch.device(device)
    net = copy.deepcopy(network).to(device).eval()
    resnet_types = tuple(getattr(resnet, n) for n in ("ResNet", "ResNetBlock", "ResNetBottleneck") if hasattr(resnet, n))
    for module in net.modules():
        conv, adn = getattr(module, "conv", None), getattr(module, "adn", None)
        if conv is not None and adn is not None and hasattr(adn, "N"):
            first = next(iter(adn.named_children()), (None, None))[0]
            if first == "N" and _fold_batch_norm(conv, adn.N):  # the norm must come right after the conv
                adn.N = torch.nn.Identity()
        if isinstance(module, resnet_types):  # their forward applies bnN right after convN
            for name, child in list(module.named_children()):
                norm = getattr(module, "bn" + name[4:], None) if name.startswith("conv") else None
                if norm is not None and _fold_batch_norm(child, norm):
                    setattr(module, "bn" + name[4:], torch.nn.Identity())
        if isinstance(module, torch.nn.Sequential):
            for i in range(len(module) - 1):
                if _fold_batch_norm(module[i], module[i + 1]):
                    module[i + 1] = torch.nn.Identity()
    if device.type == "cpu":
        net = net.to(memory_format=torch.channels_last_3d)
    return net


@torch.no_grad()
def lung_window_probability(
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
    background_logit: float = 20.0,
) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """Stage-1 nodule probability over the lungs' box, running the network only on windows that hold lung.

    The windows are those of MONAI's ``sliding_window_inference`` over the box of ``lung`` grown by a quarter
    window (zero-padded to ``roi_size`` where the box is smaller), blended with its importance map; a window
    without any lung voxel is not run and counts as confident background (logits ``(background_logit, 0)``),
    which is what :func:`lung_gated_logits` gives: inside the lungs every window is run, so there the map is
    the plain sliding window's. Only the two classes' logit difference is stitched (softmax of two logits is
    the sigmoid of their difference), so the host holds two box-sized float32 volumes, not four.

    Args:
        network: 2-class stage-1 network on ``sw_device`` ((B, 1, *roi) -> (B, 2, *roi) logits).
        image: (1, i, j, k) scaled CT. lung: (i, j, k) bool mask or None (the whole scan, every window run).
        device: where the stitched volumes live ("cpu" keeps a large scan in host memory while windows run on
            ``sw_device``). amp: float16 autocast when ``sw_device`` is CUDA.

    Returns:
        ``(prob, box)``: (i', j', k') float32 probabilities of class 1 on ``device`` over ``box``, the (i, j, k)
        slices of ``image`` it covers; outside the box the probability is ``sigmoid(-background_logit)``.
    """
    img = image.as_tensor() if hasattr(image, "as_tensor") else torch.as_tensor(image)
    img = img[0]
    shape = tuple(img.shape)
    roi = tuple(int(r) for r in roi_size)
    sw_device = torch.device(sw_device) if sw_device is not None else img.device
    device = torch.device(device) if device is not None else img.device
    box = lung_box(lung, [r // 4 for r in roi], shape) if lung is not None else tuple(slice(0, s) for s in shape)
    x = img[box].float()
    gate = None if lung is None else np.asarray(lung[box], dtype=bool)
    # MONAI pads a volume smaller than the window symmetrically with zeros (and crops the result back)
    pad = [(max(r - n, 0) // 2, max(r - n, 0) - max(r - n, 0) // 2) for r, n in zip(roi, x.shape)]
    if any(a or b for a, b in pad):
        x = torch.nn.functional.pad(x, [v for p in reversed(pad) for v in p])
        if gate is not None:
            gate = np.pad(gate, pad)
    size = tuple(x.shape)
    windows = window_slices(size, roi, overlap)
    weight = compute_importance_map(roi, mode=mode, sigma_scale=0.125, device=device, dtype=torch.float32)
    diff = torch.zeros(size, dtype=torch.float32, device=device)  # sum of weight * (logit 1 - logit 0)
    total = torch.zeros(size, dtype=torch.float32, device=device)  # sum of weight
    run = []
    for win in windows:
        total[win] += weight
        if gate is None or gate[win].any():
            run.append(win)
        else:
            diff[win] -= background_logit * weight
    weight_sw = weight.to(sw_device)
    use_amp = amp and sw_device.type == "cuda"
    layout = torch.channels_last_3d if sw_device.type == "cpu" else torch.contiguous_format
    for start in range(0, len(run), max(int(sw_batch_size), 1)):
        batch = run[start : start + max(int(sw_batch_size), 1)]
        xb = torch.stack([x[win] for win in batch])[:, None].to(sw_device).contiguous(memory_format=layout)
        with torch.autocast(device_type=sw_device.type, dtype=torch.float16, enabled=use_amp):
            logits = network(xb)
        if logits.shape[1] != 2:
            raise ValueError(f"stage 1 must give 2 class logits per voxel, got {logits.shape[1]} channels")
        d = (logits[:, 1].float() - logits[:, 0].float()).mul_(weight_sw).to(device)
        for win, di in zip(batch, d):
            diff[win] += di
    prob = torch.sigmoid(diff.div_(total))
    del diff, total
    crop = tuple(slice(a, n - b) for (a, b), n in zip(pad, size))
    return prob[crop].contiguous(), box


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
        box = lung_box(lung, [r // 4 for r in roi_size], shape)
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
def segment_probability_box(
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
    background_logit: float = 20.0,
) -> tuple[np.ndarray, tuple[slice, ...]]:
    """Stage-1 nodule probability of a preprocessed (1, i, j, k) scan over the box where windows ran.

    Runs :func:`lung_window_probability` on :func:`inference_network`'s copy of ``network`` (see there for the
    arguments). ``flip_axes``: test-time augmentation over distinct spatial axes (0, 1, 2 = i, j, k): the scan
    (and its lung mask) is also run flipped along each of these axes, one pass per axis, and the flipped-back
    probabilities are averaged with the plain pass; () runs once.

    Returns:
        ``(prob, box)``: (i', j', k') float32 array over ``box``, (i, j, k) slices of the scan; everywhere
        else the probability is ``sigmoid(-background_logit)`` (no window ran there).
    """
    img = image.as_tensor() if hasattr(image, "as_tensor") else torch.as_tensor(image)
    shape = tuple(img.shape[1:])
    views = [None, *check_flip_axes(flip_axes)]
    net = inference_network(network, sw_device or "cpu")
    parts = []
    for axis in views:
        x, gate = img, lung
        if axis is not None:
            x = torch.flip(img, dims=(axis + 1,))
            gate = None if lung is None else np.ascontiguousarray(np.flip(lung, axis=axis))
        p, box = lung_window_probability(net, x, gate, roi_size, sw_batch_size, overlap, mode, device or "cpu", sw_device or "cpu", amp, background_logit)
        p = p.cpu()
        if axis is not None:  # back onto the scan: the box mirrors too
            p = torch.flip(p, dims=(axis,))
            box = tuple(slice(n - b.stop, n - b.start) if a == axis else b for a, (b, n) in enumerate(zip(box, shape)))
        parts.append((p, box))
    if len(parts) == 1:
        return parts[0][0].numpy(), parts[0][1]
    union = tuple(slice(min(b[a].start for _, b in parts), max(b[a].stop for _, b in parts)) for a in range(3))
    outside = float(torch.sigmoid(torch.tensor(-float(background_logit))))
    prob = torch.zeros(tuple(u.stop - u.start for u in union), dtype=torch.float32)
    for p, box in parts:
        part = torch.full_like(prob, outside)
        part[tuple(slice(b.start - u.start, b.stop - u.start) for b, u in zip(box, union))] = p
        prob += part
    return prob.div_(len(parts)).numpy(), union


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
    """Nodule probability of every voxel of a preprocessed (1, i, j, k) scan, as an (i, j, k) float32 array:
    :func:`segment_probability_box` (same arguments) with the background filled in around its box."""
    background_logit = 20.0
    prob_box, box = segment_probability_box(
        network, image, lung, roi_size, sw_batch_size, overlap, mode, device, sw_device, amp, flip_axes, background_logit
    )
    shape = tuple(image.shape[1:])
    prob = np.full(shape, float(torch.sigmoid(torch.tensor(-background_logit))), dtype=np.float32)
    prob[box] = prob_box
    return prob


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
        hu_window: Sequence[float] = DEFAULT_HU_WINDOW,
        sw_device: torch.device | str | None = None,
        device: torch.device | str | None = None,
    ):
        self.roi_size, self.sw_batch_size, self.overlap, self.mode = tuple(roi_size), sw_batch_size, overlap, mode
        self.use_lung_mask = flag(use_lung_mask, "use_lung_mask")  # a bundle override may be the string "false"
        self.hu_window, self.sw_device, self.device = tuple(hu_window), sw_device, device

    def __call__(self, inputs: torch.Tensor, network: torch.nn.Module, *args, **kwargs) -> torch.Tensor:
        from monai.utils import convert_to_dst_type

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
