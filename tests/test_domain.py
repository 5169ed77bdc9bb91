"""monai_lung.domain: the validated range, and the check of a scan's header, DICOM series and lung mask against it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.dataset import Dataset

from monai_lung.domain import (
    VALIDATED_RANGE, ScanFacts, check_domain, dicom_facts, geometry_facts, image_facts, lung_facts, range_table_markdown,
)
from monai_lung.io.errors import DataError
from monai_lung.transforms import ct_preprocessing, lung_masks
from tests.conftest import rotation_direction

REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / "shared" / "real_ct"
needs_real = pytest.mark.skipif(not REAL.is_dir(), reason="../shared/real_ct (the shared real scans) is absent")


def _chest_lungs(shape=(100, 90, 120), spacing=(3.0, 3.0, 3.0), z_range=None) -> np.ndarray:
    """(i, j, k) bool: two lung ellipsoids (about 2 x 2 L) on a grid of ``spacing`` mm, k towards the head;
    ``z_range`` (k0, k1) keeps only those slices (a scan that cuts the lungs off)."""
    i, j, k = np.meshgrid(*[(np.arange(n) - n / 2 + 0.5) * s for n, s in zip(shape, spacing)], indexing="ij")
    lungs = np.zeros(shape, dtype=bool)
    for cx in (-70.0, 70.0):
        lungs |= ((i - cx) / 55.0) ** 2 + (j / 80.0) ** 2 + (k / 120.0) ** 2 <= 1.0
    if z_range is not None:
        lungs = lungs[:, :, z_range[0]:z_range[1]]
    return lungs


def test_geometry_facts_read_the_source_grid_in_any_orientation():
    affine = np.eye(4)
    # a flipped, rotated grid whose slice axis is the first index axis: steps are column lengths
    affine[:3, :3] = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]]) @ np.diag([5.0, 0.7, 0.8])
    facts = geometry_facts(affine)
    assert facts["slice_step_mm"] == pytest.approx(5.0)
    assert facts["pixel_spacing_mm"] == pytest.approx((0.7, 0.8))
    tilted = np.eye(4)
    tilted[:3, :3] = rotation_direction(25.0) @ np.diag([0.6, 0.9, 2.0])
    assert geometry_facts(tilted)["slice_step_mm"] == pytest.approx(2.0)


def test_an_in_range_scan_has_no_warning_and_each_reason_is_named():
    lungs = _chest_lungs()
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    good = ScanFacts.from_parts({"slice_step_mm": 1.25, "pixel_spacing_mm": (0.7, 0.7)}, {"kernel": "B30f", "slice_thickness_mm": 1.25},
                                lung_facts(lungs, affine))
    assert good.lung_volume_l == pytest.approx(2 * 4 / 3 * np.pi * 55 * 80 * 120 / 1e6, rel=0.05)
    assert good.lung_cut == ()
    check = check_domain(good)
    assert check.in_range and check.warnings == [] and check.summary() == "in the validated range"

    thick = check_domain(ScanFacts(**{**good.__dict__, "slice_step_mm": 5.0, "slice_thickness_mm": 5.0}))
    assert not thick.in_range and len(thick.warnings) == 2
    assert "slice step 5.00 mm" in thick.warnings[0] and "slice thickness 5.00 mm" in thick.warnings[1]
    # a 5 mm thick reconstruction at a 2.5 mm step is outside by its thickness alone
    overlapping = check_domain(ScanFacts(**{**good.__dict__, "slice_step_mm": 2.5, "slice_thickness_mm": 5.0}))
    assert overlapping.warnings == [w for w in overlapping.warnings if "thickness" in w] and len(overlapping.warnings) == 1
    coarse = check_domain(ScanFacts(**{**good.__dict__, "pixel_spacing_mm": (1.2, 1.2)}))
    assert len(coarse.warnings) == 1 and "pixel spacing" in coarse.warnings[0]
    head = check_domain(ScanFacts(**{**good.__dict__, "kernel": "H30s"}))
    assert len(head.warnings) == 1 and "'H30s'" in head.warnings[0]
    data = thick.as_dict()
    assert data["in_range"] is False and data["facts"]["slice_step_mm"] == 5.0 and data["validated_range"]["slice_step_mm"] == [0.5, 2.5]


@pytest.mark.parametrize("kernel", ["STANDARD", "LUNG", "B45f", "Br40d\\3", "C", "YC", "FC51", "FC10"])
def test_kernels_of_the_validated_families(kernel):
    assert VALIDATED_RANGE.kernel_family(kernel) is not None


@pytest.mark.parametrize("kernel", ["H30s", "FC26", "UB", ""])
def test_kernels_outside_the_validated_families(kernel):
    assert VALIDATED_RANGE.kernel_family(kernel) is None


def test_a_scan_that_cuts_off_the_apex_or_the_base_or_holds_little_lung_is_flagged():
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    # the whole chest spans k 0..119; lungs from about k 20 to k 100 (k grows towards the head)
    no_apex = lung_facts(_chest_lungs(z_range=(0, 80)), affine)
    assert no_apex["lung_cut"] == ("apex",) and no_apex["lung_border_fraction"][1] > 0.5
    flipped = affine.copy()
    flipped[2, 2] = -3.0  # k grows towards the feet: the same mask now ends at the base
    assert lung_facts(_chest_lungs(z_range=(0, 80)), flipped)["lung_cut"] == ("base",)
    check = check_domain(ScanFacts(slice_step_mm=1.0, **no_apex))
    assert len(check.warnings) == 1 and "cuts off the lung apex" in check.warnings[0]
    small = lung_facts(_chest_lungs(z_range=(0, 30)), affine)  # the lung bases of an abdominal scan
    warnings = check_domain(ScanFacts(**small)).warnings
    assert any("lung volume" in w and "not a chest CT" in w for w in warnings) and any("apex" in w for w in warnings)
    empty = lung_facts(np.zeros((20, 20, 20), bool), affine)
    assert empty["lung_volume_l"] == 0.0 and set(empty["lung_cut"]) == {"apex", "base"}


def test_dicom_facts_read_thickness_kernel_and_contrast():
    def slice_ds(**values):
        ds = Dataset()
        for k, v in values.items():
            setattr(ds, k, v)
        return ds

    facts = dicom_facts([slice_ds(SliceThickness="5.0", ConvolutionKernel="B", ContrastBolusAgent="Omnipaque 350") for _ in range(3)])
    assert facts == {"slice_thickness_mm": 5.0, "kernel": "B", "contrast_agent": "Omnipaque 350"}
    assert dicom_facts([slice_ds(ContrastBolusAgent="NONE")])["contrast_agent"] == ""
    assert dicom_facts([slice_ds(ContrastBolusAgent="")]) == {}  # an empty type-2 value does not tell
    assert dicom_facts([slice_ds(ConvolutionKernel=["Br40d", "3"])])["kernel"] == "Br40d\\3"
    # enhanced CT is inside the validated range (LIDC-IDRI holds both): recorded, not a warning
    assert check_domain(ScanFacts(slice_step_mm=1.0, contrast_agent="IV")).in_range


def test_the_validated_range_in_docs_is_the_codes():
    assert range_table_markdown() in (REPO / "docs" / "outputs.md").read_text(encoding="utf-8")


def _real_scan_check(path, datasets=None):
    image = ct_preprocessing()({"image": str(path)})["image"]
    lung = lung_masks(image, (1.0, 1.0, 1.0), (0.0,))[0]
    parts = [image_facts(image), dicom_facts(datasets or []), lung_facts(lung, image.affine.numpy())]
    return check_domain(ScanFacts.from_parts(*parts))


@needs_real
def test_the_real_lidc_scan_is_in_range_and_the_abdominal_ct_is_flagged():
    folder = REAL / "LIDC-IDRI-0001" / "dicom"
    datasets = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(folder.iterdir())[:5]]
    lidc = _real_scan_check(folder, datasets)
    assert lidc.in_range, lidc.warnings
    assert lidc.facts.slice_step_mm == pytest.approx(2.5, abs=0.01) and lidc.facts.pixel_spacing_mm == pytest.approx((0.703125, 0.703125))
    assert lidc.facts.kernel == "STANDARD" and lidc.facts.contrast_agent == "IV" and 2.5 < lidc.facts.lung_volume_l < 6.0

    abdomen = _real_scan_check(REAL / "abdomen_ct_3mm.nii.gz")
    assert not abdomen.in_range
    text = " | ".join(abdomen.warnings)
    assert "slice step 3.00 mm" in text and "pixel spacing" in text and "apex" in text and "lung volume" in text


def test_every_scan_result_carries_its_domain_check_and_strict_domain_refuses(tmp_path):
    import json

    import torch

    from monai_lung.detection.batch import items_from_paths, run_batch, scan_steps
    from monai_lung.detection.detector import TwoStageDetector
    from monai_lung.networks import bundle_parser
    from monai_lung.synthetic import generate_dataset

    generate_dataset(tmp_path / "data", num_scans=1, seed=5, size=64, num_subsets=1)  # a miniature chest: little lung
    items = items_from_paths(sorted((tmp_path / "data").glob("subset0/*.mhd")))
    parser = bundle_parser(REPO / "bundles" / "lung_nodule_ct_two_stage_detection")
    torch.manual_seed(0)
    detector = TwoStageDetector(parser.get_parsed_content("network_def"), {**parser.get_parsed_content("detector_config"), "device": "cpu"})
    preprocess = ct_preprocessing()
    known = {"kernel": "H30s"}  # what a DICOM series would add
    prepare, detect = scan_steps(detector, preprocess, scan_facts=lambda item: known)
    stats = run_batch(detect, items, tmp_path / "out" / "preds.csv", progress=False, prepare=prepare)
    assert stats["processed"] == 1
    result = json.loads(next((tmp_path / "out" / "preds_scans").glob("*.json")).read_text())
    assert result["validated_range"] == "outside" and result["domain"]["in_range"] is False
    assert result["domain"]["facts"]["kernel"] == "H30s" and result["domain"]["facts"]["lung_volume_l"] < 1.5
    assert any("'H30s'" in w for w in result["warnings"]) and any("lung volume" in w for w in result["warnings"])
    assert all(w.startswith("outside the validated range: ") for w in result["warnings"])
    assert "domain" in result["timings_s"]

    prepare, detect = scan_steps(detector, preprocess, scan_facts=lambda item: {}, strict_domain=True)
    stats = run_batch(detect, items, tmp_path / "strict" / "preds.csv", progress=False, prepare=prepare)
    assert stats["failed"] == 1 and stats["processed"] == 0
    failures = pd.read_csv(tmp_path / "strict" / "preds_failures.csv")
    assert "outside the validated range (--strict-domain)" in failures["error"][0] and "lung volume" in failures["error"][0]
    # a header already outside the range is refused before detection
    prepare, _ = scan_steps(detector, preprocess, scan_facts=lambda item: {"slice_thickness_mm": 5.0}, strict_domain=True)
    with pytest.raises(DataError, match="slice thickness 5.00 mm"):
        prepare(items[0])
