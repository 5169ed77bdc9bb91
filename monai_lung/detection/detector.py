"""The two-stage detector: preprocessed CT in, scored nodule findings in world millimetres out.

Pipeline per scan (every knob lives in :class:`DetectorConfig`):
zoom to stage 1's grid (0.75 mm) -> lung mask -> stage-1 UNet sliding window over the lungs -> candidates
(components of the probability map, as world mm) -> merge near-duplicates -> zoom to stage 2's grid (0.8 mm)
-> 32^3 crops around the candidates -> batched stage-2 ResNet -> final score -> findings, measured
(:mod:`~monai_lung.detection.sizing`) and returned as :class:`~monai_lung.findings.record.Finding` records.

:class:`TwoStageNetwork` holds both networks as submodules: its ``state_dict`` is the detection
bundle's ``models/model.pt``. :class:`TwoStageDetector` is the callable MONAI Label's detection task
expects: ``detector(inputs, use_inferer=True)`` with a ``network`` attribute.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from monai_lung.stage2.scoring import score_points
from monai_lung.detection.masses import type_masses
from monai_lung.detection.sizing import measure_findings, size_band_lungrads_2022
from monai_lung.domain import scan_domain
from monai_lung.findings import Finding, FindingMask, ScanResult
from monai_lung.io.errors import DataError
from monai_lung.networks import inference_network, resolve_device
from monai_lung.stage1 import Stage1Config, run_stage1
from monai_lung.transforms.zoom import check_grid_spacing, zoom_to_spacing


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
class DetectorConfig(Stage1Config):
    """Detection parameters: stage 1's (:class:`~monai_lung.stage1.config.Stage1Config`, inherited) and those of
    stage 2, the final score and sizing. Units: mm for sizes and distances; ``crop_size`` in voxels of stage 2's
    grid (``stage2_spacing``)."""

    # the grid stage 2 cuts its crop_size crops from (None: the 1 mm training grid): at 0.8 mm its 32^3 crops show
    # every nodule 1.25x larger, which separates the 3-5 mm ones from vessels better
    stage2_spacing: tuple[float, float, float] | None = (0.8, 0.8, 0.8)
    # the stage-2 classifier's patch_size; the detection bundle must carry its classifier's, which `assemble` checks
    crop_size: tuple[int, int, int] = (32, 32, 32)
    stage2_batch_size: int = 64
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

    TUPLE_FIELDS = (*Stage1Config.TUPLE_FIELDS, "crop_size", "stage2_spacing")

    def __post_init__(self):
        super().__post_init__()
        self.stage2_spacing = check_grid_spacing(self.stage2_spacing, "stage2_spacing")
        check_final_score(self.score)
        check_stage1_weight(self.stage1_weight)


class TwoStageNetwork(torch.nn.Module):
    """Both networks in one module: ``segmenter`` (stage-1 UNet, 2 classes) and ``classifier`` (stage-2
    ResNet on (B, 1, *crop_size) crops, 32^3 by default, 2 classes; the name is its weights' prefix in the detection
    bundle's ``model.pt``). Its ``forward`` is the segmenter's, so that tools that probe ``network(x)`` see a
    segmentation network."""

    def __init__(self, segmenter: torch.nn.Module, classifier: torch.nn.Module):
        super().__init__()
        self.segmenter = segmenter
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.segmenter(x)


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
    def detect(self, image: torch.Tensor, known_facts: dict | None = None) -> ScanResult:
        """Detect nodules in one preprocessed scan.

        Args:
            image: (1, i, j, k) MetaTensor: CT on the training grid (1 mm, RAS), window-scaled to [0, 1]
                (what ``ct_preprocessing`` or the bundle's ``preprocessing`` returns); its ``affine`` maps to
                world mm.
            known_facts: what else is known of the scan for the domain check, e.g. its DICOM series'
                (:func:`monai_lung.domain.dicom_facts`).

        Returns:
            A :class:`~monai_lung.findings.record.ScanResult`: its findings sorted by probability (centres world LPS
            mm), ``num_candidates``, ``grid_shape`` (the input's) and ``timings_s`` (``stage1_grid``, ``lung_mask``,
            ``sliding_window``, ``candidates``, ``domain``, ``stage2_grid``, ``stage2``, ``sizing``, ``masses``), the
            domain check (``validated_range``, ``domain``, a warning per reason the scan lies outside the validated
            range: :mod:`monai_lung.domain`). Sizes are the measured segmentation's (:mod:`monai_lung.detection.sizing`:
            equivalent-sphere diameter, volume, longest axial diameter, mm), refined on the CT for the
            ``size_refine_top_k`` most probable findings and the stage-1 component's for the others; among those, a
            lesion over 30 mm is a ``kind="mass"`` sized from its own segmentation (:mod:`monai_lung.detection.masses`,
            the other findings on it folded in); each finding's ``mask`` is its segmentation on a crop of the stage-1
            grid.
        """
        cfg = self.config
        source = image.meta.get("filename_or_obj") if hasattr(image, "meta") else None
        check_scan(image, source, cfg.crop_size)
        stage1 = run_stage1(self.network.segmenter, image, cfg, self.device, lungs=True)
        cands, prob, seg_image, affine, space = stage1.candidates, stage1.prob, stage1.image, stage1.affine, stage1.space
        lungs = stage1.lungs
        timings = dict(stage1.timings)
        t = time.perf_counter()
        domain = scan_domain(image, lungs, affine, known_facts)
        timings["domain"] = time.perf_counter() - t

        del stage1

        t = time.perf_counter()
        # stage 2's own grid (stage2_spacing): the candidates are world mm, so any grid over the same scan will do;
        # the stage-1 grid stays for sizing the findings after stage 2
        if cfg.stage2_spacing is not None and cfg.stage2_spacing == cfg.seg_spacing:
            stage2_image = seg_image  # one zoom serves both stages
        else:
            stage2_image = image if cfg.stage2_spacing is None else zoom_to_spacing(image, cfg.stage2_spacing)
        timings["stage2_grid"] = time.perf_counter() - t

        t = time.perf_counter()
        points = cands[["coordX", "coordY", "coordZ"]].to_numpy(dtype=np.float64)
        if len(points):
            p2 = score_points(
                inference_network(self.network.classifier, self.device), stage2_image, points, batch_size=cfg.stage2_batch_size, device=self.device,
                amp=cfg.amp, tta=cfg.tta, crop_size=cfg.crop_size,
            )
        else:
            p2 = np.zeros(0)
        timings["stage2"] = time.perf_counter() - t

        findings = cands.rename(columns={"peak_prob": "stage1_peak"})
        findings["stage2_prob"] = np.asarray(p2, dtype=np.float64)
        findings["probability"] = final_score(findings["stage1_peak"].to_numpy(), findings["stage2_prob"].to_numpy(), cfg.score, cfg.stage1_weight)
        findings = findings[findings["probability"] >= cfg.min_probability]
        findings = findings.sort_values("probability", ascending=False, kind="stable").reset_index(drop=True)
        del stage2_image

        t = time.perf_counter()
        # sizes of the reported findings (HU from the windowed stage-1 image); masks stay on the stage-1 grid
        lo_hu, hi_hu = cfg.hu_window
        window = seg_image[0]

        def hu(sl):
            return lo_hu + (hi_hu - lo_hu) * np.asarray(window[sl], dtype=np.float32)

        sizes, masks = measure_findings(
            prob, hu, affine, findings,
            cfg.seg_threshold, cfg.size_reach_mm, refine=np.arange(len(findings)) < cfg.size_refine_top_k,
        )
        records = [
            Finding(
                coord=(r.coordX, r.coordY, r.coordZ), probability=float(r.probability), stage1_peak=float(r.stage1_peak),
                stage2_prob=float(r.stage2_prob), diameter_mm=float(sizes["diameter_mm"][n]), volume_mm3=float(sizes["volume_mm3"][n]),
                longest_axial_mm=float(sizes["longest_axial_mm"][n]),
                size_band_lungrads_v2022=size_band_lungrads_2022(float(sizes["volume_mm3"][n])),
                mask=FindingMask(mask, affine @ _shift(lo), space),
            )
            for n, (r, (lo, mask)) in enumerate(zip(findings.itertuples(), masks))
        ]
        timings["sizing"] = time.perf_counter() - t
        t = time.perf_counter()
        records = type_masses(records, hu, lungs, affine, space, cfg.size_refine_top_k)
        timings["masses"] = time.perf_counter() - t
        return ScanResult(
            records, num_candidates=int(len(cands)), timings_s=timings, grid_shape=list(image.shape[1:]),
            warnings=[f"outside the validated range: {reason}" for reason in domain.warnings],
            validated_range="inside" if domain.in_range else "outside", domain=domain.as_dict(),
        )

    def __call__(self, inputs, use_inferer: bool = True) -> list[dict]:
        """MONAI Label's detection interface: ``inputs`` a (B, 1, i, j, k) batch or a list of (1, i, j, k)
        MetaTensors. Returns per image ``{"box": (N, 6) world mm [x, y, z, size_x, size_y, size_z] (centre
        in ITK/LPS like LUNA16, cube of the finding's diameter), "label": (N,) zeros (class "nodule"),
        "label_scores": (N,) probabilities}`` as float32 tensors. ``use_inferer`` is accepted for
        compatibility: the sliding window is always used."""
        images = list(inputs) if not isinstance(inputs, torch.Tensor) or inputs.ndim == 5 else [inputs]
        results = []
        for image in images:
            found = self.detect(image).findings
            results.append(
                {
                    "box": torch.tensor([f.box for f in found], dtype=torch.float32).reshape(-1, 6),
                    "label": torch.zeros(len(found), dtype=torch.long),
                    "label_scores": torch.tensor([f.probability for f in found], dtype=torch.float32),
                }
            )
        return results


def _shift(lo) -> np.ndarray:
    """The 4x4 matrix moving index (0, 0, 0) to ``lo``: a crop's affine is its grid's affine times this."""
    shift = np.eye(4)
    shift[:3, 3] = np.asarray(lo, dtype=np.float64)
    return shift
