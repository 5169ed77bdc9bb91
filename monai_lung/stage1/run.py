"""Stage 1 of the detector on one preprocessed scan: its grid, lung masks, the sliding window and the candidates.

:func:`run_stage1` is the one stage-1 candidate generator: the detector, the hard-negative miner and the stage-1
benchmark all call it, so stage 2 trains on the false positives of the stage 1 it is deployed behind.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from monai_lung.io.coords import voxel_spacing
from monai_lung.stage1.candidates import extract_candidates, merge_close_candidates
from monai_lung.stage1.config import Stage1Config
from monai_lung.stage1.inferer import LungSlidingWindowInferer, stage1_lung_masks
from monai_lung.transforms.zoom import zoom_to_spacing


def stage1_candidates(
    prob: np.ndarray, affine: np.ndarray, cfg: Stage1Config, lung_core: np.ndarray | None = None, space: str = "RAS"
) -> pd.DataFrame:
    """Candidates of a stage-1 (i, j, k) probability map (grid ``affine``, world ``space``): components
    above ``cfg.seg_threshold`` with at least ``cfg.min_voxels`` voxels that reach into ``lung_core``
    (an (i, j, k) bool mask, None: anywhere), near-duplicates merged, the ``cfg.max_candidates`` with the
    highest peak probability. Columns: :data:`~monai_lung.stage1.candidates.CANDIDATE_FIELDS`."""
    cands = extract_candidates(prob, affine, cfg.seg_threshold, cfg.min_voxels, max_candidates=None, space=space, region=lung_core)
    cands = merge_close_candidates(cands, cfg.merge_distance_mm)
    return cands.head(cfg.max_candidates).reset_index(drop=True)


@dataclass
class Stage1Result:
    """What stage 1 made of one scan.

    Attributes:
        candidates: :func:`stage1_candidates`' table (world LPS mm, ``peak_prob``, sizes in voxels of the grid).
        prob: (i, j, k) float32 nodule probability on the stage-1 grid.
        image: (1, i, j, k) the scan on the stage-1 grid (``seg_spacing``), scaled as the input was.
        affine: (4, 4) index -> world mm (``space``) of that grid.
        space: the world frame of ``affine`` (RAS after the shared preprocessing).
        lung_core: (i, j, k) bool, where candidate components must reach (None: anywhere), to re-threshold ``prob``
            with :func:`stage1_candidates`.
        timings: seconds of ``stage1_grid``, ``lung_mask``, ``sliding_window``, ``candidates``.
        lungs: (i, j, k) bool, the lungs themselves with the lesions lying in them (no margin), when asked for.
    """

    candidates: pd.DataFrame
    prob: np.ndarray
    image: torch.Tensor
    affine: np.ndarray
    space: str
    lung_core: np.ndarray | None
    timings: dict
    lungs: np.ndarray | None = None


def run_stage1(
    segmenter: torch.nn.Module, image: torch.Tensor, cfg: Stage1Config, device: torch.device | str = "cpu", lungs: bool = False
) -> Stage1Result:
    """Stage 1 on one preprocessed scan: zoom to ``cfg.seg_spacing``, lung masks, the sliding window over the lungs
    (:class:`~monai_lung.stage1.inferer.LungSlidingWindowInferer`), then :func:`stage1_candidates`.

    Args:
        segmenter: the stage-1 UNet (2 classes), any mode (an inference copy is made).
        image: (1, i, j, k) MetaTensor on the training grid (1 mm, RAS), window-scaled to [0, 1].
        cfg: stage 1's settings (the detector's :class:`~monai_lung.detection.detector.DetectorConfig` is one).
        device: where the network runs.
        lungs: also keep the lungs mask without margin (:attr:`Stage1Result.lungs`).
    """
    timings = {}
    space = str(image.meta.get("space", "RAS")) if hasattr(image, "meta") else "RAS"
    t = time.perf_counter()
    # stage 1 may run on its own grid (seg_spacing); candidates leave it as world mm, so stage 2 is unaffected
    seg_image = image if cfg.seg_spacing is None else zoom_to_spacing(image, cfg.seg_spacing)
    affine = seg_image.affine.numpy() if hasattr(seg_image, "affine") else np.eye(4)
    timings["stage1_grid"] = time.perf_counter() - t

    t = time.perf_counter()
    lung, lung_core, *rest = stage1_lung_masks(seg_image, voxel_spacing(seg_image), cfg, lungs=lungs)
    timings["lung_mask"] = time.perf_counter() - t

    t = time.perf_counter()
    prob = LungSlidingWindowInferer(cfg, sw_device=torch.device(device)).probability_map(segmenter, seg_image, lung)
    timings["sliding_window"] = time.perf_counter() - t

    t = time.perf_counter()
    cands = stage1_candidates(prob, affine, cfg, lung_core, space)
    timings["candidates"] = time.perf_counter() - t
    return Stage1Result(cands, prob, seg_image, affine, space, lung_core, timings, rest[0] if lungs else None)
