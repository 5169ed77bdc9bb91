"""Stage 2 of monai_lung: false-positive reduction of nodule candidates with a small 3D ResNet.

- :mod:`~monai_lung.fpr.bank`: the crop bank, 64^3 float16 crops around nodules and negatives, cut once per
  scan from the shared CT preprocessing and stored per scan with an index CSV (resumable, atomic).
- :mod:`~monai_lung.fpr.mining`: hard negatives, the stage-1 false-positive components of training scans.
- :mod:`~monai_lung.fpr.dataset`: :class:`CropBankDataset` and :class:`BalancedSampler` (fixed
  positive share per epoch, DDP-aware) for the classification bundle.
- :mod:`~monai_lung.fpr.transforms`: :class:`ContextSwapd`, surroundings of another crop around a crop's centre.
- :mod:`~monai_lung.fpr.scoring`: :func:`score_points_csv`, stage-2 probabilities of a CSV of world points.
- :mod:`~monai_lung.fpr.cli`: ``monai-lung crops`` / ``hard-negatives`` / ``score`` argument parsers and bodies.
"""

from monai_lung.fpr.bank import (
    INDEX_COLUMNS,
    SOURCES,
    CropBank,
    CropBankSettings,
    away_from_findings,
    bank_spacing,
    centre_view,
    build_crop_bank,
    build_scan_crops,
    finding_arrays,
    positive_points,
    random_lung_points,
)
from monai_lung.fpr.dataset import BalancedSampler, CropBankDataset
from monai_lung.fpr.mining import HardNegativeMiner, label_candidates, mine_hard_negatives
from monai_lung.fpr.transforms import ContextSwapd
from monai_lung.fpr.scoring import find_scan_paths, score_points_csv
