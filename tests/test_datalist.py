"""datalist: LUNA16 subsets -> folds -> Decathlon JSON, and stage-1 hard negatives added from mined candidates."""

from __future__ import annotations

import json
import sys

import pandas as pd
import pytest

from monai_lung.datalist import add_hard_negatives, build_datalist
from monai_lung.io import DataError
from tests.bundle_utils import run_cmd


def test_fold_zero_tests_on_subset0_and_validates_on_the_next(tiny_dataset):
    data_dir, _ = tiny_dataset
    dl = build_datalist(data_dir, data_dir / "annotations.csv", data_dir / "annotations_excluded.csv", fold=0)
    assert (dl["test_subset"], dl["validation_subset"]) == (0, 1)
    assert {e["subset"] for e in dl["test"]} == {0} and {e["subset"] for e in dl["validation"]} == {1}
    assert {e["subset"] for e in dl["training"]} == {2}
    annotations = pd.read_csv(data_dir / "annotations.csv")
    listed = sum(len(e["nodules"]) for k in ("training", "validation", "test") for e in dl[k])
    assert listed == len(annotations)


def test_an_annotation_without_its_scan_is_named(tiny_dataset, tmp_path):
    data_dir, _ = tiny_dataset
    ann = pd.read_csv(data_dir / "annotations.csv")
    extra = pd.concat([ann, pd.DataFrame([{"seriesuid": "1.2.3.404", "coordX": 0.0, "coordY": 0.0, "coordZ": 0.0, "diameter_mm": 5.0}])])
    extra.to_csv(tmp_path / "annotations.csv", index=False)
    with pytest.raises(DataError, match="1.2.3.404"):
        build_datalist(data_dir, tmp_path / "annotations.csv")
    dl = build_datalist(data_dir, tmp_path / "annotations.csv", allow_missing_scans=True)
    assert sum(len(dl[k]) for k in ("training", "validation", "test")) == 6


def _mined(folder, uid, rows):
    """A mined-candidate table as `monai-lung crops` writes it: (x, y, z, peak_prob, label) per row."""
    folder.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(rows, columns=["coordX", "coordY", "coordZ", "peak_prob", "label"]).assign(seriesuid=uid)
    frame.to_csv(folder / f"{uid}.csv", index=False)


def test_hard_negatives_are_the_top_false_positives_of_training_and_validation_scans(tiny_dataset, tmp_path):
    data_dir, datalist = tiny_dataset
    dl = json.loads(datalist.read_text(encoding="utf-8"))
    train_uid, val_uid, test_uid = dl["training"][0]["seriesuid"], dl["validation"][0]["seriesuid"], dl["test"][0]["seriesuid"]
    mined = tmp_path / "hard_negatives"
    _mined(mined, train_uid, [
        (1.0, 2.0, 3.0, 0.60, 0),
        (4.0, 5.0, 6.0, 0.99, 0),
        (7.0, 8.0, 9.0, 1.00, 1),  # a nodule: never a negative
        (9.0, 9.0, 9.0, 0.95, -1),  # an excluded finding: neither
        (0.0, 0.0, 0.0, 0.40, 0),  # below min_peak
        (2.0, 2.0, 2.0, 0.80, 0),
    ])
    _mined(mined, val_uid, [(5.0, 5.0, 5.0, 0.70, 0)])
    _mined(mined, test_uid, [(5.0, 5.0, 5.0, 0.70, 0)])
    added = add_hard_negatives(dl, mined, per_scan=2, min_peak=0.5)
    assert added == 3
    by_uid = {e["seriesuid"]: e for k in ("training", "validation", "test") for e in dl[k]}
    assert by_uid[train_uid]["hard_negatives"] == [{"center": [4.0, 5.0, 6.0]}, {"center": [2.0, 2.0, 2.0]}]  # by peak
    assert by_uid[val_uid]["hard_negatives"] == [{"center": [5.0, 5.0, 5.0]}]
    assert "hard_negatives" not in by_uid[test_uid]  # test scans are never trained on
    assert "hard_negatives" not in dl["training"][1]  # no mined file: nothing added
    # the one CSV of `monai-lung hard-negatives` gives the same lists
    combined = pd.concat([pd.read_csv(f) for f in sorted(mined.glob("*.csv"))])
    combined.to_csv(tmp_path / "mined.csv", index=False)
    again = json.loads(datalist.read_text(encoding="utf-8"))
    assert add_hard_negatives(again, tmp_path / "mined.csv", per_scan=2, min_peak=0.5) == 3
    assert again == dl


def test_broken_mined_tables_are_named(tiny_dataset, tmp_path):
    _, datalist = tiny_dataset
    dl = json.loads(datalist.read_text(encoding="utf-8"))
    uid = dl["training"][0]["seriesuid"]
    with pytest.raises(DataError, match="nowhere: mined hard negatives not found"):
        add_hard_negatives(dl, tmp_path / "nowhere")
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / f"{uid}.csv").write_text("seriesuid,coordX,coordY\nx,1,2\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"{uid}\.csv: mined candidates file misses column\(s\) coordZ, peak_prob, label"):
        add_hard_negatives(dl, tmp_path / "m")
    _mined(tmp_path / "m", uid, [(1.0, float("nan"), 3.0, 0.9, 0)])
    with pytest.raises(DataError, match=r"column coordY has a non-numeric value '' on line 2"):
        add_hard_negatives(dl, tmp_path / "m")


def test_datalist_cli_writes_hard_negatives(tiny_dataset, tmp_path):
    data_dir, datalist = tiny_dataset
    dl = json.loads(datalist.read_text(encoding="utf-8"))
    uid = dl["training"][0]["seriesuid"]
    _mined(tmp_path / "hn", uid, [(1.0, 2.0, 3.0, 0.9, 0), (3.0, 2.0, 1.0, 0.8, 0)])
    out = run_cmd([
        sys.executable, "-m", "monai_lung", "datalist", "--data-dir", str(data_dir), "--annotations", str(data_dir / "annotations.csv"),
        "--output", str(tmp_path / "dl.json"), "--hard-negatives", str(tmp_path / "hn"), "--hard-negatives-per-scan", "1",
    ])
    assert "1 stage-1 hard negatives" in out
    written = json.loads((tmp_path / "dl.json").read_text(encoding="utf-8"))
    assert [e.get("hard_negatives") for e in written["training"] if e["seriesuid"] == uid] == [[{"center": [1.0, 2.0, 3.0]}]]
