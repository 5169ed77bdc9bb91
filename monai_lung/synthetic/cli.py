"""``monai-lung synth`` (a synthetic LUNA16-layout data set, :func:`monai_lung.synthetic.generate_dataset`) and
``monai-lung synth-pairs`` (phantom follow-up pairs, :func:`monai_lung.synthetic.followup.generate_pairs`)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``synth`` and ``synth-pairs`` to the ``monai-lung`` subcommands."""
    p = commands.add_parser("synth", help="write a synthetic LUNA16-layout data set (phantom chest CTs)")
    p.add_argument("out", type=Path, help="output folder (subsetK/<uid>.mhd, annotations*.csv, candidates.csv)")
    p.add_argument("--num-scans", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=512, help="in-plane size in voxels (512 like real CT; 64-128 for tests)")
    p.add_argument("--num-subsets", type=int, default=10, help="spread scans over subset0..subset{N-1}")
    p.add_argument("--nodule-mix", choices=("luna16", "screening"), default="luna16",
                   help="nodule kinds: luna16 (solid, juxta-pleural, juxta-vascular, ground glass) or screening (adds "
                        "part-solid and calcified; writes nodule_kinds.csv)")
    p.add_argument("--masses", nargs="+", default=[], choices=["central", "peripheral"], metavar="KIND",
                   help="lung masses (3-8 cm) per scan, by kind: central, peripheral (also in annotations.csv, masses.csv, masses/)")
    p.add_argument("--slice-spacing", type=float, help="draw every scan on this slice grid (mm) instead of a random one")
    p.add_argument("--slice-thickness", type=float,
                   help="write the scans as reconstructions of this thickness (mm): slab averages of the --slice-spacing slices")
    p.set_defaults(func=synth_main)

    p = commands.add_parser("synth-pairs", help="write phantom follow-up pairs: one patient scanned twice, re-posed, nodules changed")
    p.add_argument("out", type=Path, help="output folder (pair_<k>/prior.mhd, current.mhd, truth.json)")
    p.add_argument("--num-pairs", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=512, help="in-plane size in voxels (as synth)")
    p.set_defaults(func=synth_pairs_main)


def synth_main(args: argparse.Namespace) -> int:
    from monai_lung.synthetic import generate_dataset

    if args.slice_thickness is not None and args.slice_spacing is None:
        raise SystemExit("monai-lung synth: --slice-thickness needs --slice-spacing (the thin grid the scans are drawn on)")
    summary = generate_dataset(
        args.out, num_scans=args.num_scans, seed=args.seed, size=args.size, num_subsets=args.num_subsets, progress=True,
        nodule_mix=args.nodule_mix,
        masses=tuple(args.masses), slice_spacing_mm=args.slice_spacing, slice_thickness_mm=args.slice_thickness,
    )
    masses = sum(s.get("num_masses", 0) for s in summary["scans"])
    print(
        f"wrote {summary['num_scans']} scans, {summary['num_nodules']} nodules{f', {masses} masses' if args.masses else ''}, "
        f"{summary['num_excluded']} excluded findings, {summary['num_candidates']} candidates to {args.out}"
    )
    return 0


def synth_pairs_main(args: argparse.Namespace) -> int:
    from monai_lung.synthetic.followup import generate_pairs

    folders = generate_pairs(args.out, num_pairs=args.num_pairs, seed=args.seed, size=args.size, progress=True)
    print(f"wrote {len(folders)} follow-up pairs (prior.mhd, current.mhd, truth.json with the dates) to {args.out}")
    return 0
