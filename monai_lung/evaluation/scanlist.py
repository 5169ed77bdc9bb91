"""Which scans are evaluated: a seriesuid list from a CSV/text file or from a Decathlon-style data list."""

from __future__ import annotations

import csv
import os
import sys
from pathlib import Path

from monai_lung.io import DataError
from monai_lung.datalist import entry_seriesuid, read_datalist
from monai_lung.io.scans import find_scans


def _dedupe(uids: list[str]) -> list[str]:
    return list(dict.fromkeys(uids))


def read_seriesuid_list(path: str | os.PathLike) -> list[str]:
    """Seriesuids from ``path``: a CSV with a ``seriesuid`` column, or one uid per line without a header.

    ``path`` may be a regular file, a pipe (a shell's ``<(ls ...)``) or ``-`` for standard input.

    The file is read as a CSV when its first non-empty line holds a comma or is exactly ``seriesuid``;
    then the ``seriesuid`` column is taken. Otherwise every non-empty line is one uid (a first line
    without digits above uids with digits, such as ``uid``, is refused as a mislabelled header rather
    than counted as a scan). Blank lines and
    surrounding spaces are ignored, repeated uids kept once (first occurrence order).

    Raises:
        DataError: file missing or unreadable, a CSV without a ``seriesuid`` column, or no uid at all.
    """
    if os.fspath(path) == "-":
        path = Path("<stdin>")
        text = sys.stdin.read().lstrip("\ufeff")
    else:
        path = Path(path)
        if not path.exists():
            raise DataError(path, "seriesuid list file not found")
        if path.is_dir():
            raise DataError(path, "seriesuid list is a folder (give a file, a pipe or -, or evaluate --data-dir for every scan there)")
        try:  # a pipe reads like a file, once
            text = path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as err:
            raise DataError(path, f"seriesuid list file is not readable text ({err})") from None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise DataError(path, "seriesuid list file is empty (expected a seriesuid column or one uid per line)")
    first = lines[0]
    if "," in first or first == "seriesuid":
        rows = list(csv.reader(lines))
        header = [h.strip() for h in rows[0]]
        if "seriesuid" not in header:
            raise DataError(path, f"seriesuid list misses column seriesuid; has {', '.join(header)}")
        col = header.index("seriesuid")
        uids = []
        for number, row in enumerate(rows[1:], start=2):
            value = row[col].strip() if col < len(row) else ""
            if not value:
                raise DataError(path, f"empty seriesuid on non-blank line {number}")
            uids.append(value)
    else:
        uids = lines
        has_digit = [any(ch.isdigit() for ch in line) for line in lines]
        if len(lines) > 1 and not has_digit[0] and any(has_digit[1:]):
            raise DataError(path, f"first line {first!r} looks like a header; name the column seriesuid")
    if not uids:
        raise DataError(path, "seriesuid list holds no seriesuid")
    return _dedupe(uids)


def read_datalist_seriesuids(path: str | os.PathLike, key: str = "test") -> list[str]:
    """Seriesuids of the entries in list ``key`` (``training``, ``validation``, ``test``...) of a data list JSON.

    Each entry must be an object with a ``seriesuid`` string; an entry without one falls back to the
    name of its ``image`` path without the image suffix (``subset3/<uid>.mhd`` -> ``<uid>``). Repeated
    uids are kept once.

    Raises:
        DataError: file missing, invalid JSON, ``key`` absent or not a list, an entry without a seriesuid,
            or an empty list.
    """
    path = Path(path)
    data = read_datalist(path)
    if key not in data:
        lists = [k for k, v in data.items() if isinstance(v, list)]
        raise DataError(path, f"data list has no key {key!r} (lists: {', '.join(lists) or 'none'})")
    entries = data[key]
    if not isinstance(entries, list):
        raise DataError(path, f"data list key {key!r} is not a list")
    uids = []
    for number, entry in enumerate(entries):
        has_id = isinstance(entry, dict) and (isinstance(entry.get("seriesuid"), str) or isinstance(entry.get("image"), str))
        uid = entry_seriesuid(entry) if has_id else None
        if not isinstance(uid, str) or not uid.strip():
            raise DataError(path, f"entry {number} of {key!r} has no seriesuid (nor an image path)")
        uids.append(uid.strip())
    if not uids:
        raise DataError(path, f"data list {key!r} is empty: no scans to evaluate")
    return _dedupe(uids)


def read_data_dir_seriesuids(data_dir: str | os.PathLike) -> list[str]:
    """Seriesuids of every scan found in ``data_dir`` (``subsetK/<uid>.mhd`` and scans directly in it, see
    :func:`monai_lung.io.find_scans`), sorted.

    Raises:
        DataError: folder missing or holding no scan.
    """
    scans = find_scans(data_dir)
    if not scans:
        raise DataError(data_dir, "no scans found (expected subset0..subset9/<seriesuid>.mhd or scans directly in it)")
    return sorted(scans)
