"""``monai-lung demo`` / ``make demo``: the whole pipeline on a synthetic LUNA16-layout data set.

synthesise, then ``monai-lung train --profile demo`` on it (data list -> stage 1 -> crop bank with mined hard
negatives -> stage-1 fine-tuning -> stage 2 -> assemble -> detect the test scans, with a report -> LUNA16
evaluation): the same steps and code as a user's training run, so the demo tests the product. Outputs, under
the work dir (``demo_output``): ``data/`` (the scans), ``<step>/`` with each step's outputs and ``log.txt``,
``train_summary.json``, and the trained detection bundle in ``lung_nodule_ct_two_stage_detection/`` (the
repository's ``bundles/`` are templates, never written).

A rerun keeps every finished step whose settings and inputs are unchanged and redoes the first changed one and
all after it (``--restart`` redoes everything). Settings: the ``demo`` profile
(:mod:`monai_lung.training.profiles`) and the synthetic set's below, a JSON file (``--config demo.json``) and
``--set key=value``, in that order.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from monai_lung.bundle_args import parse_overrides
from monai_lung.io.errors import DataError

SYNTHETIC = {
    "num_scans": 40,  # 4 subsets of 10: fold 0 tests on subset0, validates on subset1, trains on subset2-3
    "num_subsets": 4,
    "size": 512,
    "seed": 2026,
}


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--work-dir", type=Path, default=Path("demo_output"), help="where data, crops, predictions and reports go")
    parser.add_argument("--output-bundle", type=Path, default=None,
                        help="the trained detection bundle (default: <work dir>/lung_nodule_ct_two_stage_detection)")
    parser.add_argument("--config", type=Path, help="JSON file overriding the demo settings (monai_lung/training/demo.py SYNTHETIC, "
                        "monai_lung/training/profiles.py DEMO)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one setting, e.g. --set stage1_epochs=4")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to train and detect")
    parser.add_argument("--restart", action="store_true", help="redo every step (keeps nothing from an earlier demo)")


def demo_settings(args: argparse.Namespace) -> tuple[dict, dict]:
    """(synthetic set settings, training settings) from the defaults, ``--config`` and ``--set``."""
    from monai_lung.training.profiles import resolve_settings

    overrides = {}
    if args.config is not None:
        try:
            overrides.update(json.loads(Path(args.config).read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError) as err:
            raise DataError(args.config, f"demo settings are not readable JSON ({err})") from None
    overrides.update(parse_overrides(args.set))
    merged = resolve_settings("demo", overrides, extra_keys=tuple(SYNTHETIC))
    synthetic = {k: merged.pop(k, v) for k, v in SYNTHETIC.items()}
    return synthetic, merged


def run_demo(args: argparse.Namespace) -> int:
    from monai_lung.synthetic import generate_dataset
    from monai_lung.training.recipe import TrainingRun, TrainOptions, print_result
    from monai_lung.training.steps import SUMMARY, Step, StepFailed, StepRunner

    synthetic, settings = demo_settings(args)
    work = Path(args.work_dir).resolve()
    if args.restart and work.exists():
        shutil.rmtree(work)
    data_dir = work / "data"
    runner = StepRunner(work, {}, prefix="[demo]")

    def synth(folder: Path, resume: bool) -> None:
        if data_dir.exists():
            shutil.rmtree(data_dir)
        summary = generate_dataset(data_dir, num_scans=synthetic["num_scans"], seed=synthetic["seed"], size=synthetic["size"],
                                   num_subsets=synthetic["num_subsets"], progress=True)
        print(f"[demo]   {summary['num_scans']} scans, {summary['num_nodules']} nodules, {summary['num_excluded']} excluded findings")

    runner.run(Step("synthesise", dict(synthetic), synth))
    opts = TrainOptions(
        data_dir=data_dir, annotations=data_dir / "annotations.csv", excluded=data_dir / "annotations_excluded.csv",
        candidates=data_dir / "candidates.csv", work_dir=work, output_bundle=args.output_bundle or work / "lung_nodule_ct_two_stage_detection",
        settings=settings, fold=0, profile="demo", device=args.device, update=True, log_prefix="[demo]",
    )
    run = TrainingRun(opts, runner=runner)
    try:
        result = run.run()
    except StepFailed as err:
        print(f"monai-lung demo: a step failed: {err}", file=sys.stderr)
        return 1
    weight = detector_stage1_weight(run.bundle)
    by_score = compare_final_scores(run.predictions, data_dir, run.datalist_file, work / "froc_by_score", stage1_weight=weight)

    print(f"\n[demo] finished in {time.perf_counter() - runner.start:.0f} s")
    print(f"[demo] CPM {result['cpm']:.3f} on {result.get('counts', {}).get('num_scans', '?')} synthetic test scans")
    print("[demo] CPM by final score (same candidates): " + ", ".join(f"{k} {v:.3f}" for k, v in by_score.items())
          + f"  (stage1: UNet peak only; stage2: ResNet only; product, odds_product: both, stage-1 weight {weight:g})")
    print_result(run, result, prefix="[demo]", cpm=False)
    print(f"[demo] steps, settings and times: {work / SUMMARY}")
    return 0


def detector_stage1_weight(det_bundle: Path) -> float:
    """The ``stage1_weight`` the detection bundle's detector scores with (its ``detector_config`` read as the
    detector reads it: the default where the bundle has none)."""
    from monai_lung.detection.detector import DetectorConfig
    from monai_lung.detection.loading import bundle_parser

    return DetectorConfig.from_dict(dict(bundle_parser(det_bundle).get_parsed_content("detector_config"))).stage1_weight


def compare_final_scores(
    preds_csv: Path, data_dir: Path, datalist: Path, out_dir: Path, n_bootstrap: int = 100, stage1_weight: float = 1.0
) -> dict:
    """CPM of the same detection run under each final score (stage-1 peak, stage-2 probability, and the two
    rules that combine them: see ``detection.detector.final_score``; ``stage1_weight`` is odds_product's, give
    the detector's so that its CPM is the run's), re-ranked from the per-scan JSON results that ``detect`` keeps:
    shows which stage limits the result. Returns {score name: CPM}; each evaluation's files go to
    ``out_dir/<name>/``."""
    from monai_lung.detection.batch import ledger_findings, scans_dir_for
    from monai_lung.detection.detector import final_score
    from monai_lung.evaluation.run import run_evaluation
    from monai_lung.evaluation.scanlist import read_datalist_seriesuids
    from monai_lung.io.atomic import write_csv_atomic

    table = ledger_findings(scans_dir_for(preds_csv))
    names = ("stage1", "stage2", "product", "odds_product")
    for name in names:
        table[name] = final_score(table["stage1_peak"].to_numpy(), table["stage2_prob"].to_numpy(), name, stage1_weight)
    uids = read_datalist_seriesuids(datalist, "test")
    cpm = {}
    for name in names:
        csv = out_dir / name / "predictions.csv"
        csv.parent.mkdir(parents=True, exist_ok=True)
        write_csv_atomic(csv, table[["seriesuid", "coordX", "coordY", "coordZ"]].assign(probability=table[name]))
        result = run_evaluation(
            data_dir / "annotations.csv", csv, out_dir / name, excluded_csv=data_dir / "annotations_excluded.csv",
            seriesuids=uids, n_bootstrap=n_bootstrap, log=lambda *_: None,
        )
        cpm[name] = result.cpm
    return cpm
