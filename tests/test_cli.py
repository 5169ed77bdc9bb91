"""User errors on the command line: one line naming the problem, exit code 2, no traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("args, line", [
    (["detect", "--output", "p.csv"], "monai-lung detect: error: give one of IMAGES, --datalist or --dicomweb"),
    (["detect", "scan.mhd", "--output", "p.csv", "--models", "m", "--set", "seg_threshold"],
     "monai-lung detect: error: --set expects KEY=VALUE, got 'seg_threshold'"),
    (["evaluate", "--annotations", "none.csv", "--predictions", "p.csv", "--seriesuids", "u.csv", "--output-dir", "e"],
     "monai-lung evaluate: error: "),
])
def test_a_user_error_is_one_line_with_exit_code_2(tmp_path, args, line):
    done = subprocess.run([sys.executable, "-m", "monai_lung", *args], capture_output=True, encoding="utf-8", errors="replace", timeout=120, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    errors = [ln for ln in done.stderr.splitlines() if ln.startswith("monai-lung") or "Traceback" in ln]
    assert len(errors) == 1 and errors[0].startswith(line), done.stderr
