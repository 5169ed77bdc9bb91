"""``monai-lung`` command line: argument parsing and progress only; the work lives in the package modules."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from monai_lung.io.errors import DataError


def _cmd_synth(args: argparse.Namespace) -> int:
    from monai_lung.synthetic import generate_dataset

    summary = generate_dataset(
        args.out, num_scans=args.num_scans, seed=args.seed, size=args.size, num_subsets=args.num_subsets, progress=True
    )
    print(
        f"wrote {summary['num_scans']} scans, {summary['num_nodules']} nodules, {summary['num_excluded']} excluded findings, "
        f"{summary['num_candidates']} candidates to {args.out}"
    )
    return 0


def _cmd_datalist(args: argparse.Namespace) -> int:
    from monai_lung.datalist import add_hard_negatives, build_datalist, write_datalist

    datalist = build_datalist(
        args.data_dir,
        args.annotations,
        excluded_csv=args.excluded,
        fold=args.fold,
        allow_missing_scans=args.allow_missing_scans,
    )
    hard = ""
    if args.hard_negatives is not None:
        count = add_hard_negatives(datalist, args.hard_negatives, args.hard_negatives_per_scan, args.hard_negatives_min_peak)
        hard = f", {count} stage-1 hard negatives"
    write_datalist(args.output, datalist)
    counts = ", ".join(f"{k} {len(datalist[k])}" for k in ("training", "validation", "test"))
    print(f"wrote {args.output}: fold {args.fold} ({counts} scans{hard})")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from monai_lung.evaluation.cli import evaluate_main

    return evaluate_main(args)


def _cmd_detect(args: argparse.Namespace) -> int:
    from monai_lung.detection.cli import detect_main

    return detect_main(args)


def _cmd_assemble(args: argparse.Namespace) -> int:
    from monai_lung.detection.cli import assemble_main

    return assemble_main(args)


def _cmd_markups(args: argparse.Namespace) -> int:
    from monai_lung.report.slicer import csv_to_markups

    written = csv_to_markups(args.csv, args.output_dir, min_probability=args.min_probability, max_per_scan=args.max_per_scan)
    print(f"wrote {len(written)} 3D Slicer point lists (<seriesuid>.mrk.json, world LPS mm) to {args.output_dir}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from monai_lung.demo import run_demo

    return run_demo(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="monai-lung", description="MONAI-based two-stage lung nodule detection for chest CT (LUNA16 layout)."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synth", help="write a synthetic LUNA16-layout data set (phantom chest CTs)")
    p.add_argument("out", type=Path, help="output folder (subsetK/<uid>.mhd, annotations*.csv, candidates.csv)")
    p.add_argument("--num-scans", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=512, help="in-plane size in voxels (512 like real CT; 64-128 for tests)")
    p.add_argument("--num-subsets", type=int, default=10, help="spread scans over subset0..subset{N-1}")
    p.set_defaults(func=_cmd_synth)

    p = sub.add_parser("datalist", help="write a MONAI Decathlon-style data list (folds follow LUNA16 subsets)")
    p.add_argument("--data-dir", type=Path, required=True, help="folder holding subset0..subset9")
    p.add_argument("--annotations", type=Path, required=True, help="annotations.csv (world mm)")
    p.add_argument("--excluded", type=Path, default=None, help="annotations_excluded.csv (optional)")
    p.add_argument("--fold", type=int, default=0, help="test subset K; validation is the next subset present")
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--allow-missing-scans", action="store_true", help="skip annotations whose scan is absent")
    p.add_argument("--hard-negatives", type=Path, default=None, metavar="PATH",
                   help="mined stage-1 false positives (<crop bank>/hard_negatives, or the CSV of `monai-lung hard-negatives`): "
                        "added to training and validation entries for stage-1 fine-tuning")
    p.add_argument("--hard-negatives-per-scan", type=int, default=64, help="highest-scoring false positives kept per scan")
    p.add_argument("--hard-negatives-min-peak", type=float, default=0.5, help="only false positives with this stage-1 peak or more")
    p.set_defaults(func=_cmd_datalist)

    try:
        from monai_lung.evaluation.cli import add_evaluate_arguments
    except ImportError:  # pragma: no cover - the evaluation package ships with monai_lung
        add_evaluate_arguments = None
    if add_evaluate_arguments is not None:
        p = sub.add_parser("evaluate", help="LUNA16 FROC / CPM of a predictions CSV, with bootstrap CIs")
        add_evaluate_arguments(p)
        p.set_defaults(func=_cmd_evaluate)

    from monai_lung.detection.cli import add_assemble_arguments, add_detect_arguments

    p = sub.add_parser("detect", help="two-stage nodule detection over scans or a data list (LUNA16 CSV out)")
    add_detect_arguments(p)
    p.set_defaults(func=_cmd_detect)

    p = sub.add_parser("assemble", help="combine the trained stage bundles into the detection bundle's model.pt")
    add_assemble_arguments(p)
    p.set_defaults(func=_cmd_assemble)

    from monai_lung.stage2.cli import (
        add_crops_arguments,
        add_hard_negative_arguments,
        add_score_arguments,
        crops_main,
        hard_negatives_main,
        score_main,
    )

    p = sub.add_parser("hard-negatives", help="run stage 1 on training scans and label its candidates (hard negatives)")
    add_hard_negative_arguments(p)
    p.set_defaults(func=hard_negatives_main)

    p = sub.add_parser("crops", help="build (or resume) the stage-2 crop bank: nodules and non-nodule points")
    add_crops_arguments(p)
    p.set_defaults(func=crops_main)

    p = sub.add_parser("score", help="stage-2 probability of each point of a CSV (world mm)")
    add_score_arguments(p)
    p.set_defaults(func=score_main)

    p = sub.add_parser("markups", help="3D Slicer point lists (.mrk.json), one per scan, from a predictions or annotations CSV")
    p.add_argument("csv", type=Path, help="LUNA16 predictions (...,probability) or annotations (...,diameter_mm), world mm")
    p.add_argument("--output-dir", type=Path, required=True, help="writes <seriesuid>.mrk.json here")
    p.add_argument("--min-probability", type=float, default=float("-inf"), help="predictions: keep points scoring at least this")
    p.add_argument("--max-per-scan", type=int, default=None, help="predictions: keep the N best points per scan")
    p.set_defaults(func=_cmd_markups)

    from monai_lung.training.cli import add_train_arguments, train_main

    p = sub.add_parser("train", help="the whole training recipe on a data folder -> a trained detection bundle (resumable)")
    add_train_arguments(p)
    p.set_defaults(func=train_main)

    p = sub.add_parser("demo", help="the whole pipeline on a synthetic data set (what `make demo` runs)")
    from monai_lung.demo import add_demo_arguments

    add_demo_arguments(p)
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        return int(args.func(args) or 0)
    except DataError as err:
        if args.verbose:
            raise
        print(f"monai-lung {args.command}: error: {err}", file=sys.stderr)
        return 2
    except SystemExit as stop:  # a command's own usage check: SystemExit("monai-lung detect: give ...")
        if not isinstance(stop.code, str):
            raise
        message = stop.code if stop.code.startswith("monai-lung") else f"monai-lung {args.command}: {stop.code}"
        print(message.replace(f"monai-lung {args.command}: ", f"monai-lung {args.command}: error: ", 1), file=sys.stderr)
        return 2
