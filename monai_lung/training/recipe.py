"""``monai-lung train``: the whole training recipe, from a LUNA16-layout data folder to a detection bundle.

Steps, each writing under ``<work dir>/<step>/`` with its log in ``<step>/log.txt``::

    datalist         fold K of the data folder -> datalist.json (no long work: bad input stops here)
    train_stage1     a copy of the segmentation bundle, trained (python -m monai.bundle run training)
    crop_bank        stage-2 crops: nodules, candidates.csv negatives, stage 1's mined false positives
    finetune_stage1  stage 1 again from its weights, background patches drawn around its own false positives
    train_stage2     a copy of the classification bundle, trained on the crop bank
    assemble         the detection bundle (a copy of the template with models/model.pt) in --output-bundle
    detect           the fold's test scans with that bundle (monai-lung detect)
    evaluate         LUNA16 FROC / CPM of the test scans (monai-lung evaluate)

The steps run under :class:`~monai_lung.training.steps.StepRunner`: a rerun keeps every finished step whose
fingerprint is unchanged and redoes the first changed one and all after it; an interrupted step resumes
(training from its newest checkpoint, the crop bank and detection from the scans they finished).

Training steps run the bundles as a user would (``python -m monai.bundle run training --config_file
<copy>/configs/train.json --key value ...``; with ``nproc`` > 1 through ``torchrun`` and the bundle's
``multi_gpu_train.json``), so the bundles stay the one definition of each stage's training.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import sys
from pathlib import Path

from monai_lung.datalist import build_datalist, write_datalist
from monai_lung.io import DataError, find_scans, read_annotations, write_json_atomic
from monai_lung.training.checkpoints import latest_checkpoint
from monai_lung.training.steps import (
    SUMMARY, Step, StepFailed, StepRunner, bundle_identity, file_identity, quote, run_logged, scans_identity, settings_diff,
)
from monai_lung.templates import SEG_NAME, STAGE2_NAME, resolve_template


@dataclasses.dataclass
class TrainOptions:
    """What ``monai-lung train`` was asked: paths, the fold and how to run (not what to train: that is ``settings``)."""

    data_dir: Path
    annotations: Path
    work_dir: Path
    output_bundle: Path
    settings: dict
    fold: int = 0
    excluded: Path | None = None
    candidates: Path | None = None
    profile: str = "demo"
    device: str = "auto"
    nproc: int = 1
    allow_missing_scans: bool = False
    update: bool = False
    verbose: bool = False
    log_prefix: str = "[train]"


def copy_bundle(template: Path, target: Path, edits: dict | None = None) -> Path:
    """Copy a bundle's configs, docs and licence (no weights, checkpoints, logs or caches) to ``target`` and set
    each ``edits`` id (``"network_def#channels"``) in every config file of the copy that defines it."""
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(template, target, ignore=shutil.ignore_patterns("*.pt", "*.ts", "eval", "runs", "cache", "models"))
    (target / "models").mkdir()
    for config in sorted((target / "configs").glob("*.json")):
        data = json.loads(config.read_text(encoding="utf-8"))
        changed = False
        for key, value in (edits or {}).items():
            *parents, leaf = key.split("#")
            node = data
            for part in parents:
                node = node.get(part) if isinstance(node, dict) else None
            if isinstance(node, dict) and leaf in node:
                node[leaf] = value
                changed = True
        if changed:
            write_json_atomic(config, data)
    return target


class TrainingRun:
    """The recipe for one fold: ``check()`` (quick, before anything long), ``steps()``, ``run()``."""

    def __init__(self, opts: TrainOptions, runner: StepRunner | None = None):
        self.o = opts
        s = opts.settings
        self.work = Path(opts.work_dir).resolve()
        self.data_dir = Path(opts.data_dir).resolve()
        self.bundle = Path(opts.output_bundle).resolve()
        self.templates = {k: resolve_template(s[k]) for k in ("seg_bundle", "stage2_bundle", "det_bundle")}
        self.datalist_file = self.work / "datalist" / "datalist.json"
        self.hard_datalist_file = self.work / "finetune_stage1" / "datalist_hard_negatives.json"
        self.seg1 = self.work / "train_stage1" / SEG_NAME
        self.seg2 = self.work / "finetune_stage1" / SEG_NAME
        self.stage2 = self.work / "train_stage2" / STAGE2_NAME
        self.bank = self.work / "crop_bank" / "bank"
        self.predictions = self.work / "detect" / "predictions.csv"
        self.froc_dir = self.work / "evaluate"
        self.runner = runner
        self.counts: dict = {}

    # -- the quick checks -------------------------------------------------------------------------------
    def check(self) -> dict:
        """Every check that needs no long work; returns the data list (also what the datalist step writes).

        Raises:
            DataError: no scans in the data folder, an annotations CSV whose seriesuids match no scan, a fold
                without test or training scans, a missing template or input file, a bad setting.
        """
        o, s = self.o, self.o.settings
        for name, path in (("--annotations", o.annotations), ("--excluded", o.excluded), ("--candidates", o.candidates)):
            if path is not None and not Path(path).is_file():
                raise DataError(path, f"{name} file not found")
        for key, path in self.templates.items():
            if not (path / "configs" / "train.json").is_file() and key != "det_bundle":
                raise DataError(path, f"setting {key}: not a bundle with configs/train.json")
        if not (self.templates["det_bundle"] / "configs" / "inference.json").is_file():
            raise DataError(self.templates["det_bundle"], "setting det_bundle: not a bundle with configs/inference.json")
        for key in ("stage1_epochs", "stage2_epochs", "stage2_epoch_length"):
            if not isinstance(s[key], int) or s[key] < 1:
                raise DataError(None, f"setting {key} must be a positive whole number, got {s[key]!r}")
        if not isinstance(s["stage1_finetune_epochs"], int) or s["stage1_finetune_epochs"] < 0:
            raise DataError(None, f"setting stage1_finetune_epochs must be 0 or more, got {s['stage1_finetune_epochs']!r}")
        for key in ("stage1_overrides", "stage2_overrides", "detect_overrides"):
            if not isinstance(s[key], dict):
                raise DataError(None, f"setting {key} must be a JSON object of ids and values, got {s[key]!r}")
        if o.nproc < 1:
            raise DataError(None, f"--nproc must be 1 or more, got {o.nproc}")
        if o.device not in ("auto", "cpu", "cuda"):
            raise DataError(None, f"--device must be auto, cpu or cuda, got {o.device!r}")
        if o.device == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise DataError(None, "--device cuda: torch sees no CUDA device")
        scans = find_scans(self.data_dir)
        if not scans:
            raise DataError(self.data_dir, "no scans found (expected subset0..subset9/<seriesuid>.mhd or scans directly in it)")
        uids = set(read_annotations(o.annotations)["seriesuid"])
        if uids and not uids & set(scans):
            raise DataError(o.annotations, f"none of its {len(uids)} seriesuids has a scan in {self.data_dir} (e.g. {sorted(uids)[0]})")
        datalist = build_datalist(self.data_dir, o.annotations, o.excluded, fold=o.fold, allow_missing_scans=o.allow_missing_scans)
        if not datalist["test"]:
            raise DataError(self.data_dir, f"--fold {o.fold}: no test scans (fold K tests on the scans in subsetK)")
        if not datalist["training"]:
            raise DataError(self.data_dir, f"--fold {o.fold}: no training scans (the fold's test and validation subsets hold them all)")
        if not datalist["validation"]:
            raise DataError(self.data_dir, f"--fold {o.fold}: no validation scans (needs a second subsetK folder)")
        self.counts = {k: len(datalist[k]) for k in ("training", "validation", "test")}
        return datalist

    def identity(self) -> dict:
        """What makes this run this run: a work dir holding a run with another identity is refused."""
        o = self.o
        return {
            "data_dir": str(self.data_dir), "annotations": str(Path(o.annotations).resolve()),
            "excluded": str(Path(o.excluded).resolve()) if o.excluded else None,
            "candidates": str(Path(o.candidates).resolve()) if o.candidates else None,
            "fold": o.fold, "output_bundle": str(self.bundle), "profile": o.profile, **o.settings,
        }

    def check_work_dir(self) -> None:
        """Refuse a work dir that holds another run's steps (other data, fold or settings) unless ``update``."""
        path = self.work / SUMMARY
        if not path.is_file():
            return
        try:
            old = json.loads(path.read_text(encoding="utf-8")).get("identity", {})
        except (OSError, json.JSONDecodeError):
            raise DataError(path, "unreadable run summary: remove it or use another --work-dir") from None
        diff = settings_diff(old, self.identity())
        if diff and not self.o.update:
            raise DataError(
                path,
                f"this work dir holds a run with other settings ({'; '.join(diff)[:300]}): pass --update to redo the "
                "steps they change, or use another --work-dir",
            )

    # -- commands ---------------------------------------------------------------------------------------
    def _bundle_cmd(self, bundle: Path, overrides: dict) -> list[str]:
        configs = [bundle / "configs" / "train.json"]
        if self.o.nproc > 1:
            configs.append(bundle / "configs" / "multi_gpu_train.json")
            head = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={self.o.nproc}", "-m", "monai.bundle"]
        else:
            head = [sys.executable, "-m", "monai.bundle"]
        config = str([str(c) for c in configs]) if len(configs) > 1 else str(configs[0])
        cmd = [*head, "run", "training", "--config_file", config, "--bundle_root", str(bundle)]
        for key, value in overrides.items():
            cmd += [f"--{key}", value if isinstance(value, str) else json.dumps(value)]
        return cmd

    def _device_overrides(self) -> dict:
        if self.o.device == "cpu":
            out = {"device": "$torch.device('cpu')", "amp": False}
            if self.o.nproc > 1:
                out["backend"] = "gloo"
            return out
        return {}

    def _keep(self, **values) -> dict:
        return {k: v for k, v in values.items() if v is not None}

    def stage1_overrides(self, finetune: bool = False, device: bool = True) -> dict:
        s = self.o.settings
        epochs = s["stage1_finetune_epochs"] if finetune else s["stage1_epochs"]
        val_interval = s["stage1_val_interval"] or epochs
        out = {
            "dataset_dir": str(self.data_dir),
            "data_list_file_path": str(self.hard_datalist_file if finetune else self.datalist_file),
            "max_epochs": epochs,
            "val_interval": min(int(val_interval), int(epochs)),
            "num_workers": s["num_workers"],
        }
        if finetune:
            out.update(init_weights=str(self.seg1 / "models" / "model.pt"), learning_rate=s["stage1_finetune_lr"],
                       hard_negative_fraction=s["stage1_hard_negative_fraction"])
        else:
            out.update(self._keep(learning_rate=s["stage1_learning_rate"]))
        out.update(self._keep(batch_size=s["stage1_batch_size"], num_samples=s["stage1_num_samples"],
                              synthetic_nodule_prob=s["stage1_synthetic_nodule_prob"], amp=s["amp"], cache=s["stage1_cache"]))
        if s["stage1_cache"] == "disk":
            out["cache_dir"] = str(self.work / ("finetune_stage1" if finetune else "train_stage1") / "cache")
        if s["stage1_val_scans"] is not None:
            out["validate#dataset#data"] = (
                "$monai.data.load_decathlon_datalist(@data_list_file_path, False, @val_key, base_dir=@dataset_dir)"
                f"[:{int(s['stage1_val_scans'])}]"
            )
        out.update(s["stage1_overrides"])
        if device:  # how to run, not what to train: left out of the fingerprint
            out.update(self._device_overrides())
        return out

    def stage2_overrides(self, device: bool = True) -> dict:
        s = self.o.settings
        out = {
            "dataset_dir": str(self.data_dir), "data_list_file_path": str(self.datalist_file), "crop_bank_dir": str(self.bank),
            "max_epochs": s["stage2_epochs"], "epoch_length": s["stage2_epoch_length"],
            "val_interval": min(int(s["stage2_val_interval"]), int(s["stage2_epochs"])), "num_workers": s["stage2_num_workers"],
        }
        out.update(self._keep(synthetic_nodule_prob=s["stage2_synthetic_nodule_prob"], amp=s["amp"]))
        out.update(s["stage2_overrides"])
        if device:
            out.update(self._device_overrides())
        return out

    def seg_edits(self) -> dict:
        channels = self.o.settings["stage1_channels"]
        return {} if channels is None else {"network_def#channels": list(channels)}

    def det_edits(self) -> dict:
        channels = self.o.settings["stage1_channels"]
        return {} if channels is None else {"network_def#segmenter#channels": list(channels)}

    def final_seg(self) -> Path:
        return self.seg2 if self.o.settings["stage1_finetune_epochs"] > 0 else self.seg1

    def crops_cmd(self, device: bool = True) -> list[str]:
        s = self.o.settings
        cmd = [sys.executable, "-m", "monai_lung", "crops", "--datalist", str(self.datalist_file), "--data-dir", str(self.data_dir),
               "--key", "training", "--key", "validation", "--output-dir", str(self.bank), "--seg-bundle", str(self.seg1)]
        if device:
            cmd += ["--device", self.o.device]
        if self.o.candidates is not None:
            cmd += ["--candidates", str(Path(self.o.candidates).resolve())]
        if s["candidates_per_scan"] is not None:
            cmd += ["--candidates-per-scan", str(s["candidates_per_scan"])]
        # hard negatives from stage 1 as the detector will run it: the detection bundle's settings and overrides
        cmd += ["--det-bundle", str(self.templates["det_bundle"])]
        for key, value in s["detect_overrides"].items():
            cmd += ["--set", f"{key}={json.dumps(value)}"]
        return cmd

    def hard_datalist_cmd(self) -> list[str]:
        o, s = self.o, self.o.settings
        cmd = [sys.executable, "-m", "monai_lung", "datalist", "--data-dir", str(self.data_dir), "--annotations", str(Path(o.annotations).resolve()),
               "--fold", str(o.fold), "--output", str(self.hard_datalist_file), "--hard-negatives", str(self.bank.parent / "bank" / "hard_negatives"),
               "--hard-negatives-per-scan", str(s["stage1_hard_negatives_per_scan"])]
        if o.excluded is not None:
            cmd += ["--excluded", str(Path(o.excluded).resolve())]
        if o.allow_missing_scans:
            cmd.append("--allow-missing-scans")
        return cmd

    def assemble_cmd(self) -> list[str]:
        return [sys.executable, "-m", "monai_lung", "assemble", "--seg-bundle", str(self.final_seg()), "--stage2-bundle", str(self.stage2),
                "--output-bundle", str(self.bundle)]

    def detect_cmd(self) -> list[str]:
        s = self.o.settings
        head = [sys.executable]
        if self.o.nproc > 1:
            head += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={self.o.nproc}"]
        cmd = [*head, "-m", "monai_lung", "detect", "--datalist", str(self.datalist_file), "--data-dir", str(self.data_dir), "--key", "test",
               "--det-bundle", str(self.bundle), "--output", str(self.predictions), "--device", self.o.device]
        if s["detect_report"]:
            cmd += ["--report-dir", str(self.work / "detect" / "report")]
        for key, value in s["detect_overrides"].items():
            cmd += ["--set", f"{key}={json.dumps(value)}"]
        return cmd

    def evaluate_cmd(self) -> list[str]:
        o = self.o
        cmd = [sys.executable, "-m", "monai_lung", "evaluate", "--annotations", str(Path(o.annotations).resolve()),
               "--predictions", str(self.predictions), "--datalist", str(self.datalist_file), "--key", "test",
               "--output-dir", str(self.froc_dir), "--bootstrap", str(o.settings["bootstrap"])]
        if o.excluded is not None:
            cmd += ["--excluded", str(Path(o.excluded).resolve())]
        return cmd

    # -- the steps --------------------------------------------------------------------------------------
    def _log(self, folder: Path) -> Path:
        return folder / "log.txt"

    def _run(self, cmd: list[str], folder: Path) -> None:
        run_logged(cmd, self._log(folder), prefix=self.o.log_prefix, verbose=self.o.verbose)

    def _train(self, bundle: Path, overrides: dict, folder: Path, resume: bool) -> None:
        """A bundle training run; an interrupted one continues from its newest checkpoint when it has one
        short of the last epoch (one at the last epoch may lack the final validation: that run starts over)."""
        extra = {}
        ckpt = latest_checkpoint(bundle / "models") if resume else None
        if ckpt is not None and int(re.search(r"(\d+)\.pt$", ckpt).group(1)) < int(overrides["max_epochs"]):
            extra = {"resume": True}
            self._say(f"  resuming from {Path(ckpt).name}")
        else:
            for old in (bundle / "models").glob("*.pt"):
                old.unlink()
        self._run(self._bundle_cmd(bundle, {**overrides, **extra}), folder)
        if not (bundle / "models" / "model.pt").is_file():
            raise StepFailed(f"{bundle}/models/model.pt was not written; see {self._log(folder)}")

    def _say(self, line: str) -> None:
        print(f"{self.o.log_prefix} {line}", flush=True)

    def steps(self, datalist: dict | None = None) -> list[Step]:
        o, s = self.o, self.o.settings
        seg_t, stage2_t, det_t = (self.templates[k] for k in ("seg_bundle", "stage2_bundle", "det_bundle"))

        def make_datalist(folder: Path, resume: bool) -> None:
            write_datalist(self.datalist_file, datalist if datalist is not None else self.check())
            counts = self.counts or {k: len(json.loads(self.datalist_file.read_text(encoding="utf-8"))[k]) for k in ("training", "validation", "test")}
            self._say("  " + ", ".join(f"{k}: {v} scans" for k, v in counts.items()))

        def train_stage1(folder: Path, resume: bool) -> None:
            if not resume or not self.seg1.is_dir():
                copy_bundle(seg_t, self.seg1, self.seg_edits())
            self._train(self.seg1, self.stage1_overrides(), folder, resume)
            shutil.rmtree(folder / "cache", ignore_errors=True)  # a disk cache holds ~120 MB per scan; the fine-tune makes its own

        def crop_bank(folder: Path, resume: bool) -> None:
            self._run(self.crops_cmd(), folder)

        def finetune_stage1(folder: Path, resume: bool) -> None:
            if s["stage1_finetune_epochs"] <= 0:
                self._say("  skipped (stage1_finetune_epochs 0)")
                return
            self._run(self.hard_datalist_cmd(), folder)
            if not resume or not self.seg2.is_dir():
                copy_bundle(self.seg1, self.seg2)  # the first run's configs (edits included), without its weights
            self._train(self.seg2, self.stage1_overrides(finetune=True), folder, resume)
            shutil.rmtree(folder / "cache", ignore_errors=True)

        def train_stage2(folder: Path, resume: bool) -> None:
            if not resume or not self.stage2.is_dir():
                copy_bundle(stage2_t, self.stage2)
            self._train(self.stage2, self.stage2_overrides(), folder, resume)

        def assemble(folder: Path, resume: bool) -> None:
            copy_bundle(det_t, self.bundle, self.det_edits())
            self._run(self.assemble_cmd(), folder)

        def detect(folder: Path, resume: bool) -> None:
            self._run(self.detect_cmd(), folder)

        def evaluate(folder: Path, resume: bool) -> None:
            self._run(self.evaluate_cmd(), folder)

        inputs_files = {"annotations": file_identity(o.annotations), "excluded": file_identity(o.excluded)}
        finetune = s["stage1_finetune_epochs"] > 0
        return [
            Step("datalist", {"data": scans_identity(self.data_dir), **inputs_files, "fold": o.fold,
                              "allow_missing_scans": o.allow_missing_scans}, make_datalist),
            Step("train_stage1", {"template": bundle_identity(seg_t), "edits": self.seg_edits(), "overrides": self.stage1_overrides(device=False)},
                 train_stage1, [self._bundle_cmd(self.seg1, self.stage1_overrides())], resumable=True),
            Step("crop_bank", {"command": self.crops_cmd(device=False)[3:], "candidates": file_identity(o.candidates)}, crop_bank,
                 [self.crops_cmd()], resumable=True),
            Step("finetune_stage1", {"epochs": s["stage1_finetune_epochs"], "datalist": self.hard_datalist_cmd()[3:] if finetune else None,
                                     "overrides": self.stage1_overrides(finetune=True, device=False) if finetune else None}, finetune_stage1,
                 [self.hard_datalist_cmd(), self._bundle_cmd(self.seg2, self.stage1_overrides(finetune=True))] if finetune else [],
                 resumable=True),
            Step("train_stage2", {"template": bundle_identity(stage2_t), "overrides": self.stage2_overrides(device=False)}, train_stage2,
                 [self._bundle_cmd(self.stage2, self.stage2_overrides())], resumable=True),
            Step("assemble", {"template": bundle_identity(det_t), "edits": self.det_edits(), "command": self.assemble_cmd()[3:]}, assemble,
                 [self.assemble_cmd()]),
            Step("detect", {"report": s["detect_report"], "overrides": s["detect_overrides"]}, detect, [self.detect_cmd()], resumable=True),
            Step("evaluate", {"command": self.evaluate_cmd()[3:]}, evaluate, [self.evaluate_cmd()]),
        ]

    def plan(self) -> str:
        """The resolved plan: every step, its commands (every bundle override), what it writes."""
        lines = [f"work dir {self.work}; output bundle {self.bundle}; profile {self.o.profile}; fold {self.o.fold}; "
                 f"nproc {self.o.nproc}; device {self.o.device}"]
        if self.seg_edits():
            lines.append(f"bundle copies edited: segmentation {self.seg_edits()}; detection {self.det_edits()}")
        for step in self.steps(datalist={}):
            lines.append(f"{step.name}: -> {self.work / step.name}/")
            for cmd in step.commands:
                lines.append("    " + " ".join(quote(c) for c in cmd))
            if step.name == "datalist":
                lines.append(f"    fold {self.o.fold} of {self.data_dir} -> {self.datalist_file}")
        return "\n".join(lines)

    def run(self) -> dict:
        """Check, then run every step; returns the test fold's FROC summary (``froc.json``)."""
        datalist = self.check()
        self.check_work_dir()
        self.work.mkdir(parents=True, exist_ok=True)
        runner = self.runner or StepRunner(self.work, {}, prefix=self.o.log_prefix, verbose=self.o.verbose)
        runner.header = {**runner.header, "command": " ".join(sys.argv), "identity": self.identity(), "profile": self.o.profile,
                         "settings": self.o.settings, "fold": self.o.fold, "output_bundle": str(self.bundle)}
        for step in self.steps(datalist):
            runner.run(step)
        result = json.loads((self.froc_dir / "froc.json").read_text(encoding="utf-8"))
        runner.finish({"cpm": result["cpm"], "froc": str(self.froc_dir), "predictions": str(self.predictions),
                       "output_bundle": str(self.bundle), "stage_bundles": [str(self.final_seg()), str(self.stage2)]})
        return result


def print_result(run, result: dict, prefix: str = "[train]", cpm: bool = True) -> None:
    """CPM, sensitivities and where the outputs are (what ``train`` and the demo print at the end)."""
    if cpm:
        print(f"{prefix} CPM {result['cpm']:.3f} on {result.get('counts', {}).get('num_scans', '?')} test scans (fold {run.o.fold})")
    print(f"{prefix} sensitivity at " + ", ".join(f"{r['fps_per_scan']:g}: {r['sensitivity']:.3f}" for r in result["sensitivities"]) + " FPs/scan")
    print(f"{prefix} FROC plot: {run.froc_dir / 'froc.png'}   curve: {run.froc_dir / 'froc.csv'}")
    report = run.work / "detect" / "report" / "index.html"
    print(f"{prefix} " + (f"review report: {report}   " if report.is_file() else "") + f"predictions: {run.predictions}")
    print(f"{prefix} detection bundle: {run.bundle}   stage bundles: {run.final_seg()}, {run.stage2}")
