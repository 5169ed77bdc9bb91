"""Hard negatives for stage 2: the false-positive components of a trained stage-1 model.

Random lung points are easy negatives; what stage 2 has to reject are the vessels, scars and pleural
bumps that stage 1 mistakes for nodules. :class:`HardNegativeMiner` runs stage 1 on a scan
(:func:`~monai_lung.detection.segment_probability` gated by the lung mask, then
:func:`~monai_lung.detection.extract_candidates`) and :func:`label_candidates` labels each component
with the LUNA16 hit rule: 1 when its centre lies within the radius of an annotated nodule, -1 when it
lies on an excluded finding (neither positive nor negative), 0 otherwise (a hard negative).
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import pandas as pd
import torch

from monai_lung.datalist import entry_seriesuid
from monai_lung.evaluation.froc import DEFAULT_EXCLUDED_DIAMETER_MM
from monai_lung.io import voxel_spacing
from monai_lung.io.atomic import write_csv_atomic
from monai_lung.networks import bundle_parser, resolve_device, stage_network
from monai_lung.transforms.preprocessing import DEFAULT_HU_WINDOW

logger = logging.getLogger(__name__)

MINED_COLUMNS = [
    "seriesuid", "coordX", "coordY", "coordZ",  # world LPS mm
    "diameter_mm", "peak_prob", "mean_prob", "num_voxels",
    "nodule_distance_mm",  # to the nearest annotated nodule centre (NaN: none in the scan)
    "label",  # 1 hit a nodule, 0 false positive (hard negative), -1 on an excluded finding
]


def label_candidates(
    candidates: pd.DataFrame, entry: dict, excluded_diameter_mm: float = DEFAULT_EXCLUDED_DIAMETER_MM
) -> pd.DataFrame:
    """Add ``nodule_distance_mm`` and ``label`` (1 hit, 0 false positive, -1 on an excluded finding).

    Args:
        candidates: rows with ``coordX, coordY, coordZ`` in world LPS mm (e.g. from ``extract_candidates``).
        entry: data-list entry; ``nodules`` / ``excluded`` centres world LPS mm, ``diameter_mm`` in mm.
    """
    from monai_lung.fpr.bank import away_from_findings, finding_arrays, nearest_distance

    out = candidates.copy()
    pts = out[["coordX", "coordY", "coordZ"]].to_numpy(dtype=np.float64).reshape(-1, 3)
    nod_c, nod_r = finding_arrays(entry.get("nodules"))
    exc_c, exc_r = finding_arrays(entry.get("excluded"), excluded_diameter_mm)
    hit = ~away_from_findings(pts, nod_c, nod_r)
    on_excluded = ~away_from_findings(pts, exc_c, exc_r)
    out["nodule_distance_mm"] = nearest_distance(pts, nod_c)
    out["label"] = np.where(hit, 1, np.where(on_excluded, -1, 0)).astype(int)
    return out


class HardNegativeMiner:
    """Stage 1 over a preprocessed scan -> labelled candidates (hard negatives are ``label == 0``).

    Args:
        network: the stage-1 UNet (2 output channels) in eval mode.
        roi_size, sw_batch_size, overlap: sliding window, as in the stage-1 inference config.
        threshold: probability above which voxels form candidate components.
        min_voxels: smaller components are noise.
        max_candidates: keep the most confident components per scan (None: all).
        device: where windows run.
        amp: float16 autocast on CUDA.
        fingerprint: identifies the model in the crop bank's ``bank.json`` (a bank cut with another model is
            refused instead of mixed).
    """

    def __init__(
        self,
        network: torch.nn.Module,
        roi_size: Sequence[int] = (96, 96, 96),
        sw_batch_size: int = 2,
        overlap: float = 0.25,
        threshold: float = 0.5,
        min_voxels: int = 3,
        max_candidates: int | None = 300,
        device: torch.device | str = "cpu",
        amp: bool = True,
        fingerprint: str = "",
    ):
        self.network = network.eval()
        self.roi_size, self.sw_batch_size, self.overlap = tuple(int(r) for r in roi_size), int(sw_batch_size), float(overlap)
        self.threshold, self.min_voxels, self.max_candidates = float(threshold), int(min_voxels), max_candidates
        self.device, self.amp, self.fingerprint = resolve_device(device), bool(amp), fingerprint

    @classmethod
    def from_bundle(
        cls, bundle_dir: str | os.PathLike, device: torch.device | str = "cpu", weights: str | os.PathLike | None = None, **overrides
    ) -> "HardNegativeMiner":
        """A miner running the stage-1 bundle's network with its inference settings (``roi_size``,
        ``sw_batch_size``, ``overlap``, ``threshold`` from ``configs/inference.json``), ``overrides`` winning."""
        network = stage_network(bundle_dir, weights=weights, device=device)
        parser = bundle_parser(bundle_dir)
        weights = Path(weights) if weights is not None else Path(bundle_dir) / "models" / "model.pt"
        settings = {}
        for key in ("roi_size", "sw_batch_size", "overlap", "threshold"):
            if key in parser.config:
                settings[key] = parser.get_parsed_content(key)
        settings.update(overrides)
        digest = hashlib.sha1(weights.read_bytes()).hexdigest()[:12]  # weights are a few MB
        return cls(network, device=device, fingerprint=f"{weights.name}:{digest}:{settings}", **settings)

    def __call__(
        self, image, entry: dict, lung: np.ndarray | None = None, candidate_mask: np.ndarray | None = None
    ) -> pd.DataFrame:
        """Labelled stage-1 candidates of one scan.

        Args:
            image: (1, i, j, k) preprocessed MetaTensor (scaled CT; ``affine`` voxel -> world mm in ``meta["space"]``).
            entry: its data-list entry (``seriesuid``, ``nodules``, ``excluded``; world LPS mm).
            lung: optional (i, j, k) bool lung mask (windows outside it are skipped).
            candidate_mask: optional (i, j, k) bool mask that candidate components must reach into (the
                detector's tight lung mask, so that stage 2 learns the false positives it will be shown).

        Returns:
            DataFrame with :data:`MINED_COLUMNS`, most confident first.
        """
        from monai_lung.detection import extract_candidates, segment_probability

        prob = segment_probability(
            self.network, image, lung=lung, roi_size=self.roi_size, sw_batch_size=self.sw_batch_size,
            overlap=self.overlap, device="cpu", sw_device=self.device, amp=self.amp,
        )
        space = str(image.meta.get("space", "RAS")) if hasattr(image, "meta") else "RAS"
        affine = image.affine.numpy() if hasattr(image, "affine") else np.eye(4)
        cands = extract_candidates(
            prob, affine, self.threshold, self.min_voxels, max_candidates=None, space=space, region=candidate_mask
        )
        if self.max_candidates is not None:
            cands = cands.head(self.max_candidates).reset_index(drop=True)
        cands.insert(0, "seriesuid", entry_seriesuid(entry))
        return label_candidates(cands, entry)[MINED_COLUMNS]


def mine_hard_negatives(
    entries: Iterable[dict],
    miner: HardNegativeMiner,
    output_csv: str | os.PathLike,
    cache_dir: str | os.PathLike | None = None,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    hu_window: Sequence[float] = DEFAULT_HU_WINDOW,
    log: Callable[[str], None] | None = None,
) -> pd.DataFrame:
    """Run ``miner`` on every scan and write all labelled candidates to ``output_csv`` (atomically).

    Each scan's result is cached as ``cache_dir/<seriesuid>.csv`` (default: ``<output_csv stem>_cache`` beside
    it), so an interrupted run resumes. Use the CSV with ``monai-lung crops --hard-negatives``.

    Returns:
        DataFrame with :data:`MINED_COLUMNS` (hard negatives: ``label == 0``).
    """
    from monai_lung.detection.detector import DetectorConfig, scan_lung_masks
    from monai_lung.transforms.preprocessing import ct_preprocessing

    log = log or logger.info
    output_csv = Path(output_csv)
    cache_dir = Path(cache_dir) if cache_dir is not None else output_csv.with_name(output_csv.stem + "_cache")
    cache_dir.mkdir(parents=True, exist_ok=True)
    preprocess = ct_preprocessing("image", spacing=spacing, hu_window=hu_window)
    # the detector's own masks: windows over the generous one, candidates inside the tight one
    masks_config = DetectorConfig(hu_window=tuple(hu_window))
    entries = list(entries)
    frames = []
    for n, entry in enumerate(entries, start=1):
        uid = entry_seriesuid(entry)
        cache = cache_dir / f"{uid}.csv"
        if cache.is_file():
            frames.append(pd.read_csv(cache, dtype={"seriesuid": str}))
            continue
        image = preprocess({"image": entry["image"]})["image"]
        lung, core = scan_lung_masks(image, voxel_spacing(image), masks_config)
        mined = miner(image, entry, lung=lung, candidate_mask=core)
        write_csv_atomic(cache, mined)
        frames.append(mined)
        log(
            f"[{n}/{len(entries)}] {uid}: {len(mined)} stage-1 candidates, {int((mined['label'] == 1).sum())} hits, "
            f"{int((mined['label'] == 0).sum())} false positives"
        )
    frames = [f for f in frames if len(f)]
    out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=MINED_COLUMNS)
    write_csv_atomic(output_csv, out[MINED_COLUMNS])
    return out
