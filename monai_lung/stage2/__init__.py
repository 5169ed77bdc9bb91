"""Stage 2 of monai_lung: false-positive reduction of nodule candidates with a small 3D ResNet.

Stage 2 is called ``stage2`` in code, options and settings (``--stage2-bundle``, ``stage2_spacing``,
``stage2_batch_size``, the ``stage2_prob`` of a finding). Two names stay for the weights' sake: its bundle is
``lung_nodule_ct_classification`` and its network is the detection network's ``classifier`` (the prefix of its
weights in a detection bundle's ``model.pt``).

- :mod:`~monai_lung.stage2.bank`: the crop bank, 64^3 float16 crops around nodules and negatives, cut once per
  scan from the shared CT preprocessing and stored per scan with an index CSV (resumable, atomic).
- :mod:`~monai_lung.stage2.mining`: hard negatives, the stage-1 false-positive components of training scans.
- :mod:`~monai_lung.stage2.dataset`: :class:`CropBankDataset` and :class:`BalancedSampler` (fixed
  positive share per epoch, DDP-aware) for the classification bundle.
- :mod:`~monai_lung.stage2.transforms`: :class:`ContextSwapd`, surroundings of another crop around a crop's centre.
- :mod:`~monai_lung.stage2.scoring`: :func:`score_points` (probabilities of world points in a scan: the detector's
  stage 2) and :func:`score_points_csv` (of a CSV of points over their scans: the classification bundle's inference).
- :mod:`~monai_lung.stage2.cli`: ``monai-lung crops`` / ``hard-negatives`` / ``score``.
"""

from monai_lung.stage2.bank import (
    INDEX_COLUMNS,
    SOURCES,
    CropBank,
    CropBankSettings,
    bank_spacing,
    centre_view,
    build_crop_bank,
    build_scan_crops,
    positive_points,
    random_lung_points,
)
from monai_lung.stage2.dataset import BalancedSampler, CropBankDataset
from monai_lung.stage2.mining import HardNegativeMiner, label_candidates, mine_hard_negatives
from monai_lung.stage2.transforms import ContextSwapd
from monai_lung.stage2.scoring import find_scan_paths, score_points, score_points_csv
