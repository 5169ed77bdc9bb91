"""``monai-lung demo`` / ``make demo``: the whole pipeline on a synthetic LUNA16-layout data set.

synthesise -> data list -> train stage 1 (its bundle) -> mine hard negatives and cut the stage-2 crop bank
-> fine-tune stage 1 with its own false positives as extra background patches -> train stage 2 (its
bundle) -> assemble the detection bundle -> detect on the test scans (with a report) -> LUNA16 evaluation
(FROC, CPM).

The training steps run ``python -m monai.bundle run training`` exactly as a user would; the others call
the same functions as the CLI. Each step skips work whose output already exists (``--restart`` redoes
everything), so an interrupted demo resumes where it stopped; once a step runs, every later step runs
again too, since its inputs changed (delete ``<work dir>/.demo_steps/<step>.done`` to redo from there).
Settings: the defaults below, a JSON file (``--config demo.json``) and ``--set key=value``, in that
order. The same steps with real LUNA16 paths are the README's recipe for real training.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

DEFAULTS = {
    "num_scans": 40,  # 4 subsets of 10: fold 0 tests on subset0, validates on subset1, trains on subset2-3
    "num_subsets": 4,
    "size": 512,
    "seed": 2026,
    # 130 epochs (+72 s) raised this demo's test CPM from 0.651 to 0.675 but lowered the pooled CPM of 40 held-out
    # scans (test, validation, 20 new) from 0.719 to 0.686: 100 stays
    "stage1_epochs": 100,
    # whole-scan validation is slow on a CPU (~5 s per scan): one scan, once at the end of each stage-1 run, is what
    # writes model.pt (the key metric's best) and logs Dice and nodule sensitivity; 3 scans cost ~20 s more per demo
    "stage1_val_scans": 1,
    # second stage-1 run from the first one's weights, with background patches drawn around the false positives it
    # mined on the training scans (0 epochs: skip). Demo set, stage-1-only CPM: 0.563 -> 0.595 (30 more epochs
    # without them: 0.571); scores above 0.9 on test-scan false positives: 217 -> 149; demo CPM 0.563 -> 0.643 (+145 s)
    "stage1_finetune_epochs": 30,
    "stage1_finetune_lr": 0.001,
    "stage1_hard_negatives_per_scan": 64,
    "stage1_hard_negative_fraction": 0.75,
    # stage 2 keeps its last epoch (see the bundle's best_model_name): 16 -> 32 epochs of 1024 crops raised the
    # candidate AUC of the demo models over 40 held-out scans from 0.88 to 0.91-0.95 (three seeds; stage 2 220 s ->
    # 279 s). 30, not 32: the same 2-core machine ran 8-15% slower on another day (a 32-epoch demo took 1,098 s,
    # then 1,205 s), and the demo must stay under 20 minutes; validation every 10 epochs. Since classification
    # bundle 0.4.0 (32^3 crops) the 30 epochs took ~170 s. 60 since bundle 0.4.1, whose transforms see only the central
    # 44^3 of each stored 64^3 crop: the same 40 held-out scans' candidates, three stage-2 seeds, ROC AUC 0.989/0.951/0.980
    # -> 0.989/0.983/0.994 and CPM 0.719/0.676/0.698 -> 0.748/0.726/0.719, training ~175 s -> 265-290 s (bundle docs)
    "stage2_epochs": 60,
    "stage2_epoch_length": 1024,
    "stage2_val_interval": 10,
    "seg_bundle": "bundles/lung_nodule_ct_segmentation",
    "cls_bundle": "bundles/lung_nodule_ct_classification",
    "det_bundle": "bundles/lung_nodule_ct_two_stage_detection",
    "num_workers": 2,
    # stage 2's loader in the training process: its chain is cheap since bundle 0.4.1, and two worker processes beside
    # the two training threads on two cores made an epoch ~20% slower (4.6 s against 3.8 s)
    "stage2_num_workers": 0,
    "bootstrap": 1000,
}


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--work-dir", type=Path, default=Path("demo_output"), help="where data, crops, predictions and reports go")
    parser.add_argument("--config", type=Path, help="JSON file overriding the demo settings (see monai_lung/demo.py DEFAULTS)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one setting, e.g. --set stage1_epochs=4")
    parser.add_argument("--restart", action="store_true", help="redo every step (keeps nothing from an earlier demo)")


def demo_settings(args: argparse.Namespace) -> dict:
    settings = dict(DEFAULTS)
    if args.config is not None:
        settings.update(json.loads(Path(args.config).read_text(encoding="utf-8")))
    for pair in args.set:
        key, _, value = pair.partition("=")
        if key not in DEFAULTS:
            raise SystemExit(f"monai-lung demo: unknown setting {key!r} (known: {', '.join(DEFAULTS)})")
        try:
            settings[key] = json.loads(value)
        except json.JSONDecodeError:
            settings[key] = value
    return settings


class _Steps:
    def __init__(self, work: Path, restart: bool):
        self.work, self.restart, self.start = work, restart, time.perf_counter()
        self.redone = False  # a step ran: the later ones must run again on its new output
        self.marks = work / ".demo_steps"
        self.marks.mkdir(parents=True, exist_ok=True)

    def run(self, name: str, fn) -> None:
        mark = self.marks / f"{name}.done"
        if mark.exists() and not self.restart and not self.redone:
            print(f"[demo] {name}: done before, kept", flush=True)
            return
        self.redone = True
        print(f"[demo] {name} ...", flush=True)
        t = time.perf_counter()
        fn()
        mark.write_text(f"{time.time()}\n")
        print(f"[demo] {name}: {time.perf_counter() - t:.0f} s (total {time.perf_counter() - self.start:.0f} s)", flush=True)


def _run(cmd: list[str]) -> None:
    print("[demo]   $ " + " ".join(str(c) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], check=True, cwd=REPO)


def run_demo(args: argparse.Namespace) -> int:
    from monai_lung.datalist import build_datalist, write_datalist
    from monai_lung.synthetic import generate_dataset

    s = demo_settings(args)
    work = Path(args.work_dir).resolve()
    if args.restart and work.exists():
        shutil.rmtree(work)
    data_dir, datalist, hard_datalist = work / "data", work / "datalist_fold0.json", work / "datalist_fold0_hard_negatives.json"
    stage1_initial = work / "stage1_before_finetune.pt"
    seg, cls, det = (REPO / s[k] for k in ("seg_bundle", "cls_bundle", "det_bundle"))
    bank, preds, report, froc = work / "crop_bank", work / "predictions.csv", work / "report", work / "froc"
    steps = _Steps(work, args.restart)
    py = sys.executable

    def synth():
        if data_dir.exists():
            shutil.rmtree(data_dir)
        summary = generate_dataset(data_dir, num_scans=s["num_scans"], seed=s["seed"], size=s["size"], num_subsets=s["num_subsets"], progress=True)
        print(f"[demo]   {summary['num_scans']} scans, {summary['num_nodules']} nodules, {summary['num_excluded']} excluded findings")

    def make_datalist():
        dl = build_datalist(data_dir, data_dir / "annotations.csv", data_dir / "annotations_excluded.csv", fold=0)
        write_datalist(datalist, dl)
        print("[demo]   " + ", ".join(f"{k}: {len(dl[k])} scans" for k in ("training", "validation", "test")))

    def stage1_val():
        return f"$monai.data.load_decathlon_datalist(@data_list_file_path, False, @val_key, base_dir=@dataset_dir)[:{int(s['stage1_val_scans'])}]"

    def train_stage1():
        stage1_initial.unlink(missing_ok=True)
        val = stage1_val()
        _run([py, "-m", "monai.bundle", "run", "training", "--config_file", seg / "configs" / "train.json", "--bundle_root", seg,
              "--dataset_dir", data_dir, "--data_list_file_path", datalist, "--max_epochs", s["stage1_epochs"],
              "--val_interval", s["stage1_epochs"], "--num_workers", s["num_workers"], "--validate#dataset#data", val])

    def crop_bank():
        if bank.exists():
            shutil.rmtree(bank)
        _run([py, "-m", "monai_lung", "crops", "--datalist", datalist, "--data-dir", data_dir, "--key", "training", "--key", "validation",
              "--out", bank, "--candidates", data_dir / "candidates.csv", "--seg-bundle", seg])

    def finetune_stage1():
        if int(s["stage1_finetune_epochs"]) <= 0:
            print("[demo]   skipped (stage1_finetune_epochs 0)")
            return
        if not stage1_initial.exists():  # a rerun after an interruption starts again from the first run's weights
            shutil.copyfile(seg / "models" / "model.pt", stage1_initial)
        _run([py, "-m", "monai_lung", "datalist", "--data-dir", data_dir, "--annotations", data_dir / "annotations.csv",
              "--excluded", data_dir / "annotations_excluded.csv", "--fold", 0, "--output", hard_datalist,
              "--hard-negatives", bank / "hard_negatives", "--hard-negatives-per-scan", s["stage1_hard_negatives_per_scan"]])
        for old in (seg / "models").glob("checkpoint*.pt"):  # the first run's: a resume must find the fine-tune's own
            old.unlink()
        epochs = s["stage1_finetune_epochs"]
        _run([py, "-m", "monai.bundle", "run", "training", "--config_file", seg / "configs" / "train.json", "--bundle_root", seg,
              "--dataset_dir", data_dir, "--data_list_file_path", hard_datalist, "--init_weights", stage1_initial,
              "--max_epochs", epochs, "--learning_rate", s["stage1_finetune_lr"], "--hard_negative_fraction",
              s["stage1_hard_negative_fraction"], "--val_interval", epochs, "--num_workers", s["num_workers"],
              "--validate#dataset#data", stage1_val()])

    def train_stage2():
        _run([py, "-m", "monai.bundle", "run", "training", "--config_file", cls / "configs" / "train.json", "--bundle_root", cls,
              "--dataset_dir", data_dir, "--data_list_file_path", datalist, "--crop_bank_dir", bank, "--max_epochs", s["stage2_epochs"],
              "--epoch_length", s["stage2_epoch_length"], "--val_interval", s["stage2_val_interval"], "--num_workers", s["stage2_num_workers"]])

    def assemble():
        _run([py, "-m", "monai_lung", "assemble", "--seg-bundle", seg, "--cls-bundle", cls, "--output-bundle", det])

    def detect():
        for stale in (preds, preds.with_name("failures.csv")):
            stale.unlink(missing_ok=True)
        shutil.rmtree(preds.with_name(preds.stem + "_scans"), ignore_errors=True)
        _run([py, "-m", "monai_lung", "detect", "--datalist", datalist, "--data-dir", data_dir, "--key", "test",
              "--models", det, "--output", preds, "--report-dir", report])

    def evaluate():
        _run([py, "-m", "monai_lung", "evaluate", "--annotations", data_dir / "annotations.csv", "--excluded",
              data_dir / "annotations_excluded.csv", "--predictions", preds, "--datalist", datalist, "--key", "test",
              "--output-dir", froc, "--bootstrap", s["bootstrap"]])

    for name, fn in [("synthesise", synth), ("datalist", make_datalist), ("train_stage1", train_stage1), ("crop_bank", crop_bank),
                     ("finetune_stage1", finetune_stage1), ("train_stage2", train_stage2), ("assemble", assemble), ("detect", detect), ("evaluate", evaluate)]:
        steps.run(name, fn)
    weight = detector_stage1_weight(det)
    by_score = compare_final_scores(preds, data_dir, datalist, work / "froc_by_score", stage1_weight=weight)

    result = json.loads((froc / "froc.json").read_text(encoding="utf-8"))
    print(f"\n[demo] finished in {time.perf_counter() - steps.start:.0f} s")
    print(f"[demo] CPM {result['cpm']:.3f} on {result.get('counts', {}).get('num_scans', '?')} synthetic test scans")
    print("[demo] sensitivity at " + ", ".join(f"{r['fps_per_scan']:g}: {r['sensitivity']:.3f}" for r in result["sensitivities"]) + " FPs/scan")
    print("[demo] CPM by final score (same candidates): " + ", ".join(f"{k} {v:.3f}" for k, v in by_score.items())
          + f"  (stage1: UNet peak only; stage2: ResNet only; product, odds_product: both, stage-1 weight {weight:g})")
    print(f"[demo] FROC plot: {froc / 'froc.png'}   curve: {froc / 'froc.csv'}")
    print(f"[demo] review report: {report / 'index.html'}   predictions: {preds}")
    print(f"[demo] trained bundles: {seg}, {cls}, {det}")
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
