"""`monai-lung demo` (what `make demo` runs) end to end at toy scale: every step through the real bundles and CLI."""

from __future__ import annotations

import json
import re
import shutil
import sys

import pytest

from tests.bundle_utils import REPO, run_cmd

# 8 scans of 128 voxels in-plane (4 subsets: 4 training, 2 validation, 2 test), one or two short epochs per training
TOY = {
    "num_scans": 8, "size": 128, "stage1_epochs": 1, "stage1_val_scans": 1, "stage1_finetune_epochs": 2,
    "stage2_epochs": 1, "stage2_epoch_length": 32, "bootstrap": 10,
}
STEPS = ["synthesise", "datalist", "train_stage1", "crop_bank", "finetune_stage1", "train_stage2", "assemble", "detect", "evaluate"]


def _demo(work, bundles):
    args = [sys.executable, "-m", "monai_lung", "demo", "--work-dir", str(work)]
    for key, value in {**TOY, **bundles}.items():
        args += ["--set", f"{key}={value}"]
    return run_cmd(args, timeout=600)


@pytest.mark.slow
def test_demo_runs_every_step_and_a_redone_step_redoes_the_later_ones(tmp_path):
    bundles = {}
    for key, name in (("seg_bundle", "lung_nodule_ct_segmentation"), ("cls_bundle", "lung_nodule_ct_classification"),
                      ("det_bundle", "lung_nodule_ct_two_stage_detection")):
        shutil.copytree(REPO / "bundles" / name, tmp_path / name, ignore=shutil.ignore_patterns("*.pt", "eval", "cache"))
        bundles[key] = str(tmp_path / name)
    work = tmp_path / "work"
    log = _demo(work, bundles)
    assert [s for s in STEPS if f"[demo] {s} ..." in log] == STEPS
    assert re.search(r"\[demo\] CPM \d\.\d{3} on 2 synthetic test scans", log)
    by_score = re.search(r"CPM by final score .*product \d\.\d{3}, odds_product (\d\.\d{3}) .*stage-1 weight 0\.5\)", log)
    assert by_score, "the comparison re-ranks with the detection bundle's stage1_weight"
    # the detector scores by odds_product with that weight, so the comparison's odds_product is the run's CPM
    assert by_score.group(1) == re.search(r"\[demo\] CPM (\d\.\d{3})", log).group(1)
    for path in ("froc/froc.json", "froc/froc.png", "froc/froc.csv", "report/index.html", "predictions.csv",
                 "stage1_before_finetune.pt", "datalist_fold0_hard_negatives.json"):
        assert (work / path).is_file(), path
    hard = json.loads((work / "datalist_fold0_hard_negatives.json").read_text(encoding="utf-8"))
    assert all("hard_negatives" not in e for e in hard["test"])
    assert (tmp_path / "lung_nodule_ct_two_stage_detection" / "models" / "model.pt").is_file()
    # the first run's resumable checkpoint went before the fine-tune: a resume must find the fine-tune's own
    assert [p.name for p in (tmp_path / "lung_nodule_ct_segmentation" / "models").glob("checkpoint*.pt")] == ["checkpoint_epoch=2.pt"]

    (work / ".demo_steps" / "finetune_stage1.done").unlink()
    again = _demo(work, bundles)
    kept = [s for s in STEPS if f"[demo] {s}: done before, kept" in again]
    assert kept == ["synthesise", "datalist", "train_stage1", "crop_bank"]  # everything after the redone step runs again
    assert "[demo] evaluate ..." in again
