"""`monai-lung demo` (what `make demo` runs) end to end at toy scale: every step through the real bundles and CLI."""

from __future__ import annotations

import json
import re
import sys

import pytest

from tests.bundle_utils import run_cmd

# 8 scans of 128 voxels in-plane (4 subsets: 4 training, 2 validation, 2 test), one or two short epochs per training
TOY = {
    "num_scans": 8, "size": 128, "stage1_epochs": 1, "stage1_val_scans": 1, "stage1_finetune_epochs": 2,
    "stage2_epochs": 1, "stage2_epoch_length": 32, "bootstrap": 10,
}
STEPS = ["synthesise", "datalist", "train_stage1", "crop_bank", "finetune_stage1", "train_stage2", "assemble", "detect", "evaluate"]


def _demo(work, settings=TOY):
    args = [sys.executable, "-m", "monai_lung", "demo", "--work-dir", str(work)]
    for key, value in settings.items():
        args += ["--set", f"{key}={value}"]
    return run_cmd(args, timeout=600)


@pytest.mark.slow
def test_demo_runs_every_step_and_a_changed_setting_redoes_the_later_steps(tmp_path):
    work = tmp_path / "work"
    log = _demo(work)
    assert [s for s in STEPS if f"[demo] {s} ..." in log] == STEPS
    assert re.search(r"\[demo\] CPM \d\.\d{3} on 2 synthetic test scans", log)
    by_score = re.search(r"CPM by final score .*product \d\.\d{3}, odds_product (\d\.\d{3}) .*stage-1 weight 0\.5\)", log)
    assert by_score, "the comparison re-ranks with the detection bundle's stage1_weight"
    # the detector scores by odds_product with that weight, so the comparison's odds_product is the run's CPM
    assert by_score.group(1) == re.search(r"\[demo\] CPM (\d\.\d{3})", log).group(1)
    for path in ("evaluate/froc.json", "evaluate/froc.png", "evaluate/froc.csv", "detect/report/index.html", "detect/predictions.csv",
                 "finetune_stage1/datalist_hard_negatives.json", "train_summary.json"):
        assert (work / path).is_file(), path
    assert f"[demo] FROC plot: {work / 'evaluate' / 'froc.png'}" in log
    assert f"[demo] detection bundle: {work / 'lung_nodule_ct_two_stage_detection'}" in log
    hard = json.loads((work / "finetune_stage1" / "datalist_hard_negatives.json").read_text(encoding="utf-8"))
    assert all("hard_negatives" not in e for e in hard["test"])
    assert (work / "lung_nodule_ct_two_stage_detection" / "models" / "model.pt").is_file()
    # the fine-tune trains its own copy of the bundle: its checkpoint is its own, the first run's stays beside it
    assert [p.name for p in (work / "finetune_stage1" / "lung_nodule_ct_segmentation" / "models").glob("checkpoint*.pt")] == ["checkpoint_epoch=2.pt"]
    assert [p.name for p in (work / "train_stage1" / "lung_nodule_ct_segmentation" / "models").glob("checkpoint*.pt")] == ["checkpoint_epoch=1.pt"]

    again = _demo(work, {**TOY, "stage1_finetune_epochs": 1})
    kept = [s for s in STEPS if f"[demo] {s}: done before" in again]
    assert kept == ["synthesise", "datalist", "train_stage1", "crop_bank"]  # everything after the changed step runs again
    assert "[demo] evaluate ..." in again
