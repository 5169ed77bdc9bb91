"""The command line: one home per subcommand, options named as they are stored, old names kept for one release, and
user errors as one line with exit code 2."""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys

import pytest

from monai_lung.cli import COMMAND_PACKAGES, build_parser


@pytest.mark.parametrize("args, line", [
    (["detect", "--output", "p.csv"], "monai-lung detect: error: give one of IMAGES, --datalist or --dicomweb"),
    (["detect", "scan.mhd", "--output", "p.csv", "--det-bundle", "m", "--set", "seg_threshold"],
     "monai-lung detect: error: --set expects KEY=VALUE, got 'seg_threshold'"),
    (["evaluate", "--annotations", "none.csv", "--predictions", "p.csv", "--seriesuids", "u.csv", "--output-dir", "e"],
     "monai-lung evaluate: error: "),
])
def test_a_user_error_is_one_line_with_exit_code_2(tmp_path, args, line):
    done = subprocess.run([sys.executable, "-m", "monai_lung", *args], capture_output=True, encoding="utf-8", errors="replace", timeout=120, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    errors = [ln for ln in done.stderr.splitlines() if ln.startswith("monai-lung") or "Traceback" in ln]
    assert len(errors) == 1 and errors[0].startswith(line), done.stderr


def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return dict(next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices)


def test_each_package_registers_its_own_commands_and_every_dest_is_the_option_name():
    commands = _commands(build_parser())
    assert list(commands) == ["synth", "synth-pairs", "datalist", "evaluate", "detect", "assemble", "followup", "hard-negatives", "crops",
                              "score", "markups", "serve", "train", "demo"]
    for package in COMMAND_PACKAGES:  # each package's commands come from its own cli module
        sub = argparse.ArgumentParser().add_subparsers()
        importlib.import_module(f"monai_lung.{package}.cli").register(sub)
        assert sub.choices
        for name, p in sub.choices.items():
            assert [a.option_strings for a in p._actions] == [a.option_strings for a in commands[name]._actions]
    for name, parser in commands.items():
        for action in parser._actions:
            if not action.option_strings or action.help == argparse.SUPPRESS or action.dest == "help":
                continue  # positionals, the hidden old names (checked below), -h
            long = next(o for o in action.option_strings if o.startswith("--"))
            assert action.dest == long[2:].replace("-", "_"), f"{name} {long} stores to {action.dest}"


@pytest.mark.parametrize("args, dest, value, old", [
    (["detect", "a.mhd", "--output", "p.csv", "--models", "B"], "det_bundle", "B", "--models"),
    (["detect", "a.mhd", "--output", "p.csv", "--cls-bundle", "B"], "stage2_bundle", "B", "--cls-bundle"),
    (["assemble", "--seg-bundle", "S", "--cls-bundle", "B", "--output-bundle", "D"], "stage2_bundle", "B", "--cls-bundle"),
    (["score", "--bundle", "B", "--points", "p.csv", "--output", "o.csv"], "stage2_bundle", "B", "--bundle"),
    (["crops", "--datalist", "d.json", "--out", "B"], "output_dir", "B", "--out"),
])
def test_renamed_options_are_read_for_one_release_with_a_note(capsys, args, dest, value, old):
    parsed = build_parser().parse_args(args)
    assert str(getattr(parsed, dest)) == value
    assert f"{old} is deprecated" in capsys.readouterr().err


def test_the_old_names_are_hidden_and_a_required_option_takes_either():
    commands = _commands(build_parser())
    for name, old in (("detect", "--models"), ("detect", "--cls-bundle"), ("assemble", "--cls-bundle"), ("score", "--bundle"), ("crops", "--out")):
        assert f"{old} " not in commands[name].format_help().replace(f"{old}-", "")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["assemble", "--seg-bundle", "S", "--output-bundle", "D"])  # neither spelling
