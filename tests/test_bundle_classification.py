"""The stage-2 bundle run as users run it: `python -m monai.bundle` and `torchrun`, on tiny synthetic scans."""

from __future__ import annotations

import re
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from monai_lung.stage2 import CropBankSettings, build_crop_bank
from tests.bundle_utils import SHARED_SCHEMA, REPO, bundle_run, copy_bundle, run_cmd

NAME = "lung_nodule_ct_classification"
CONFIGS = REPO / "bundles" / NAME / "configs"
pytestmark = pytest.mark.slow

FAST = {"num_workers": 0, "epoch_length": 32, "batch_size": 8, "val_batch_size": 32}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """6 size-64 scans (fold 0: 2 train, 2 validation, 2 test), their data list and a crop bank of all of them."""
    from monai_lung.datalist import build_datalist, load_datalist_entries, write_datalist
    from monai_lung.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("cls_data")
    data_dir = root / "data"
    generate_dataset(data_dir, num_scans=6, seed=6, size=64, num_subsets=3)
    dl = build_datalist(data_dir, data_dir / "annotations.csv", data_dir / "annotations_excluded.csv", fold=0)
    assert sum(len(e["nodules"]) for e in dl["training"]) > 0
    write_datalist(root / "dl.json", dl)
    entries = [e for key in ("training", "validation", "test") for e in load_datalist_entries(root / "dl.json", key, data_dir)]
    build_crop_bank(entries, root / "bank", CropBankSettings(positives_per_nodule=4, random_per_scan=8), candidates=data_dir / "candidates.csv")
    return {"root": root, "data_dir": data_dir, "datalist": root / "dl.json", "bank": root / "bank"}


def _common(bundle, data) -> dict:
    return {
        "bundle_root": bundle, "dataset_dir": data["data_dir"], "data_list_file_path": data["datalist"],
        "crop_bank_dir": data["bank"],
    }


def _checkpoints(bundle) -> list[int]:
    return sorted(int(m.group(1)) for p in (bundle / "models").glob("checkpoint*.pt") if (m := re.search(r"(\d+)\.pt$", p.name)))


def test_training_writes_checkpoints_and_resumes(data, tmp_path):
    bundle = copy_bundle(NAME, tmp_path)
    cfg = [bundle / "configs" / "train.json"]
    log = bundle_run("training", cfg, {**_common(bundle, data), **FAST, "max_epochs": 2})
    assert (bundle / "models" / "model.pt").is_file()
    assert _checkpoints(bundle) == [2]
    assert re.search(r"val_auc: [0-9.]+", log) and re.search(r"val_accuracy: [0-9.]+", log)
    assert len(re.findall(r"Epoch: 1/2, Iter: \d+/4 -- train_loss", log)) == 4  # 32 crops per epoch / batch 8
    weights = torch.load(bundle / "models" / "model.pt", weights_only=True)
    assert "fc.weight" in weights and weights["fc.weight"].shape == (2, 128)
    # model.pt is the last epoch's network (the resumable checkpoint holds the same); the best-validation one is kept beside it
    last = torch.load(bundle / "models" / "checkpoint_epoch=2.pt", weights_only=False)["network"]
    assert all(torch.equal(weights[k], last[k]) for k in last)
    assert (bundle / "models" / "model_best_val_auc.pt").is_file()
    log = bundle_run("training", cfg, {**_common(bundle, data), **FAST, "max_epochs": 3, "resume": True})
    assert "epoch 2 until 3 epochs" in log, "training did not resume from epoch 2"
    assert "Epoch: 1/3" not in log and "Epoch: 3/3" in log
    assert _checkpoints(bundle) == [3]


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    """A bundle copy trained for one short epoch (its models/model.pt), shared by the tests that only read it."""
    bundle = copy_bundle(NAME, tmp_path_factory.mktemp("cls_trained"))
    bundle_run("training", [bundle / "configs" / "train.json"], {**_common(bundle, data), **FAST, "max_epochs": 1})
    assert (bundle / "models" / "model.pt").is_file()
    return bundle


def _copy_trained(trained, tmp_path):
    import shutil

    bundle = tmp_path / NAME
    shutil.copytree(trained, bundle)
    return bundle


def test_evaluate_writes_metrics(data, trained, tmp_path):
    bundle = _copy_trained(trained, tmp_path)
    bundle_run("run", [bundle / "configs" / "train.json", bundle / "configs" / "evaluate.json"], {**_common(bundle, data), **FAST})
    metrics = dict(line.split(",") for line in (bundle / "eval" / "metrics.csv").read_text(encoding="utf-8").split())
    assert set(metrics) == {"val_auc", "val_accuracy"}
    assert 0.0 <= float(metrics["val_auc"]) <= 1.0 and 0.0 <= float(metrics["val_accuracy"]) <= 1.0


def test_multi_gpu_config_trains_one_epoch_on_two_cpu_ranks(data, tmp_path):
    bundle = copy_bundle(NAME, tmp_path)
    cfg = str([str(bundle / "configs" / "train.json"), str(bundle / "configs" / "multi_gpu_train.json")])
    # --standalone: a free rendezvous port, so parallel test runs do not collide on 29500
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            "-m", "monai.bundle", "run", "training", "--config_file", cfg]
    for key, value in {**_common(bundle, data), **FAST, "max_epochs": 1}.items():
        args += [f"--{key}", str(value)]
    log = run_cmd(args, timeout=300)
    # epoch_length counts crops over all ranks: 32 crops / 2 ranks / batch 8 = 2 iterations each
    assert len(re.findall(r"Epoch: 1/1, Iter: \d+/2 -- train_loss", log)) == 2, "only rank 0 logs, 2 iterations"
    assert (bundle / "models" / "model.pt").is_file() and _checkpoints(bundle) == [1]
    weights = torch.load(bundle / "models" / "model.pt", weights_only=True)  # rank 0's final network, unwrapped from DDP
    assert "fc.weight" in weights and not any(k.startswith("module.") for k in weights)


def test_inference_scores_every_point_of_a_csv(data, trained, tmp_path):
    bundle = _copy_trained(trained, tmp_path)
    cands = pd.read_csv(data["data_dir"] / "candidates.csv", dtype={"seriesuid": str})
    points = cands[["seriesuid", "coordX", "coordY", "coordZ"]].copy()
    points.loc[len(points)] = [points.seriesuid.iloc[0], 500.0, 500.0, 500.0]  # far outside its scan: padding, still scored
    points = points.sample(frac=1.0, random_state=0).reset_index(drop=True)  # scans interleaved
    points_csv = tmp_path / "points.csv"
    points.to_csv(points_csv, index=False)
    out = tmp_path / "out" / "probabilities.csv"
    bundle_run(
        "inference", [bundle / "configs" / "inference.json"],
        {"bundle_root": bundle, "dataset_dir": data["data_dir"], "candidates_csv": points_csv, "output_file": out, "tta": True},
    )
    scored = pd.read_csv(out, dtype={"seriesuid": str})
    assert list(scored.columns) == ["seriesuid", "coordX", "coordY", "coordZ", "probability"]
    assert len(scored) == len(points)
    assert (scored["seriesuid"] == points["seriesuid"]).all()
    np.testing.assert_allclose(scored[["coordX", "coordY", "coordZ"]].to_numpy(), points[["coordX", "coordY", "coordZ"]].to_numpy())
    assert scored["probability"].between(0.0, 1.0).all() and scored["probability"].notna().all()
    assert not any(p.name.startswith(".") for p in out.parent.iterdir()), "temporary file left behind"
    # scans found through a data list instead of the folder layout give the same scores
    out2 = tmp_path / "out2.csv"
    bundle_run(
        "inference", [bundle / "configs" / "inference.json"],
        {"bundle_root": bundle, "dataset_dir": data["data_dir"], "data_list_file_path": data["datalist"],
         "candidates_csv": points_csv, "output_file": out2, "tta": True},
    )
    np.testing.assert_allclose(pd.read_csv(out2)["probability"], scored["probability"], atol=1e-6)
    # `monai-lung score` runs the same bundle in process: same numbers
    import argparse

    from monai_lung.stage2.cli import add_score_arguments, score_main

    parser = argparse.ArgumentParser()
    add_score_arguments(parser)
    out3 = tmp_path / "out3.csv"
    score_main(parser.parse_args(["--stage2-bundle", str(bundle), "--points", str(points_csv), "--output", str(out3),
                                  "--data-dir", str(data["data_dir"]), "--tta", "--device", "cpu"]))
    np.testing.assert_allclose(pd.read_csv(out3)["probability"], scored["probability"], atol=1e-5)


def test_metadata_follows_the_monai_schema():
    if not SHARED_SCHEMA.is_file():
        pytest.skip(f"{SHARED_SCHEMA} is absent (it is shared by the project's CI, not shipped to users)")
    out = run_cmd([sys.executable, "-m", "monai.bundle", "verify_metadata", "--meta_file", str(CONFIGS / "metadata.json"),
                   "--filepath", str(SHARED_SCHEMA)])
    assert "metadata is verified with no error" in out


def test_network_matches_its_declared_inputs_and_outputs():
    out = run_cmd([sys.executable, "-m", "monai.bundle", "verify_net_in_out", "network_def", "--meta_file", str(CONFIGS / "metadata.json"),
                   "--config_file", str(CONFIGS / "inference.json")])
    assert "data shape of network is verified with no error" in out


def test_train_and_inference_define_the_same_network():
    import json

    train = json.loads((CONFIGS / "train.json").read_text(encoding="utf-8"))
    infer = json.loads((CONFIGS / "inference.json").read_text(encoding="utf-8"))
    assert train["network_def"] == infer["network_def"]
    assert train["patch_size"] == infer["patch_size"]


def test_synthetic_nodules_take_the_crop_banks_spacing(data, tmp_path):
    """Crops are plain tensors: the training chain's RandCentreNoduled must get the bank's voxel size, else it
    would draw nodules at 1 mm per voxel in a bank cut at another spacing."""
    import json
    import shutil

    from monai.bundle import ConfigParser

    from monai_lung.stage2 import bank_spacing
    from monai_lung.io import DataError
    from monai_lung.transforms import RandCentreNoduled

    assert bank_spacing(data["bank"]) == (1.0, 1.0, 1.0)
    coarse = tmp_path / "bank"
    shutil.copytree(data["bank"], coarse)  # the same crops, as if cut at 1.25 x 1.25 x 2 mm
    record = json.loads((data["bank"] / "bank.json").read_text(encoding="utf-8"))
    record["settings"]["spacing"] = [1.25, 1.25, 2.0]
    (coarse / "bank.json").write_text(json.dumps(record), encoding="utf-8")
    parser = ConfigParser()
    parser.read_config(CONFIGS / "train.json")
    parser.update({**_common(tmp_path, data), "crop_bank_dir": str(coarse)})
    chain = parser.get_parsed_content("train#preprocessing", instantiate=True)
    inserters = [t for t in chain.transforms if isinstance(t, RandCentreNoduled)]
    assert len(inserters) == 1 and tuple(inserters[0].spacing) == (1.25, 1.25, 2.0)
    with pytest.raises(DataError, match="not a crop bank"):
        bank_spacing(tmp_path / "nothing_here")
