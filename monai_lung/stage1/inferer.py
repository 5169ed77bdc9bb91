"""Stage 1 over a whole scan, the one implementation: the UNet on MONAI's sliding-window grid over the lungs' box,
run only on windows that hold lung.

:class:`LungSlidingWindowInferer` is a MONAI ``Inferer``: ``inferer(inputs, network)`` gives logits, as bundles
(``inferer``, ``validate#inferer``) and MONAI Label call it; :meth:`~LungSlidingWindowInferer.probability` gives the
detector and the hard-negative miner the nodule probability over the box where windows ran. Both go through the
same window loop with the same settings (:class:`~monai_lung.stage1.config.Stage1Config`): lung gating, the
network's inference copy (BatchNorm folded), AMP on CUDA and flip test-time augmentation.
"""

from __future__ import annotations

from typing import Iterator, Mapping, Sequence

import numpy as np
import torch
from monai.data.utils import compute_importance_map, dense_patch_slices
from monai.inferers import Inferer

from monai_lung.io.coords import voxel_spacing
from monai_lung.networks import inference_network
from monai_lung.stage1.config import Stage1Config
from monai_lung.transforms.lung_mask import lung_masks

#: logit margin of confident background: a window without lung is not run and counts as logits (this, 0)
BACKGROUND_LOGIT = 20.0
#: the nodule probability of a voxel no window ran over, ``sigmoid(-BACKGROUND_LOGIT)``
BACKGROUND_PROBABILITY = float(torch.sigmoid(torch.tensor(-BACKGROUND_LOGIT)))


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


def stage1_lung_masks(image: torch.Tensor, spacing: Sequence[float], config: Stage1Config, candidates: bool = True, lungs: bool = False):
    """``(window mask, candidate mask)``: (i, j, k) bool lung masks of a preprocessed (1, i, j, k) scan of ``spacing``
    mm voxels, for where sliding windows run (the lungs grown by ``window_lung_margin_mm``) and where a candidate's
    component must reach (grown by ``candidate_lung_margin_mm``; None when that is None or ``candidates`` is False);
    ``(None, None)`` when ``use_lung_mask`` is off. All come from one segmentation. With ``lungs``, a third mask: the
    lungs themselves (no margin, lesions lying in them kept; made even when ``use_lung_mask`` is off), what the domain
    check measures and masses are sized in."""
    margins = []
    if config.use_lung_mask:
        margins.append(config.window_lung_margin_mm)
        if candidates and config.candidate_lung_margin_mm is not None:
            margins.append(config.candidate_lung_margin_mm)
    if lungs:
        margins.append(0.0)
    masks = lung_masks(image, spacing, margins, hu_window=config.hu_window) if margins else []
    window = masks[0] if config.use_lung_mask else None
    core = masks[1] if config.use_lung_mask and len(masks) > 1 + lungs else None
    return (window, core, masks[-1]) if lungs else (window, core)


def _unwrapped(network: torch.nn.Module) -> torch.nn.Module:
    """The module inside a ``DistributedDataParallel`` wrapper (a bundle's multi-GPU validation), else ``network``."""
    from torch.nn.parallel import DistributedDataParallel

    return network.module if isinstance(network, DistributedDataParallel) else network


class LungSlidingWindowInferer(Inferer):
    """Stage 1's sliding window over the lungs (see the module docstring).

    Args:
        config: the settings (:class:`Stage1Config`, any subclass such as the detector's, or a dict of its fields).
        device: where the stitched volumes live (None: the host when ``keep_volume_on_cpu``, else ``sw_device``).
        sw_device: where the windows run (None: where the input is).
        settings: fields of :class:`Stage1Config` overriding ``config``; ``mode`` is read as ``blend_mode``
            (MONAI's name, as bundle configs write it).
    """

    def __init__(
        self,
        config: Stage1Config | Mapping | None = None,
        device: torch.device | str | None = None,
        sw_device: torch.device | str | None = None,
        **settings,
    ):
        super().__init__()
        if "mode" in settings:
            settings["blend_mode"] = settings.pop("mode")
        if isinstance(config, Stage1Config):
            self.config = config.stage1() if not settings else Stage1Config.from_dict({**config.stage1().to_dict(), **settings})
        else:
            self.config = Stage1Config.from_dict({**dict(config or {}), **settings})
        self.device, self.sw_device = device, sw_device

    # -- the window loop ------------------------------------------------------------------------------------------
    def _devices(self, image: torch.Tensor) -> tuple[torch.device, torch.device]:
        sw_device = torch.device(self.sw_device) if self.sw_device is not None else image.device
        if self.device is not None:
            return torch.device(self.device), sw_device
        return (torch.device("cpu") if self.config.keep_volume_on_cpu else sw_device), sw_device

    def _network(self, network: torch.nn.Module, sw_device: torch.device) -> torch.nn.Module:
        network = _unwrapped(network)
        return inference_network(network, sw_device) if self.config.fold_batch_norm else network

    @torch.no_grad()
    def _logit_difference(
        self, network: torch.nn.Module, image: torch.Tensor, lung: np.ndarray | None, device: torch.device, sw_device: torch.device
    ) -> tuple[torch.Tensor, tuple[slice, ...]]:
        """``(d, box)``: the blended logit difference (class 1 minus class 0) over ``box``, the (i, j, k) slices of
        the (1, i, j, k) ``image`` that the window grid covers: the box of ``lung`` grown by a quarter window (the
        whole scan when ``lung`` is None), zero-padded to a window where it is smaller, as MONAI pads.

        The windows and blending are MONAI ``sliding_window_inference``'s; a window without a lung voxel is not run
        and counts as logits ``(BACKGROUND_LOGIT, 0)``. Only the difference is stitched (softmax of two logits is the
        sigmoid of their difference), so the host holds two box-sized float32 volumes, not four.
        """
        cfg = self.config
        img = image.as_tensor() if hasattr(image, "as_tensor") else torch.as_tensor(image)
        img = img[0]
        shape = tuple(img.shape)
        roi = tuple(int(r) for r in cfg.roi_size)
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
        weight = compute_importance_map(roi, mode=cfg.blend_mode, sigma_scale=0.125, device=device, dtype=torch.float32)
        diff = torch.zeros(size, dtype=torch.float32, device=device)  # sum of weight * (logit 1 - logit 0)
        total = torch.zeros(size, dtype=torch.float32, device=device)  # sum of weight
        run = []
        for win in window_slices(size, roi, cfg.overlap):
            total[win] += weight
            if gate is None or gate[win].any():
                run.append(win)
            else:
                diff[win] -= BACKGROUND_LOGIT * weight
        weight_sw = weight.to(sw_device)
        use_amp = cfg.amp and sw_device.type == "cuda"
        layout = torch.channels_last_3d if sw_device.type == "cpu" else torch.contiguous_format
        step = max(int(cfg.sw_batch_size), 1)
        for start in range(0, len(run), step):
            batch = run[start : start + step]
            xb = torch.stack([x[win] for win in batch])[:, None].to(sw_device).contiguous(memory_format=layout)
            with torch.autocast(device_type=sw_device.type, dtype=torch.float16, enabled=use_amp):
                logits = network(xb)
            if logits.shape[1] != 2:
                raise ValueError(f"stage 1 must give 2 class logits per voxel, got {logits.shape[1]} channels")
            d = (logits[:, 1].float() - logits[:, 0].float()).mul_(weight_sw).to(device)
            for win, di in zip(batch, d):
                diff[win] += di
        diff = diff.div_(total)
        del total
        crop = tuple(slice(a, n - b) for (a, b), n in zip(pad, size))
        return diff[crop].contiguous(), box

    def _passes(
        self, network: torch.nn.Module, image: torch.Tensor, lung: np.ndarray | None
    ) -> Iterator[tuple[torch.Tensor, tuple[slice, ...]]]:
        """``(d, box)`` of the plain pass and of one pass per ``seg_flip_axes`` axis, each flipped back onto the
        scan (its box mirrored too); ``d`` on the host."""
        img = image.as_tensor() if hasattr(image, "as_tensor") else torch.as_tensor(image)
        shape = tuple(img.shape[1:])
        device, sw_device = self._devices(img)
        net = self._network(network, sw_device)
        for axis in [None, *self.config.seg_flip_axes]:
            x, gate = img, lung
            if axis is not None:
                x = torch.flip(img, dims=(axis + 1,))
                gate = None if lung is None else np.ascontiguousarray(np.flip(lung, axis=axis))
            d, box = self._logit_difference(net, x, gate, device, sw_device)
            d = d.cpu()
            if axis is not None:
                d = torch.flip(d, dims=(axis,))
                box = tuple(slice(n - b.stop, n - b.start) if a == axis else b for a, (b, n) in enumerate(zip(box, shape)))
            yield d, box

    @staticmethod
    def _average(parts: list[tuple[torch.Tensor, tuple[slice, ...]]]) -> tuple[torch.Tensor, tuple[slice, ...]]:
        """The mean of several passes' probabilities over the union of their boxes (background outside each box)."""
        if len(parts) == 1:
            return parts[0]
        union = tuple(slice(min(b[a].start for _, b in parts), max(b[a].stop for _, b in parts)) for a in range(3))
        prob = torch.zeros(tuple(u.stop - u.start for u in union), dtype=torch.float32)
        for p, box in parts:
            part = torch.full_like(prob, BACKGROUND_PROBABILITY)
            part[tuple(slice(b.start - u.start, b.stop - u.start) for b, u in zip(box, union))] = p
            prob += part
        return prob.div_(len(parts)), union

    # -- what callers use -----------------------------------------------------------------------------------------
    def lung(self, image: torch.Tensor) -> np.ndarray | None:
        """The (i, j, k) window mask of a (1, i, j, k) scaled scan (its affine gives the voxel size; a batched
        (B, 4, 4) affine or none: 1 mm); None when ``use_lung_mask`` is off."""
        if not self.config.use_lung_mask:
            return None
        spacing = voxel_spacing(image) if np.ndim(getattr(image, "affine", None)) == 2 else np.ones(3)
        return stage1_lung_masks(image.detach().cpu(), spacing, self.config, candidates=False)[0]

    def probability(self, network: torch.nn.Module, image: torch.Tensor, lung: np.ndarray | None = None) -> tuple[np.ndarray, tuple[slice, ...]]:
        """Stage-1 nodule probability of a preprocessed (1, i, j, k) scan over the box where windows ran.

        Args:
            network: the stage-1 UNet ((B, 1, *roi) -> (B, 2, *roi) logits), any mode (an inference copy is run).
            image: (1, i, j, k) scaled CT. lung: (i, j, k) bool window mask (:func:`stage1_lung_masks`), or None:
                every window of the whole scan runs.

        Returns:
            ``(prob, box)``: (i', j', k') float32 array over ``box``, (i, j, k) slices of the scan; everywhere else
            the probability is :data:`BACKGROUND_PROBABILITY`. With ``seg_flip_axes``, the mean of the passes.
        """
        parts = [(torch.sigmoid(d), box) for d, box in self._passes(network, image, lung)]
        prob, box = self._average(parts)
        return prob.numpy(), box

    def probability_map(self, network: torch.nn.Module, image: torch.Tensor, lung: np.ndarray | None = None) -> np.ndarray:
        """:meth:`probability` over every voxel of the scan: an (i, j, k) float32 array."""
        prob_box, box = self.probability(network, image, lung)
        prob = np.full(tuple(image.shape[1:]), BACKGROUND_PROBABILITY, dtype=np.float32)
        prob[box] = prob_box
        return prob

    def __call__(self, inputs: torch.Tensor, network: torch.nn.Module, *args, **kwargs) -> torch.Tensor:
        """MONAI's inferer interface: ``inputs`` (B, 1, i, j, k) scaled CT (MetaTensor: its affine gives the voxel
        size for the lung mask) -> (B, 2, i, j, k) logits ``(0, d)`` with the input's meta (so that ``Invertd`` works
        on them): their softmax is the probability of :meth:`probability`; where no window ran, ``d`` is
        ``-BACKGROUND_LOGIT``."""
        from monai.utils import convert_to_dst_type

        outs = []
        for b in range(inputs.shape[0]):
            image = inputs[b]
            parts = list(self._passes(network, image, self.lung(image)))
            if len(parts) == 1:
                d, box = parts[0]
            else:
                prob, box = self._average([(torch.sigmoid(d), bx) for d, bx in parts])
                d = torch.logit(prob).clamp_(-BACKGROUND_LOGIT, BACKGROUND_LOGIT)
            out = torch.zeros((2, *image.shape[1:]), dtype=torch.float32, device=d.device)
            out[1] = -BACKGROUND_LOGIT
            out[1][box] = d
            outs.append(out)
        device = self._devices(inputs)[0]
        out = torch.stack(outs).to(device)
        return convert_to_dst_type(out, inputs, device=out.device)[0] if hasattr(inputs, "meta") else out
