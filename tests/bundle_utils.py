"""Helpers for tests that run bundles through `python -m monai.bundle` and `torchrun` as users do."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_SCHEMA = REPO.parent / "shared" / "monai_bundle_meta_schema_20240725.json"


def copy_bundle(name: str, dest: Path) -> Path:
    """A copy of ``bundles/<name>`` (so tests never write weights into the repository)."""
    target = dest / name
    shutil.copytree(REPO / "bundles" / name, target, ignore=shutil.ignore_patterns("*.pt", "*.ts", "eval", "runs", "cache"))
    return target


def run_cmd(args: list[str], timeout: float = 300, env: dict | None = None) -> str:
    """Run a command, return stdout+stderr; fail the test with the tail of the log on a non-zero exit."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.run(
        args, capture_output=True, encoding="utf-8", errors="replace", timeout=timeout, env=full_env, cwd=str(REPO)
    )
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise AssertionError(f"command failed ({proc.returncode}): {' '.join(args)}\n{out[-6000:]}")
    return out


def bundle_run(run_id: str, config_files: list[Path], overrides: dict, timeout: float = 300) -> str:
    """``python -m monai.bundle run <run_id> --config_file [...] --key value ...``."""
    cfg = str([str(c) for c in config_files]) if len(config_files) > 1 else str(config_files[0])
    args = [sys.executable, "-m", "monai.bundle", "run", run_id, "--config_file", cfg]
    for key, value in overrides.items():
        args += [f"--{key}", str(value)]
    return run_cmd(args, timeout=timeout)


def epoch_losses(log: str) -> dict[int, list[float]]:
    """Per-epoch iteration losses printed by StatsHandler (``Epoch: 2/5, Iter: 1/3 -- train_loss: 0.9``)."""
    losses: dict[int, list[float]] = {}
    for epoch, loss in re.findall(r"Epoch: (\d+)/\d+, Iter: \d+/\d+ -- train_loss: ([0-9.]+)", log):
        losses.setdefault(int(epoch), []).append(float(loss))
    return losses


def untrained_detection_bundle(root: Path) -> Path:
    """The detection bundle under ``root`` with untrained (seeded) networks: enough to run every step of a command."""
    import torch

    from monai_lung.detection.loading import assemble_two_stage, bundle_parser

    names = ("lung_nodule_ct_segmentation", "lung_nodule_ct_classification", "lung_nodule_ct_two_stage_detection")
    bundles = {n: copy_bundle(n, root) for n in names}
    torch.manual_seed(0)
    for n in names[:2]:
        net = bundle_parser(bundles[n]).get_parsed_content("network_def")
        (bundles[n] / "models").mkdir(exist_ok=True)
        torch.save(net.state_dict(), bundles[n] / "models" / "model.pt")
    assemble_two_stage(*(bundles[n] for n in names))
    return bundles[names[2]]
