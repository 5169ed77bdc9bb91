"""Stage-2 scoring: nodule probabilities of world points in a preprocessed scan, from 32^3 crops around them."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from monai_lung.io import world_to_index
from monai_lung.transforms.crops import extract_crops


def _probabilities(logits: torch.Tensor) -> torch.Tensor:
    logits = logits.float()
    if logits.ndim == 1 or logits.shape[1] == 1:
        return torch.sigmoid(logits.reshape(-1))  # one-logit networks
    return torch.softmax(logits, dim=1)[:, 1]


@torch.no_grad()
def score_points(
    network: torch.nn.Module,
    image,
    points_lps: np.ndarray,
    batch_size: int = 64,
    device: torch.device | str | None = None,
    amp: bool = True,
    tta: bool = False,
    crop_size: Sequence[int] = (32, 32, 32),
    points_space: str = "LPS",
) -> np.ndarray:
    """Nodule probability of each point.

    Args:
        network: stage-2 classifier taking (B, 1, *crop_size) crops, returning (B, 2) logits (class 1 =
            nodule) or (B, 1) logits; set to eval mode here.
        image: (1, i, j, k) preprocessed scan (MetaTensor from the shared CT preprocessing: 1 mm grid,
            scaled to [0, 1]; its ``affine`` maps voxel index to world mm in ``meta["space"]``, RAS by default).
        points_lps: (N, 3) world (x, y, z) mm in ``points_space`` (LUNA16 CSVs: LPS).
        batch_size: crops per forward pass (crops are cut batch by batch, memory stays bounded).
        device: where the network runs (default: where its parameters are).
        amp: float16 autocast on CUDA (ignored on CPU).
        tta: average over the identity and a flip of each spatial axis (4 passes).
        crop_size: crop edge (i, j, k) in voxels; the point sits at voxel ``crop_size // 2``, crops are
            padded with 0 (air) beyond the scan border.

    Returns:
        (N,) float64 probabilities in [0, 1], in the order of ``points_lps``.
    """
    points = np.asarray(points_lps, dtype=np.float64).reshape(-1, 3)
    if len(points) == 0:
        return np.zeros(0, dtype=np.float64)
    if device is None:
        param = next(network.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    device = torch.device(device)
    network.eval()
    affine = image.affine.numpy() if hasattr(image, "affine") else np.eye(4)
    space = str(image.meta.get("space", "RAS")) if hasattr(image, "meta") else "RAS"
    idx = np.atleast_2d(world_to_index(points, affine, space=space, points_space=points_space))
    vol = image.as_tensor() if hasattr(image, "as_tensor") else torch.as_tensor(image)
    flips = [None, (2,), (3,), (4,)] if tta else [None]
    out = np.zeros(len(points), dtype=np.float64)
    use_amp = amp and device.type == "cuda"
    for start in range(0, len(points), batch_size):
        crops = extract_crops(vol, idx[start : start + batch_size], tuple(crop_size), pad_value=0.0).float().to(device)
        prob = torch.zeros(len(crops), device=device)
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
            for dims in flips:
                x = crops if dims is None else torch.flip(crops, dims)
                prob += _probabilities(network(x))
        out[start : start + len(crops)] = (prob / len(flips)).cpu().numpy()
    return out
