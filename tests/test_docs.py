"""The README and docs/ say what the code does: the command reference is the parsers' own help, every
``monai-lung`` command shown parses with the real parser, every ``python -m monai.bundle`` command names ids
its configs define, and the getting-started walkthrough runs as written."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from monai_lung.cli import build_parser
from monai_lung.cli_reference import reference_markdown
from tests.test_bundle_guides import _check_bundle_command

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_VARS = {"D": "/data/LUNA16", "DATA": "/data/LUNA16", "NODE_RANK": "0", "MASTER": "host0", "HOST0": "host0"}
TOY_MARK = "<!-- toy: tests/test_docs.py runs this block -->"


def _blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def _commands(block: str) -> list[str]:
    out = []
    for line in re.sub(r"\\\n\s*", " ", block).splitlines():
        line = line.split(" # ")[0].strip()
        if not line or line.startswith("#") or "..." in line or re.match(r"^[A-Z_]+=\S+$", line):
            continue  # comments, variable settings and elided commands
        for name, value in sorted(SHELL_VARS.items(), key=lambda kv: -len(kv[0])):
            line = line.replace(f"${name}", value)
        out.append(line)
    return out


CASES = [(page, command) for page in PAGES for block in _blocks(page.read_text(encoding="utf-8")) for command in _commands(block)
         if command.startswith(("monai-lung ", "python -m monai.bundle", "torchrun "))]


def test_the_command_reference_is_the_parsers_help():
    assert (ROOT / "docs" / "commands.md").read_text(encoding="utf-8") == reference_markdown(), (
        "docs/commands.md is stale: run `python -m monai_lung.cli_reference > docs/commands.md`"
    )


def test_the_pages_show_commands():
    assert sum(command.startswith("monai-lung ") for _, command in CASES) >= 10


@pytest.mark.parametrize("page,command", CASES, ids=[f"{p.name}:{i}" for i, (p, _) in enumerate(CASES)])
def test_a_shown_command_parses(page: Path, command: str):
    tokens = shlex.split(command)
    if tokens[0] == "monai-lung":
        try:
            build_parser().parse_args(tokens[1:])
        except SystemExit as exc:  # argparse exits 2 on an unknown or missing option
            pytest.fail(f"{page.name}: {command!r} does not parse (exit {exc.code})")
        return
    module = tokens[tokens.index("-m") + 1:]
    files = [t for t in tokens if "configs/" in t]
    assert files, command
    # config paths in the docs are relative to the repository root
    _check_bundle_command(ROOT, module)


@pytest.mark.slow
def test_the_getting_started_walkthrough_runs_as_written(tmp_path):
    text = (ROOT / "docs" / "getting-started.md").read_text(encoding="utf-8")
    block = text.split(TOY_MARK, 1)[1]
    commands = _commands(_blocks(block)[0])
    assert commands and all(c.startswith("monai-lung ") for c in commands)
    for command in commands:
        args = [sys.executable, "-m", "monai_lung", *shlex.split(command)[1:]]
        done = subprocess.run(args, cwd=tmp_path, capture_output=True, encoding="utf-8", errors="replace", timeout=300)
        assert done.returncode == 0, f"{command}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    assert len(list((tmp_path / "toy").glob("subset*/*.mhd"))) == 6
    assert (tmp_path / "toy" / "datalist.json").is_file()
    assert len(list((tmp_path / "toy" / "slicer").glob("*.mrk.json"))) >= 1
    assert "train_stage1" in done.stdout  # the dry run printed the plan and ran nothing
    assert not (tmp_path / "toy" / "bundle").exists()
