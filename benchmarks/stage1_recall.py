"""Stage-1 recall benchmark: share of test nodules that the UNet's candidates find, and candidates per scan.

    python benchmarks/stage1_recall.py --bundle demo_output/finetune_stage1/lung_nodule_ct_segmentation \
        --data-dir demo_output/data --datalist demo_output/datalist/datalist.json --key test

A nodule is found when a candidate's centre lies within its radius (the LUNA16 hit rule), candidates
being the connected components of the lung-gated sliding-window probability map (threshold, minimum
size and near-duplicate merging as the detector does them), at most ``--max-candidates`` per scan by
peak probability (the detector's cap).
Prints one line per nodule (diameter, highest probability inside it, found or not) and, for every
threshold, recall and candidates per scan with and without the cap.

With ``--train-minutes M`` it first trains a copy of the bundle (``python -m monai.bundle run training``
in a child process, data loading included) and stops it once the process tree has used M CPU-minutes
(user + system time of the trainer and its data workers; building the in-memory cache of resampled
scans is timed and reported apart, as it is done once per data set and kept on disk for LUNA16).

Stage 1 is the detector's own (:func:`monai_lung.stage1.run.run_stage1`), with the detector's defaults
unless an option here changes them.
"""

from __future__ import annotations

import argparse
import re
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from monai_lung.datalist import load_datalist_entries
from monai_lung.stage1 import Stage1Config, run_stage1, stage1_candidates
from monai_lung.io.coords import world_to_index
from monai_lung.networks import stage_network
from monai_lung.training.checkpoints import latest_checkpoint
from monai_lung.transforms import ct_preprocessing, nodule_arrays

from cpu_time import tree_cpu_seconds


def train_with_budget(bundle: Path, work: Path, args: argparse.Namespace) -> Path:
    """Train a copy of ``bundle`` under ``work`` for ``args.train_minutes`` CPU-minutes; returns the copy.

    The trainer is told to run ``--max-epochs`` epochs (its cosine schedule spans them); once the CPU
    budget is spent it is interrupted and the newest checkpoint (saved every epoch) is used.
    """
    copy = work / "bundle"
    if copy.exists():
        shutil.rmtree(copy)
    shutil.copytree(bundle, copy, ignore=shutil.ignore_patterns("models", "eval", "cache", "runs"))
    (copy / "models").mkdir()
    cmd = [
        sys.executable, "-m", "monai.bundle", "run", "training",
        "--config_file", str(copy / "configs" / "train.json"), "--meta_file", str(copy / "configs" / "metadata.json"),
        "--logging_file", str(copy / "configs" / "logging.conf"), "--bundle_root", str(copy),
        "--dataset_dir", str(args.data_dir), "--data_list_file_path", str(args.datalist),
        "--max_epochs", str(args.max_epochs), "--val_interval", str(10**6), *args.train_args,
    ]
    log = open(work / "train.log", "w", encoding="utf-8")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    cache_cpu = cache_wall = None
    budget = args.train_minutes * 60
    while proc.poll() is None:
        time.sleep(2)
        if cache_cpu is None and "Epoch: 1/" in (work / "train.log").read_text(encoding="utf-8", errors="replace"):
            # the first iteration has begun: what was spent so far built the cache
            cache_cpu, cache_wall = tree_cpu_seconds(proc.pid), time.perf_counter() - start
        if cache_cpu is not None and tree_cpu_seconds(proc.pid) - cache_cpu > budget:
            proc.terminate()
            proc.wait()
            break
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the reaped trainer, its data workers included
    total_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    text = (work / "train.log").read_text(encoding="utf-8", errors="replace")
    epochs = re.findall(r"Epoch\[(\d+)\] Complete", text)
    print(
        f"[train] cache built in {cache_wall or 0:.0f} s wall / {cache_cpu or 0:.0f} CPU-s; "
        f"{len(epochs)} epochs in {wall - (cache_wall or 0):.0f} s wall and {total_cpu - (cache_cpu or 0):.0f} CPU-s "
        f"(budget {budget:.0f} CPU-s) "
        f"(log: {work / 'train.log'})",
        flush=True,
    )
    checkpoint = latest_checkpoint(copy / "models")
    if checkpoint is None:
        raise SystemExit(f"training produced no checkpoint; see {work / 'train.log'}")
    # the detector loads models/model.pt: the newest epoch's weights (nothing is selected on test data)
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    torch.save(state["network"], copy / "models" / "model.pt")
    return copy


def probability_maps(bundle: Path, entries: list[dict], cfg: Stage1Config):
    """Yields (entry, :class:`~monai_lung.stage1.run.Stage1Result`, seconds) per scan: the detector's own
    stage 1 (:func:`~monai_lung.stage1.run.run_stage1`) with ``cfg``, preprocessing included in the seconds."""
    network = stage_network(str(bundle))
    prep = ct_preprocessing()
    for entry in entries:
        t = time.perf_counter()
        image = prep({"image": entry["image"]})["image"]
        result = run_stage1(network, image, cfg)
        yield entry, result, time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--datalist", type=Path, required=True)
    p.add_argument("--key", default="test")
    p.add_argument("--thresholds", default="0.1,0.2,0.3,0.5", help="comma-separated candidate thresholds")
    p.add_argument("--max-candidates", type=int, default=30, help="per-scan cap, by peak probability")
    p.add_argument("--min-voxels", type=int, default=Stage1Config.min_voxels)
    p.add_argument(
        "--candidate-lung-margin", type=float, default=Stage1Config.candidate_lung_margin_mm,
        help="mm; candidate centres must lie in the lungs grown by this (negative: anywhere)",
    )
    p.add_argument("--roi", type=int, default=Stage1Config.roi_size[0], help="sliding-window edge (voxels)")
    p.add_argument(
        "--seg-spacing", type=float, default=Stage1Config.seg_spacing[0],
        help="the isotropic grid stage 1 runs on (mm; the detector's seg_spacing; 0: the 1 mm training grid)",
    )
    p.add_argument(
        "--flip-axes", default=",".join(map(str, Stage1Config.seg_flip_axes)),
        help="stage-1 flip test-time augmentation as the detector runs it (comma-separated axes; '' for none)",
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work-dir", type=Path, default=Path("stage1_bench"), help="trained copy and its logs")
    p.add_argument("--train-minutes", type=float, default=0.0, help="train a copy of --bundle first (CPU-minutes)")
    p.add_argument("--max-epochs", type=int, default=60, help="epochs the trainer plans for (cosine schedule)")
    p.add_argument("--train-args", nargs=argparse.REMAINDER, default=[], help="extra bundle overrides, e.g. --learning_rate 0.01")
    args = p.parse_args()
    args.flip_axes = tuple(int(a) for a in args.flip_axes.split(",") if a.strip())
    torch.set_num_threads(args.threads)
    margin = None if args.candidate_lung_margin < 0 else args.candidate_lung_margin
    thresholds = [float(t) for t in args.thresholds.split(",")]
    # the detector's stage 1 with the benchmark's grid, window size and flips; every component kept (no cap)
    args.detector_config = Stage1Config(
        candidate_lung_margin_mm=margin, min_voxels=args.min_voxels, max_candidates=10**6, seg_threshold=min(thresholds),
        seg_spacing=(args.seg_spacing,) * 3 if args.seg_spacing else None, roi_size=(args.roi,) * 3, seg_flip_axes=args.flip_axes,
    )
    args.work_dir.mkdir(parents=True, exist_ok=True)
    args.data_dir, args.datalist = args.data_dir.resolve(), args.datalist.resolve()
    bundle = args.bundle
    if args.train_minutes > 0:
        bundle = train_with_budget(args.bundle, args.work_dir, args)

    entries = load_datalist_entries(str(args.datalist), args.key, str(args.data_dir))
    found = {t: [0, 0] for t in thresholds}  # uncapped, capped
    counts = {t: [] for t in thresholds}
    total, seconds = 0, []
    for entry, stage1, sec in probability_maps(bundle, entries, args.detector_config):
        prob, affine, core = stage1.prob, stage1.affine, stage1.lung_core
        seconds.append(sec)
        centres, diameters = nodule_arrays(entry["nodules"])
        total += len(centres)
        per_threshold = {}
        for t in thresholds:
            cands = stage1_candidates(prob, affine, replace(args.detector_config, seg_threshold=t), core)
            pts = cands[["coordX", "coordY", "coordZ"]].to_numpy()
            counts[t].append(len(cands))
            hit = []
            for c, d in zip(centres, diameters):
                dist = np.linalg.norm(pts - c, axis=1) if len(pts) else np.zeros(0)
                inside = np.flatnonzero(dist <= d / 2)
                hit.append(inside.min() if inside.size else None)  # rank of the best candidate on it
            found[t][0] += sum(h is not None for h in hit)
            found[t][1] += sum(h is not None and h < args.max_candidates for h in hit)
            per_threshold[t] = hit
        # the highest probability within each nodule's radius: how far it is from being found
        for n, (c, d) in enumerate(zip(centres, diameters)):
            idx = np.round(world_to_index(c, affine, space="RAS", points_space="LPS")).astype(int)
            r = int(np.ceil(d / 2))
            lo, hi = np.maximum(idx - r, 0), np.minimum(idx + r + 1, prob.shape)
            peak = float(prob[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]].max()) if np.all(hi > lo) else 0.0
            ranks = " ".join(f"{t}:{'-' if per_threshold[t][n] is None else per_threshold[t][n]}" for t in thresholds)
            print(f"  {entry['seriesuid'][-12:]} nodule {n} d={d:5.1f} mm  peak p={peak:.3f}  rank@threshold {ranks}")
        print(
            f"{entry['seriesuid']}: candidates " + ", ".join(f"{t}: {counts[t][-1]}" for t in thresholds) + f"; {sec:.1f} s",
            flush=True,
        )
    print(f"\nstage-1 recall on {total} nodules of {len(seconds)} scans ({np.mean(seconds):.1f} s per scan, roi {args.roi}):")
    for t in thresholds:
        capped = np.minimum(counts[t], args.max_candidates)
        print(
            f"  threshold {t}: {found[t][0]}/{total} = {found[t][0] / max(total, 1):.3f} with {np.mean(counts[t]):.1f} "
            f"candidates/scan (max {max(counts[t])}); capped at {args.max_candidates}: "
            f"{found[t][1]}/{total} = {found[t][1] / max(total, 1):.3f} with {np.mean(capped):.1f}/scan"
        )


if __name__ == "__main__":
    main()
