"""``monai-lung datalist``: a MONAI Decathlon-style data list of a LUNA16-layout folder (the body is
:func:`monai_lung.datalist.build_datalist`)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``datalist`` to the ``monai-lung`` subcommands."""
    p = commands.add_parser("datalist", help="write a MONAI Decathlon-style data list (folds follow LUNA16 subsets)")
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
    p.set_defaults(func=datalist_main)


def datalist_main(args: argparse.Namespace) -> int:
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
