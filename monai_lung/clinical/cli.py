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

    p.add_argument("--prior", help="the prior CT: a scan file or a DICOM series/study folder; with --dicomweb a StudyInstanceUID or "
                                   "auto (the patient's most recent earlier CT study, the default)")
    p.add_argument("--current", type=Path, help="the current CT: a scan file or a DICOM series/study folder (or --dicomweb --study)")
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
    g = p.add_argument_group("DICOM (docs/clinical.md)")
    g.add_argument("--dicom-out", type=Path, help="write the current exam's DICOM SR (TID 1500, both time points) and SEG under "
                   "DICOM_OUT/<SeriesInstanceUID>/ (the current scan must be a DICOM series)")
    g.add_argument("--prior-sr", type=Path, help="the prior exam's SR written by monai_lung: matched nodules keep its tracking UIDs")
    g.add_argument("--dicomweb", metavar="URL", help="a PACS's DICOMweb root: pull --study (the current exam) and the prior over QIDO-RS/WADO-RS")
    g.add_argument("--study", metavar="STUDY_UID", help="the current exam's StudyInstanceUID on --dicomweb")
    g.add_argument("--store", action="store_true", help="store the SR and SEG back to --dicomweb (STOW-RS)")


def followup_main(args: argparse.Namespace) -> int:
    from monai_lung.clinical.detections import Detections
    from monai_lung.clinical.followup import read_input, run_followup

    if not 0.0 <= args.threshold <= 1.0:
        raise SystemExit(f"monai-lung followup: --threshold must lie in [0, 1], got {args.threshold}")
    if args.store and not args.dicomweb:
        raise SystemExit("monai-lung followup: --store needs --dicomweb")
    if args.prior_sr is not None:
        from monai_lung.clinical.followup_dicom import check_prior_sr

        if args.dicom_out is None and not args.dicomweb:
            raise SystemExit("monai-lung followup: --prior-sr needs --dicom-out (its tracking UIDs go into the current SR)")
        check_prior_sr(args.prior_sr)
    work = args.output_dir / "dicom_series"
    dicom_out = args.dicom_out
    if args.dicomweb:
        if not args.study or args.current is not None:
            raise SystemExit("monai-lung followup: --dicomweb needs --study STUDY_UID (the current exam) instead of --current")
        prior, current = pacs_inputs(args, work)
        dicom_out = dicom_out or args.output_dir / "dicom"
    else:
        if args.prior is None or args.current is None:
            raise SystemExit("monai-lung followup: give --prior and --current (or --dicomweb --study)")
        prior = read_input("prior", args.prior, args.prior_date, work)
        current = read_input("current", args.current, args.current_date, work)
    detections = Detections(args.det_bundle, args.findings_dir or args.output_dir / "findings", args.device, parse_overrides(args.set))
    result = run_followup(prior, current, detections, args.output_dir, threshold=args.threshold, affine=args.registration == "affine",
                          report=not args.no_report, max_report=args.max_report, repeatability_pct=args.volume_repeatability,
                          dicom_out=dicom_out, prior_sr=args.prior_sr, store_url=args.dicomweb if args.store else None)
    counts = ", ".join(f"{n} {s}" for s, n in result["counts"].items() if n)
    stored = f"; SR stored to {args.dicomweb}" if result.get("dicom", {}).get("stored") else ""
    print(f"followup: {prior.date} -> {current.date} ({result['interval_days']} days): {counts or 'no nodules'}; exam Lung-RADS "
          f"{result['exam']['category']}; registration residual {result['registration']['residual_mm']} mm; "
          f"{result['timings_s']['total']:.1f} s; wrote {args.output_dir / 'followup.csv'}{stored} (research use only)")
    return 0


def pacs_inputs(args: argparse.Namespace, work: Path):
    """``(prior, current)`` :class:`~monai_lung.clinical.followup.ScanInput` pulled from ``--dicomweb``: the current
    exam ``--study``, and the prior ``--prior`` (a StudyInstanceUID, a local path, or auto: the patient's most recent
    earlier CT study, found by QIDO-RS)."""
    from monai_lung.clinical.followup import read_input
    from monai_lung.clinical.followup_dicom import find_prior_study
    from monai_lung.dicom.pipeline import pacs_scan
    from monai_lung.io.errors import DataError

    current_scan = pacs_scan(args.dicomweb, args.study, work)
    current = read_input("current", current_scan.image, args.current_date, work)
    choice = args.prior or "auto"
    if choice != "auto" and Path(choice).exists():
        return read_input("prior", choice, args.prior_date, work), current
    if choice == "auto":
        if not current.patient:
            raise DataError(args.dicomweb, f"study {args.study} names no patient (PatientID): its prior cannot be looked up")
        choice = find_prior_study(args.dicomweb, args.study, current.patient, current.date)
    prior_scan = pacs_scan(args.dicomweb, choice, work)
    return read_input("prior", prior_scan.image, args.prior_date, work), current
