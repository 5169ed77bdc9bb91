"""``monai-lung evaluate``: its options and body (the work is :func:`monai_lung.evaluation.run.run_evaluation`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from monai_lung.io import DataError


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``evaluate`` to the ``monai-lung`` subcommands."""
    p = commands.add_parser("evaluate", help="LUNA16 FROC / CPM of a predictions CSV, with bootstrap CIs")
    add_evaluate_arguments(p)
    p.set_defaults(func=evaluate_main)


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``evaluate`` options to ``parser``.

    ``--annotations A.csv [--excluded E.csv] --predictions P.csv (--datalist FILE.json [--key test] |
    --seriesuids F.csv|- | --data-dir D) --output-dir OUT [--bootstrap 1000] [--seed 0]``. CSV coordinates are world mm (LPS).
    """
    parser.add_argument("--annotations", type=Path, required=True, help="annotations.csv: seriesuid,coordX,coordY,coordZ,diameter_mm (world mm)")
    parser.add_argument(
        "--excluded",
        type=Path,
        default=None,
        help="annotations_excluded.csv: predictions on these findings are ignored (negative diameter: 10 mm assumed)",
    )
    parser.add_argument("--predictions", type=Path, required=True, help="seriesuid,coordX,coordY,coordZ,probability (world mm)")
    scans = parser.add_mutually_exclusive_group(required=True)
    scans.add_argument("--datalist", type=Path, help="Decathlon-style data list JSON; its --key list names the evaluated scans")
    scans.add_argument(
        "--seriesuids", type=Path,
        help="CSV with a seriesuid column, or one seriesuid per line: a file, a pipe or - (standard input)",
    )
    scans.add_argument(
        "--data-dir", type=Path,
        help="evaluate every scan found in this data folder (subset0..subset9/<uid>.mhd, or scans directly in it)",
    )
    parser.add_argument("--key", default="test", help="list of --datalist to evaluate (default: test)")
    parser.add_argument("--output-dir", type=Path, required=True, help="receives froc.json, froc.csv, froc.png, nodules.csv")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples of the scans for 95%% CIs (0: none)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")


def evaluate_main(args: argparse.Namespace) -> int:
    """Run ``monai-lung evaluate`` with parsed ``args``; returns 0. Bad input raises :class:`DataError`."""
    from monai_lung.evaluation.run import run_evaluation
    from monai_lung.evaluation.scanlist import read_data_dir_seriesuids, read_datalist_seriesuids, read_seriesuid_list

    if getattr(args, "datalist", None) is not None:
        seriesuids = read_datalist_seriesuids(args.datalist, key=args.key)
        source = f"{args.datalist} [{args.key}]"
    elif getattr(args, "seriesuids", None) is not None:
        seriesuids = read_seriesuid_list(args.seriesuids)
        source = "standard input" if str(args.seriesuids) == "-" else str(args.seriesuids)
    elif getattr(args, "data_dir", None) is not None:
        seriesuids = read_data_dir_seriesuids(args.data_dir)
        source = f"the scans in {args.data_dir}"
    else:  # the parser makes one of them required; this guards direct calls
        raise DataError(None, "evaluate needs --datalist, --seriesuids or --data-dir to know which scans are evaluated")
    if args.bootstrap < 0:
        raise DataError(None, f"--bootstrap must be >= 0, got {args.bootstrap}")
    print(f"evaluating {len(seriesuids)} scans from {source}")
    run_evaluation(
        args.annotations,
        args.predictions,
        args.output_dir,
        excluded_csv=args.excluded,
        seriesuids=seriesuids,
        n_bootstrap=args.bootstrap,
        seed=args.seed,
        log=print,
    )
    return 0
