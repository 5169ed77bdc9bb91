"""``monai-lung hard-negatives`` / ``crops`` / ``score``: their options and bodies. Heavy imports stay inside the
bodies, so that ``monai-lung --help`` stays fast."""

from __future__ import annotations

import argparse
from pathlib import Path

from monai_lung.deprecation import add_renamed_option


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``hard-negatives``, ``crops`` and ``score`` to the ``monai-lung`` subcommands."""
    p = commands.add_parser("hard-negatives", help="run stage 1 on training scans and label its candidates (hard negatives)")
    add_hard_negative_arguments(p)
    p.set_defaults(func=hard_negatives_main)
    p = commands.add_parser("crops", help="build (or resume) the stage-2 crop bank: nodules and non-nodule points")
    add_crops_arguments(p)
    p.set_defaults(func=crops_main)
    p = commands.add_parser("score", help="stage-2 probability of each point of a CSV (world mm)")
    add_score_arguments(p)
    p.set_defaults(func=score_main)


def _add_scan_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--datalist", type=Path, required=True, help="data list JSON (`monai-lung datalist`)")
    parser.add_argument("--data-dir", type=Path, default=None, help="folder the data list's image paths are relative to (default: the JSON's folder)")
    parser.add_argument(
        "--key", action="append", default=None, help="data list(s) to process, repeatable (default: training)"
    )
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto (default)")


def _entries(args: argparse.Namespace) -> list[dict]:
    from monai_lung.datalist import load_datalist_entries

    entries: list[dict] = []
    for key in args.key or ["training"]:
        entries += load_datalist_entries(args.datalist, key, args.data_dir)
    return entries


def _add_stage1_arguments(parser: argparse.ArgumentParser, required: bool) -> None:
    parser.add_argument(
        "--seg-bundle", type=Path, required=required, default=None,
        help="trained stage-1 bundle (configs/inference.json + models/model.pt): its false positives become hard negatives",
    )
    parser.add_argument("--seg-weights", type=Path, default=None, help="stage-1 weights (default: <seg-bundle>/models/model.pt)")
    parser.add_argument(
        "--det-bundle", type=Path, default=None,
        help="detection bundle whose detector_config sets stage 1 (grid, threshold, masks, merging, cap) as the detector "
        "runs it (default: the detector's defaults)",
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="detector parameter override for stage 1, as for `detect`, e.g. --set seg_threshold=0.5 (JSON values)",
    )


def _miner(args: argparse.Namespace):
    from monai_lung.bundle_args import parse_overrides
    from monai_lung.stage2.mining import HardNegativeMiner

    overrides = parse_overrides(args.set)
    return HardNegativeMiner.from_bundle(
        args.seg_bundle, device=args.device, weights=args.seg_weights, detection_bundle=args.det_bundle, **overrides
    )


def add_crops_arguments(parser: argparse.ArgumentParser) -> None:
    """``crops --datalist DL [--data-dir D] [--key training ...] --output-dir BANK [--candidates candidates.csv]
    [--seg-bundle B1 | --hard-negatives mined.csv] [crop options]``: build or resume a crop bank."""
    from monai_lung.stage2.bank import CropBankSettings

    d = CropBankSettings()
    _add_scan_arguments(parser)
    add_renamed_option(parser, "--output-dir", "--out", type=Path, required=True, help="crop bank folder (created; finished scans are skipped)")
    parser.add_argument("--candidates", type=Path, default=None, help="LUNA16 candidates.csv: class-0 points become negatives")
    parser.add_argument("--hard-negatives", type=Path, default=None, help="labelled stage-1 candidates from `monai-lung hard-negatives`")
    _add_stage1_arguments(parser, required=False)
    parser.add_argument("--crop-size", type=int, default=d.crop_size, help="stored crop edge in voxels (1 mm)")
    parser.add_argument("--positives-per-nodule", type=int, default=d.positives_per_nodule)
    parser.add_argument("--positive-jitter", type=float, default=d.positive_jitter, help="positive offsets: ball of this fraction of the radius")
    parser.add_argument("--random-per-scan", type=int, default=d.random_per_scan, help="random lung points per scan")
    parser.add_argument("--candidates-per-scan", type=int, default=d.candidates_per_scan, help="cap on candidates.csv negatives per scan (-1: all)")
    parser.add_argument("--hard-negatives-per-scan", type=int, default=d.hard_negatives_per_scan, help="cap on stage-1 false positives per scan (-1: all)")
    parser.add_argument("--negative-margin-mm", type=float, default=d.negative_margin_mm, help="extra distance of negatives beyond a nodule's radius")
    parser.add_argument("--seed", type=int, default=d.seed)


def crops_main(args: argparse.Namespace) -> int:
    """Run ``monai-lung crops``; returns 0. Bad input raises :class:`~monai_lung.io.DataError`."""
    from monai_lung.stage2.bank import CropBankSettings, build_crop_bank
    from monai_lung.io import DataError

    if args.seg_bundle is not None and args.hard_negatives is not None:
        raise DataError(None, "give --seg-bundle (mine now) or --hard-negatives (mined before), not both")
    settings = CropBankSettings(
        crop_size=args.crop_size,
        positives_per_nodule=args.positives_per_nodule,
        positive_jitter=args.positive_jitter,
        random_per_scan=args.random_per_scan,
        candidates_per_scan=args.candidates_per_scan,
        hard_negatives_per_scan=args.hard_negatives_per_scan,
        negative_margin_mm=args.negative_margin_mm,
        seed=args.seed,
    )
    entries = _entries(args)
    miner = _miner(args) if args.seg_bundle is not None else None
    print(f"crop bank {args.output_dir}: {len(entries)} scans from {args.datalist} [{', '.join(args.key or ['training'])}]", flush=True)
    summary = build_crop_bank(
        entries, args.output_dir, settings, candidates=args.candidates, miner=miner, hard_negatives=args.hard_negatives,
        log=lambda line: print(line, flush=True),
    )
    sources = ", ".join(f"{k} {v}" for k, v in sorted(summary["by_source"].items()))
    print(f"{summary['scans']} scans cut, {summary['skipped']} already done; the bank holds {summary['crops']} crops ({sources})")
    return 0


def add_hard_negative_arguments(parser: argparse.ArgumentParser) -> None:
    """``hard-negatives --datalist DL [--data-dir D] [--key training] --seg-bundle B1 --output mined.csv``."""
    _add_scan_arguments(parser)
    _add_stage1_arguments(parser, required=True)
    parser.add_argument("--output", type=Path, required=True, help="labelled stage-1 candidates CSV (label 0: hard negative)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="per-scan cache (default: <output stem>_cache beside it)")


def hard_negatives_main(args: argparse.Namespace) -> int:
    """Run ``monai-lung hard-negatives``; returns 0."""
    from monai_lung.stage2.mining import mine_hard_negatives

    entries = _entries(args)
    mined = mine_hard_negatives(entries, _miner(args), args.output, cache_dir=args.cache_dir, log=lambda line: print(line, flush=True))
    print(
        f"wrote {args.output}: {len(mined)} stage-1 candidates on {len(entries)} scans, "
        f"{int((mined['label'] == 0).sum())} hard negatives, {int((mined['label'] == 1).sum())} nodule hits"
    )
    return 0


def add_score_arguments(parser: argparse.ArgumentParser) -> None:
    """``score --stage2-bundle B2 --points P.csv --output O.csv (--data-dir D | --datalist DL) [--tta]``."""
    add_renamed_option(parser, "--stage2-bundle", ("--cls-bundle", "--bundle"), type=Path, required=True,
                       help="trained stage-2 bundle (configs/inference.json + models/model.pt)")
    parser.add_argument("--weights", type=Path, default=None, help="weights (default: <bundle>/models/model.pt)")
    parser.add_argument("--points", type=Path, required=True, help="seriesuid,coordX,coordY,coordZ (world mm, LPS)")
    parser.add_argument("--output", type=Path, required=True, help="seriesuid,coordX,coordY,coordZ,probability")
    parser.add_argument("--data-dir", type=Path, default=None, help="scans (LUNA16 layout), or the base of --datalist paths")
    parser.add_argument("--datalist", type=Path, default=None, help="data list JSON naming the scans (all its lists)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--tta", action="store_true", help="average over flips of each axis (4x slower)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto (default)")


def score_main(args: argparse.Namespace) -> int:
    """Run ``monai-lung score``; returns 0."""
    from monai_lung.stage2.scoring import find_scan_paths, score_points_csv
    from monai_lung.networks import bundle_parser, resolve_device, stage_network

    device = resolve_device(args.device)
    network, parser = stage_network(args.stage2_bundle, weights=args.weights, device=device), bundle_parser(args.stage2_bundle)
    crop = tuple(parser.get_parsed_content("patch_size")) if "patch_size" in parser.config else (32, 32, 32)
    # the bundle's own preprocessing chain, so that the CLI scores exactly what the bundle scores
    preprocessing = parser.get_parsed_content("preprocessing") if "preprocessing" in parser.config else None
    scans = find_scan_paths(args.data_dir, args.datalist)
    out = score_points_csv(
        network, args.points, args.output, scans, preprocessing=preprocessing, batch_size=args.batch_size, device=device,
        tta=args.tta, crop_size=crop, log=lambda line: print(line, flush=True),
    )
    print(f"wrote {args.output}: {len(out)} points")
    return 0
