"""The commands in the bundle guides (bundles/*/docs/README.md) parse against the current configs and CLI.

Each fenced ``bash`` block is split into commands (``\\`` continuations joined). ``python -m monai.bundle run``
commands (also under ``torchrun``) must name config files that exist, a run id and override ids that the merged
config defines (a misspelt id would otherwise be added silently and change nothing); ``monai-lung`` commands must
parse with the package's own argument parser. Running them needs trained weights and real data: the bundles'
own tests run the same configs at toy scale.
"""

from __future__ import annotations

import ast
import re
import shlex
from pathlib import Path

import pytest
from monai.bundle import ConfigParser

from monai_lung.cli import build_parser
from monai_lung.detection import DetectorConfig

ROOT = Path(__file__).resolve().parents[1]
GUIDES = sorted(ROOT.glob("bundles/*/docs/README.md"))
# values for the shell variables the guides use
SHELL_VARS = {"DATA": "/data/LUNA16", "RANK": "0", "NODE_RANK": "0", "HOST0": "host0", "MASTER": "host0"}
BUNDLE_OPTIONS = {"config_file", "bundle_root", "meta_file", "logging_file", "args_file"}


def _commands(guide: Path) -> list[str]:
    text = guide.read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split(" # ")[0].strip()
            if not line or line.startswith("#") or re.match(r"^(cd|cp) |^[A-Z_]+=\S+$", line):
                continue
            for name, value in SHELL_VARS.items():
                line = line.replace(f"${name}", value)
            commands.append(line)
    return commands


CASES = [(guide, command) for guide in GUIDES for command in _commands(guide)]


def test_guides_have_commands():
    assert len(GUIDES) == 3
    for guide in GUIDES:
        assert any("monai.bundle run" in c or c.startswith("monai-lung") for c in _commands(guide)), guide


def _check_bundle_command(bundle_dir: Path, args: list[str]) -> None:
    assert args[:2] == ["monai.bundle", "run"], args
    rest = args[2:]
    run_id = "run"
    if rest and not rest[0].startswith("--"):
        run_id, rest = rest[0], rest[1:]
    assert len(rest) % 2 == 0, f"options without values: {rest}"
    options = dict(zip(rest[::2], rest[1::2]))
    assert all(key.startswith("--") for key in options), options
    files = options.pop("--config_file")
    files = ast.literal_eval(files) if files.startswith("[") else [files]
    parser = ConfigParser()
    parser.read_config([str(bundle_dir / f) for f in files])
    missing = object()
    assert parser.get(run_id, missing) is not missing, f"run id {run_id!r} not in {files}"
    for key in options:
        name = key[2:]
        if name in BUNDLE_OPTIONS:
            continue
        if name.startswith("detector_config#"):  # the config states a few; the rest take DetectorConfig's defaults
            assert name.split("#", 1)[1] in DetectorConfig.__dataclass_fields__, f"{name!r}: no such detector parameter"
            continue
        assert parser.get(name, missing) is not missing, f"override {name!r} is not an id of {files}"


@pytest.mark.parametrize("guide,command", CASES, ids=[f"{g.parent.parent.name}:{i}" for i, (g, _) in enumerate(CASES)])
def test_guide_command_parses(guide: Path, command: str):
    bundle_dir = guide.parent.parent
    tokens = shlex.split(command)
    if tokens[0] == "monai-lung":
        try:
            build_parser().parse_args(tokens[1:])
        except SystemExit as exc:  # argparse exits 2 on an unknown or missing option, 0 for --help
            assert exc.code == 0, f"{command!r} does not parse"
    elif tokens[0] == "python":
        assert tokens[1] == "-m", command
        _check_bundle_command(bundle_dir, tokens[2:])
    elif tokens[0] == "torchrun":
        start = tokens.index("-m")
        _check_bundle_command(bundle_dir, tokens[start + 1:])
    else:
        pytest.fail(f"unexpected command in {guide}: {command!r}")
