"""``monai-lung train`` and ``monai-lung demo``: their options and printed summaries; the recipe lives in
:mod:`monai_lung.training.recipe`, the demo in :mod:`monai_lung.training.demo`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from monai_lung.bundle_args import parse_overrides
from monai_lung.io.errors import DataError
from monai_lung.training.profiles import PROFILES, resolve_settings


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``train`` and ``demo`` to the ``monai-lung`` subcommands."""
    from monai_lung.training.demo import add_demo_arguments, run_demo

    p = commands.add_parser("train", help="the whole training recipe on a data folder -> a trained detection bundle (resumable)")
    add_train_arguments(p)
    p.set_defaults(func=train_main)
    p = commands.add_parser("demo", help="the whole pipeline on a synthetic data set (what `make demo` runs)")
    add_demo_arguments(p)
    p.set_defaults(func=run_demo)


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", type=Path, required=True, help="LUNA16 layout (subset0..subset9/<seriesuid>.mhd), or scans directly in it")
    p.add_argument("--annotations", type=Path, required=True, help="annotations.csv (world mm)")
    p.add_argument("--excluded", type=Path, help="annotations_excluded.csv (optional)")
    p.add_argument("--candidates", type=Path, help="candidates.csv / candidates_V2.csv: class-0 points become stage-2 negatives (optional)")
    p.add_argument("--fold", required=True, help="K: test on subsetK, validate on the next subset, train on the rest; "
                   "all: every fold in turn, then all test predictions evaluated together")
    p.add_argument("--work-dir", type=Path, required=True, help="each step's outputs and log (W/<step>/log.txt), W/train_summary.json")
    p.add_argument("--output-bundle", type=Path, required=True,
                   help="the trained two-stage detection bundle (for --fold all: a folder of one bundle per fold)")
    p.add_argument("--profile", choices=sorted(PROFILES), default="luna16",
                   help="settings to start from: luna16 (a GPU and the real data set; default) or demo (the CPU demo's)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one setting (JSON value), e.g. --set stage1_epochs=50; --dry-run lists them")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to train and detect (auto: CUDA when present)")
    p.add_argument("--nproc", type=int, default=1,
                   help="processes per training step and detection (torchrun, DDP through the bundles' multi_gpu_train.json): one per GPU")
    p.add_argument("--allow-missing-scans", action="store_true", help="annotations of scans absent from the data folder are ignored (partial download)")
    p.add_argument("--update", action="store_true", help="the work dir holds a run with other settings: redo the steps they change")
    p.add_argument("--dry-run", action="store_true", help="print the resolved settings and plan (every step, every bundle override), run nothing")


def _options(args: argparse.Namespace, fold: int):
    from monai_lung.training.recipe import TrainOptions

    settings = resolve_settings(args.profile, parse_overrides(args.set))
    return TrainOptions(
        data_dir=args.data_dir, annotations=args.annotations, work_dir=args.work_dir, output_bundle=args.output_bundle,
        settings=settings, fold=fold, excluded=args.excluded, candidates=args.candidates, profile=args.profile,
        device=args.device, nproc=args.nproc, allow_missing_scans=args.allow_missing_scans, update=args.update,
        verbose=bool(getattr(args, "verbose", False)),
    )


def _fold(value: str) -> int | None:
    if value == "all":
        return None
    try:
        fold = int(value)
    except ValueError:
        raise DataError(None, f"--fold must be a subset number (0-9) or all, got {value!r}") from None
    if fold < 0:
        raise DataError(None, f"--fold must be a subset number (0-9) or all, got {value!r}")
    return fold


def train_main(args: argparse.Namespace) -> int:
    from monai_lung.training.steps import StepFailed

    try:
        return _train(args)
    except StepFailed as err:
        print(f"monai-lung train: a step failed: {err}", file=sys.stderr)
        return 1


def _train(args: argparse.Namespace) -> int:
    from monai_lung.training.folds import fold_numbers, run_all_folds
    from monai_lung.training.recipe import TrainingRun, print_result
    from monai_lung.training.steps import SUMMARY

    fold = _fold(args.fold)
    opts = _options(args, 0 if fold is None else fold)
    if args.dry_run:
        print(f"profile {args.profile}, settings:\n" + json.dumps(opts.settings, indent=2))
        folds = fold_numbers(opts.data_dir) if fold is None else [fold]
        if fold is None:
            print(f"--fold all: folds {', '.join(map(str, folds))}, each as below under {opts.work_dir}/fold<K>, then the merged "
                  f"test predictions evaluated in {opts.work_dir}/all_folds")
            opts.work_dir = Path(opts.work_dir) / f"fold{folds[0]}"
            opts.output_bundle = Path(opts.output_bundle) / f"lung_nodule_ct_two_stage_detection_fold{folds[0]}"
            opts.fold = folds[0]
        run = TrainingRun(opts)
        run.check()
        print(run.plan())
        return 0
    if fold is None:
        summary = run_all_folds(opts)
        print(f"[train] all folds: CPM {summary['cpm']:.3f} on {summary['num_scans']} scans; FROC plot {summary['froc']}/froc.png; "
              f"predictions {summary['predictions']}; bundles in {opts.output_bundle}")
        return 0
    run = TrainingRun(opts)
    result = run.run()
    print_result(run, result)
    print(f"[train] summary: {run.work / SUMMARY}")
    return 0
