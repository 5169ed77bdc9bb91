"""Detection speed and memory on one scan: wall seconds per stage and the process's peak RSS.

    python benchmarks/detect_speed.py --models bundles/lung_nodule_ct_two_stage_detection
    python benchmarks/detect_speed.py --models ... --slices 800        # a 512x512x800 scan
    python benchmarks/detect_speed.py --random-weights                 # no trained bundle needed

Without ``--scan`` a default-size synthetic scan is generated (512x512, ~0.7 mm pixels, 1-2.5 mm slices;
``--slices N`` resamples it along z to N slices, e.g. 800 for the largest LUNA16 scans). Stages: load
(SimpleITK read), resample (to 1 mm), preprocess (orientation, intensity), lung mask, sliding window,
candidates, classification, writing (JSON + CSV). Peak RSS is the whole process's maximum resident set
(``resource.getrusage``), Python and torch included. ``--random-weights`` times the same networks
untrained: speed does not depend on the weights, except through the number of candidates it classifies.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch


def make_scan(out_dir: Path, slices: int | None, seed: int) -> Path:
    from monai_lung.io import write_image_atomic
    from monai_lung.synthetic import generate_scan

    scan = generate_scan(np.random.default_rng(seed), size=512)
    image = scan.image
    if slices:
        size = list(image.GetSize())
        extent = (size[2] - 1) * image.GetSpacing()[2]
        spacing = (*image.GetSpacing()[:2], extent / (slices - 1))
        image = sitk.Resample(image, [size[0], size[1], slices], sitk.Transform(), sitk.sitkLinear, image.GetOrigin(), spacing,
                              image.GetDirection(), -1000, image.GetPixelID())
    path = out_dir / f"{scan.seriesuid}.mhd"
    write_image_atomic(path, image)
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", type=Path, default=Path("bundles/lung_nodule_ct_two_stage_detection"))
    p.add_argument("--random-weights", action="store_true", help="untrained networks from the bundle's network_def")
    p.add_argument("--scan", type=Path, help="a scan to time (default: a synthetic 512x512 scan)")
    p.add_argument("--slices", type=int, default=None, help="resample the synthetic scan to this many slices")
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="detector parameter override (JSON value)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from monai_lung.detection.batch import ScanItem, run_batch, scan_detector
    from monai_lung.bundle_args import parse_overrides
    from monai_lung.detection.detector import TwoStageDetector, resolve_device
    from monai_lung.detection.loading import bundle_parser, load_detector
    from monai_lung.transforms.preprocessing import ct_preprocessing

    work = Path(tempfile.mkdtemp(prefix="detect_speed_"))
    scan = args.scan or make_scan(work, args.slices, args.seed)
    header = sitk.ImageFileReader()
    header.SetFileName(str(scan))
    header.ReadImageInformation()
    overrides = parse_overrides(args.set)
    if args.random_weights:
        parser = bundle_parser(args.models)
        config = {**parser.get_parsed_content("detector_config"), **overrides, "device": str(resolve_device(args.device))}
        detector = TwoStageDetector(parser.get_parsed_content("network_def"), config)
        prep = {"spacing": parser.get_parsed_content("spacing"), "hu_window": parser.get_parsed_content("hu_window")}
    else:
        detector, prep = load_detector(args.models, device=args.device, config_overrides=overrides)
    preprocess = ct_preprocessing("image", spacing=prep["spacing"], hu_window=prep["hu_window"])
    torch.set_grad_enabled(False)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2

    detect_scan = scan_detector(detector, preprocess)
    captured = {}

    def timed(item):
        captured.update(detect_scan(item))
        return captured

    start = time.perf_counter()
    output = work / "preds.csv"
    run_batch(timed, [ScanItem(scan.stem, str(scan))], output, progress=False)
    total = time.perf_counter() - start
    timings = dict(captured["timings_s"])
    timings["writing"] = max(total - sum(timings.values()), 0.0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(f"scan {scan.name}: {header.GetSize()} voxels, spacing {tuple(round(s, 3) for s in header.GetSpacing())} mm; "
          f"device {detector.device}; {torch.get_num_threads()} CPU threads; weights {'random' if args.random_weights else 'trained'}")
    for stage, seconds in timings.items():
        print(f"  {stage:<18} {seconds:7.2f} s")
    print(f"  {'total':<18} {total:7.2f} s   ({captured['num_candidates']} candidates classified, {len(captured['findings'])} findings)")
    print(f"peak RSS {peak:.2f} GB (after imports and model load {rss_before:.2f} GB)")
    print(json.dumps({"total_s": total, "peak_rss_gb": peak, "timings_s": timings}))


if __name__ == "__main__":
    main()
