"""``monai-lung demo`` / ``make demo``: the whole pipeline on a synthetic LUNA16-layout data set.

Each step is a plain call into the package (the same functions the CLI and the bundles use), and each
step skips work whose output already exists, so an interrupted demo resumes where it stopped.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--work-dir", type=Path, default=Path("demo_output"), help="where everything is written")
    parser.add_argument("--num-scans", type=int, default=40, help="synthetic scans (spread over --num-subsets)")
    parser.add_argument("--num-subsets", type=int, default=4, help="fold 0: test subset0, validate subset1, train the rest")
    parser.add_argument("--size", type=int, default=512, help="in-plane size of the synthetic scans")
    parser.add_argument("--seed", type=int, default=2026)


def _step(name: str):
    print(f"[demo] {name} ...", flush=True)
    return time.perf_counter()


def run_demo(args: argparse.Namespace) -> int:
    from monai_lung.datalist import build_datalist, write_datalist
    from monai_lung.synthetic import generate_dataset

    work = Path(args.work_dir)
    data_dir = work / "data"
    t0 = _step(f"synthesising {args.num_scans} scans of size {args.size} into {data_dir}")
    if (data_dir / "annotations.csv").is_file():
        print("[demo]   data set exists, kept")
    else:
        summary = generate_dataset(
            data_dir, num_scans=args.num_scans, seed=args.seed, size=args.size, num_subsets=args.num_subsets, progress=True
        )
        print(f"[demo]   {summary['num_scans']} scans, {summary['num_nodules']} nodules ({time.perf_counter() - t0:.1f} s)")

    datalist_file = work / "datalist_fold0.json"
    _step(f"writing the fold-0 data list {datalist_file}")
    datalist = build_datalist(data_dir, data_dir / "annotations.csv", data_dir / "annotations_excluded.csv", fold=0)
    write_datalist(datalist_file, datalist)
    print("[demo]   " + ", ".join(f"{k}: {len(datalist[k])} scans" for k in ("training", "validation", "test")))

    print("[demo] stopping after synthesis and the data list: training, detection and evaluation are not wired in yet.")
    return 0
