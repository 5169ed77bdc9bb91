"""Finding LUNA16 scans on disk: ``DATA_DIR/subset0..subset9/<seriesuid>.mhd`` (other layouts too)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from monai_lung.io.errors import DataError

SCAN_SUFFIXES = (".mhd", ".mha", ".nii.gz", ".nii", ".nrrd")
_SUBSET = re.compile(r"^subset(\d+)$")


def seriesuid_of(path: str | os.PathLike) -> str:
    """The seriesuid a scan file stands for: its name without the image suffix (a DICOM folder: its name)."""
    name = Path(path).name
    for suffix in SCAN_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def find_scans(data_dir: str | os.PathLike) -> dict[str, tuple[int | None, Path]]:
    """Map seriesuid -> (subset number or None, path) for every scan under ``data_dir``.

    Scans are looked for in ``data_dir/subsetK/`` (LUNA16's layout; ``K`` becomes the subset number) and
    directly in ``data_dir`` (subset None). A seriesuid found twice is an error.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(data_dir, "data folder not found")
    found: dict[str, tuple[int | None, Path]] = {}

    def add(path: Path, subset: int | None) -> None:
        uid = seriesuid_of(path)
        if uid in found:
            raise DataError(path, f"seriesuid {uid} also found at {found[uid][1]}")
        found[uid] = (subset, path)

    for entry in sorted(data_dir.iterdir()):
        match = _SUBSET.match(entry.name)
        if entry.is_dir() and match:
            for scan in sorted(entry.iterdir()):
                if scan.is_file() and scan.name.lower().endswith(SCAN_SUFFIXES) and not scan.name.startswith("."):
                    add(scan, int(match.group(1)))
        elif entry.is_file() and entry.name.lower().endswith(SCAN_SUFFIXES) and not entry.name.startswith("."):
            add(entry, None)
    return found
