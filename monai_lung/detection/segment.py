"""Stage 1 over a whole scan: MONAI ``sliding_window_inference`` of the UNet, spent only where the lungs are."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from monai.inferers import sliding_window_inference


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
) -> np.ndarray:
    """Nodule probability of every voxel of a preprocessed scan.

    Args:
        network: the stage-1 UNet (2 output channels), in eval mode, on ``sw_device``.
        image: (1, i, j, k) scaled CT (MONAI channel-first, what the bundle preprocessing returns).
        lung: optional (i, j, k) bool lung mask; the window grid then covers only the mask's bounding box
            and windows without lung are skipped (see :class:`LungGatedPredictor`). None: whole scan.
        device: where the stitched output lives (keep "cpu" for large scans: the volume stays in host
            memory while windows run on ``sw_device``).
        sw_device: where windows run (CUDA when available).
        amp: float16 autocast on CUDA.

    Returns:
        (i, j, k) float32 probability of the nodule class (0 outside the processed box).
    """
    img = image.as_tensor() if hasattr(image, "as_tensor") else torch.as_tensor(image)
    img = img.float()
    shape = tuple(img.shape[1:])
    sw_device = torch.device(sw_device) if sw_device is not None else torch.device("cpu")
    device = torch.device(device) if device is not None else torch.device("cpu")
    if lung is not None:
        box = _bbox(lung, [r // 4 for r in roi_size], shape)
        x = torch.cat([img[(slice(None), *box)], torch.as_tensor(lung[box], dtype=torch.float32)[None]], dim=0)
        predictor = LungGatedPredictor(network)
    else:
        box = tuple(slice(0, s) for s in shape)
        x, predictor = img, network
    use_amp = amp and sw_device.type == "cuda"
    with torch.autocast(device_type=sw_device.type, dtype=torch.float16, enabled=use_amp):
        logits = sliding_window_inference(
            x[None], list(roi_size), sw_batch_size, predictor, overlap=overlap, mode=mode, sw_device=sw_device, device=device
        )
    prob = torch.softmax(logits[0].float(), dim=0)[1].cpu().numpy()
    out = np.zeros(shape, dtype=np.float32)
    out[box] = prob
    return out
