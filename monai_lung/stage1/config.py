"""Stage 1's settings: one object for the grid it runs on, its lung masks, the sliding window and the candidates.

:class:`Stage1Config` is what the stage-1 inferer (:class:`~monai_lung.stage1.inferer.LungSlidingWindowInferer`),
the candidate generator (:func:`~monai_lung.stage1.run.run_stage1`), the hard-negative miner and the detector share;
the detector's own settings (:class:`~monai_lung.detection.detector.DetectorConfig`) extend it with stage 2's, so
that a detection bundle's ``detector_config`` stays one flat dict. Units: mm for sizes and distances, ``roi_size`` in
voxels of the stage-1 grid (``seg_spacing``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Mapping, Sequence

from monai_lung.bundle_args import flag
from monai_lung.deprecation import renamed
from monai_lung.transforms.preprocessing import DEFAULT_HU_WINDOW
from monai_lung.transforms.zoom import check_grid_spacing

#: metadata of a setting that changes how fast or where stage 1 runs, not what it finds (left out of fingerprints)
HOW_TO_RUN = {"how_to_run": True}


def check_flip_axes(axes: Sequence[int], name: str = "flip_axes") -> tuple[int, ...]:
    """``axes`` as a tuple of distinct spatial axes 0, 1, 2 of the (i, j, k) grid, else ValueError naming ``name``."""
    axes = tuple(int(a) for a in axes)
    if any(a not in (0, 1, 2) for a in axes) or len(set(axes)) != len(axes):
        raise ValueError(f"{name}: distinct spatial axes among 0, 1, 2 of the (i, j, k) grid, got {axes}")
    return axes


@dataclass
class Stage1Config:
    """How stage 1 runs over a preprocessed scan (see the module docstring for units)."""

    hu_window: tuple[float, float] = DEFAULT_HU_WINDOW
    use_lung_mask: bool = True  # False: the sliding window covers the whole scan
    roi_size: tuple[int, int, int] = (96, 96, 96)  # the UNet is fully convolutional: trained on 48^3, run on 96^3
    overlap: float = 0.25
    sw_batch_size: int = field(default=4, metadata=HOW_TO_RUN)
    blend_mode: str = "gaussian"
    # stage-1 test-time augmentation: the sliding window also runs on the scan flipped along these axes of the RAS
    # grid (0: left-right, 1: front-back, 2: up-down) and the probabilities are averaged; off by default because with
    # a strong stage 2 it costs a pass per axis for no measurable gain
    seg_flip_axes: tuple[int, ...] = ()
    # the grid stage 1 runs on, mm per (i, j, k) voxel (the 1 mm scan zoomed, trilinear; None: the 1 mm training
    # grid): zoomed, small nodules look larger to the UNet, which then misses fewer of them
    seg_spacing: tuple[float, float, float] | None = (0.75, 0.75, 0.75)
    # nodules peak high on the zoomed grid, so a high threshold keeps them with far fewer candidates; on the 1 mm
    # grid (seg_spacing None) use ~0.3
    seg_threshold: float = 0.7
    min_voxels: int = 3
    max_candidates: int = 600  # per scan, by stage-1 peak probability: bounds stage 2's cost on a noisy scan
    # a candidate's component must reach into the lungs (closed, so nodules on the pleura count) grown by this
    # many mm: the UNet's false positives are mostly in the chest wall and mediastinum next to the lungs.
    # Not the centre: a large juxta-pleural nodule's centre can lie outside the mask. None: anywhere (also
    # when use_lung_mask is off)
    candidate_lung_margin_mm: float | None = 4.0
    window_lung_margin_mm: float = 8.0  # where sliding windows run: the lungs grown by this
    merge_distance_mm: float = 5.0  # candidates closer than this are one finding (keeps the higher peak)
    amp: bool = field(default=True, metadata=HOW_TO_RUN)  # float16 autocast on CUDA
    # run an inference copy of each network with every BatchNorm folded into the convolution before it (the same
    # function up to float rounding, ~2x faster on a CPU; see monai_lung.networks.inference_network)
    fold_batch_norm: bool = field(default=True, metadata=HOW_TO_RUN)
    # where the networks run: "auto" (CUDA when present), "cpu", "cuda", "cuda:1"
    device: str = field(default="auto", metadata=HOW_TO_RUN)
    # stitch sliding-window output in host memory (large scans on small GPUs)
    keep_volume_on_cpu: bool = field(default=True, metadata=HOW_TO_RUN)

    #: settings whose values are sequences (a JSON list or a bundle override arrives as a list)
    TUPLE_FIELDS = ("hu_window", "roi_size", "seg_flip_axes", "seg_spacing")

    def __post_init__(self):
        # checked here, not at the first scan: a batch job would otherwise record every scan as failed
        for f in fields(self):
            if f.type in (bool, "bool"):  # an override of amp/tta/... may be the string "false"
                setattr(self, f.name, flag(getattr(self, f.name), f.name))
        self.seg_flip_axes = check_flip_axes(self.seg_flip_axes, "seg_flip_axes")
        self.seg_spacing = check_grid_spacing(self.seg_spacing, "seg_spacing")

    @classmethod
    def from_dict(cls, values: Mapping | None, ignore_unknown: bool = False):
        """The settings from a dict of field values (a bundle's ``detector_config``, ``--set`` pairs); lists become
        tuples; renamed keys are read under their new names (:func:`monai_lung.deprecation.renamed`). An unknown key is
        a ValueError naming it, unless ``ignore_unknown``."""
        values = renamed(dict(values or {}), "detector parameter")
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown and not ignore_unknown:
            raise ValueError(f"unknown detector parameter(s): {', '.join(sorted(unknown))}")
        values = {k: v for k, v in values.items() if k in known}
        for key in cls.TUPLE_FIELDS:
            if values.get(key) is not None:
                values[key] = tuple(values[key])
        return cls(**values)

    def to_dict(self) -> dict:
        return asdict(self)

    def stage1(self) -> "Stage1Config":
        """Only the stage-1 settings, as a :class:`Stage1Config` (of a subclass such as the detector's)."""
        return Stage1Config(**{f.name: getattr(self, f.name) for f in fields(Stage1Config)})

    def finding_settings(self) -> dict:
        """The settings that change what stage 1 finds (not :data:`HOW_TO_RUN` ones), in field order: what a crop
        bank's fingerprint records of the stage 1 that mined it."""
        return {f.name: getattr(self, f.name) for f in fields(Stage1Config) if not f.metadata.get("how_to_run")}
