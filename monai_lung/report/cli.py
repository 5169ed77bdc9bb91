"""``monai-lung markups``: 3D Slicer point lists from a predictions or annotations CSV (the body is
:func:`monai_lung.report.slicer.csv_to_markups`)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``markups`` to the ``monai-lung`` subcommands."""
    p = commands.add_parser("markups", help="3D Slicer point lists (.mrk.json), one per scan, from a predictions or annotations CSV")
    p.add_argument("csv", type=Path, help="LUNA16 predictions (...,probability) or annotations (...,diameter_mm), world mm")
    p.add_argument("--output-dir", type=Path, required=True, help="writes <seriesuid>.mrk.json here")
    p.add_argument("--min-probability", type=float, default=float("-inf"), help="predictions: keep points scoring at least this")
    p.add_argument("--max-per-scan", type=int, default=None, help="predictions: keep the N best points per scan")
    p.set_defaults(func=markups_main)


def markups_main(args: argparse.Namespace) -> int:
    from monai_lung.report.slicer import csv_to_markups

    written = csv_to_markups(args.csv, args.output_dir, min_probability=args.min_probability, max_per_scan=args.max_per_scan)
    print(f"wrote {len(written)} 3D Slicer point lists (<seriesuid>.mrk.json, world LPS mm) to {args.output_dir}")
    return 0
