"""``monai-lung detect`` and ``monai-lung assemble``: their options and process setup (the work is in
:mod:`monai_lung.detection.batch` and :mod:`monai_lung.detection.loading`)."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from monai_lung.bundle_args import parse_overrides
from monai_lung.deprecation import add_renamed_option

logger = logging.getLogger("monai_lung.detect")


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``detect`` and ``assemble`` to the ``monai-lung`` subcommands."""
    p = commands.add_parser("detect", help="two-stage nodule detection over scans or a data list (LUNA16 CSV out)")
    add_detect_arguments(p)
    p.set_defaults(func=detect_main)
    p = commands.add_parser("assemble", help="combine the trained stage bundles into the detection bundle's model.pt")
    add_assemble_arguments(p)
    p.set_defaults(func=assemble_main)


def add_detect_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="*", help="scans to process (.mhd/.mha/.nii.gz files or DICOM folders)")
    p.add_argument("--datalist", type=Path, help="a Decathlon-style data list JSON (instead of IMAGES)")
    p.add_argument("--data-dir", type=Path, help="folder the data list's image paths are relative to")
    p.add_argument("--key", default="test", help="which list of the data list to process (default: test)")
    p.add_argument("--output", type=Path, required=True, help="LUNA16 submission CSV to write (world mm)")
    add_renamed_option(p, "--det-bundle", "--models", type=Path, help="the trained two-stage detection bundle folder (its models/model.pt)")
    p.add_argument("--seg-bundle", type=Path, help="stage-1 bundle folder (with --stage2-bundle, instead of --det-bundle)")
    add_renamed_option(p, "--stage2-bundle", "--cls-bundle", type=Path, help="stage-2 bundle folder")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    p.add_argument("--report-dir", type=Path, help="write one PNG per finding and an index.html here")
    p.add_argument("--max-report-findings", type=int, default=10, help="PNGs per scan in the report")
    p.add_argument("--no-lung-mask", action="store_true", help="run the sliding window over the whole scan")
    p.add_argument("--strict-domain", action="store_true",
                   help="a scan outside the validated range (docs/outputs.md) becomes a failure row naming the reasons, "
                        "instead of findings with warnings")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="detector parameter override, e.g. --set seg_threshold=0.3 --set roi_size=[128,128,128] (JSON values)",
    )
    p.add_argument(
        "--prefetch", type=int, default=1,
        help="scans read and resampled ahead in a background thread while the current one is detected (0: none)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    g = p.add_argument_group("DICOM (docs/dicom.md)")
    g.add_argument("--dicom-out", type=Path, help="write a DICOM SR (TID 1500) and SEG per scan under DICOM_OUT/<SeriesInstanceUID>/ "
                   "(DICOM inputs: IMAGES folders or --dicomweb studies)")
    g.add_argument("--dicom-max-findings", type=int, default=10, help="best findings per scan in the SR and SEG")
    g.add_argument("--dicom-reference", type=Path, metavar="DICOM_DIR",
                   help="for .mhd/.nii IMAGES made from this DICOM series: the SR and SEG reference it (the image must cover "
                   "the series' world box)")
    g.add_argument("--dicomweb", metavar="URL", help="a PACS's DICOMweb root: pull --study over QIDO-RS/WADO-RS (instead of IMAGES)")
    g.add_argument("--study", action="append", default=[], metavar="STUDY_UID", help="StudyInstanceUID to pull from --dicomweb (repeatable)")
    g.add_argument("--store", action="store_true", help="store the SR and SEG back to --dicomweb (STOW-RS)")


def _distributed() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; initialises the process group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))


def detect_main(args: argparse.Namespace) -> int:
    import torch

    from monai_lung.detection.batch import detect_items, failures_path_for, items_from_datalist, items_from_paths
    from monai_lung.detection.loading import load_detector

    if args.prefetch < 0:
        raise SystemExit(f"monai-lung detect: --prefetch must be 0 or more, got {args.prefetch}")
    if sum(map(bool, (args.images, args.datalist, args.dicomweb))) != 1:
        raise SystemExit("monai-lung detect: give one of IMAGES, --datalist or --dicomweb")
    if args.dicom_reference and args.dicom_out is None:
        raise SystemExit("monai-lung detect: --dicom-reference needs --dicom-out")
    if bool(args.dicomweb) != bool(args.study) or (args.store and not args.dicomweb):
        raise SystemExit("monai-lung detect: --dicomweb needs --study STUDY_UID (and --store needs --dicomweb)")
    if args.dicomweb and args.dicom_out is None:
        raise SystemExit("monai-lung detect: --dicomweb needs --dicom-out (the pulled study and the SR/SEG go there)")
    if args.det_bundle is None and not (args.seg_bundle and args.stage2_bundle):
        raise SystemExit("monai-lung detect: give --det-bundle DIR, or both --seg-bundle and --stage2-bundle")
    rank, world, local_rank = _distributed()
    device = args.device
    if world > 1 and device in ("auto", "cuda") and torch.cuda.is_available():
        device = f"cuda:{local_rank}"
    overrides = parse_overrides(args.set)
    if args.no_lung_mask:
        overrides["use_lung_mask"] = False
    detector, prep = load_detector(args.det_bundle, args.seg_bundle, args.stage2_bundle, device=device, config_overrides=overrides)
    items, extra_outputs, pre_failures, facts = (
        dicom_items(args) if (args.dicomweb or args.dicom_out or any(Path(p).is_dir() for p in args.images))
        else (items_from_datalist(args.datalist, args.data_dir, args.key) if args.datalist else items_from_paths(args.images), None, [], {})
    )
    preprocess = prep["transform"]
    if rank == 0:
        logger.info("%d scans; detector on %s; parameters %s", len(items), detector.device, detector.config.to_dict())

    barrier = None
    if world > 1:
        import torch.distributed as dist

        barrier = dist.barrier
    torch.set_grad_enabled(False)
    stats = detect_items(
        detector, preprocess, items, args.output, report_dir=args.report_dir, max_report_findings=args.max_report_findings,
        rank=rank, world_size=world, progress=not args.no_progress, barrier=barrier, prefetch=args.prefetch,
        extra_outputs=extra_outputs, prior_failures=pre_failures, scan_facts=lambda item: facts.get(item.seriesuid, {}),
        strict_domain=args.strict_domain,
    )
    if rank == 0:
        print(
            f"detect: {stats['processed']} scans processed, {stats['skipped']} already done, {stats['failed']} failed "
            f"in {stats['seconds']:.1f} s; {stats['predictions']} predictions in {args.output}"
            + (f"; failures in {failures_path_for(args.output)}" if stats.get("failures_total") else "")
        )
    if world > 1:
        import torch.distributed as dist

        dist.destroy_process_group()
    return 0


def dicom_items(args: argparse.Namespace) -> tuple[list, object, list[dict], dict]:
    """DICOM inputs: ``(items, extra_outputs hook or None, failures, facts)``. Each IMAGES folder or --study becomes
    the series chosen in it (logged with the reason); one that cannot be used or pulled becomes a failure row. An
    image file stays an item as it is; with --dicom-reference its SR and SEG reference that series, if it lies on it.
    ``facts``: by seriesuid, what each DICOM series tells the domain check (slice thickness, kernel, contrast)."""
    from monai_lung.detection.batch import ScanItem, items_from_paths, short_error
    from monai_lung.dicom.pipeline import DicomOutputs, local_scan, pacs_scan
    from monai_lung.dicom.series import check_image_on_series
    from monai_lung.domain import dicom_facts

    if args.datalist:
        raise SystemExit("monai-lung detect: --dicom-out needs DICOM inputs (IMAGES folders or --dicomweb), not --datalist")
    work = args.dicom_out if args.dicom_out is not None else args.output.with_name(args.output.stem + "_dicom")
    items, scans, failures = [], {}, []
    reference = local_scan(args.dicom_reference, work) if args.dicom_reference else None  # a bad one is the whole run's error
    sources = [(study, args.dicomweb) for study in args.study] if args.dicomweb else [(str(p), None) for p in args.images]
    for source, url in sources:
        if url is None and not Path(source).is_dir():
            item = items_from_paths([source])[0]  # a file: read as before
            if reference is not None:
                try:
                    check_image_on_series(source, reference.series)
                except Exception as err:
                    failures.append({"seriesuid": item.seriesuid, "image": source, "error": short_error(err)})
                    continue
                scans[item.seriesuid] = reference
            items.append(item)
            continue
        try:
            scan = pacs_scan(url, source, work) if url else local_scan(source, work)
        except Exception as err:  # a broken series or an unreachable PACS: record it, go on with the others
            failures.append({"seriesuid": source if url else Path(source).name, "image": f"{url}#{source}" if url else source,
                             "error": short_error(err)})
            logger.warning("%s: %s", source, failures[-1]["error"])
            continue
        logger.info("%s", scan.why)
        items.append(ScanItem(scan.seriesuid, scan.image))
        scans[scan.seriesuid] = scan
    hook = None
    if args.dicom_out is not None and scans:
        hook = DicomOutputs(scans, args.dicom_out, args.dicom_max_findings, store_url=args.dicomweb if args.store else None)
    return items, hook, failures, {uid: dicom_facts(scan.series.datasets) for uid, scan in scans.items()}


def add_assemble_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seg-bundle", type=Path, required=True, help="trained stage-1 bundle folder")
    add_renamed_option(p, "--stage2-bundle", "--cls-bundle", type=Path, required=True, help="trained stage-2 bundle folder")
    p.add_argument("--output-bundle", type=Path, required=True, help="the two-stage detection bundle folder")


def assemble_main(args: argparse.Namespace) -> int:
    from monai_lung.detection.loading import assemble_two_stage

    out = assemble_two_stage(args.seg_bundle, args.stage2_bundle, args.output_bundle)
    print(f"assemble: wrote {out} (stage 1 from {args.seg_bundle}, stage 2 from {args.stage2_bundle})")
    return 0
