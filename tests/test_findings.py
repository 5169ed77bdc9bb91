"""The finding record: one form from the detector to every output, and an attribute declared once reaching them all."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest

from monai_lung.findings import Finding, FindingMask, ScanResult, SRCode, attribute, csv_columns, report_items, sr_items
from monai_lung.report.slicer import finding_points
from tests.bundle_utils import REPO

LIDC = REPO.parent / "shared" / "real_ct" / "LIDC-IDRI-0001"


def _finding(**changes) -> Finding:
    values = dict(coord=(56.2, 86.3, -115.9), probability=0.93, stage1_peak=0.999, stage2_prob=0.8, diameter_mm=8.04,
                  volume_mm3=272.0, longest_axial_mm=9.51, size_band_lungrads_v2022="8-<15 mm")
    return Finding(**{**values, **changes})


def test_json_round_trip_box_and_csv_row():
    f = _finding()
    data = json.loads(json.dumps(f.to_json()))  # through a file's text
    assert data["coord"] == [56.2, 86.3, -115.9] and data["box"] == [56.2, 86.3, -115.9, 8.04, 8.04, 8.04]
    assert Finding.from_json(data) == f and f.box == tuple(data["box"])
    assert csv_columns() == ["seriesuid", "coordX", "coordY", "coordZ", "probability", "diameter_mm", "volume_mm3", "longest_axial_mm",
                             "type", "calcified"]
    assert f.csv_row("1.2") == {"seriesuid": "1.2", "coordX": 56.2, "coordY": 86.3, "coordZ": -115.9, "probability": 0.93,
                                "diameter_mm": 8.04, "volume_mm3": 272.0, "longest_axial_mm": 9.51, "type": "", "calcified": ""}
    # a ledger written before an attribute existed still loads: the attribute takes its default
    old = {"coord": [1, 2, 3], "probability": 0.5, "diameter_mm": 6.0, "box": [1, 2, 3, 6, 6, 6]}
    loaded = Finding.from_json(old)
    assert loaded.kind == "nodule" and math.isnan(loaded.volume_mm3) and loaded.coord == (1.0, 2.0, 3.0)
    scan = ScanResult([f, loaded], seriesuid="1.2", image="x.mhd", num_candidates=7, warnings=["slices of 5 mm"])
    assert ScanResult.from_json(json.loads(json.dumps(scan.to_json()))).findings[0] == f
    assert scan.to_json()["warnings"] == ["slices of 5 mm"] and scan.frame().shape[0] == 2
    with pytest.raises(ValueError, match="kind"):
        _finding(kind="cyst")
    with pytest.raises(ValueError, match="three"):
        Finding(coord=(1.0, 2.0), probability=0.5)


def test_report_items_say_what_is_known():
    f = _finding()
    assert report_items(f) == [("probability", "0.930"), ("stage 1", "0.999"), ("stage 2", "0.800"), ("diameter", "8.0 mm"),
                               ("volume", "272 mm³"), ("longest axial", "9.5 mm"), ("Lung-RADS v2022 size band", "8-<15 mm"),
                               ("mean diameter", "n/a"), ("solid component", "n/a"), ("solid component mean diameter", "n/a")]
    described = dataclasses.replace(f, type="part-solid", calcified="false", mean_diameter_mm=8.44, solid_volume_mm3=30.2,
                                    solid_mean_diameter_mm=3.9, side="right", zone="upper", lungrads="4A", lungrads_review=["4X"])
    assert report_items(described, skip_missing=True)[7:] == [
        ("type", "part-solid"), ("calcified", "false"), ("mean diameter", "8.4 mm"), ("solid component", "30 mm³"),
        ("solid component mean diameter", "3.9 mm"), ("lung", "right"), ("zone", "upper"), ("Lung-RADS v2022", "4A"), ("for review", "4X")]
    assert ("kind", "nodule") in report_items(f, with_defaults=True) and ("kind", "mass") in report_items(_finding(kind="mass"))
    bare = Finding(coord=(0, 0, 0), probability=0.5)
    assert ("diameter", "n/a") in report_items(bare) and report_items(bare, skip_missing=True) == [("probability", "0.500")]
    assert report_items(ScanResult()) == [] and report_items(ScanResult(warnings=["a", "b"])) == [("warnings", "a; b")]


@dataclasses.dataclass
class TexturedFinding(Finding):
    """A finding with one more attribute, declared the way a new one is added to Finding itself."""

    # a private coding scheme (99...) for the test: a real attribute names standard codes
    texture: str = attribute("type", default="", csv=True, sr=SRCode(("99T0", "99MONAI", "Texture"), {"solid": ("99T1", "99MONAI", "Solid")}))


def test_a_declared_attribute_reaches_csv_json_report_slicer_and_sr(tmp_path):
    f = TexturedFinding(**dataclasses.asdict(_finding()), texture="solid")
    assert csv_columns(TexturedFinding)[-1] == "texture" and f.csv_row("1.2")["texture"] == "solid"
    assert f.to_json()["texture"] == "solid" and TexturedFinding.from_json(f.to_json()) == f
    assert ("type", "solid") in report_items(f)
    (point,) = finding_points([f])
    assert point["description"].endswith("type solid")
    assert [name for name, _, _ in sr_items(f)] == ["probability", "diameter_mm", "volume_mm3", "longest_axial_mm", "type", "calcified",
                                                    "mean_diameter_mm", "solid_volume_mm3", "solid_mean_diameter_mm", "side", "zone",
                                                    "lungrads", "texture"]
    if not LIDC.is_dir():
        pytest.skip("../shared/real_ct (the real LIDC-IDRI-0001 series) is absent: the SR part needs a real series")
    import highdicom as hd

    from monai_lung.dicom.objects import write_dicom_outputs
    from monai_lung.dicom.series import choose_series

    info, _ = choose_series(LIDC / "dicom")
    mask = np.ones((3, 3, 3), dtype=bool)
    affine = np.diag([0.75, 0.75, 0.75, 1.0])
    affine[:3, 3] = np.asarray(f.coord) * [-1, -1, 1] - 0.75  # RAS, centred on the finding
    f.mask = FindingMask(mask, affine, "RAS")
    out = write_dicom_outputs(info, [f], tmp_path)
    (group,) = hd.sr.srread(out["sr"]).content.get_volumetric_roi_measurement_groups()
    evaluations = group.get_qualitative_evaluations()
    assert [(e.name.meaning, e.value.meaning) for e in evaluations] == [("Texture", "Solid")]
    assert Path(out["seg"]).is_file()
