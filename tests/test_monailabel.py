"""Our bundles served by a real MONAI Label 0.8.5 server (issue 7): /info/, segmentation and detection over HTTP.

The module fixture trains tiny stage-1/stage-2 weights on synthetic scans (quality is irrelevant), assembles the
two-stage detection bundle, and starts ``python -m monailabel.main start_server`` from the MONAI Label venv
(``make monailabel-venv``; ``$MONAI_LUNG_MONAILABEL_PY`` may name another python) on 127.0.0.1.  Without that
venv every test here is skipped.  What comes back over HTTP is checked against the scans' geometry, against what
MONAI Label's writers and 3D Slicer expect, and against the same bundles run without MONAI Label.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from tests import monailabel_server as ml
from tests.bundle_utils import bundle_run, copy_bundle, run_cmd

pytestmark = [pytest.mark.slow, pytest.mark.monailabel]

SEG, CLS, DET = "lung_nodule_ct_segmentation", "lung_nodule_ct_classification", "lung_nodule_ct_two_stage_detection"
# "device": "cpu" so that the comparisons with the runs below (on the CPU) hold on a machine with a GPU as well
SEG_PARAMS = {"result_extension": ".nii.gz", "result_dtype": "uint8", "device": "cpu"}
DET_PARAMS = {"device": "cpu"}
# the second study gets x and y flipped in its direction matrix (as scans stored RAS-first are), so that a lost
# direction or an LPS/RAS mix-up shows in the geometry and box checks
STUDY_DIRECTIONS = [np.eye(3), np.diag([-1.0, -1.0, 1.0])]


def _timed(timings: dict, key: str, func, *args, **kwargs):
    t0 = time.monotonic()
    try:
        return func(*args, **kwargs)
    finally:
        timings[key] = round(time.monotonic() - t0, 1)


def _write_studies(scans: list[Path], studies: Path) -> dict[str, Path]:
    """The study scans as ``<seriesuid>.mhd`` + ``.raw``: {MONAI Label image id (file name minus .mhd): path}."""
    from monai_lung.io import write_image_atomic

    studies.mkdir()
    out = {}
    for scan, direction in zip(scans, STUDY_DIRECTIONS):
        image = sitk.ReadImage(str(scan))
        image.SetDirection(tuple(float(v) for v in direction.ravel()))
        path = studies / scan.name
        write_image_atomic(path, image)
        out[path.name[: -len(".mhd")]] = path
    return out


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A MONAI Label server on tiny trained bundles; yields a dict; the server is stopped at the end, always."""
    python = ml.monailabel_python()
    reason = ml.missing_reason(python)
    if reason:
        if os.environ.get(ml.REQUIRE_ENV_VAR) == "1":
            pytest.fail(f"{reason} ({ml.REQUIRE_ENV_VAR}=1)")
        pytest.skip(reason)
    install = ml.inspect_installation(python)
    assert install.version == ml.MONAILABEL_VERSION, f"{python} has monailabel {install.version}"

    from monai_lung.datalist import build_datalist, load_datalist_entries, write_datalist
    from monai_lung.stage2.bank import CropBankSettings, build_crop_bank
    from monai_lung.synthetic import generate_dataset

    timings: dict = {}
    root = tmp_path_factory.mktemp("monailabel")
    data = root / "data"
    _timed(timings, "synthetic data", generate_dataset, data, num_scans=4, seed=21, size=128, num_subsets=3)
    dl = build_datalist(data, data / "annotations.csv", data / "annotations_excluded.csv", fold=0)
    everything = dl["training"] + dl["validation"] + dl["test"]
    dl["training"], dl["validation"], dl["test"] = everything, everything[:1], everything
    datalist = root / "datalist.json"
    write_datalist(datalist, dl)

    seg, cls, det = (copy_bundle(name, root / "bundles") for name in (SEG, CLS, DET))
    _timed(timings, "train segmentation", bundle_run, "training", [seg / "configs" / "train.json"], {
        "bundle_root": seg, "dataset_dir": data, "data_list_file_path": datalist, "max_epochs": 1, "val_interval": 1,
        "num_workers": 0, "num_samples": 2, "patch_size": "[32,32,32]", "val_roi_size": "[64,64,64]",
    })
    bank = root / "bank"
    entries = load_datalist_entries(datalist, "training", data)
    _timed(timings, "crop bank", build_crop_bank, entries, bank, CropBankSettings(positives_per_nodule=2, random_per_scan=4))
    _timed(timings, "train classification", bundle_run, "training", [cls / "configs" / "train.json"], {
        "bundle_root": cls, "dataset_dir": data, "data_list_file_path": datalist, "crop_bank_dir": bank,
        "max_epochs": 1, "epoch_length": 32, "batch_size": 8, "val_batch_size": 16, "num_workers": 0, "val_interval": 1,
    })
    _timed(timings, "assemble", run_cmd, [sys.executable, "-m", "monai_lung", "assemble", "--seg-bundle", str(seg),
                                          "--stage2-bundle", str(cls), "--output-bundle", str(det)])
    # a one-epoch stage 1 rarely reaches the default threshold (0.7, for trained models on the 0.75 mm grid); these
    # tests check what the boxes look like over HTTP, so the served copy takes 0.3 to have some
    config_path = det / "configs" / "inference.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["detector_config"]["seg_threshold"] = 0.3
    config_path.write_text(json.dumps(config, indent=4), encoding="utf-8")

    images = _write_studies([Path(e["image"]) for e in entries[:2]], root / "studies")
    app = ml.make_app(install.monaibundle, root / "app", {SEG: seg, DET: det})
    server = _timed(timings, "server start", ml.start_server, install, root, app, root / "studies", [SEG, DET])
    state = None
    try:
        state = {"server": server, "images": images, "seg": seg, "det": det, "root": root, "timings": timings, "notes": {}}
        yield state
    finally:
        t0 = time.monotonic()
        code = server.stop()
        timings["server stop"] = round(time.monotonic() - t0, 1)
        print(f"\nMONAI Label test timings (s): {json.dumps(timings)}; server exit code {code}; "
              f"notes {json.dumps(state['notes'] if state else {})}")


def _infer(served, model: str, image_id: str, params: dict, output: str | None = None, key: str | None = None):
    server = served["server"]
    t0 = time.monotonic()
    status, headers, body = server.request("POST", ml.infer_url(model, image_id, output), {"params": json.dumps(params)})
    if key:
        served["timings"][key] = round(time.monotonic() - t0, 1)
    assert status == 200, f"{model} on {image_id}: HTTP {status} {body[:2000]!r}\n{server.log_tail()}"
    return headers, body


def _world_bounds(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned LPS mm box around the scan's voxel centres."""
    corners = [image.TransformContinuousIndexToPhysicalPoint([float(c * (s - 1)) for c, s in zip(k, image.GetSize())])
               for k in np.ndindex(2, 2, 2)]
    return np.min(corners, axis=0), np.max(corners, axis=0)


# ------------------------------------------------------------------------------------------------------------ info
def test_info_lists_both_bundles_with_their_task_types(served):
    status, _, body = served["server"].request("GET", "/info/")
    assert status == 200
    models = json.loads(body)["models"]
    assert models[SEG]["type"] == "segmentation"
    assert models[DET]["type"] == "detection"
    assert models[SEG]["labels"] == {"nodule": 1}
    assert models[DET]["labels"] == {"nodule": 0}
    assert set(models) == {SEG, DET}  # nothing else (no SAM2, no downloaded bundle)


def test_datastore_ids_are_the_file_names_without_mhd(served):
    status, _, body = served["server"].request("GET", "/datastore/?output=all")
    assert status == 200
    assert sorted(json.loads(body)["objects"]) == sorted(served["images"])


# ---------------------------------------------------------------------------------------------------- segmentation
@pytest.fixture(scope="module")
def segmentations(served):
    """{image id: label image} from ``POST /infer/<seg>?image=<id>&output=image`` (the label file itself)."""
    out = {}
    for i, (image_id, path) in enumerate(served["images"].items()):
        _, body = _infer(served, SEG, image_id, SEG_PARAMS, output="image", key=f"infer segmentation {i}")
        label_path = served["root"] / f"http_seg_{i}.nii.gz"
        label_path.write_bytes(body)
        out[image_id] = sitk.ReadImage(str(label_path))
    return out


def test_segmentation_label_has_the_scan_geometry_and_values_0_1(served, segmentations):
    for image_id, path in served["images"].items():
        scan, label = sitk.ReadImage(str(path)), segmentations[image_id]
        assert label.GetSize() == scan.GetSize()
        np.testing.assert_allclose(label.GetSpacing(), scan.GetSpacing(), rtol=1e-5)
        np.testing.assert_allclose(label.GetOrigin(), scan.GetOrigin(), atol=1e-3)
        np.testing.assert_allclose(label.GetDirection(), scan.GetDirection(), atol=1e-6)
        assert label.GetPixelID() == sitk.sitkUInt8  # result_dtype
        assert set(np.unique(sitk.GetArrayFromImage(label)).tolist()) <= {0, 1}


def test_segmentation_equals_the_bundle_run_without_monailabel(served, segmentations):
    """``monai.bundle run inference`` on the same scan gives the same mask, voxel for voxel (up to a few
    borderline voxels); a flipped or shifted label would differ on every foreground voxel."""
    out = served["root"] / "bundle_seg"
    for image_id, path in served["images"].items():
        bundle_run("inference", [served["seg"] / "configs" / "inference.json"], {
            "bundle_root": served["seg"], "image_path": path, "output_dir": out, "num_workers": 0, "device": "$torch.device('cpu')",
        })
        reference = sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"{image_id}_mask.nii.gz")))
        got = sitk.GetArrayFromImage(segmentations[image_id])
        assert got.shape == reference.shape
        differ = int((got != reference).sum())
        assert differ <= max(10, 0.01 * int((reference > 0).sum())), f"{image_id}: {differ} voxels differ"
        served["notes"][f"segmentation foreground voxels {image_id}"] = int(got.sum())


def test_segmentation_with_the_params_slicer_sends_is_a_complete_label_file(served, tmp_path):
    """3D Slicer's MONAI Label plugin sends the model's ``config`` from /info/ (first value of each list) as
    ``params`` and reads the ``image`` part of the default multipart answer with SimpleITK."""
    server = served["server"]
    config = json.loads(server.request("GET", "/info/")[2])["models"][SEG]["config"]
    params = {k: v[0] if isinstance(v, list) else v for k, v in config.items()}
    params["device"] = "cpu"
    image_id, path = next(iter(served["images"].items()))
    headers, body = _infer(served, SEG, image_id, params)
    filename, data = ml.split_multipart(headers.get("content-type", ""), body)["image"]
    received = tmp_path / Path(filename).name
    received.write_bytes(data)
    label, scan = sitk.ReadImage(str(received)), sitk.ReadImage(str(path))
    assert label.GetSize() == scan.GetSize()
    np.testing.assert_allclose(label.GetOrigin(), scan.GetOrigin(), atol=1e-3)


# ------------------------------------------------------------------------------------------------------- detection
@pytest.fixture(scope="module")
def detections(served):
    """Per image id: the default (multipart) answer, as 3D Slicer's MONAI Label plugin receives it, and the
    ``result_write_to_file: false`` answer (the bundle's own ``result``)."""
    out = {}
    for i, image_id in enumerate(served["images"]):
        headers, body = _infer(served, DET, image_id, DET_PARAMS, key=f"infer detection {i}")
        parts = ml.split_multipart(headers.get("content-type", ""), body)
        _, body_raw = _infer(served, DET, image_id, {**DET_PARAMS, "result_write_to_file": False}, output="json",
                             key=f"infer detection {i} (result_write_to_file false)")
        out[image_id] = {"parts": parts, "result": json.loads(body_raw)}
    return out


@pytest.fixture(scope="module")
def reference_boxes(served):
    """The detection bundle run in this process the way MONAI Label runs it, without MONAI Label:
    preprocessing -> ``detector.network = <network_def + model.pt>`` -> ``detector(image[None], use_inferer=True)``."""
    import torch

    from monai_lung.networks import bundle_parser, load_weights

    parser = bundle_parser(served["det"], device="cpu")
    detector = parser.get_parsed_content("detector")
    detector.network = load_weights(parser.get_parsed_content("network_def"), served["det"] / "models" / "model.pt")
    detector.eval()
    preprocessing = parser.get_parsed_content("preprocessing")
    out = {}
    with torch.no_grad():
        for image_id, path in served["images"].items():
            found = detector(preprocessing({"image": str(path)})["image"][None], use_inferer=True)[0]
            out[image_id] = {k: found[k].numpy() for k in ("box", "label", "label_scores")}
    return out


def test_detection_answer_is_what_the_monailabel_writer_and_slicer_expect(served, detections):
    for image_id, path in served["images"].items():
        parts = detections[image_id]["parts"]
        assert set(parts) == {"params", "image"}, f"multipart fields {sorted(parts)}"
        params = json.loads(parts["params"][1])
        boxes = params["box"]
        assert isinstance(boxes, list) and all(isinstance(b, list) and len(b) == 6 for b in boxes)
        assert all(isinstance(v, float) for b in boxes for v in b)
        assert params["label"] == [0] * len(boxes)
        # the result file is a Slicer markups JSON: one ROI node per box, centre and size in LPS mm
        filename, markups_raw = parts["image"]
        assert filename.endswith(".json")
        markups = json.loads(markups_raw)["markups"]
        assert len(markups) == len(boxes)
        for node, box in zip(markups, boxes):
            assert node["type"] == "ROI" and node["coordinateSystem"] == "LPS" and node["coordinateUnits"] == "mm"
            np.testing.assert_allclose(node["center"], box[:3])
            np.testing.assert_allclose(node["size"], box[3:])


def test_detection_boxes_lie_in_the_scan_in_world_lps_mm(served, detections):
    total = 0
    for image_id, path in served["images"].items():
        boxes = np.array(json.loads(detections[image_id]["parts"]["params"][1])["box"], dtype=float).reshape(-1, 6)
        lo, hi = _world_bounds(sitk.ReadImage(str(path)))
        assert np.all(boxes[:, :3] >= lo - 1e-3) and np.all(boxes[:, :3] <= hi + 1e-3), f"{image_id}: {boxes[:, :3]} not in {lo}..{hi}"
        assert np.all(boxes[:, 3:] > 0)
        total += len(boxes)
        served["notes"][f"boxes {image_id}"] = len(boxes)
    assert total > 0, "no boxes at all: the box checks above would be empty"


def test_detection_equals_the_bundle_run_without_monailabel(served, detections, reference_boxes):
    for image_id in served["images"]:
        boxes = np.array(json.loads(detections[image_id]["parts"]["params"][1])["box"], dtype=float).reshape(-1, 6)
        reference = reference_boxes[image_id]
        assert boxes.shape == reference["box"].shape, f"{image_id}: {len(boxes)} boxes over HTTP, {len(reference['box'])} here"
        np.testing.assert_allclose(boxes, reference["box"], atol=1e-3)


def test_result_write_to_file_false_returns_our_result_with_scores(served, detections, reference_boxes):
    for image_id in served["images"]:
        result = detections[image_id]["result"]
        writer = json.loads(detections[image_id]["parts"]["params"][1])
        assert {"box", "label", "label_scores", "box_format"} <= set(result)
        assert len(result["label_scores"]) == len(result["box"]) == len(result["label"])
        assert all(0.0 <= s <= 1.0 for s in result["label_scores"])
        assert result["box_format"].startswith("cccwhd")
        np.testing.assert_allclose(np.array(result["box"]).reshape(-1, 6), np.array(writer["box"]).reshape(-1, 6), atol=1e-6)
        np.testing.assert_allclose(result["label_scores"], reference_boxes[image_id]["label_scores"], atol=1e-4)
