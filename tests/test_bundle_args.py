"""On/off bundle ids as they arrive from `python -m monai.bundle run ... --id value` (fire's parsing)."""

from __future__ import annotations

import fire.parser
import pytest
from monai.bundle import ConfigParser

from monai_lung.bundle_args import flag
from tests.bundle_utils import REPO


@pytest.mark.parametrize("text, expected", [("false", False), ("False", False), ("no", False), ("0", False),
                                            ("true", True), ("True", True), ("on", True), ("1", True)])
def test_flag_reads_what_fire_makes_of_the_command_line(text, expected):
    value = fire.parser.DefaultParseValue(text)  # 'false' stays a (truthy) string, 'False' becomes a bool
    assert flag(value, "resume") is expected


@pytest.mark.parametrize("value", ["maybe", 2, None, ""])
def test_flag_refuses_other_values_naming_the_id(value):
    with pytest.raises(ValueError, match="'amp'"):
        flag(value, "amp")


@pytest.mark.parametrize("bundle, config, id_, derived, off", [
    ("lung_nodule_ct_segmentation", "train.json", "amp", "use_amp", False),
    ("lung_nodule_ct_segmentation", "train.json", "imitate_source_slices", "train#random_transforms#3#slice_grid_key", None),
    ("lung_nodule_ct_segmentation", "inference.json", "amp", "use_amp", False),
    ("lung_nodule_ct_classification", "train.json", "amp", "use_amp", False),
    ("lung_nodule_ct_classification", "inference.json", "amp", "use_amp", False),
])
def test_lower_case_false_on_the_command_line_switches_a_bundle_option_off(bundle, config, id_, derived, off):
    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles" / bundle / "configs" / config))
    parser.update({"bundle_root": str(REPO / "bundles" / bundle), id_: "false"})
    assert parser.get_parsed_content(derived) == off
    parser.update({id_: "maybe"})
    with pytest.raises(Exception, match=id_):
        parser.get_parsed_content(derived, lazy=False)


def test_detector_parameters_read_words_as_flags():
    from monai_lung.detection.detector import DetectorConfig

    cfg = DetectorConfig.from_dict({"amp": "false", "tta": "False", "use_lung_mask": "0"})
    assert (cfg.amp, cfg.tta, cfg.use_lung_mask, cfg.keep_volume_on_cpu) == (False, False, False, True)
    with pytest.raises(ValueError, match="'tta'"):
        DetectorConfig.from_dict({"tta": "maybe"})


def test_resume_false_as_a_word_starts_afresh(tmp_path):
    import torch
    from ignite.engine import Engine

    from monai_lung.training import attach_checkpointing

    net = torch.nn.Linear(2, 2)
    # with no checkpoint in the folder, resuming is an error: so 'false' must not be read as true
    assert attach_checkpointing(Engine(lambda e, b: None), tmp_path, {"network": net}, resume="false") is None
    with pytest.raises(FileNotFoundError, match="resume"):
        attach_checkpointing(Engine(lambda e, b: None), tmp_path, {"network": net}, resume="true")


@pytest.mark.parametrize("bundle, overrides, missing", [
    ("lung_nodule_ct_classification", {"crop_bank_dir": "{tmp}/no_bank"}, "{tmp}/no_bank/bank.json: crop bank"),
    ("lung_nodule_ct_segmentation", {"data_list_file_path": "{tmp}/no_list.json"}, "{tmp}/no_list.json: data list"),
])
def test_a_bundle_run_without_its_inputs_stops_with_one_line(tmp_path, bundle, overrides, missing):
    """`python -m monai.bundle run training` with a missing crop bank or data list: one line naming the path, exit 2,
    instead of MONAI's traceback around the config expression that failed."""
    import subprocess
    import sys

    args = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", str(REPO / "bundles" / bundle / "configs" / "train.json"),
            "--bundle_root", str(tmp_path), "--dataset_dir", str(tmp_path), "--data_list_file_path", str(tmp_path / "list.json")]
    (tmp_path / "list.json").write_text('{"training": [], "validation": []}', encoding="utf-8")
    (tmp_path / "no_bank").mkdir()
    for key, value in overrides.items():
        args += [f"--{key}", value.format(tmp=tmp_path)]
    done = subprocess.run(args, capture_output=True, encoding="utf-8", errors="replace", timeout=300, cwd=str(tmp_path))
    assert done.returncode == 2, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if "error" in line.lower() or "Traceback" in line]
    assert errors == [f"python -m monai.bundle run: error: {missing.format(tmp=tmp_path)} (build one with `monai-lung crops`) not found"
                      if "bank" in missing else f"python -m monai.bundle run: error: {missing.format(tmp=tmp_path)} not found"]
