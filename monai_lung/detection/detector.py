"""The two-stage detector: preprocessed CT in, scored nodule findings in world millimetres out.

Pipeline per scan (every knob lives in :class:`DetectorConfig`):
zoom to stage 1's grid (0.75 mm) -> lung mask -> stage-1 UNet sliding window over the lungs -> candidates
(components of the probability map, as world mm) -> merge near-duplicates -> zoom to stage 2's grid (0.8 mm)
-> 32^3 crops around the candidates -> batched stage-2 ResNet -> final score -> findings.

:class:`TwoStageNetwork` holds both networks as submodules: its ``state_dict`` is the detection
bundle's ``models/model.pt``. :class:`TwoStageDetector` is the callable MONAI Label's detection task
expects: ``detector(inputs, use_inferer=True)`` with a ``network`` attribute.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, fields
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from monai_lung.bundle_args import flag
from monai_lung.detection.candidates import extract_candidates
from monai_lung.detection.scoring import score_points
from monai_lung.detection.segment import (
    check_flip_axes, check_grid_spacing, inference_network, segment_probability, zoom_to_spacing,
)
from monai_lung.detection.sizing import measure_findings
from monai_lung.io.coords import voxel_spacing
from monai_lung.io.errors import DataError
from monai_lung.networks import resolve_device
from monai_lung.transforms.lung_mask import lung_masks
from monai_lung.transforms.preprocessing import DEFAULT_HU_WINDOW


#: final-score rules of :func:`final_score` (``DetectorConfig.score``)
FINAL_SCORES = ("odds_product", "product", "stage2", "stage1")

# float32 softmax outputs reach exactly 1.0 (and 0.0): clip before taking log-odds, so that a stage-1 peak of
# 1.0 does not make every other score irrelevant
_ODDS_EPS = 1e-7


def check_final_score(rule: str) -> None:
    """Refuse a final-score rule that is not one of :data:`FINAL_SCORES`."""
    if rule not in FINAL_SCORES:
        raise ValueError(f"score must be one of {', '.join(FINAL_SCORES)}, got {rule!r}")


def check_stage1_weight(weight: float) -> None:
    if not (np.isfinite(weight) and weight >= 0):
        raise ValueError(f"stage1_weight must be a finite number >= 0, got {weight!r}")


def final_score(stage1_peak, stage2_prob, rule: str = "odds_product", stage1_weight: float = 1.0) -> np.ndarray:
    """A finding's final probability from its stage-1 peak and stage-2 probability (arrays of equal shape, [0, 1]).

    Rules: ``"odds_product"``: sigmoid(stage1_weight * logit(stage1) + logit(stage2)); with weight 1 that is
    s1 s2 / (s1 s2 + (1 - s1)(1 - s2)), the two stages taken as independent evidence (each clipped to
    [1e-7, 1 - 1e-7]); ``"product"``: s1 s2; ``"stage2"``, ``"stage1"``: one stage alone (``stage1_weight``
    only affects odds_product). Returns float64 probabilities, same shape.
    """
    check_final_score(rule)
    check_stage1_weight(stage1_weight)
    s1 = np.asarray(stage1_peak, dtype=np.float64)
    s2 = np.asarray(stage2_prob, dtype=np.float64)
    if rule == "odds_product":
        def logit(p):
            p = np.clip(p, _ODDS_EPS, 1.0 - _ODDS_EPS)
            return np.log(p) - np.log1p(-p)

        return 1.0 / (1.0 + np.exp(-(float(stage1_weight) * logit(s1) + logit(s2))))
    if rule == "product":
        return s1 * s2
    if rule == "stage2":
        return s2.copy()
    return s1.copy()


@dataclass
class DetectorConfig:
    """Detection parameters. Units: mm for sizes and distances; ``roi_size`` in voxels of stage 1's grid
    (``seg_spacing``), ``crop_size`` in voxels of stage 2's (``cls_spacing``)."""

    hu_window: tuple[float, float] = DEFAULT_HU_WINDOW
    use_lung_mask: bool = True  # False: the sliding window covers the whole scan
    roi_size: tuple[int, int, int] = (96, 96, 96)  # the UNet is fully convolutional: trained on 48^3, run on 96^3
    overlap: float = 0.25
    sw_batch_size: int = 4
    blend_mode: str = "gaussian"
    # stage-1 test-time augmentation: the sliding window also runs on the scan flipped along these axes of the RAS
    # grid (0: left-right, 1: front-back, 2: up-down) and the probabilities are averaged; off by default because with
    # a strong stage 2 it costs a pass per axis for no measurable gain
    seg_flip_axes: tuple[int, ...] = ()
    # the grid stage 1 runs on, mm per (i, j, k) voxel (the 1 mm scan zoomed, trilinear; None: the 1 mm training
    # grid): zoomed, small nodules look larger to the UNet, which then misses fewer of them
    seg_spacing: tuple[float, float, float] | None = (0.75, 0.75, 0.75)
    # the grid stage 2 cuts its crop_size crops from (None: the 1 mm training grid): at 0.8 mm its 32^3 crops show
    # every nodule 1.25x larger, which separates the 3-5 mm ones from vessels better
    cls_spacing: tuple[float, float, float] | None = (0.8, 0.8, 0.8)
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
    # the stage-2 classifier's patch_size; the detection bundle must carry its classifier's, which `assemble` checks
    crop_size: tuple[int, int, int] = (32, 32, 32)
    cls_batch_size: int = 64
    tta: bool = True  # stage 2 averages 4 flips: steadier scores for 4x the stage-2 cost, which is small
    # final probability, one of FINAL_SCORES (see final_score). "odds_product" adds the two stages' log-odds, so a
    # stage that is sure outweighs one that hesitates; "product" caps the result at the weaker stage
    score: str = "odds_product"
    # odds_product's weight of the stage-1 log-odds (1: their plain sum): stage 2 sees the candidate's surroundings
    # and is the better judge, so stage 1 votes at half weight
    stage1_weight: float = 0.5
    min_probability: float = 0.0  # findings below this are not reported
    # how far (mm) a finding's measured segmentation may grow beyond its stage-1 component (monai_lung.detection.sizing)
    size_reach_mm: float = 2.0
    # the most probable findings get their size refined on the CT (twice what the report and the DICOM SR show by
    # default); the rest keep their stage-1 component's size, as refining each costs tens of milliseconds
    size_refine_top_k: int = 20
    amp: bool = True  # float16 autocast on CUDA
    device: str = "auto"  # where the networks run: "auto" (CUDA when present), "cpu", "cuda", "cuda:1"
    keep_volume_on_cpu: bool = True  # stitch sliding-window output in host memory (large scans on small GPUs)

    def __post_init__(self):
        # checked here, not at the first scan: a batch job would otherwise record every scan as failed
        for field in fields(self):
            if field.type in (bool, "bool"):  # an override of amp/tta/... may be the string "false"
                setattr(self, field.name, flag(getattr(self, field.name), field.name))
        check_flip_axes(self.seg_flip_axes, "seg_flip_axes")
        self.seg_spacing = check_grid_spacing(self.seg_spacing, "seg_spacing")
        self.cls_spacing = check_grid_spacing(self.cls_spacing, "cls_spacing")
        check_final_score(self.score)
        check_stage1_weight(self.stage1_weight)

    @classmethod
    def from_dict(cls, values: dict | None) -> "DetectorConfig":
        values = dict(values or {})
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown detector parameter(s): {', '.join(sorted(unknown))}")
        for key in ("hu_window", "roi_size", "crop_size", "seg_flip_axes", "seg_spacing", "cls_spacing"):
            if values.get(key) is not None:
                values[key] = tuple(values[key])
        return cls(**values)

    def to_dict(self) -> dict:
        return asdict(self)


class TwoStageNetwork(torch.nn.Module):
    """Both networks in one module: ``segmenter`` (stage-1 UNet, 2 classes) and ``classifier`` (stage-2
    ResNet on (B, 1, *crop_size) crops, 32^3 by default, 2 classes). Its ``forward`` is the segmenter's, so that tools that
    probe ``network(x)`` see a segmentation network."""

    def __init__(self, segmenter: torch.nn.Module, classifier: torch.nn.Module):
        super().__init__()
        self.segmenter = segmenter
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.segmenter(x)


def merge_close_candidates(frame: pd.DataFrame, distance_mm: float) -> pd.DataFrame:
    """Greedy non-maximum suppression in world mm: keep the highest ``peak_prob``, drop candidates within
    ``distance_mm`` of a kept one. ``frame`` has world ``coordX/Y/Z`` columns; order is kept."""
    if distance_mm <= 0 or len(frame) < 2:
        return frame
    from scipy.spatial import cKDTree

    frame = frame.sort_values("peak_prob", ascending=False, kind="stable").reset_index(drop=True)
    pts = frame[["coordX", "coordY", "coordZ"]].to_numpy(dtype=np.float64)
    # each candidate's neighbours closer than distance_mm, found once (a pairwise loop took seconds at ~1,000)
    neighbours = cKDTree(pts).query_ball_point(pts, r=distance_mm)
    suppressed = np.zeros(len(frame), dtype=bool)
    kept = []
    for i in range(len(frame)):  # strongest first; only a kept candidate suppresses others
        if suppressed[i]:
            continue
        kept.append(i)
        near = np.asarray(neighbours[i], dtype=np.int64)
        near = near[np.linalg.norm(pts[near] - pts[i], axis=1) < distance_mm]  # the ball includes the radius itself
        suppressed[near] = True
    return frame.iloc[kept].reset_index(drop=True)


def scan_lung_masks(image: torch.Tensor, spacing, cfg: DetectorConfig) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(window mask, candidate mask): (i, j, k) bool lung masks of a preprocessed (1, i, j, k) scan for
    where sliding windows run and where candidate centres may lie; None where the config turns them off."""
    if not cfg.use_lung_mask:
        return None, None
    margins = [cfg.window_lung_margin_mm]
    if cfg.candidate_lung_margin_mm is not None:
        margins.append(cfg.candidate_lung_margin_mm)
    masks = lung_masks(image, spacing, margins, hu_window=cfg.hu_window)
    return masks[0], (masks[1] if len(masks) > 1 else None)


def stage1_candidates(
    prob: np.ndarray, affine: np.ndarray, cfg: DetectorConfig, lung_core: np.ndarray | None = None, space: str = "RAS"
) -> pd.DataFrame:
    """Candidates of a stage-1 (i, j, k) probability map (grid ``affine``, world ``space``): components
    above ``cfg.seg_threshold`` with at least ``cfg.min_voxels`` voxels that reach into ``lung_core``
    (an (i, j, k) bool mask, None: anywhere), near-duplicates merged, the ``cfg.max_candidates`` with the
    highest peak probability. Columns: :data:`~monai_lung.detection.candidates.CANDIDATE_FIELDS`."""
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
    """

    candidates: pd.DataFrame
    prob: np.ndarray
    image: torch.Tensor
    affine: np.ndarray
    space: str
    lung_core: np.ndarray | None
    timings: dict


def run_stage1(segmenter: torch.nn.Module, image: torch.Tensor, cfg: DetectorConfig, device: torch.device | str = "cpu") -> Stage1Result:
    """Stage 1 of the detector on one preprocessed scan: zoom to ``cfg.seg_spacing``, lung masks, the sliding window
    over the lungs, then :func:`stage1_candidates`. The one stage-1 candidate generator: the detector, the hard-negative
    miner and the stage-1 benchmark all call it, so stage 2 trains on the false positives of the stage 1 it is
    deployed behind.

    Args:
        segmenter: the stage-1 UNet (2 classes), any mode (an inference copy is made).
        image: (1, i, j, k) MetaTensor on the training grid (1 mm, RAS), window-scaled to [0, 1].
        cfg: the detector's settings.
        device: where the network runs.
    """
    timings = {}
    space = str(image.meta.get("space", "RAS")) if hasattr(image, "meta") else "RAS"
    t = time.perf_counter()
    # stage 1 may run on its own grid (seg_spacing); candidates leave it as world mm, so stage 2 is unaffected
    seg_image = image if cfg.seg_spacing is None else zoom_to_spacing(image, cfg.seg_spacing)
    affine = seg_image.affine.numpy() if hasattr(seg_image, "affine") else np.eye(4)
    timings["stage1_grid"] = time.perf_counter() - t

    t = time.perf_counter()
    lung, lung_core = scan_lung_masks(seg_image, voxel_spacing(seg_image), cfg)
    timings["lung_mask"] = time.perf_counter() - t

    t = time.perf_counter()
    device = torch.device(device)
    prob = segment_probability(
        segmenter,
        seg_image,
        lung,
        roi_size=cfg.roi_size,
        sw_batch_size=cfg.sw_batch_size,
        overlap=cfg.overlap,
        mode=cfg.blend_mode,
        device="cpu" if cfg.keep_volume_on_cpu else device,
        sw_device=device,
        amp=cfg.amp,
        flip_axes=cfg.seg_flip_axes,
    )
    timings["sliding_window"] = time.perf_counter() - t

    t = time.perf_counter()
    cands = stage1_candidates(prob, affine, cfg, lung_core, space)
    timings["candidates"] = time.perf_counter() - t
    return Stage1Result(cands, prob, seg_image, affine, space, lung_core, timings)


def check_scan(image: torch.Tensor, source: str | None, min_shape: Sequence[int]) -> None:
    """Reject what the detector cannot run on: not 3D, NaN/inf voxels, smaller than a crop."""
    if image.ndim != 4 or image.shape[0] != 1:
        raise DataError(source, f"expected a single-channel 3D scan, got array shape {tuple(image.shape)}")
    if not torch.isfinite(image).all():
        raise DataError(source, "scan contains NaN or infinite voxels")
    if any(s < m for s, m in zip(image.shape[1:], min_shape)):
        raise DataError(source, f"scan is smaller than a {tuple(min_shape)} patch after resampling: {tuple(image.shape[1:])} voxels")


class TwoStageDetector:
    """Callable detector over preprocessed scans (see the module docstring).

    Args:
        network: a :class:`TwoStageNetwork` (weights loaded).
        config: :class:`DetectorConfig` or a dict of its fields.
    """

    def __init__(self, network: TwoStageNetwork, config: DetectorConfig | dict | None = None):
        self.config = config if isinstance(config, DetectorConfig) else DetectorConfig.from_dict(config)
        self.device = resolve_device(self.config.device)
        self.network = network

    @property
    def network(self) -> TwoStageNetwork:
        return self._network

    @network.setter
    def network(self, network: TwoStageNetwork) -> None:
        # MONAI Label assigns the network it loaded from model.pt; keep it on our device, in eval mode
        self._network = network.to(self.device).eval()

    def eval(self) -> "TwoStageDetector":
        self._network.eval()
        return self

    @torch.no_grad()
    def detect(self, image: torch.Tensor) -> dict:
        """Detect nodules in one preprocessed scan.

        Args:
            image: (1, i, j, k) MetaTensor: CT on the training grid (1 mm, RAS), window-scaled to [0, 1]
                (what ``ct_preprocessing`` or the bundle's ``preprocessing`` returns); its ``affine`` maps to
                world mm.

        Returns:
            ``{"findings": DataFrame(coordX, coordY, coordZ [world LPS mm], diameter_mm, volume_mm3,
            longest_axial_mm, probability, stage1_peak, stage2_prob, mask, ...) sorted by probability,
            "num_candidates": int, "timings_s": {"stage1_grid", "lung_mask", "sliding_window", "candidates",
            "stage2_grid", "classification", "sizing"}, "mask_affine": 4x4, "mask_space": str}``. Sizes are the measured
            segmentation's (:mod:`monai_lung.detection.sizing`: equivalent-sphere diameter, volume, longest axial
            diameter, mm), refined on the CT for the ``size_refine_top_k`` most probable findings and the stage-1
            component's for the others; ``mask`` is ``(lo, bool crop)``, the segmentation in (i, j, k) voxels of the stage-1 grid
            (``mask_affine``, world ``mask_space``) offset by ``lo``.
        """
        cfg = self.config
        source = image.meta.get("filename_or_obj") if hasattr(image, "meta") else None
        check_scan(image, source, cfg.crop_size)
        stage1 = run_stage1(self.network.segmenter, image, cfg, self.device)
        cands, prob, seg_image, affine, space = stage1.candidates, stage1.prob, stage1.image, stage1.affine, stage1.space
        timings = dict(stage1.timings)

        del stage1

        t = time.perf_counter()
        # stage 2's own grid (cls_spacing): the candidates are world mm, so any grid over the same scan will do;
        # the stage-1 grid stays for sizing the findings after stage 2
        if cfg.cls_spacing is not None and cfg.cls_spacing == cfg.seg_spacing:
            cls_image = seg_image  # one zoom serves both stages
        else:
            cls_image = image if cfg.cls_spacing is None else zoom_to_spacing(image, cfg.cls_spacing)
        timings["stage2_grid"] = time.perf_counter() - t

        t = time.perf_counter()
        points = cands[["coordX", "coordY", "coordZ"]].to_numpy(dtype=np.float64)
        if len(points):
            p2 = score_points(
                inference_network(self.network.classifier, self.device), cls_image, points, batch_size=cfg.cls_batch_size, device=self.device,
                amp=cfg.amp, tta=cfg.tta, crop_size=cfg.crop_size,
            )
        else:
            p2 = np.zeros(0)
        timings["classification"] = time.perf_counter() - t

        findings = cands.rename(columns={"peak_prob": "stage1_peak"})
        findings["stage2_prob"] = np.asarray(p2, dtype=np.float64)
        findings["probability"] = final_score(findings["stage1_peak"].to_numpy(), findings["stage2_prob"].to_numpy(), cfg.score, cfg.stage1_weight)
        findings = findings[findings["probability"] >= cfg.min_probability]
        findings = findings.sort_values("probability", ascending=False, kind="stable").reset_index(drop=True)
        del cls_image

        t = time.perf_counter()
        # sizes of the reported findings (HU from the windowed stage-1 image); masks stay on the stage-1 grid
        lo_hu, hi_hu = cfg.hu_window
        window = seg_image[0]
        sizes, masks = measure_findings(
            prob, lambda sl: lo_hu + (hi_hu - lo_hu) * np.asarray(window[sl], dtype=np.float32), affine, findings,
            cfg.seg_threshold, cfg.size_reach_mm, refine=np.arange(len(findings)) < cfg.size_refine_top_k,
        )
        findings = findings.assign(**sizes, mask=pd.Series(masks, index=findings.index, dtype=object))
        timings["sizing"] = time.perf_counter() - t
        return {"findings": findings, "num_candidates": int(len(cands)), "timings_s": timings, "mask_affine": affine, "mask_space": space}

    def __call__(self, inputs, use_inferer: bool = True) -> list[dict]:
        """MONAI Label's detection interface: ``inputs`` a (B, 1, i, j, k) batch or a list of (1, i, j, k)
        MetaTensors. Returns per image ``{"box": (N, 6) world mm [x, y, z, size_x, size_y, size_z] (centre
        in ITK/LPS like LUNA16, cube of the finding's diameter), "label": (N,) zeros (class "nodule"),
        "label_scores": (N,) probabilities}`` as float32 tensors. ``use_inferer`` is accepted for
        compatibility: the sliding window is always used."""
        images = list(inputs) if not isinstance(inputs, torch.Tensor) or inputs.ndim == 5 else [inputs]
        results = []
        for image in images:
            found = self.detect(image)["findings"]
            centre = found[["coordX", "coordY", "coordZ"]].to_numpy(dtype=np.float32).reshape(-1, 3)
            size = np.repeat(found["diameter_mm"].to_numpy(dtype=np.float32)[:, None], 3, axis=1)
            results.append(
                {
                    "box": torch.from_numpy(np.concatenate([centre, size], axis=1)),
                    "label": torch.zeros(len(found), dtype=torch.long),
                    "label_scores": torch.from_numpy(found["probability"].to_numpy(dtype=np.float32)),
                }
            )
        return results
