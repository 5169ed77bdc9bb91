"""LUNA16 CSV files with schema checks. All coordinates are world millimetres (x, y, z), ITK/LPS.

- ``annotations.csv`` / ``annotations_excluded.csv``: ``seriesuid,coordX,coordY,coordZ,diameter_mm``
  (in ``annotations_excluded.csv`` a negative diameter means "size unknown").
- ``candidates.csv`` / ``candidates_V2.csv``: ``seriesuid,coordX,coordY,coordZ,class`` (1 nodule, 0 not).
- predictions / submissions: ``seriesuid,coordX,coordY,coordZ,probability``.
- mined stage-1 candidates (``monai-lung hard-negatives``, a crop bank's ``hard_negatives/``):
  ``seriesuid,coordX,coordY,coordZ,peak_prob,label`` (1 nodule, 0 false positive, -1 excluded finding).

Every reader returns a pandas DataFrame with exactly the schema's columns, ``seriesuid`` as str and
the numeric columns as float64 (``class`` as int64); any problem raises :class:`DataError` naming
the file, the column and the first offending row.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from monai_lung.io.atomic import write_csv_atomic
from monai_lung.io.errors import DataError

COORD_COLUMNS = ["coordX", "coordY", "coordZ"]
ANNOTATION_COLUMNS = ["seriesuid", *COORD_COLUMNS, "diameter_mm"]
CANDIDATE_COLUMNS = ["seriesuid", *COORD_COLUMNS, "class"]
PREDICTION_COLUMNS = ["seriesuid", *COORD_COLUMNS, "probability"]
POINT_COLUMNS = ["seriesuid", *COORD_COLUMNS]
MINED_CANDIDATE_COLUMNS = ["seriesuid", *COORD_COLUMNS, "peak_prob", "label"]


def _read_csv(path: str | os.PathLike, columns: list[str], kind: str) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise DataError(path, f"{kind} file not found")
    try:
        # keep_default_na=False: a seriesuid is text, never NaN (pandas would read "NA" or "nan" as missing)
        frame = pd.read_csv(path, dtype={"seriesuid": str}, skipinitialspace=True, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise DataError(path, f"{kind} file is empty (expected header {','.join(columns)})") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise DataError(path, f"{kind} file is not a readable CSV ({err})") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(
            path, f"{kind} file misses column(s) {', '.join(missing)}; has {', '.join(map(str, frame.columns))}"
        )
    frame = frame[columns].copy()
    frame["seriesuid"] = frame["seriesuid"].astype(str).str.strip()
    if (frame["seriesuid"] == "").any():
        row = int(np.flatnonzero((frame["seriesuid"] == "").to_numpy())[0]) + 2  # +1 header, +1 one-based
        raise DataError(path, f"empty seriesuid on line {row}")
    for col in columns[1:]:
        values = pd.to_numeric(frame[col], errors="coerce")
        bad = values.isna() | ~np.isfinite(values.to_numpy(dtype=float, na_value=np.nan))
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise DataError(path, f"column {col} has a non-numeric value {frame[col].iloc[row]!r} on line {row + 2}")
        frame[col] = values.astype("int64" if col == "class" else "float64")
    return frame.reset_index(drop=True)


def read_annotations(path: str | os.PathLike, allow_negative_diameter: bool = False) -> pd.DataFrame:
    """Read ``annotations.csv`` (or, with ``allow_negative_diameter``, ``annotations_excluded.csv``)."""
    frame = _read_csv(path, ANNOTATION_COLUMNS, "annotations")
    if not allow_negative_diameter and (frame["diameter_mm"] <= 0).any():
        row = int(np.flatnonzero((frame["diameter_mm"] <= 0).to_numpy())[0])
        raise DataError(path, f"diameter_mm must be positive, got {frame['diameter_mm'].iloc[row]} on line {row + 2}")
    return frame


def read_excluded(path: str | os.PathLike) -> pd.DataFrame:
    """Read ``annotations_excluded.csv``; negative diameters (size unknown) are kept as they are."""
    return read_annotations(path, allow_negative_diameter=True)


def read_candidates(path: str | os.PathLike) -> pd.DataFrame:
    """Read ``candidates.csv`` / ``candidates_V2.csv``; ``class`` must be 0 or 1."""
    frame = _read_csv(path, CANDIDATE_COLUMNS, "candidates")
    bad = ~frame["class"].isin([0, 1])
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(path, f"class must be 0 or 1, got {frame['class'].iloc[row]} on line {row + 2}")
    return frame


def read_predictions(path: str | os.PathLike) -> pd.DataFrame:
    """Read a LUNA16 submission ``seriesuid,coordX,coordY,coordZ,probability``."""
    return _read_csv(path, PREDICTION_COLUMNS, "predictions")


def read_points(path: str | os.PathLike) -> pd.DataFrame:
    """Read a CSV of points ``seriesuid,coordX,coordY,coordZ`` (extra columns are dropped)."""
    return _read_csv(path, POINT_COLUMNS, "points")


def read_mined_candidates(path: str | os.PathLike, with_diameter: bool = False) -> pd.DataFrame:
    """Read labelled stage-1 candidates ``seriesuid,coordX,coordY,coordZ,peak_prob,label`` (extra columns
    are dropped); ``with_diameter``: also the component's ``diameter_mm`` (the crop bank needs it)."""
    columns = MINED_CANDIDATE_COLUMNS + (["diameter_mm"] if with_diameter else [])
    return _read_csv(path, columns, "mined candidates")


def write_luna_csv(path: str | os.PathLike, frame: pd.DataFrame, columns: list[str]) -> None:
    """Write ``frame[columns]`` atomically, coordinates with enough digits to round-trip in mm."""
    write_csv_atomic(path, frame[columns])
