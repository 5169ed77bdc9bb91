"""3D Slicer markups files: world LPS points that land on the right voxel, ordering and filtering, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from monai_lung.cli import main
from monai_lung.findings import Finding
from monai_lung.io.errors import DataError
from monai_lung.report.slicer import csv_to_markups, finding_points, point_list_markups
from tests.conftest import make_image, rotation_direction


def _markup(path):
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert doc["@schema"].endswith("markups-schema-v1.0.3.json#")
    (markup,) = doc["markups"]
    assert markup["type"] == "Fiducial" and markup["coordinateSystem"] == "LPS" and markup["coordinateUnits"] == "mm"
    for cp in markup["controlPoints"]:
        assert len(cp["position"]) == 3 and all(isinstance(v, float) for v in cp["position"])
        assert cp["positionStatus"] == "defined"
    return markup


def test_annotation_points_land_on_their_voxels_in_a_rotated_anisotropic_scan(tmp_path):
    """World LPS positions in the file map back (through the scan's own geometry) onto the marked voxels: a file
    written in RAS, or with (z, y, x) order, would put them elsewhere."""
    array = np.full((20, 40, 50), -850, np.int16)  # (z, y, x)
    marked_xyz = [(12, 30, 4), (40, 7, 15)]
    for x, y, z in marked_xyz:
        array[z, y, x] = 100
    image = make_image(array, spacing_xyz=(0.7, 0.8, 2.5), origin_xyz=(-170.5, -200.25, -310.0), direction=rotation_direction(25.0))
    scan = tmp_path / "1.2.3.mhd"
    sitk.WriteImage(image, str(scan))
    world = [image.TransformIndexToPhysicalPoint(m) for m in marked_xyz]
    csv = tmp_path / "annotations.csv"
    rows = [f"1.2.3,{w[0]!r},{w[1]!r},{w[2]!r},{d}" for w, d in zip(world, (6.2, -1))]
    csv.write_text("seriesuid,coordX,coordY,coordZ,diameter_mm\n" + "\n".join(rows) + "\n", encoding="utf-8")

    written = csv_to_markups(csv, tmp_path / "slicer")
    assert written == {"1.2.3": tmp_path / "slicer" / "1.2.3.mrk.json"}
    markup = _markup(written["1.2.3"])
    assert [cp["label"] for cp in markup["controlPoints"]] == ["N1 6.2mm", "N2"]
    assert [cp["description"] for cp in markup["controlPoints"]] == ["diameter 6.2 mm", "size unknown"]
    reread = sitk.ReadImage(str(scan))
    for cp, m in zip(markup["controlPoints"], marked_xyz):
        index = reread.TransformPhysicalPointToIndex(cp["position"])
        assert index == m
        assert sitk.GetArrayViewFromImage(reread)[index[2], index[1], index[0]] == 100
        ras = (-cp["position"][0], -cp["position"][1], cp["position"][2])
        assert reread.TransformPhysicalPointToIndex(ras) != m


def test_predictions_by_probability_filtered_per_scan(tmp_path):
    csv = tmp_path / "preds.csv"
    csv.write_text(
        "seriesuid,coordX,coordY,coordZ,probability\n"
        "1.3.6.1.a,1.5,2.5,3.5,0.20\n"
        "1.3.6.1.a,4.0,5.0,6.0,0.95\n"
        "1.3.6.1.b,-7.0,-8.0,-9.0,0.10\n"
        "1.3.6.1.a,10.0,11.0,12.0,0.60\n",
        encoding="utf-8",
    )
    written = csv_to_markups(csv, tmp_path / "all")
    a = _markup(written["1.3.6.1.a"])
    assert [cp["position"] for cp in a["controlPoints"]] == [[4.0, 5.0, 6.0], [10.0, 11.0, 12.0], [1.5, 2.5, 3.5]]
    assert [cp["label"] for cp in a["controlPoints"]] == ["1 p0.95", "2 p0.60", "3 p0.20"]
    assert a["name"] == "1.3.6.1.a findings" and a["locked"] is True

    written = csv_to_markups(csv, tmp_path / "best", min_probability=0.15, max_per_scan=1)
    assert [cp["position"] for cp in _markup(written["1.3.6.1.a"])["controlPoints"]] == [[4.0, 5.0, 6.0]]
    assert _markup(written["1.3.6.1.b"])["controlPoints"] == []  # the scan is still listed: nothing above 0.15


def test_finding_description_and_bad_coordinates(tmp_path):
    (point,) = finding_points([Finding(coord=(1, 2, 3), probability=0.5, stage1_peak=0.99, stage2_prob=0.25, diameter_mm=6.04)])
    assert point["description"] == "probability 0.500, stage 1 0.990, stage 2 0.250, diameter 6.0 mm"  # what is known
    assert point["coord"] == [1.0, 2.0, 3.0] and point["label"] == "1 p0.50"
    (mass,) = finding_points([Finding(coord=(1, 2, 3), probability=0.5, volume_mm3=40000.0, kind="mass")])
    assert mass["description"] == "probability 0.500, volume 40000 mm³, kind mass"  # a kind other than nodule is named
    # a predictions CSV of `detect` carries the sizes: the points describe them
    csv = tmp_path / "preds.csv"
    csv.write_text("seriesuid,coordX,coordY,coordZ,probability,diameter_mm,volume_mm3,longest_axial_mm\n1.2,1,2,3,0.5,6.2,125.0,7.1\n",
                   encoding="utf-8")
    (cp,) = _markup(csv_to_markups(csv, tmp_path / "out")["1.2"])["controlPoints"]
    assert cp["description"] == "probability 0.500, diameter 6.2 mm, volume 125 mm³, longest axial 7.1 mm"
    with pytest.raises(ValueError, match="finite"):
        point_list_markups([{"coord": [1.0, float("nan"), 3.0], "label": "x"}], "scan")
    with pytest.raises(ValueError, match="three"):
        point_list_markups([{"coord": [1.0, 2.0], "label": "x"}], "scan")


@pytest.mark.parametrize(
    "name, text, match",
    [
        ("empty.csv", "", "empty.csv"),
        ("points.csv", "seriesuid,coordX,coordY,coordZ\n1.2,1,2,3\n", "neither a predictions CSV"),
        ("escape.csv", "seriesuid,coordX,coordY,coordZ,probability\n1.2.3,1,2,3,0.5\n../evil,1,2,3,0.5\n", "not usable as a file name"),
    ],
)
def test_bad_csv_is_refused_before_anything_is_written(tmp_path, name, text, match):
    bad = tmp_path / name
    bad.write_text(text, encoding="utf-8")
    with pytest.raises(DataError, match=match):
        csv_to_markups(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_names_the_file_and_the_column(tmp_path, capsys):
    nan = tmp_path / "nan.csv"
    nan.write_text("seriesuid,coordX,coordY,coordZ,probability\n1.2,1,nan,3,0.5\n", encoding="utf-8")
    assert main(["markups", str(nan), "--output-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "nan.csv" in err and "coordY" in err
    assert not (tmp_path / "out").exists()  # nothing half-written
