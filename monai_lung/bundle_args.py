"""Values that reach a bundle config from the command line.

`python -m monai.bundle run ... --resume false` goes through `fire`, which turns `False` into a bool but a
lower-case `false` into the string ``'false'``, and a non-empty string is true: without a check the run would
resume, keep AMP on, or imitate slices while the user asked for the opposite. Bundle configs pass their
on/off ids through :func:`flag`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from monai_lung.io.errors import DataError

_TRUE_WORDS = frozenset({"true", "yes", "on", "1"})
_FALSE_WORDS = frozenset({"false", "no", "off", "0"})


def flag(value: object, name: str = "value") -> bool:
    """The bool that a bundle id's value means.

    Args:
        value: a bool, 0 or 1, or one of the words true/false, yes/no, on/off, 1/0 in any case (what a
            command-line override of a JSON bool can arrive as).
        name: the config id, named in the error.

    Raises:
        ValueError: for anything else (``--resume maybe``, ``--amp 2``), naming the id and the value.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE_WORDS:
            return True
        if word in _FALSE_WORDS:
            return False
    raise ValueError(f"bundle id {name!r} must be true or false, got {value!r}")


def parse_overrides(pairs: list[str], option: str = "--set") -> dict:
    """``["a=1", "b=[1,2]", "c=gaussian"]`` -> ``{"a": 1, "b": [1, 2], "c": "gaussian"}`` (JSON values, else strings).

    One parser for every ``--set KEY=VALUE`` of the command line (detector parameters, training settings).

    Raises:
        DataError: a pair without ``=`` or with an empty key, naming the pair (the CLI prints one line, exit 2).
    """
    out = {}
    for pair in pairs:
        key, sep, value = str(pair).partition("=")
        if not sep or not key.strip():
            raise DataError(None, f"{option} expects KEY=VALUE, got {pair!r}")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def require_paths(paths: dict, run: str = "python -m monai.bundle run") -> None:
    """Stop a bundle run with one line when an input it needs is missing, before any network is built.

    Args:
        paths: ``{what: path}``, e.g. ``{"crop bank (build one with `monai-lung crops`)": "<bank>/bank.json"}``;
            None values are skipped (an optional input left out).

    Raises:
        SystemExit: exit code 2 after printing ``<run>: error: <path>: <what> not found`` to stderr. MONAI's config
            evaluation wraps every ``Exception`` in a long traceback; ``SystemExit`` passes through it.
    """
    for what, path in paths.items():
        if path is None or str(path) in ("", "None"):
            continue
        if not Path(str(path)).exists():
            print(f"{run}: error: {path}: {what} not found", file=sys.stderr, flush=True)
            raise SystemExit(2)
