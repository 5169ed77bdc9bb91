"""Clinical attributes of a scan's findings: type, calcification, sizes as Lung-RADS measures them, location.

:func:`describe_finding` is the whole measurement of one finding, from the scan's CT (:class:`~.ct.ScanCT`), its
lungs (:class:`~.location.Lungs`) and the finding's centre (world LPS mm) and, when the detector gave one, its mask.
:func:`describe_scan` fills the finding record's clinical attributes (type, calcified, mean diameter, solid component,
side, zone, pleura, Lung-RADS v2022 at a baseline exam) of a scan's findings at the operating point
(:data:`DEFAULT_THRESHOLD`), and the exam's category; ``monai-lung detect`` runs it on every scan
(:mod:`monai_lung.findings.steps`). Findings below the operating point stay "not determined": they are not the
findings a screening programme acts on, and measuring each costs a fifth of a second.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from monai_lung.clinical.composition import Composition, _reach_mm, nodule_composition
from monai_lung.clinical.ct import ScanCT, crop_spacing_mm, sample_mask, to_lps_affine
from monai_lung.clinical.location import Lungs, side_and_zone, touches_pleura
from monai_lung.findings import FindingMask

#: the operating point: the probability that gives about one false positive per scan on held-out phantoms with the
#: demo recipe's detector (its two stages' odds product puts most false positives above 0.9: docs/experiments.md);
#: findings at or above it are described and counted in the exam
DEFAULT_THRESHOLD = 0.988
#: at most this many findings of a scan are described (the report and the DICOM SR show ten by default)
MAX_DESCRIBED = 10
#: context (mm) around a finding's reach in its crop: the lung the composition rule compares it with
CONTEXT_MM = 8.0
#: the largest diameter (mm) a crop is sized for: Lung-RADS nodules end at 30 mm
MAX_DIAMETER_MM = 40.0


@dataclass
class Described:
    """One finding measured: :class:`~.composition.Composition` plus location; ``crop``/``crop_affine`` the CT around
    it (for pictures)."""

    composition: Composition
    side: str
    zone: str
    pleural: bool
    crop: np.ndarray = field(repr=False)
    crop_affine: np.ndarray = field(repr=False)

    def summary(self) -> dict:
        return {**self.composition.summary(), "side": self.side, "zone": self.zone, "touches_pleura": bool(self.pleural)}


def point_seed(hu: np.ndarray, affine: np.ndarray, centre_lps, diameter_mm: float) -> np.ndarray:
    """A seed for a finding known only by its centre and diameter: the ball of 0.45 of its diameter (0.75 mm at least)
    around the centre, less what is lung (below -650 HU) unless nothing else is left: the detector's refinement
    (:func:`~monai_lung.detection.sizing.refine_mask`) grows a solid nodule's seed by 2 mm at most."""
    affine = np.asarray(affine, dtype=np.float64)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in hu.shape], indexing="ij"), axis=-1)
    dist = np.linalg.norm(grid @ affine[:3, :3].T + affine[:3, 3] - np.asarray(centre_lps, dtype=np.float64), axis=-1)
    ball = dist <= max(0.45 * float(diameter_mm), 0.75)
    if not ball.any():
        ball = dist == dist.min()
    seed = ball & (np.asarray(hu) >= -650.0)
    return seed if seed.any() else ball


def describe_finding(ct: ScanCT, lungs: Lungs, centre_lps, diameter_mm: float, mask: FindingMask | None = None,
                     blur_mm=None) -> Described:
    """Measure one finding (centre world LPS mm, the detector's diameter estimate in mm, its mask if any: a
    :class:`~monai_lung.findings.FindingMask`, on any grid). ``blur_mm``: the partial-volume width to assume (world
    x, y, z; default the scan's own, :meth:`~.ct.ScanCT.blur_mm`)."""
    diameter = float(np.clip(diameter_mm, 3.0, MAX_DIAMETER_MM))  # a mass beyond 40 mm is measured within that reach
    spacing = crop_spacing_mm(diameter)
    half = 0.5 * diameter + _reach_mm(diameter) + CONTEXT_MM
    hu, affine = ct.crop(centre_lps, half, spacing)
    seed = None
    if mask is not None and np.any(mask.array):
        mask_affine = to_lps_affine(mask.affine, mask.space)
        seed = sample_mask(mask.array, mask_affine, affine, hu.shape)
        if not seed.any():  # a mask thinner than the crop's voxels: the voxel at its centroid
            centroid = mask_affine @ np.append(np.argwhere(mask.array).mean(axis=0), 1.0)
            seed = point_seed(hu, affine, centroid[:3], spacing)
    if seed is None:
        seed = point_seed(hu, affine, centre_lps, diameter)
    outside = ~sample_mask(lungs.mask, lungs.affine, affine, hu.shape) if lungs.found() else None
    comp = nodule_composition(hu, affine, seed, ct.blur_mm() if blur_mm is None else blur_mm, outside)
    side, zone = side_and_zone(lungs, centre_lps)
    return Described(comp, side, zone, touches_pleura(hu, affine, comp.mask, lungs), hu, affine)


def facts_of(described: Described):
    """The Lung-RADS facts (:class:`~.lungrads.NoduleFacts`, at a baseline exam) of a measured finding."""
    from monai_lung.clinical.lungrads import NoduleFacts

    c = described.composition
    return NoduleFacts(c.type, c.mean_diameter_mm, c.volume_mm3, c.solid_mean_diameter_mm, c.solid_volume_mm3,
                       c.calcified, c.calcification, described.pleural)


def fill_finding(finding, described: Described, assessment) -> None:
    """Copy a measurement and its Lung-RADS assessment into a :class:`~monai_lung.findings.Finding`'s attributes."""
    c = described.composition
    finding.type, finding.calcified, finding.calcification = c.type, "true" if c.calcified else "false", c.calcification
    finding.mean_diameter_mm = c.mean_diameter_mm
    part = c.type == "part-solid"
    finding.solid_volume_mm3 = round(c.solid_volume_mm3, 1) if part else None
    finding.solid_mean_diameter_mm = c.solid_mean_diameter_mm if part else None
    finding.side, finding.zone, finding.touches_pleura = described.side, described.zone, "true" if described.pleural else "false"
    finding.lungrads = assessment.category or "" if assessment is not None else ""
    finding.lungrads_review = [r["id"] for r in assessment.review] if assessment is not None else []


def describe_scan(scan, image: str, threshold: float = DEFAULT_THRESHOLD, max_findings: int = MAX_DESCRIBED) -> None:
    """Fill the clinical attributes of ``scan``'s (a :class:`~monai_lung.findings.ScanResult`, findings sorted by
    probability) findings at or above ``threshold`` (at most ``max_findings``) from the CT at ``image``, and
    ``scan.lungrads_exam``. A scan whose CT cannot be measured keeps its findings and gets a warning instead."""
    from monai_lung.clinical.location import find_lungs
    from monai_lung.clinical.lungrads import assess, exam_category

    chosen = [f for f in scan.findings[:max_findings] if f.probability >= threshold]
    assessments = []
    if chosen:
        try:
            ct = ScanCT.read(image)
            lungs = find_lungs(*ct.coarse())
            for f in chosen:
                described = describe_finding(ct, lungs, f.coord, f.diameter_mm, f.mask)
                assessment = assess(facts_of(described))
                fill_finding(f, described, assessment)
                assessments.append(assessment)
        except Exception as err:  # the type of a finding must not cost its detection
            scan.warnings = [*scan.warnings, f"nodule type, location and Lung-RADS not determined: {type(err).__name__}: {err}"]
            return
    scan.lungrads_exam = exam_category(assessments)["category"]
