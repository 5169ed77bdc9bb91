"""`monai-lung train`: the whole recipe on tiny synthetic scans through the real bundles and CLI: bad input stops
before any long step, an interrupted run resumes with its finished steps kept, `--fold all` merges the folds'
test predictions, `--nproc 2` trains and detects through torchrun (gloo on the CPU)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from monai_lung.cli import main
from monai_lung.synthetic import generate_dataset
from tests.bundle_utils import REPO, run_cmd

# one or two short epochs per training, as tests/test_demo.py's TOY settings
TOY = {"stage1_epochs": 1, "stage1_val_scans": 1, "stage1_finetune_epochs": 2, "stage2_epochs": 2, "stage2_epoch_length": 32,
       "stage2_val_interval": 1, "bootstrap": 10, "detect_report": False}
STEPS = ["datalist", "train_stage1", "crop_bank", "finetune_stage1", "train_stage2", "assemble", "detect", "evaluate"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory):
    """8 scans of 128 voxels in-plane in 4 subsets: fold 0 trains on 4, validates on 2, tests on 2."""
    data = tmp_path_factory.mktemp("train_data") / "data"
    generate_dataset(data, num_scans=8, seed=3, size=128, num_subsets=4)
    return data


def train_args(data: Path, work: Path, bundle: Path, *extra: str, fold: str = "0", settings: dict | None = None) -> list[str]:
    args = [sys.executable, "-m", "monai_lung", "train", "--data-dir", str(data), "--annotations", str(data / "annotations.csv"),
            "--excluded", str(data / "annotations_excluded.csv"), "--candidates", str(data / "candidates.csv"), "--fold", fold,
            "--work-dir", str(work), "--output-bundle", str(bundle), "--profile", "demo", "--device", "cpu"]
    for key, value in (TOY if settings is None else settings).items():
        args += ["--set", f"{key}={json.dumps(value)}"]
    return args + list(extra)


def fails(args: list[str], capsys) -> str:
    """Run ``monai-lung train`` in this process (its real entry point) on bad input: exit code 2 and one line on
    stderr; returns that line."""
    assert args[:3] == [sys.executable, "-m", "monai_lung"]
    code = main(args[3:])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("monai-lung train: error: "), err
    return lines[0]


def test_bad_input_stops_before_any_step_with_one_line(tmp_path, toy_data, capsys):
    work, bundle = tmp_path / "work", tmp_path / "bundle"
    empty = tmp_path / "empty"
    empty.mkdir()
    args = train_args(toy_data, work, bundle)
    args[args.index("--data-dir") + 1] = str(empty)
    assert f"{empty}: no scans found" in fails(args, capsys)
    other = tmp_path / "other.csv"
    other.write_text("seriesuid,coordX,coordY,coordZ,diameter_mm\n1.2.840.999,0,0,0,5\n")
    args = train_args(toy_data, work, bundle)
    args[args.index("--annotations") + 1] = str(other)
    assert f"{other}: none of its 1 seriesuids has a scan" in fails(args, capsys)
    assert "fold 7: no folder subset7" in fails(train_args(toy_data, work, bundle, fold="7"), capsys)
    assert "--set expects KEY=VALUE, got 'stage1_epochs'" in fails(train_args(toy_data, work, bundle, "--set", "stage1_epochs"), capsys)
    assert "--set stage1_epoch: unknown setting" in fails(train_args(toy_data, work, bundle, "--set", "stage1_epoch=3"), capsys)
    assert "setting stage2_epochs must be a positive whole number" in fails(train_args(toy_data, work, bundle, "--set", "stage2_epochs=0"), capsys)
    assert not work.exists() and not bundle.exists()  # nothing was started
    # a work dir holding a run with other settings
    work.mkdir()
    (work / "train_summary.json").write_text(json.dumps({"identity": {"fold": 0, "stage1_epochs": 5}}))
    assert "holds a run with other settings" in fails(train_args(toy_data, work, bundle), capsys)


def test_dry_run_prints_every_step_and_bundle_override(tmp_path, toy_data, capsys):
    args = train_args(toy_data, tmp_path / "w", tmp_path / "b", "--dry-run", "--nproc", "2", settings={}) + ["--profile", "luna16"]
    assert main(args[3:]) == 0
    log = capsys.readouterr().out
    for step in STEPS:
        assert f"{step}: -> {tmp_path / 'w' / step}/" in log
    assert "torch.distributed.run --standalone --nproc_per_node=2 -m monai.bundle run training" in log
    assert "multi_gpu_train.json" in log and "--max_epochs 100" in log and "--cache disk" in log and "--synthetic_nodule_prob 0.2" in log
    assert "'network_def#channels': [16, 32, 64, 128, 256]" in log and "'network_def#segmenter#channels': [16, 32, 64, 128, 256]" in log
    assert "-m monai_lung detect" in log and not (tmp_path / "w").exists()


def _kill_when(args: list[str], line: str, timeout: float = 600, log: Path | None = None, log_text: str = "") -> str:
    """Start ``args``; once a line of its output contains ``line`` (and then, with ``log``, once that file contains
    ``log_text``), kill it and its children; return the output."""
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, encoding="utf-8", errors="replace", env=ENV, cwd=str(REPO),
                            start_new_session=True)
    out, start = [], time.monotonic()
    try:
        for text in proc.stdout:
            out.append(text)
            if line in text:
                # the step's command is running: kill it mid-way, however fast this machine finishes a toy epoch
                while log is not None and log_text not in (log.read_text(encoding="utf-8", errors="replace") if log.is_file() else ""):
                    assert time.monotonic() - start < timeout, "".join(out)[-3000:]
                    time.sleep(0.1)
                break
            assert time.monotonic() - start < timeout, "".join(out)[-3000:]
        else:
            raise AssertionError(f"never saw {line!r}:\n" + "".join(out)[-3000:])
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return "".join(out)


@pytest.mark.slow
def test_an_interrupted_run_resumes_and_its_bundle_detects(tmp_path, toy_data):
    work, bundle = tmp_path / "work", tmp_path / "out" / "lung_nodule_ct_two_stage_detection"
    first = _kill_when(train_args(toy_data, work, bundle), "[train] train_stage2 ...", log=work / "train_stage2" / "log.txt",
                       log_text="Epoch: 1/")
    assert [s for s in STEPS if f"[train] {s}: " in first] == STEPS[:4]
    assert not (work / "train_stage2" / "step.json").read_text(encoding="utf-8").count('"done"')

    again = run_cmd(train_args(toy_data, work, bundle), timeout=900)
    kept = [s for s in STEPS if f"[train] {s}: done before" in again]
    assert kept == STEPS[:4]  # finished steps are skipped; the interrupted one and all later ones run
    assert all(f"[train] {s} ..." in again for s in STEPS[4:])
    assert "[train] CPM " in again
    summary = json.loads((work / "train_summary.json").read_text(encoding="utf-8"))
    assert [(r["name"], r["outcome"]) for r in summary["steps"]] == [(s, "kept") for s in STEPS[:4]] + [(s, "done") for s in STEPS[4:]]
    assert all(r["seconds"] >= 0 for r in summary["steps"]) and summary["settings"]["stage2_epochs"] == 2
    # the trained bundle is a copy of the template with both stages' weights; the repository's bundles stay untouched
    assert (bundle / "models" / "model.pt").is_file() and (bundle / "configs" / "inference.json").is_file()
    assert (work / "finetune_stage1" / "lung_nodule_ct_segmentation" / "models" / "model.pt").is_file()

    preds = tmp_path / "preds.csv"
    run_cmd([sys.executable, "-m", "monai_lung", "detect", "--datalist", str(work / "datalist" / "datalist.json"), "--data-dir", str(toy_data),
             "--key", "test", "--det-bundle", str(bundle), "--output", str(preds), "--device", "cpu", "--no-progress"])
    table = pd.read_csv(preds, dtype={"seriesuid": str})
    assert list(table.columns[:5]) == ["seriesuid", "coordX", "coordY", "coordZ", "probability"]
    assert table.equals(pd.read_csv(work / "detect" / "predictions.csv", dtype={"seriesuid": str}))

    # other settings in the same work dir: refused, naming them; with --update only the steps they change run again
    changed = train_args(toy_data, work, bundle, settings={**TOY, "bootstrap": 20})
    refused = subprocess.run(changed, capture_output=True, encoding="utf-8", errors="replace", env=ENV, cwd=str(REPO), timeout=300)
    assert refused.returncode == 2 and "bootstrap 10 -> 20" in refused.stderr
    third = run_cmd(changed + ["--update"], timeout=600)
    assert [s for s in STEPS if f"[train] {s}: done before" in third] == STEPS[:-1]
    assert "[train] evaluate ..." in third

    # a failing step: exit code 1, one line naming the command and its log, the failure recorded in the summary
    broken = train_args(toy_data, work, bundle, "--update", settings={**TOY, "bootstrap": 20, "stage2_overrides": {"learning_rate": "oops"}})
    proc = subprocess.run(broken, capture_output=True, encoding="utf-8", errors="replace", env=ENV, cwd=str(REPO), timeout=600)
    assert proc.returncode == 1
    assert f"monai-lung train: a step failed: monai.bundle run exited with 1; its log: {work / 'train_stage2' / 'log.txt'}" in proc.stderr
    summary = json.loads((work / "train_summary.json").read_text(encoding="utf-8"))
    assert [(r["name"], r["outcome"]) for r in summary["steps"]] == [(s, "kept") for s in STEPS[:4]] + [("train_stage2", "failed")]


@pytest.mark.slow
def test_all_folds_with_two_processes_merge_into_one_evaluation(tmp_path, toy_data):
    """Two subsets (folds 0 and 1) plus scans outside the subset folders (always training); every training step
    and the test detection run as two torchrun processes (gloo)."""
    data = tmp_path / "data"
    shutil.copytree(toy_data, data)
    for subset in ("subset2", "subset3"):
        for path in (data / subset).iterdir():
            path.rename(data / path.name)
        (data / subset).rmdir()
    work, bundles = tmp_path / "work", tmp_path / "bundles"
    settings = {**TOY, "stage1_val_scans": None, "stage1_finetune_epochs": 0, "bootstrap": 0}
    log = run_cmd(train_args(data, work, bundles, "--nproc", "2", fold="all", settings=settings), timeout=1500)
    for k in (0, 1):
        fold_log = (work / f"fold{k}" / "train_stage1" / "log.txt").read_text(encoding="utf-8")
        assert "--nproc_per_node=2" in fold_log and "multi_gpu_train.json" in fold_log
        assert "--nproc_per_node=2" in (work / f"fold{k}" / "detect" / "log.txt").read_text(encoding="utf-8")
        assert (bundles / f"lung_nodule_ct_two_stage_detection_fold{k}" / "models" / "model.pt").is_file()
        assert f"[train fold {k}] evaluate: " in log
    merged = pd.read_csv(work / "all_folds" / "predictions.csv", dtype={"seriesuid": str})
    folds = [pd.read_csv(work / f"fold{k}" / "detect" / "predictions.csv", dtype={"seriesuid": str}) for k in (0, 1)]
    assert len(merged) == sum(len(f) for f in folds)
    summary = json.loads((work / "all_folds" / "summary.json").read_text(encoding="utf-8"))
    assert summary["folds"] == [0, 1] and summary["num_scans"] == 4  # the two test subsets' scans
    froc = json.loads((work / "all_folds" / "froc" / "froc.json").read_text(encoding="utf-8"))
    assert froc["counts"]["num_scans"] == 4 and (work / "all_folds" / "froc" / "froc.png").is_file()
    assert f"CPM {froc['cpm']:.3f} on 4 scans" in log
    # resumable: a second run keeps every fold's steps
    again = run_cmd(train_args(data, work, bundles, "--nproc", "2", fold="all", settings=settings), timeout=600)
    assert again.count("done before") == 2 * len(STEPS)
