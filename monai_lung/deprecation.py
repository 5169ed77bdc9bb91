"""Old names kept for one release, each saying on stderr which name to use instead.

- Command-line options: :func:`add_renamed_option` adds an option with its old spellings, hidden from ``--help``,
  storing into the new option's ``dest``.
- Settings (a detection bundle's ``detector_config``, ``--set key=value``, ``monai-lung train`` settings):
  :func:`renamed` reads the old keys of :data:`RENAMED_SETTINGS` as the new ones.
"""

from __future__ import annotations

import argparse
import sys


class _DeprecatedAlias(argparse.Action):
    def __init__(self, option_strings, dest, new_option: str = "", **kwargs):
        super().__init__(option_strings, dest, **kwargs)
        self.new_option = new_option

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"{parser.prog}: {option_string} is deprecated and will be removed; use {self.new_option}", file=sys.stderr)
        if self.nargs == 0:
            values = self.const
        setattr(namespace, self.dest, values)


def add_renamed_option(parser, name: str, old_names: tuple[str, ...] | str, **kwargs) -> argparse.Action:
    """``parser.add_argument(name, **kwargs)``, also accepting each of ``old_names`` (hidden from ``--help``, storing
    into the same ``dest``, with a note on stderr). A required option is satisfied by either spelling. Returns the
    new option's action."""
    old_names = (old_names,) if isinstance(old_names, str) else tuple(old_names)
    required = bool(kwargs.pop("required", False))
    target = parser.add_mutually_exclusive_group(required=True) if required else parser
    action = target.add_argument(name, **kwargs)
    for old in old_names:
        target.add_argument(old, dest=action.dest, type=action.type, metavar=action.metavar, help=argparse.SUPPRESS,
                            action=_DeprecatedAlias, new_option=name, default=argparse.SUPPRESS)
    return action


#: settings renamed with stage 2's one name: old name -> new name (read for one release, with a warning)
RENAMED_SETTINGS = {"cls_spacing": "stage2_spacing", "cls_batch_size": "stage2_batch_size", "cls_bundle": "stage2_bundle"}


def renamed(values: dict, what: str = "setting") -> dict:
    """``values`` with the keys of :data:`RENAMED_SETTINGS` under their new names (a warning on stderr for each);
    a key given under both names keeps the new name's value."""
    out = dict(values)
    for old, new in RENAMED_SETTINGS.items():
        if old in out:
            print(f"monai-lung: {what} {old} is deprecated and will be removed; use {new}", file=sys.stderr)
            value = out.pop(old)
            out.setdefault(new, value)
    return out
