"""Hard negatives for stage 2: the false-positive components of a trained stage-1 model.

Random lung points are easy negatives; what stage 2 has to reject are the vessels, scars and pleural
bumps that stage 1 mistakes for nodules. :class:`HardNegativeMiner` runs the detector's stage 1 on a scan
(:func:`~monai_lung.stage1.run.run_stage1`) and :func:`label_candidates` labels each component
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
from monai_lung.io.annotations import DEFAULT_EXCLUDED_DIAMETER_MM, away_from_findings, finding_arrays, nearest_distance
from monai_lung.stage1 import Stage1Config, run_stage1
from monai_lung.transforms.preprocessing import ct_preprocessing
from monai_lung.io.atomic import write_csv_atomic
from monai_lung.networks import bundle_parser, resolve_device, stage_network

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

    It runs :func:`~monai_lung.stage1.run.run_stage1`, the detector's own stage 1 with the detector's stage-1
    settings (grid, threshold, lung masks, duplicate merging, cap), so that stage 2 trains on the false positives
    of the stage 1 it will be deployed behind.

    Args:
        network: the stage-1 UNet (2 output channels).
        config: stage 1's settings (:class:`~monai_lung.stage1.config.Stage1Config`, e.g. the detector's, or a dict
            of its fields; None: its defaults, which the detection bundle uses).
        device: where windows run.
        fingerprint: identifies the model and settings in the crop bank's ``bank.json`` (a bank cut with another
            model is refused instead of mixed).
    """

    def __init__(
        self, network: torch.nn.Module, config: Stage1Config | dict | None = None, device: torch.device | str = "cpu",
        fingerprint: str = "",
    ):
        self.network = network.eval()
        self.config = config.stage1() if isinstance(config, Stage1Config) else Stage1Config.from_dict(config)
        self.device, self.fingerprint = resolve_device(device), fingerprint

    @classmethod
    def from_bundle(
        cls,
        bundle_dir: str | os.PathLike,
        device: torch.device | str = "cpu",
        weights: str | os.PathLike | None = None,
        detection_bundle: str | os.PathLike | None = None,
        **overrides,
    ) -> "HardNegativeMiner":
        """A miner running the stage-1 bundle's network with the stage-1 settings of ``detection_bundle``'s
        ``detector_config`` (None: :class:`~monai_lung.stage1.config.Stage1Config`'s defaults), ``overrides`` winning.
        Detector settings of the other stages (``tta``, ``crop_size``, ...) are logged and left out."""
        network = stage_network(bundle_dir, weights=weights, device=device)
        weights = Path(weights) if weights is not None else Path(bundle_dir) / "models" / "model.pt"
        settings = dict(bundle_parser(detection_bundle).get_parsed_content("detector_config")) if detection_bundle else {}
        settings.update(overrides)
        config = Stage1Config.from_dict(settings, ignore_unknown=True)
        others = sorted(set(settings) - set(config.to_dict()))
        if others:
            logger.info("stage 1 of the miner leaves out settings of the detector's other stages: %s", ", ".join(others))
        digest = hashlib.sha1(weights.read_bytes()).hexdigest()[:12]  # weights are a few MB
        stage1 = config.finding_settings()
        return cls(network, config, device=device, fingerprint=f"{weights.name}:{digest}:{stage1}")

    def __call__(self, image, entry: dict) -> pd.DataFrame:
        """Labelled stage-1 candidates of one scan.

        Args:
            image: (1, i, j, k) preprocessed MetaTensor (scaled CT on the 1 mm grid; ``affine`` voxel -> world mm in
                ``meta["space"]``).
            entry: its data-list entry (``seriesuid``, ``nodules``, ``excluded``; world LPS mm).

        Returns:
            DataFrame with :data:`MINED_COLUMNS`, most confident first.
        """
        cands = run_stage1(self.network, image, self.config, self.device).candidates  # highest peak first
        cands.insert(0, "seriesuid", entry_seriesuid(entry))
        return label_candidates(cands, entry)[MINED_COLUMNS]


def mine_hard_negatives(
    entries: Iterable[dict],
    miner: HardNegativeMiner,
    output_csv: str | os.PathLike,
    cache_dir: str | os.PathLike | None = None,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    hu_window: Sequence[float] | None = None,
    log: Callable[[str], None] | None = None,
) -> pd.DataFrame:
    """Run ``miner`` on every scan and write all labelled candidates to ``output_csv`` (atomically).

    Each scan's result is cached as ``cache_dir/<seriesuid>.csv`` (default: ``<output_csv stem>_cache`` beside
    it), so an interrupted run resumes. Use the CSV with ``monai-lung crops --hard-negatives``.

    Returns:
        DataFrame with :data:`MINED_COLUMNS` (hard negatives: ``label == 0``).
    """
    log = log or logger.info
    output_csv = Path(output_csv)
    cache_dir = Path(cache_dir) if cache_dir is not None else output_csv.with_name(output_csv.stem + "_cache")
    cache_dir.mkdir(parents=True, exist_ok=True)
    # the window the detector scales with, unless given
    preprocess = ct_preprocessing("image", spacing=spacing, hu_window=hu_window or miner.config.hu_window)
    entries = list(entries)
    frames = []
    for n, entry in enumerate(entries, start=1):
        uid = entry_seriesuid(entry)
        cache = cache_dir / f"{uid}.csv"
        if cache.is_file():
            frames.append(pd.read_csv(cache, dtype={"seriesuid": str}))
            continue
        image = preprocess({"image": entry["image"]})["image"]
        mined = miner(image, entry)
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
