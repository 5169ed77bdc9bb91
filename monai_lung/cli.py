"""``monai-lung`` command line: assembles the subcommands that each package's ``cli`` module registers, and turns a
user error into one line with exit code 2. Options, bodies and help live with the package that does the work."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from monai_lung.io.errors import DataError

#: the packages whose ``cli.register(subparsers)`` adds commands, in the order ``--help`` lists them
COMMAND_PACKAGES = ("synthetic", "datalist", "evaluation", "detection", "clinical", "stage2", "report", "node", "training")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="monai-lung", description="MONAI-based two-stage lung nodule detection for chest CT (LUNA16 layout)."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks")
    commands = parser.add_subparsers(dest="command", required=True)
    for package in COMMAND_PACKAGES:
        importlib.import_module(f"monai_lung.{package}.cli").register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        return int(args.func(args) or 0)
    except DataError as err:
        if args.verbose:
            raise
        print(f"monai-lung {args.command}: error: {err}", file=sys.stderr)
        return 2
    except SystemExit as stop:  # a command's own usage check: SystemExit("monai-lung detect: give ...")
        if not isinstance(stop.code, str):
            raise
        message = stop.code if stop.code.startswith("monai-lung") else f"monai-lung {args.command}: {stop.code}"
        print(message.replace(f"monai-lung {args.command}: ", f"monai-lung {args.command}: error: ", 1), file=sys.stderr)
        return 2
