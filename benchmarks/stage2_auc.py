"""Stage-2 quality and speed on a default-size synthetic LUNA16-layout set, all on this CPU.

    .venv/bin/python benchmarks/stage2_auc.py [--work-dir /tmp/stage2_bench] [--train-minutes 10]
        [--seg-bundle B1 (a trained stage-1 bundle: hard negatives in training and stage-1 false positives in the test)]

Steps (each reuses what an earlier run left in ``--work-dir``):

1. throughput of the bundle's network: inference and training crops/s (median and best of repeats, and per
   CPU-second; the CPU may be shared with other work, the best run is closest to the network's own cost);
2. ``generate_dataset(num_scans=30, size=512, num_subsets=3)``; a data list training on subsets 1 and 2
   (20 scans) and testing on subset 0 (10 scans);
3. the crop bank (``build_crop_bank``: nodules, class-0 ``candidates.csv`` points, random lung points, and
   stage-1 false positives with ``--seg-bundle``) of all 30 scans;
4. training with the bundle's ``train.json`` (in this process, through ``monai.bundle.ConfigWorkflow``) for
   as many epochs as fit in ``--train-minutes`` CPU-minutes (CPU time of this process and its data
   workers, so that other work on a shared machine does not shorten training) at the cost of its first
   two epochs, with 10 % to spare (a hard stop guards the limit), validated once at the end on the test scans' bank crops (the weights are the last epoch's:
   nothing is selected on the test set);
5. test ROC AUC: every annotated nodule centre of the test scans (positives) against the scans' class-0
   ``candidates.csv`` points and random lung points (and, with ``--seg-bundle``, stage-1 false positives),
   scored from the scans with :func:`monai_lung.stage2.score_points` exactly as the inference bundle does.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "lung_nodule_ct_classification"
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(REPO))


from cpu_time import tree_cpu_seconds  # noqa: E402  (after the path set-up above)
from stage2_speed import bundle_patch_edge  # noqa: E402


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC (ties count half) from (N,) 0/1 labels and (N,) scores."""
    from monai.metrics import compute_roc_auc

    return float(compute_roc_auc(torch.as_tensor(scores, dtype=torch.float64), torch.as_tensor(labels)))


def make_datalist(data_dir: Path, out: Path) -> dict:
    """Fold 0 with subsets 1 and 2 for training and subset 0 for test (also the end-of-training validation)."""
    from monai_lung.datalist import build_datalist, write_datalist

    dl = build_datalist(data_dir, data_dir / "annotations.csv", data_dir / "annotations_excluded.csv", fold=0)
    dl["training"] = dl["training"] + dl["validation"]
    dl["validation"] = list(dl["test"])
    write_datalist(out, dl)
    return dl


def network_throughput(repeats: int = 5) -> dict:
    """The bundle network's crops/s (see ``stage2_speed.measure_network``), channels-last as the bundle runs it."""
    from stage2_speed import bundle_network_kwargs, measure_network

    return measure_network(bundle_network_kwargs(), channels_last=True, batch=16, repeats=repeats)


def run_training(work: Path, datalist: Path, data_dir: Path, bank: Path, minutes: float, args) -> tuple[torch.nn.Module, dict]:
    """Train with the bundle's train.json for at most ``minutes`` CPU-minutes; returns the network and figures.

    CPU time counts this process's threads and its DataLoader workers. The first epoch measures what an
    epoch costs (data loading included); the number of epochs and the cosine schedule's length are then
    set so that training ends within the budget (a hard stop guards it). Validation (on the bank crops of
    the test scans) runs once, after training, on the final weights.
    """
    from ignite.engine import Events
    from monai.bundle import ConfigWorkflow

    bundle = work / "bundle"
    if bundle.exists():
        shutil.rmtree(bundle)
    shutil.copytree(BUNDLE, bundle, ignore=shutil.ignore_patterns("*.pt", "eval"))
    cfg = json.loads((bundle / "configs" / "train.json").read_text())
    budget_s = minutes * 60.0
    overrides = {
        "bundle_root": str(bundle), "dataset_dir": str(data_dir), "data_list_file_path": str(datalist),
        "crop_bank_dir": str(bank), "max_epochs": 1000, "epoch_length": args.epoch_length, "val_interval": 10**6,
        "num_workers": args.num_workers,
    }
    if args.train_seed is not None:
        overrides["seed"] = args.train_seed
    wf = ConfigWorkflow(
        config_file=str(bundle / "configs" / "train.json"), meta_file=str(bundle / "configs" / "metadata.json"),
        logging_file=str(bundle / "configs" / "logging.conf"), workflow_type="train", **overrides,
    )
    wf.initialize()
    trainer = wf.parser.get_parsed_content("train#trainer")
    scheduler = wf.parser.get_parsed_content("lr_scheduler")
    start, cpu0 = time.perf_counter(), tree_cpu_seconds()

    @trainer.on(Events.EPOCH_COMPLETED(once=2))
    def _plan(engine):
        # two epochs: the first one is cheaper (no checkpoint yet, warm caches); 10 % kept for what varies
        per_epoch = (tree_cpu_seconds() - cpu0) / 2
        epochs = max(2, int(0.9 * budget_s / per_epoch))
        if args.max_epochs:
            epochs = min(epochs, args.max_epochs)
        engine.state.max_epochs = epochs
        scheduler.T_max = epochs
        print(f"[train] first epochs {per_epoch:.0f} CPU-s each ({(time.perf_counter() - start) / 2:.0f} s wall): "
              f"training {epochs} epochs of {args.epoch_length} crops", flush=True)

    @trainer.on(Events.ITERATION_COMPLETED(every=5))
    def _budget(engine):
        if tree_cpu_seconds() - cpu0 > budget_s:
            print("[train] CPU budget reached: stopping", flush=True)
            engine.terminate()

    wf.run()
    elapsed, cpu = time.perf_counter() - start, tree_cpu_seconds() - cpu0
    network = wf.parser.get_parsed_content("network")
    evaluator = wf.parser.get_parsed_content("validate#evaluator")
    evaluator.run(global_epoch=trainer.state.epoch)  # also writes model.pt (the final weights)
    metrics = {k: float(v) for k, v in evaluator.state.metrics.items()}
    wf.finalize()
    return network, {
        "epochs_run": trainer.state.epoch, "train_s": elapsed, "train_cpu_s": cpu, "crops_seen": trainer.state.iteration * cfg["batch_size"],
        "batch_size": cfg["batch_size"], **metrics,
    }


def test_points(entry: dict, candidates: pd.DataFrame, image, lung: np.ndarray, n_random: int, seed: int) -> pd.DataFrame:
    """Test points of one scan: nodule centres (1), class-0 candidates (0), random lung points (0); world LPS mm."""
    from monai_lung.io.annotations import away_from_findings, finding_arrays
    from monai_lung.stage2.bank import random_lung_points, scan_rng
    from monai_lung.io import index_to_world

    nod_c, nod_r = finding_arrays(entry["nodules"])
    exc_c, exc_r = finding_arrays(entry["excluded"])
    rows = [pd.DataFrame({"x": nod_c[:, 0], "y": nod_c[:, 1], "z": nod_c[:, 2], "label": 1, "source": "nodule"})]
    cand = candidates[(candidates["seriesuid"] == entry["seriesuid"]) & (candidates["class"] == 0)]
    xyz = cand[["coordX", "coordY", "coordZ"]].to_numpy()
    keep = away_from_findings(xyz, nod_c, nod_r) & away_from_findings(xyz, exc_c, exc_r)
    rows.append(pd.DataFrame({"x": xyz[keep, 0], "y": xyz[keep, 1], "z": xyz[keep, 2], "label": 0, "source": "candidates_csv"}))
    affine = image.affine.numpy()
    space = str(image.meta.get("space", "RAS"))

    def accept(idx):
        w = np.atleast_2d(index_to_world(idx.astype(float), affine, space=space, points_space="LPS"))
        return away_from_findings(w, nod_c, nod_r) & away_from_findings(w, exc_c, exc_r)

    # a different stream from the bank's random points (those are the training scans' anyway)
    vox = random_lung_points(lung, n_random, scan_rng(seed + 1000, entry["seriesuid"], 9), accept)
    w = np.atleast_2d(index_to_world(vox.astype(float), affine, space=space, points_space="LPS")).reshape(-1, 3)
    rows.append(pd.DataFrame({"x": w[:, 0], "y": w[:, 1], "z": w[:, 2], "label": 0, "source": "random_lung"}))
    return pd.concat(rows, ignore_index=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/stage2_bench"))
    parser.add_argument("--num-scans", type=int, default=30)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--num-subsets", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--train-minutes", type=float, default=10.0, help="training budget in CPU-minutes (process + workers)")
    parser.add_argument("--epoch-length", type=int, default=1024)
    parser.add_argument("--max-epochs", type=int, default=0, help="cap on epochs (0: as many as fit the budget)")
    parser.add_argument("--num-workers", type=int, default=1)
    parser.add_argument("--train-seed", type=int, default=None, help="override the bundle's training seed")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: no OpenMP spin-waiting on a shared CPU)")
    parser.add_argument("--random-test-points", type=int, default=30, help="random lung points per test scan")
    parser.add_argument("--seg-bundle", type=Path, default=None, help="trained stage-1 bundle for hard negatives")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--no-tta", action="store_true", help="skip the flip-TTA test figure (4x the scoring time)")
    parser.add_argument("--weights", type=Path, default=None, help="score the test set with these weights instead of training")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from monai_lung.datalist import load_datalist_entries
    from monai_lung.stage2.scoring import score_points
    from monai_lung.stage2 import CropBankSettings, build_crop_bank
    from monai_lung.io import read_candidates, voxel_spacing
    from monai_lung.synthetic import generate_dataset
    from monai_lung.transforms import ct_preprocessing, lung_mask

    work = args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    figures: dict = {"machine": f"{torch.get_num_threads()} torch threads, CPU shared with other work"}

    if not args.skip_speed:
        r = network_throughput()
        figures["network_speed"] = r
        print(f"[speed] bundle network, batch 16 of its patch_size crops, {args.threads} thread(s): inference {r['infer_wall_median']:.1f} crops/s "
              f"(best {r['infer_wall_best']:.1f}, {r['infer_cpu_median']:.1f} per CPU-s), training {r['train_wall_median']:.1f} crops/s "
              f"(best {r['train_wall_best']:.1f}, {r['train_cpu_median']:.1f} per CPU-s)", flush=True)

    data_dir = work / "data"
    t = time.perf_counter()
    if not (data_dir / "annotations.csv").is_file():
        generate_dataset(data_dir, num_scans=args.num_scans, seed=args.seed, size=args.size, num_subsets=args.num_subsets)
        print(f"[data] {args.num_scans} scans of size {args.size} in {time.perf_counter() - t:.0f} s", flush=True)
    datalist = work / "datalist.json"
    dl = make_datalist(data_dir, datalist)
    print(f"[data] training {len(dl['training'])} scans ({sum(len(e['nodules']) for e in dl['training'])} nodules), "
          f"test {len(dl['test'])} scans ({sum(len(e['nodules']) for e in dl['test'])} nodules)", flush=True)

    miner = None
    if args.seg_bundle is not None:
        from monai_lung.stage2 import HardNegativeMiner

        miner = HardNegativeMiner.from_bundle(args.seg_bundle)
    bank = work / ("bank_hard" if miner is not None else "bank")
    entries = load_datalist_entries(datalist, "training", data_dir) + load_datalist_entries(datalist, "test", data_dir)
    t = time.perf_counter()
    summary = build_crop_bank(entries, bank, CropBankSettings(), candidates=data_dir / "candidates.csv", miner=miner,
                              log=lambda line: print("[bank] " + line, flush=True))
    figures["bank"] = summary
    print(f"[bank] {summary['scans']} scans cut in {time.perf_counter() - t:.0f} s ({summary['skipped']} cached): {summary['by_source']}", flush=True)

    if args.weights is None:
        network, train_fig = run_training(work, datalist, data_dir, bank, args.train_minutes, args)
        crop = (bundle_patch_edge(),) * 3  # the crop size the bundle trains on
        figures["training"] = train_fig
        print(f"[train] {train_fig['epochs_run']} epochs, {train_fig['crops_seen']} crops in {train_fig['train_cpu_s'] / 60:.1f} CPU-min "
              f"({train_fig['train_s']:.0f} s wall): {train_fig['crops_seen'] / train_fig['train_s']:.1f} crops/s wall, "
              f"{train_fig['crops_seen'] / train_fig['train_cpu_s']:.1f} crops per CPU-s, data loading and checkpoints included; "
              f"bank val AUC {train_fig.get('val_auc', float('nan')):.4f}", flush=True)
    else:
        from monai.bundle import ConfigParser

        from monai_lung.networks import load_weights

        # the network definition of the bundle the weights were trained with (<bundle>/models/model.pt)
        own = args.weights.resolve().parent.parent / "configs" / "train.json"
        cfg = ConfigParser()
        cfg.read_config(str(own if own.is_file() else BUNDLE / "configs" / "train.json"))
        network = load_weights(cfg.get_parsed_content("network_def"), args.weights)
        crop = tuple(int(v) for v in cfg.get_parsed_content("patch_size"))
        figures["weights"] = str(args.weights)

    network.eval()
    candidates = read_candidates(data_dir / "candidates.csv")
    preprocess = ct_preprocessing("image")
    frames = []
    t_score, n_scored = 0.0, 0
    for entry in load_datalist_entries(datalist, "test", data_dir):
        image = preprocess({"image": entry["image"]})["image"]
        lung = lung_mask(image, voxel_spacing(image))
        pts = test_points(entry, candidates, image, lung, args.random_test_points, args.seed)
        if miner is not None:
            mined = miner(image, entry)
            fp = mined[mined["label"] == 0]
            pts = pd.concat([pts, pd.DataFrame({"x": fp.coordX, "y": fp.coordY, "z": fp.coordZ, "label": 0, "source": "stage1_fp"})], ignore_index=True)
        xyz = pts[["x", "y", "z"]].to_numpy()
        t = time.perf_counter()
        pts["prob"] = score_points(network, image, xyz, batch_size=64, crop_size=crop)
        t_score += time.perf_counter() - t
        n_scored += len(pts)
        pts["prob_tta"] = np.nan if args.no_tta else score_points(network, image, xyz, batch_size=64, tta=True, crop_size=crop)
        pts["seriesuid"] = entry["seriesuid"]
        frames.append(pts)
    test = pd.concat(frames, ignore_index=True)
    test.to_csv(work / "test_scores.csv", index=False)
    y = test["label"].to_numpy()
    figures["test"] = {
        "positives": int(y.sum()), "negatives": int((y == 0).sum()),
        "negatives_by_source": {k: int(v) for k, v in test[y == 0]["source"].value_counts().items()},
        "auc": roc_auc(y, test["prob"].to_numpy()),
        "auc_tta": float("nan") if args.no_tta else roc_auc(y, test["prob_tta"].to_numpy()),
        "scoring_crops_s": n_scored / max(t_score, 1e-9),
    }
    for source in test[y == 0]["source"].unique():
        sel = (y == 1) | (test["source"] == source).to_numpy()
        figures["test"][f"auc_vs_{source}"] = roc_auc(y[sel], test["prob"].to_numpy()[sel])
    f = figures["test"]
    print(f"[test] {f['positives']} nodules vs {f['negatives']} negatives {f['negatives_by_source']}", flush=True)
    print(f"[test] ROC AUC {f['auc']:.4f} (flip TTA {f['auc_tta']:.4f}); " + ", ".join(
        f"{k} {v:.4f}" for k, v in f.items() if k.startswith("auc_vs_")), flush=True)
    print(f"[test] scoring from the scans: {f['scoring_crops_s']:.1f} crops/s (crop extraction + network, no TTA)", flush=True)
    (work / "figures.json").write_text(json.dumps(figures, indent=2))
    print(f"figures: {work / 'figures.json'}")


if __name__ == "__main__":
    main()
