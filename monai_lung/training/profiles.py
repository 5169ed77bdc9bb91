"""Settings profiles of ``monai-lung train``: what each step of the recipe is run with.

A setting of ``None`` keeps the bundle's own value (nothing is passed on the command line), so the bundles
stay the one definition of each stage's training; a profile names only what it changes. ``--set key=value``
overrides any key. ``stage1_overrides`` / ``stage2_overrides`` pass further bundle ids verbatim
(``{"patch_size": [64, 64, 64]}``) and ``detect_overrides`` further detector parameters.
"""

from __future__ import annotations

import copy

from monai_lung.deprecation import renamed
from monai_lung.io.errors import DataError

DEMO = {
    # 100 epochs of the 8-128 UNet fit the demo's ~20 CPU-minute budget; 130 did not raise the held-out CPM
    "stage1_epochs": 100,
    # whole-scan validation costs ~5 s per scan on a CPU: one scan, once at the end, writes model.pt
    "stage1_val_scans": 1,
    # None: validate once, after the last epoch (the key metric's best is then the last network)
    "stage1_val_interval": None,
    # the demo keeps the bundle's network, augmentation, cache and batch settings (tuned for a 2-core CPU)
    "stage1_channels": None,
    "stage1_synthetic_nodule_prob": None,
    "stage1_cache": None,
    "stage1_batch_size": None,
    "stage1_num_samples": None,
    "stage1_learning_rate": None,
    # fine-tuning on stage 1's own false positives (0 epochs: skip); it lowered high-scoring test false positives
    "stage1_finetune_epochs": 30,
    "stage1_finetune_lr": 0.001,
    "stage1_hard_negatives_per_scan": 64,
    "stage1_hard_negative_fraction": 0.75,
    # stage 2 keeps its last epoch; 60 epochs of 1,024 crops is where its held-out AUC stopped rising on the demo set
    "stage2_epochs": 60,
    "stage2_epoch_length": 1024,
    "stage2_val_interval": 10,
    "stage2_synthetic_nodule_prob": None,
    "stage2_num_workers": 0,  # two loader processes beside two training threads on two cores made epochs slower
    "amp": None,  # the bundles' default: AMP on CUDA, off on a CPU
    "num_workers": 2,
    # stage-2 crop bank: candidates.csv negatives per scan (None: the crop bank's default, 64)
    "candidates_per_scan": None,
    "detect_report": True,  # PNG per finding and index.html for the test scans
    "bootstrap": 1000,
    "stage1_overrides": {},
    "stage2_overrides": {},
    "detect_overrides": {},
    # bundle templates, copied under the work dir before training (the templates are never written): a template's
    # name (monai_lung.templates: the repository's bundles/, or the copy a wheel installs) or a bundle folder
    "seg_bundle": "lung_nodule_ct_segmentation",
    "stage2_bundle": "lung_nodule_ct_classification",
    "det_bundle": "lung_nodule_ct_two_stage_detection",
}

LUNA16 = {
    **DEMO,
    # each epoch draws 8 patches from every training scan (~710 scans, ~5,700 patches): 100 epochs show each real
    # nodule ~100 times in different crops and augmentations, the demo's count per nodule, at ~570k patches
    "stage1_epochs": 100,
    # the whole validation subset (~89 scans, ~1-2 s each on a GPU) every 10 epochs: model.pt is the best Dice
    "stage1_val_scans": None,
    "stage1_val_interval": 10,
    # the segmentation guide's GPU width: the 8-128 network was narrowed only to fit a CPU budget
    "stage1_channels": [16, 32, 64, 128, 256],
    # ~1,000 real training nodules carry the appearance; synthetic ones only fill in sizes and places (guide: 0.2 or 0)
    "stage1_synthetic_nodule_prob": 0.2,
    # ~80 MB per resampled scan: ~60 GB for a fold's training and validation scans is more than a node's RAM
    "stage1_cache": "disk",
    # 2 scans x 8 patches of 48^3 per step, as on the CPU: memory is no constraint on a GPU, and the
    # learning rate and schedule were tuned for this batch
    "stage1_batch_size": None,
    "stage1_num_samples": None,
    "stage1_learning_rate": None,
    "stage1_finetune_epochs": 30,  # as in the demo: ~30% more stage-1 time for fewer high-scoring false positives
    "stage1_finetune_lr": 0.001,
    "stage1_hard_negatives_per_scan": 64,
    "stage1_hard_negative_fraction": 0.75,
    # ~1,000 nodules and ~600 scans of negatives: 8,192 crops per epoch for 60 epochs shows each positive crop ~4
    # times per epoch across jitter, zoom and flips (the demo: ~30 nodules, 1,024 crops)
    "stage2_epochs": 60,
    "stage2_epoch_length": 8192,
    "stage2_val_interval": 5,
    # with ~1,000 real nodules a small share of synthetic positives is enough (the guide: 0 trains on real ones only)
    "stage2_synthetic_nodule_prob": 0.1,
    "stage2_num_workers": 8,  # a GPU trains faster than one process augments crops
    "amp": True,  # float16 on CUDA halves activation memory and ~doubles 3D convolution throughput
    "num_workers": 8,  # stage-1 patch sampling and augmentation run on the CPU: one worker per ~2 cores of a 16-core node
    "candidates_per_scan": 64,  # candidates_V2.csv has ~850 per scan, mostly easy ones: 64 keep them beside the hard negatives
    "detect_report": False,  # ~89 test scans x 10 PNGs are rarely looked at; detect --report-dir makes them when wanted
    "bootstrap": 1000,
}

PROFILES = {"demo": DEMO, "luna16": LUNA16}


def resolve_settings(profile: str, overrides: dict | None = None, extra_keys: tuple[str, ...] = ()) -> dict:
    """The profile's settings with ``overrides`` applied (a deep copy).

    Raises:
        DataError: unknown profile or an override of an unknown key (``extra_keys`` are accepted too), naming it.
    """
    if profile not in PROFILES:
        raise DataError(None, f"--profile {profile!r} is unknown (known: {', '.join(PROFILES)})")
    settings = copy.deepcopy(PROFILES[profile])
    for key, value in renamed(dict(overrides or {})).items():
        if key not in settings and key not in extra_keys:
            raise DataError(None, f"--set {key}: unknown setting (known: {', '.join(sorted(settings))})")
        settings[key] = value
    return settings
