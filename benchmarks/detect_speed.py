"""Detection speed and memory per scan: wall seconds per stage, peak RSS, windows outside the lungs, peak GPU memory.

    python benchmarks/detect_speed.py                                   # the real CT in ../shared/real_ct + 1 phantom
    python benchmarks/detect_speed.py --random-weights                  # no trained bundle needed
    python benchmarks/detect_speed.py --scan a.mhd --scan dicom_dir/    # your own scans (files or DICOM folders)
    python benchmarks/detect_speed.py --no-real --phantoms 0 --slices 800 --slice-spacing 0.6   # 512x512x800 chest
    python benchmarks/detect_speed.py --device cuda                     # GPU: AMP, volume kept on the CPU, prefetch
    python benchmarks/detect_speed.py --threads 1 --prefetch 0 --cpu-clock   # CPU seconds per stage (a shared machine)

Scans: by default the LIDC-IDRI chest CT of ``../shared/real_ct`` (read from its DICOM series, as ``monai-lung
detect`` reads a folder) and ``--phantoms`` synthetic 512x512 scans; ``--slices N --slice-spacing S`` adds a
synthetic whole chest drawn on N slices of S mm (the generator's own slice grid, not a resampled short scan).
The scans run as ``monai-lung detect`` runs them (:func:`monai_lung.detection.batch.run_batch` over
:func:`~monai_lung.detection.batch.scan_steps`): the next scan is read and resampled in a background thread
(``--prefetch``) while the current one is detected.

Per pass: wall seconds and CPU seconds (user + system, all threads of the process, the background reader's too:
steadier than wall seconds on a shared machine) per scan, and page faults. Per scan: load (SimpleITK read), resample (to 1 mm), preprocess_other (orientation, intensity window), then the
detector's stages: stage1_grid (zoom to 0.75 mm), lung_mask, sliding_window, candidates, stage2_grid,
classification; ``total`` is the wall time from the previous scan's result file to this one's (the first scan's
includes its preparing; later ones were prepared in the background thread meanwhile, unless ``--prefetch 0``). Windows: how many of stage 1's sliding windows over the lungs' box hold no lung voxel
(skipped) and how many ran (recomputed after timing from the same grid and mask). Peak RSS is the process's
maximum resident set so far (``resource.getrusage``: it only grows, so run a large scan alone to read its own
figure). On CUDA, peak GPU memory is ``torch.cuda.max_memory_allocated`` per scan.
``--random-weights`` times the same networks untrained: speed does not depend on the weights, except through
the number of candidates stage 2 classifies (often none).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

REAL_CT = Path(__file__).resolve().parents[1] / ".." / "shared" / "real_ct" / "LIDC-IDRI-0001" / "dicom"


def make_phantom(out_dir: Path, seed: int, slices: int | None = None, slice_spacing: float | None = None) -> Path:
    """A synthetic 512x512 chest CT (``.mhd``) on its own drawn grid, or on ``slices`` slices of ``slice_spacing`` mm."""
    from monai_lung.io import write_image_atomic
    from monai_lung.synthetic import generate_scan

    scan = generate_scan(np.random.default_rng(seed), size=512, slice_spacing_mm=slice_spacing, num_slices=slices)
    path = out_dir / f"{scan.seriesuid}.mhd"
    write_image_atomic(path, scan.image)
    return path


def window_counts(detector, image) -> dict:
    """Stage 1's sliding windows on ``image`` (a preprocessed scan): over the lungs' box, and how many hold lung."""
    from monai_lung.io.coords import voxel_spacing
    from monai_lung.stage1.inferer import lung_box, stage1_lung_masks, window_slices
    from monai_lung.transforms.zoom import zoom_to_spacing

    cfg = detector.config
    seg = image if cfg.seg_spacing is None else zoom_to_spacing(image, cfg.seg_spacing)
    lung, _ = stage1_lung_masks(seg, voxel_spacing(seg), cfg, candidates=False)
    shape = tuple(seg.shape[1:])
    box = lung_box(lung, [r // 4 for r in cfg.roi_size], shape) if lung is not None else tuple(slice(0, s) for s in shape)
    size = [max(b.stop - b.start, r) for b, r in zip(box, cfg.roi_size)]
    windows = window_slices(size, cfg.roi_size, cfg.overlap)
    gate = None
    if lung is not None:
        gate = np.zeros(size, dtype=bool)
        crop = lung[box]
        pad = [(s - c) // 2 for s, c in zip(size, crop.shape)]
        gate[tuple(slice(p, p + c) for p, c in zip(pad, crop.shape))] = crop
    run = sum(1 for w in windows if gate is None or gate[w].any())
    return {"grid": list(shape), "box": [b.stop - b.start for b in box], "windows": len(windows), "windows_run": run,
            "share_without_lung": round(1 - run / max(len(windows), 1), 3),
            "lung_voxels_share": None if lung is None else round(float(lung.mean()), 3)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", type=Path, default=Path("bundles/lung_nodule_ct_two_stage_detection"))
    p.add_argument("--random-weights", action="store_true", help="untrained networks from the bundle's network_def")
    p.add_argument("--scan", type=Path, action="append", default=[], help="a scan file or DICOM folder (repeatable)")
    p.add_argument("--no-real", action="store_true", help="leave out the real CT of ../shared/real_ct")
    p.add_argument("--phantoms", type=int, default=1, help="synthetic 512x512 scans on drawn grids (default 1)")
    p.add_argument("--slices", type=int, default=None, help="also a synthetic whole chest on this many slices")
    p.add_argument("--slice-spacing", type=float, default=0.6, help="mm between those slices (default 0.6)")
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--device", default="auto")
    p.add_argument("--prefetch", type=int, default=1, help="scans read ahead in a background thread (as monai-lung detect)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--repeat", type=int, default=1, help="run the scan list this many times (the first pass warms up)")
    p.add_argument("--cpu-clock", action="store_true",
                   help="per-scan stage timings and totals in CPU seconds of the whole process (all threads) instead of wall seconds: a profile "
                        "that the machine's other load does not inflate; use with --prefetch 0")
    p.add_argument("--no-windows", action="store_true", help="skip recounting the windows (saves a zoom and a lung mask per scan)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="detector parameter override (JSON value)")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.cpu_clock:  # the detector times its stages with time.perf_counter
        time.perf_counter = time.process_time

    from monai_lung.bundle_args import parse_overrides
    from monai_lung.detection.batch import ScanItem
    from monai_lung.detection.detector import TwoStageDetector, resolve_device
    from monai_lung.detection.loading import bundle_parser, load_detector
    from monai_lung.transforms.preprocessing import ct_preprocessing

    work = Path(tempfile.mkdtemp(prefix="detect_speed_"))
    scans = list(args.scan)
    if not args.no_real:
        if REAL_CT.is_dir():
            scans.append(REAL_CT.resolve())
        else:
            print(f"real CT not found at {REAL_CT} (../shared absent): phantoms only")
    # phantoms are drawn in a child process, so that drawing them does not count in this process's peak RSS
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        jobs = [pool.submit(make_phantom, work, args.seed + n) for n in range(args.phantoms)]
        if args.slices:
            jobs.append(pool.submit(make_phantom, work, args.seed, args.slices, args.slice_spacing))
        scans += [job.result() for job in jobs]
    if not scans:
        raise SystemExit("no scan to time")

    overrides = parse_overrides(args.set)
    device = resolve_device(args.device)
    if args.random_weights:
        parser = bundle_parser(args.models)
        torch.manual_seed(0)
        config = {**parser.get_parsed_content("detector_config"), **overrides, "device": str(device)}
        detector = TwoStageDetector(parser.get_parsed_content("network_def"), config)
        prep = {"spacing": parser.get_parsed_content("spacing"), "hu_window": parser.get_parsed_content("hu_window")}
    else:
        detector, prep = load_detector(args.models, device=str(device), config_overrides=overrides)
    preprocess = ct_preprocessing("image", spacing=prep["spacing"], hu_window=prep["hu_window"])
    torch.set_grad_enabled(False)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    cuda = detector.device.type == "cuda"
    print(f"device {detector.device}{' (' + torch.cuda.get_device_name(detector.device) + ')' if cuda else ''}; "
          f"{torch.get_num_threads()} CPU threads; weights {'random' if args.random_weights else 'trained'}; "
          f"AMP {detector.config.amp and cuda}; stitched volume on {'CPU' if detector.config.keep_volume_on_cpu else 'device'}; "
          f"prefetch {args.prefetch}; after imports and model load RSS {rss_before:.2f} GB")

    items = [ScanItem(f"scan{n}", str(path)) for n, path in enumerate(scans)]
    report, passes = [], []
    for rep in range(max(args.repeat, 1)):
        out_dir = work / f"pass{rep}"
        started = {}

        def on_done(result):
            # called right after each scan's result file is written, in the detecting thread
            now = time.perf_counter()
            peak_gpu = torch.cuda.max_memory_allocated(detector.device) / 1024**3 if cuda else None
            if cuda:
                torch.cuda.reset_peak_memory_stats(detector.device)
            report.append({"pass": rep, "scan": result["image"], "grid_1mm": result.get("grid_shape"),
                           "timings_s": result["timings_s"], "total_s": now - started["t"],
                           "candidates": result["num_candidates"], "findings": len(result["findings"]),
                           "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, "peak_gpu_gb": peak_gpu})
            started["t"] = now

        started["t"] = time.perf_counter()
        t0 = started["t"]
        usage0 = resource.getrusage(resource.RUSAGE_SELF)
        run_scans(detector, preprocess, items, out_dir / "preds.csv", args.prefetch, on_done)
        wall = time.perf_counter() - t0
        usage = resource.getrusage(resource.RUSAGE_SELF)
        cpu = usage.ru_utime + usage.ru_stime - usage0.ru_utime - usage0.ru_stime
        passes.append({"wall_s": wall, "cpu_s": cpu})
        print(f"pass {rep}: {len(items)} scans in {wall:.1f} s ({wall / len(items):.2f} s per scan); CPU (all threads, "
              f"user + system) {cpu / len(items):.2f} s per scan, of it system {(usage.ru_stime - usage0.ru_stime) / len(items):.2f} s, "
              f"{(usage.ru_minflt - usage0.ru_minflt) / len(items):.0f} page faults per scan")

    if not args.no_windows:
        for row in report:
            if row["pass"] == 0:
                image = preprocess({"image": row["scan"]})["image"]
                row.update(window_counts(detector, image))
                del image
    for row in report:
        t = row["timings_s"]
        print(f"\n{Path(row['scan']).name} (pass {row['pass']}): 1 mm grid {row['grid_1mm']}")
        for stage, seconds in t.items():
            print(f"  {stage:<18} {seconds:7.2f} s")
        prep_s = sum(t.get(k, 0.0) for k in ("load", "resample", "preprocess_other"))
        detect_s = sum(v for k, v in t.items() if k not in ("load", "resample", "preprocess_other", "report"))
        print(f"  {'preparing':<18} {prep_s:7.2f} s   detecting {detect_s:.2f} s   scan total ({'CPU' if args.cpu_clock else 'wall'}, result written) {row['total_s']:.2f} s")
        print(f"  {row['candidates']} candidates classified, {row['findings']} findings; peak RSS so far {row['peak_rss_gb']:.2f} GB"
              + (f"; peak GPU memory {row['peak_gpu_gb']:.2f} GB" if row["peak_gpu_gb"] is not None else ""))
        if "windows" in row:
            print(f"  stage-1 grid {row['grid']}, lungs' box {row['box']}: {row['windows']} windows, {row['windows_run']} hold lung "
                  f"({100 * row['share_without_lung']:.0f}% skipped); lung mask {100 * row['lung_voxels_share']:.0f}% of the grid"
                  if row["lung_voxels_share"] is not None else f"  {row['windows']} windows (no lung mask)")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=str))
    print(json.dumps({"peak_rss_gb": max(r["peak_rss_gb"] for r in report),
                      "mean_total_s": float(np.mean([r["total_s"] for r in report if r["pass"] == report[-1]["pass"]])),
                      "cpu_s_per_scan": passes[-1]["cpu_s"] / len(items)}))


def run_scans(detector, preprocess, items, output_csv, prefetch: int, on_done) -> dict:
    """What ``monai-lung detect`` runs (prepare in a background thread ``prefetch`` scans ahead, then detect), with
    ``on_done(result)`` after each scan's result file is written."""
    from monai_lung.detection.batch import run_batch, scan_steps

    prepare, detect = scan_steps(detector, preprocess)
    return run_batch(detect, items, output_csv, progress=False, on_scan_done=on_done, prepare=prepare, prefetch=prefetch)


if __name__ == "__main__":
    main()
