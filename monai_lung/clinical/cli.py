"""``monai-lung followup``: argument parsing and the summary line; the work is :mod:`monai_lung.clinical.followup`."""

from __future__ import annotations

import argparse
from pathlib import Path

from monai_lung.bundle_args import parse_overrides


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``followup`` to the ``monai-lung`` subcommands."""
    p = commands.add_parser("followup", help="compare a CT with the patient's prior CT: matched nodules, growth, VDT, Lung-RADS v2022")
    add_followup_arguments(p)
    p.set_defaults(func=followup_main)


def add_followup_arguments(p: argparse.ArgumentParser) -> None:
    from monai_lung.clinical.followup import DEFAULT_THRESHOLD, VOLUME_REPEATABILITY_PCT

    p.add_argument("--prior", type=Path, help="the prior CT: a scan file or a DICOM series/study folder")
    p.add_argument("--current", type=Path, help="the current CT: a scan file or a DICOM series/study folder")
    p.add_argument("--det-bundle", type=Path, required=True, help="the trained two-stage detection bundle folder")
    p.add_argument("--output-dir", type=Path, required=True, help="writes followup.csv, followup.json and report/ here")
    p.add_argument("--prior-date", metavar="YYYY-MM-DD", help="the prior's date (required for scan files; DICOM: StudyDate)")
    p.add_argument("--current-date", metavar="YYYY-MM-DD", help="the current's date (required for scan files; DICOM: StudyDate)")
    p.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                   help=f"probability of a reported finding (default {DEFAULT_THRESHOLD}: about 1 false positive per scan on "
                        "held-out phantoms); findings below it still match ones above it")
    p.add_argument("--findings-dir", type=Path, default=None,
                   help="keep each scan's findings here and reuse them for a scan already detected with the same bundle "
                        "(default: OUTPUT_DIR/findings)")
    p.add_argument("--registration", choices=("affine", "rigid"), default="affine",
                   help="rigid, or rigid then affine (takes up a different depth of breath)")
    p.add_argument("--volume-repeatability", type=float, default=VOLUME_REPEATABILITY_PCT, metavar="PCT",
                   help="a volume change beyond this percentage makes a nodule grown or shrunk (the status rule)")
    p.add_argument("--no-report", action="store_true", help="no report/ pictures")
    p.add_argument("--max-report", type=int, default=20, help="nodules pictured in the report")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="detector parameter override (as in detect)")


def followup_main(args: argparse.Namespace) -> int:
    from monai_lung.clinical.detections import Detections
    from monai_lung.clinical.followup import read_input, run_followup

    if args.prior is None or args.current is None:
        raise SystemExit("monai-lung followup: give --prior and --current")
    if not 0.0 <= args.threshold <= 1.0:
        raise SystemExit(f"monai-lung followup: --threshold must lie in [0, 1], got {args.threshold}")
    work = args.output_dir / "dicom_series"
    prior = read_input("prior", args.prior, args.prior_date, work)
    current = read_input("current", args.current, args.current_date, work)
    detections = Detections(args.det_bundle, args.findings_dir or args.output_dir / "findings", args.device, parse_overrides(args.set))
    result = run_followup(prior, current, detections, args.output_dir, threshold=args.threshold, affine=args.registration == "affine",
                          report=not args.no_report, max_report=args.max_report, repeatability_pct=args.volume_repeatability)
    counts = ", ".join(f"{n} {s}" for s, n in result["counts"].items() if n)
    print(f"followup: {prior.date} -> {current.date} ({result['interval_days']} days): {counts or 'no nodules'}; exam Lung-RADS "
          f"{result['exam']['category']}; registration residual {result['registration']['residual_mm']} mm; "
          f"{result['timings_s']['total']:.1f} s; wrote {args.output_dir / 'followup.csv'} (research use only)")
    return 0
