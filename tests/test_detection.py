"""Two-stage detection end to end on small synthetic scans with tiny trained models: the CLI, the
detection bundle, resume, failure isolation, torchrun equality and the review report."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from tests.bundle_utils import bundle_run, copy_bundle, run_cmd

pytestmark = pytest.mark.slow

SEG, CLS, DET = "lung_nodule_ct_segmentation", "lung_nodule_ct_classification", "lung_nodule_ct_two_stage_detection"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Six 128x128 synthetic scans; stage 1 trained to overfit them, stage 2 trained briefly, assembled."""
    from monai_lung.datalist import build_datalist, write_datalist
    from monai_lung.stage2.bank import CropBankSettings, build_crop_bank
    from monai_lung.datalist import load_datalist_entries
    from monai_lung.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("detect")
    data = root / "data"
    generate_dataset(data, num_scans=6, seed=11, size=128, num_subsets=3)
    dl = build_datalist(data, data / "annotations.csv", data / "annotations_excluded.csv", fold=0)
    # every list holds all scans: the test checks geometry on scans the tiny model has learnt
    everything = dl["training"] + dl["validation"] + dl["test"]
    dl["training"], dl["validation"], dl["test"] = everything, everything[:1], everything
    datalist = root / "datalist.json"
    write_datalist(datalist, dl)
    seg, cls, det = (copy_bundle(n, root) for n in (SEG, CLS, DET))
    bundle_run("training", [seg / "configs" / "train.json"], {
        "bundle_root": seg, "dataset_dir": data, "data_list_file_path": datalist, "max_epochs": 15, "val_interval": 15,
        "num_workers": 0, "num_samples": 8, "patch_size": "[32,32,32]", "val_roi_size": "[64,64,64]", "learning_rate": 0.01,
    })
    bank = root / "bank"
    build_crop_bank(load_datalist_entries(datalist, "training", data), bank, CropBankSettings(positives_per_nodule=4, random_per_scan=8))
    bundle_run("training", [cls / "configs" / "train.json"], {
        "bundle_root": cls, "dataset_dir": data, "data_list_file_path": datalist, "crop_bank_dir": bank,
        "max_epochs": 1, "epoch_length": 64, "num_workers": 0, "val_interval": 1,
    })
    run_cmd([sys.executable, "-m", "monai_lung", "assemble", "--seg-bundle", str(seg), "--stage2-bundle", str(cls), "--output-bundle", str(det)])
    entries = load_datalist_entries(datalist, "test", data)  # absolute image paths
    return {"root": root, "data": data, "datalist": datalist, "seg": seg, "cls": cls, "det": det, "entries": entries,
            "annotations": pd.read_csv(data / "annotations.csv", dtype={"seriesuid": str})}


def detect(models, out: Path, *extra: str, key: str = "test", torchrun: bool = False) -> str:
    cmd = ["-m", "monai_lung", "detect", "--datalist", str(models["datalist"]), "--data-dir", str(models["data"]), "--key", key,
           "--det-bundle", str(models["det"]), "--output", str(out), "--device", "cpu", "--no-progress",
           "--set", "score=stage1", "--set", "seg_threshold=0.3", "--set", "roi_size=[64,64,64]", *extra]
    if torchrun:
        return run_cmd([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *cmd])
    return run_cmd([sys.executable, *cmd])


@pytest.fixture(scope="module")
def first_run(models):
    out = models["root"] / "run1" / "preds.csv"
    log = detect(models, out, "--report-dir", str(models["root"] / "run1" / "report"))
    return out, log


def test_detections_land_within_the_nodule_radius_in_world_mm(models, first_run):
    out, _ = first_run
    preds = pd.read_csv(out, dtype={"seriesuid": str})
    # LUNA16's five columns first (its tools read them), then each finding's measured size, type and calcification
    assert list(preds.columns) == ["seriesuid", "coordX", "coordY", "coordZ", "probability", "diameter_mm", "volume_mm3", "longest_axial_mm",
                                   "type", "calcified"]
    assert (preds["volume_mm3"] > 0).all() and (preds["longest_axial_mm"] > 0).all()
    # the findings at the operating point (the ten most probable per scan at most) are typed; the others are not determined
    from monai_lung.clinical.findings import DEFAULT_THRESHOLD, MAX_DESCRIBED

    for _, rows in preds.groupby("seriesuid", sort=False):
        rows = rows.sort_values("probability", ascending=False, kind="stable")
        typed = (rows["probability"] >= DEFAULT_THRESHOLD) & (np.arange(len(rows)) < MAX_DESCRIBED)
        assert rows.loc[typed, "type"].isin(["solid", "part-solid", "non-solid"]).all() and rows.loc[~typed, "type"].isna().all()
        assert rows.loc[typed, "calcified"].astype(str).str.lower().isin(["true", "false"]).all()
    ann = models["annotations"]
    found = 0
    for nod in ann.itertuples():
        p = preds[preds.seriesuid == nod.seriesuid][["coordX", "coordY", "coordZ"]].to_numpy()
        if len(p) and np.linalg.norm(p - [nod.coordX, nod.coordY, nod.coordZ], axis=1).min() <= nod.diameter_mm / 2:
            found += 1
    assert len(ann) > 0 and found / len(ann) >= 0.5, f"found {found}/{len(ann)} nodules within their radius"
    # every prediction lies inside its scan (world LPS -> SimpleITK index)
    for entry in models["entries"]:
        img = sitk.ReadImage(entry["image"])
        for row in preds[preds.seriesuid == entry["seriesuid"]].itertuples():
            idx = img.TransformPhysicalPointToContinuousIndex((row.coordX, row.coordY, row.coordZ))
            assert all(-0.5 <= i <= s - 0.5 for i, s in zip(idx, img.GetSize()))


def test_per_scan_json_and_report(models, first_run):
    out, log = first_run
    scans = sorted(out.with_name("preds_scans").glob("*.json"))
    assert len(scans) == len(models["entries"])
    result = json.loads(scans[0].read_text(encoding="utf-8"))
    assert {"findings", "timings_s", "num_candidates"} <= set(result)
    assert {"load", "resample", "lung_mask", "sliding_window", "candidates", "stage2"} <= set(result["timings_s"])
    preds = pd.read_csv(out, dtype={"seriesuid": str})
    mine = preds[preds.seriesuid == result["seriesuid"]]
    assert len(mine) == len(result["findings"])
    for f in result["findings"]:
        assert f["box"][:3] == f["coord"] and f["box"][3] == f["diameter_mm"]
    html = (models["root"] / "run1" / "report" / "index.html").read_text(encoding="utf-8")
    for entry in models["entries"]:
        assert entry["seriesuid"] in html
    pngs = list((models["root"] / "run1" / "report" / "images").glob("*.png"))
    assert len(pngs) == min(10, len(preds)) or len(pngs) >= len(set(preds.seriesuid))
    # one 3D Slicer point list per scan: its 10 best findings, world LPS mm as in the JSON, linked from the page
    for path in scans:
        res = json.loads(path.read_text(encoding="utf-8"))
        assert res["markups"] == f"slicer/{res['seriesuid']}.mrk.json" and res["markups"] in html
        doc = json.loads((models["root"] / "run1" / "report" / res["markups"]).read_text(encoding="utf-8"))
        (markup,) = doc["markups"]
        assert markup["coordinateSystem"] == "LPS"
        best = sorted(res["findings"], key=lambda f: -f["probability"])[:10]
        assert [cp["position"] for cp in markup["controlPoints"]] == [f["coord"] for f in best]


def test_rerun_resumes_without_duplicating_rows(models, first_run, tmp_path):
    out, _ = first_run
    copy = tmp_path / "preds.csv"
    shutil.copy(out, copy)
    shutil.copytree(out.with_name("preds_scans"), tmp_path / "preds_scans")
    removed = sorted((tmp_path / "preds_scans").glob("*.json"))[0]
    removed.unlink()
    log = detect(models, copy)
    assert f"1 scans processed, {len(models['entries']) - 1} already done" in log
    pd.testing.assert_frame_equal(pd.read_csv(copy), pd.read_csv(out))
    log = detect(models, copy)
    assert f"0 scans processed, {len(models['entries'])} already done" in log
    pd.testing.assert_frame_equal(pd.read_csv(copy), pd.read_csv(out))


def test_bad_scans_are_recorded_and_the_run_goes_on(models, tmp_path):
    from monai_lung.io import write_image_atomic

    good = models["entries"][0]
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    shutil.copy(good["image"], bad_dir / "truncated.mhd")
    raw = Path(good["image"]).with_suffix(".raw").read_bytes()
    (bad_dir / "truncated.raw").write_bytes(raw[: len(raw) // 3])
    (bad_dir / "truncated.mhd").write_text((bad_dir / "truncated.mhd").read_text(encoding="utf-8").replace(Path(good["image"]).stem + ".raw", "truncated.raw"))
    write_image_atomic(bad_dir / "flat.mha", sitk.GetImageFromArray(np.zeros((64, 64), np.int16)))
    nan = np.full((60, 60, 60), -800.0, np.float32)
    nan[30, 30, 30] = np.nan
    write_image_atomic(bad_dir / "nan.mha", sitk.GetImageFromArray(nan))  # (ITK's NIfTI reader turns NaN into 0)
    write_image_atomic(bad_dir / "tiny.mha", sitk.GetImageFromArray(np.full((10, 60, 60), -800, np.int16)))
    (bad_dir / "garbage.mhd").write_text("not a header")
    images = [str(bad_dir / n) for n in ("truncated.mhd", "flat.mha", "nan.mha", "tiny.mha", "garbage.mhd")] + [good["image"]]
    out = tmp_path / "preds.csv"
    log = run_cmd([sys.executable, "-m", "monai_lung", "detect", *images, "--det-bundle", str(models["det"]), "--output", str(out),
                   "--device", "cpu", "--no-progress", "--set", "roi_size=[64,64,64]"])
    assert "1 scans processed" in log and "5 failed" in log
    failures = pd.read_csv(out.with_name(out.stem + "_failures.csv"), dtype=str, keep_default_na=False).set_index("seriesuid")["error"].to_dict()
    assert "truncated data file" in failures["truncated"]
    assert "3D" in failures["flat"]
    assert "NaN" in failures["nan"]
    assert "smaller than" in failures["tiny"]
    assert "garbage.mhd" in failures["garbage"]
    assert (out.with_name("preds_scans") / f"{Path(good['image']).stem}.json").is_file()


def test_stage_bundles_with_other_preprocessing_are_refused(models, tmp_path):
    """Stage 2 scores crops cut from the stage-1 volume: a classifier set up for another voxel size or
    window must not be assembled or loaded beside it."""
    from monai_lung.detection import assemble_two_stage, load_detector
    from monai_lung.io import DataError

    for key, value in (("spacing", [1.25, 1.25, 2.0]), ("hu_window", [-1200.0, 600.0])):
        cls = tmp_path / key / CLS
        shutil.copytree(models["cls"], cls)
        config = cls / "configs" / "inference.json"
        settings = json.loads(config.read_text(encoding="utf-8"))
        settings[key] = value
        config.write_text(json.dumps(settings))
        with pytest.raises(DataError, match=rf"inference.json.*{re.escape(f'{key} {value}')}.*differs"):
            assemble_two_stage(models["seg"], cls, models["det"])
        with pytest.raises(DataError, match=rf"{re.escape(f'{key} {value}')}.*differs"):
            load_detector(seg_bundle=models["seg"], stage2_bundle=cls)
    # the bundles as trained still agree
    detector, prep = load_detector(seg_bundle=models["seg"], stage2_bundle=models["cls"])
    assert {k: prep[k] for k in ("spacing", "hu_window")} == {"spacing": [1.0, 1.0, 1.0], "hu_window": [-1000.0, 400.0]}
    # the segmentation bundle's own chain, not a copy: its last step windows with the bundle's hu_window
    assert type(prep["transform"].transforms[-1]).__name__ == "ScaleIntensityRanged"


def test_assembling_refuses_another_crop_size_or_pooling(models, tmp_path):
    """The classifier's weights fit a ResNet with or without max pooling and at any crop size: a detection
    bundle that differs from the classification bundle in either would score other features, silently."""
    from monai_lung.detection import assemble_two_stage, load_detector
    from monai_lung.detection.loading import stage2_crop_size
    from monai_lung.io import DataError

    cls_patch = stage2_crop_size(models["cls"])
    for name, edit, message in (
        ("crop", lambda c: c["detector_config"].update(crop_size=[48, 48, 48] if cls_patch != (48, 48, 48) else [40, 40, 40]),
         r"crop_size \[\d+, \d+, \d+\] differs from the classifier's patch_size"),
        ("pool", lambda c: c["network_def"]["classifier"].update(no_max_pool=True), r"settings of classifier"),
    ):
        det = tmp_path / name / DET
        shutil.copytree(models["det"], det)
        config = det / "configs" / "inference.json"
        settings = json.loads(config.read_text(encoding="utf-8"))
        edit(settings)
        config.write_text(json.dumps(settings))
        before = (det / "models" / "model.pt").read_bytes()
        with pytest.raises(DataError, match=message):
            assemble_two_stage(models["seg"], models["cls"], det)
        assert (det / "models" / "model.pt").read_bytes() == before  # nothing written
    # the stage bundles alone: the detector cuts crops of the classifier's own size
    detector, _ = load_detector(seg_bundle=models["seg"], stage2_bundle=models["cls"])
    assert tuple(detector.config.crop_size) == cls_patch


def test_torchrun_two_ranks_equal_a_single_process(models, first_run, tmp_path):
    out, _ = first_run
    merged = tmp_path / "preds.csv"
    detect(models, merged, torchrun=True)
    pd.testing.assert_frame_equal(pd.read_csv(merged), pd.read_csv(out))


def test_detection_bundle_runs_the_same_detector(models, first_run, tmp_path):
    out, _ = first_run
    det = models["det"]
    bundle_out = tmp_path / "bundle_preds.csv"
    bundle_run("inference", [det / "configs" / "inference.json"], {
        "bundle_root": det, "dataset_dir": models["data"], "data_list_file_path": models["datalist"], "output_file": bundle_out,
        "device": "cpu", "detector_config#score": "stage1", "detector_config#seg_threshold": 0.3, "detector_config#roi_size": "[64,64,64]",
    })
    pd.testing.assert_frame_equal(pd.read_csv(bundle_out), pd.read_csv(out))


def test_detector_call_gives_monai_label_boxes(models):
    """`detector(inputs, use_inferer=True)` as MONAI Label calls it, built from the bundle config."""
    import torch

    from monai_lung.networks import bundle_parser, load_weights

    parser = bundle_parser(models["det"], device="cpu")
    parser["detector_config"]["roi_size"] = [64, 64, 64]
    detector = parser.get_parsed_content("detector")
    load_weights(detector.network, models["det"] / "models" / "model.pt")
    detector.network = detector.network  # MONAI Label assigns the loaded network
    detector.eval()
    data = parser.get_parsed_content("preprocessing")({"image": models["entries"][0]["image"]})
    outputs = detector(data["image"][None], use_inferer=True)
    assert len(outputs) == 1
    out = outputs[0]
    assert out["box"].shape[1] == 6 and out["box"].dtype == torch.float32
    assert out["label"].shape == out["label_scores"].shape == (out["box"].shape[0],)
    data.update(out)
    result = parser.get_parsed_content("postprocessing")(data)["result"]
    assert len(result["label_scores"]) == out["box"].shape[0]
    json.dumps(result)
