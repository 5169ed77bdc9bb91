"""Stage-1 bundle run as users run it: `python -m monai.bundle run training|...` and `torchrun`, on tiny synthetic scans."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import SimpleITK as sitk

from tests.bundle_utils import REPO, bundle_run, copy_bundle, epoch_losses, run_cmd

NAME = "lung_nodule_ct_segmentation"
# small patches and windows keep a CPU epoch to a few seconds; two training scans make an epoch one optimizer
# step, so the rate is high enough for 4 steps to lower the loss (at 0.003 it stayed at ~5.2 +- 0.3 noise once
# half the negatives came from thick vessels)
FAST = {"num_workers": 0, "num_samples": 4, "patch_size": "[32,32,32]", "val_roi_size": "[64,64,64]", "learning_rate": 0.02}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_dataset):
    """Train 4 epochs, then resume to 5: returns (bundle dir, first log, resume log, data dir, data list)."""
    data_dir, datalist = tiny_dataset
    bundle = copy_bundle(NAME, tmp_path_factory.mktemp("seg"))
    # 12 patches per scan per step: with 4, one batch's loss varied by +-0.15 from its content alone, as much as
    # 4 steps lower it (seen as 5.05 -> 5.16 once slice imitation and zoom changed the random draws); with 12 it
    # fell by 0.4-0.6 under four seeds
    common = {"bundle_root": bundle, "dataset_dir": data_dir, "data_list_file_path": datalist, **FAST, "num_samples": 12}
    train = bundle / "configs" / "train.json"
    log1 = bundle_run("training", [train], {**common, "max_epochs": 4, "val_interval": 2})
    log2 = bundle_run("training", [train], {**common, "max_epochs": 5, "val_interval": 2, "resume": True})
    return bundle, log1, log2, data_dir, datalist


@pytest.mark.slow
def test_training_loss_goes_down_and_checkpoints_appear(trained):
    bundle, log1, _, _, _ = trained
    losses = epoch_losses(log1)
    assert sorted(losses) == [1, 2, 3, 4]
    assert np.mean(losses[4]) < np.mean(losses[1])
    assert (bundle / "models" / "model.pt").is_file()
    assert "Saved checkpoint at epoch: 4" in log1
    assert "val_nodule_sensitivity" in log1 and "val_mean_dice" in log1
    assert list((bundle / "eval").glob("events.out.tfevents.*"))  # TensorBoard


@pytest.mark.slow
def test_resume_continues_from_the_last_checkpoint(trained):
    bundle, _, log2, _, _ = trained
    assert sorted(epoch_losses(log2)) == [5]  # epochs 1-4 are not trained again
    # only the newest resumable checkpoint is kept, also across runs
    assert sorted(p.name for p in (bundle / "models").glob("checkpoint*.pt")) == ["checkpoint_epoch=5.pt"]


@pytest.mark.slow
def test_fine_tuning_starts_from_given_weights_and_trains_on_hard_negatives(trained, tmp_path):
    """Stage-1 fine-tuning as the demo runs it: `init_weights` + a data list whose entries carry hard negatives."""
    import json

    import torch
    from monai.bundle import ConfigParser

    bundle, log1, _, data_dir, datalist = trained
    weights = tmp_path / "initial.pt"
    weights.write_bytes((bundle / "models" / "model.pt").read_bytes())
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "train.json"))
    parser.update({"bundle_root": str(bundle), "init_weights": str(weights), "device": "$torch.device('cpu')"})
    loaded = parser.get_parsed_content("network").state_dict()
    saved = torch.load(weights, map_location="cpu", weights_only=True)
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)

    dl = json.loads(datalist.read_text(encoding="utf-8"))
    for entry in dl["training"]:  # a point in each scan: the world position of its centre voxel
        img = sitk.ReadImage(str(data_dir / entry["image"]))
        centre = img.TransformIndexToPhysicalPoint([s // 2 for s in img.GetSize()])
        entry["hard_negatives"] = [{"center": list(centre)}]
    hard_list = tmp_path / "hard.json"
    hard_list.write_text(json.dumps(dl), encoding="utf-8")
    ft = copy_bundle(NAME, tmp_path / "ft")
    log = bundle_run("training", [ft / "configs" / "train.json"], {
        "bundle_root": ft, "dataset_dir": data_dir, "data_list_file_path": hard_list, **FAST, "max_epochs": 1, "val_interval": 1,
        "init_weights": weights, "hard_negative_fraction": 0.75, "learning_rate": 0.0003,
    })
    assert (ft / "models" / "model.pt").is_file()
    # it starts where the first run ended, not from scratch
    assert np.mean(epoch_losses(log)[1]) < np.mean(epoch_losses(log1)[1])


@pytest.mark.slow
def test_evaluate_writes_metrics(trained):
    bundle, _, _, data_dir, datalist = trained
    configs = [bundle / "configs" / "train.json", bundle / "configs" / "evaluate.json"]
    bundle_run("run", configs, {"bundle_root": bundle, "dataset_dir": data_dir, "data_list_file_path": datalist, **FAST})
    metrics = (bundle / "eval" / "metrics.csv").read_text(encoding="utf-8")
    assert "val_mean_dice" in metrics and "val_nodule_sensitivity" in metrics


@pytest.mark.slow
def test_inference_saves_probability_and_mask_in_scan_geometry(trained):
    bundle, _, _, data_dir, datalist = trained
    out = bundle / "eval" / "inference"
    bundle_run(
        "inference",
        [bundle / "configs" / "inference.json"],
        {"bundle_root": bundle, "dataset_dir": data_dir, "data_list_file_path": datalist, "output_dir": out, "num_workers": 0, "roi_size": "[64,64,64]"},
    )
    probs = sorted(out.glob("*_prob.nii.gz"))
    masks = sorted(out.glob("*_mask.nii.gz"))
    import json

    test_entries = json.loads(datalist.read_text(encoding="utf-8"))["test"]
    assert len(probs) == len(masks) == len(test_entries) > 0
    for entry in test_entries:
        scan = sitk.ReadImage(str(data_dir / entry["image"]))
        prob = sitk.ReadImage(str(out / f"{entry['seriesuid']}_prob.nii.gz"))
        mask = sitk.ReadImage(str(out / f"{entry['seriesuid']}_mask.nii.gz"))
        for img in (prob, mask):
            assert img.GetSize() == scan.GetSize()
            np.testing.assert_allclose(img.GetSpacing(), scan.GetSpacing(), rtol=1e-5)
            np.testing.assert_allclose(img.GetOrigin(), scan.GetOrigin(), atol=1e-3)
            np.testing.assert_allclose(img.GetDirection(), scan.GetDirection(), atol=1e-6)
        p = sitk.GetArrayFromImage(prob)
        assert 0.0 <= p.min() and p.max() <= 1.0
        assert set(np.unique(sitk.GetArrayFromImage(mask))) <= {0, 1}


@pytest.mark.slow
def test_multi_gpu_config_runs_with_torchrun_on_cpu(tmp_path, tiny_dataset):
    data_dir, datalist = tiny_dataset
    bundle = copy_bundle(NAME, tmp_path)
    cfg = str([str(bundle / "configs" / "train.json"), str(bundle / "configs" / "multi_gpu_train.json")])
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "monai.bundle", "run", "training", "--config_file", cfg]
    for k, v in {"bundle_root": bundle, "dataset_dir": data_dir, "data_list_file_path": datalist, "max_epochs": 1, "val_interval": 1, **FAST}.items():
        args += [f"--{k}", str(v)]
    log = run_cmd(args)
    assert "Epoch: 1/1" in log and "Traceback" not in log
    assert (bundle / "models" / "checkpoint_epoch=1.pt").is_file()


def test_inference_postprocessing_puts_results_on_the_scan_voxels(tmp_path):
    """The bundle's own preprocessing + postprocessing (Invertd, back to the source grid, SaveImaged) with an
    "identity" prediction: the saved mask must land on the very voxels of a bright block in the scan, not
    mirrored and not shifted, under anisotropic spacing and a flipped axis."""
    import torch
    from monai.bundle import ConfigParser
    from monai.data import MetaTensor

    from monai_lung.io import write_image_atomic
    from tests.conftest import make_image

    arr = np.full((24, 60, 70), -900, dtype=np.int16)  # (z, y, x)
    arr[8:14, 10:25, 40:60] = 200
    image = make_image(arr, spacing_xyz=(0.7, 0.8, 2.5), origin_xyz=(-120.0, 80.0, -300.0), direction=np.diag([1.0, -1.0, 1.0]))
    write_image_atomic(tmp_path / "case.mhd", image)

    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles" / NAME / "configs" / "inference.json"))
    parser["bundle_root"] = str(tmp_path)
    parser["output_dir"] = str(tmp_path / "out")
    data = parser.get_parsed_content("preprocessing")({"image": str(tmp_path / "case.mhd")})
    img = data["image"]
    logits = torch.cat([1 - img.as_tensor(), img.as_tensor()]) * 20 - 10  # nodule logit high on the block
    data["pred"] = MetaTensor(logits, meta=dict(img.meta))
    parser.get_parsed_content("postprocessing")(data)

    mask = sitk.ReadImage(str(tmp_path / "out" / "case_mask.nii.gz"))
    assert mask.GetSize() == image.GetSize()
    np.testing.assert_allclose(mask.GetDirection(), image.GetDirection(), atol=1e-6)
    got = sitk.GetArrayFromImage(mask) > 0
    want = arr > 0
    dice = 2 * (got & want).sum() / (got.sum() + want.sum())
    assert dice > 0.9


@pytest.mark.slow
def test_disk_cache_stores_resampled_volumes_compactly(tmp_path, tiny_dataset):
    """cache=disk: PersistentDataset files hold the 1 mm volume as float16 and the mask as uint8."""
    import torch

    data_dir, datalist = tiny_dataset
    bundle = copy_bundle(NAME, tmp_path)
    cache = tmp_path / "cache"
    bundle_run("training", [bundle / "configs" / "train.json"], {
        "bundle_root": bundle, "dataset_dir": data_dir, "data_list_file_path": datalist, "max_epochs": 1, "val_interval": 1,
        "cache": "disk", "cache_dir": cache, **FAST,
    })
    files = sorted((cache / "train").glob("*.pt"))
    assert len(files) == 2  # one per training scan
    item = torch.load(files[0], weights_only=False)
    assert item["image"].dtype == torch.float16 and item["label"].dtype == torch.uint8
    assert "label_fg_indices" in item and "nodules" not in item


def test_training_patches_draw_synthetic_nodules_on_the_scans_own_slices(tiny_dataset):
    """The bundle's chain as configured: the cache carries the scan's slice grid, the crop the patch's start, and
    a synthetic nodule drawn into a patch of a 2.5 mm-slice scan adds to the image only what linear resampling
    of those slices could give (linear along k between two source slices)."""
    from monai.bundle import ConfigParser
    from monai.transforms import Compose

    from monai_lung.datalist import load_datalist_entries
    from monai_lung.transforms import meta_tracking, patch_slice_grid

    data_dir, datalist = tiny_dataset
    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles" / NAME / "configs" / "train.json"))
    parser.update({"bundle_root": str(REPO / "bundles" / NAME), "dataset_dir": str(data_dir), "data_list_file_path": str(datalist),
                   "patch_size": [32, 32, 32], "num_samples": 8})
    deterministic = Compose(parser.get_parsed_content("train#deterministic_transforms"))
    crop, delete, cast, insert = parser.get_parsed_content("train#random_transforms")[:4]
    entries = load_datalist_entries(str(datalist), "training", str(data_dir))
    steps = []
    checked = 0
    for entry in entries:
        volume = deterministic(dict(entry))
        grid = volume["slice_grid"]
        z_mm = sitk.ReadImage(entry["image"]).GetSpacing()[2]
        assert grid[2, 0] == pytest.approx(z_mm, abs=1e-4)  # RAS k runs along the file's slices, 1 mm grid
        steps.append(z_mm)
        if z_mm < 2.0:
            continue  # under 2 voxels between slices no voxel has both neighbours between the same two
        insert.set_random_state(0)
        with meta_tracking(False):
            for sample in crop(volume):
                sample = cast(delete(sample))
                before = sample["image"].clone()
                after = insert(dict(sample))["image"]
                added = (after - before)[0]
                if added.abs().max() < 0.05:
                    continue
                step, phase = patch_slice_grid(sample["slice_grid"], sample["patch_start"])[2]
                slices = phase + step * np.arange(-1, 32 / step + 2)
                second = added[:, :, :-2] - 2 * added[:, :, 1:-1] + added[:, :, 2:]
                for k in range(1, 31):
                    n = np.searchsorted(slices, k - 1, side="right") - 1
                    if k + 1 <= slices[n + 1]:  # k - 1, k, k + 1 between two slices
                        assert second[:, :, k - 1].abs().max() < 1e-3
                checked += 1
    assert checked > 0 and max(steps) >= 2.0
