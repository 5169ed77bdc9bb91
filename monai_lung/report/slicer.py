"""3D Slicer markups files (``<seriesuid>.mrk.json``): findings or annotations as point lists beside the scan.

Slicer's markups JSON (schema v1.0.3) stores each control point in a named coordinate system. These files say
``"coordinateSystem": "LPS"`` and ``"coordinateUnits": "mm"`` and hold world LPS (x, y, z) mm, the numbers of
LUNA16 CSVs (ITK physical points): a scan loaded into Slicer from its ``.mhd``, NIfTI or DICOM and a file from
here line up with no conversion by the user (Slicer turns LPS into its internal RAS itself). One file per scan,
one point list per file, the points in decreasing probability (predictions) or in file order (annotations);
each point's label is short (shown in the slice views), its description holds the scores and the diameter.
Drag the scan and its ``.mrk.json`` into Slicer; the Markups module lists the points, and clicking one
centres the views on it.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from monai_lung.findings import Finding, csv_columns, report_items
from monai_lung.io.atomic import write_json_atomic
from monai_lung.io.errors import DataError
from monai_lung.io.luna16_csv import read_annotations, read_predictions

SCHEMA_URL = "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/Resources/Schema/markups-schema-v1.0.3.json#"
MARKUPS_SUFFIX = ".mrk.json"
#: point colour, RGB 0..1: the yellow of the report's finding marker
FINDING_COLOR = (1.0, 0.83, 0.0)
ANNOTATION_COLOR = (0.2, 0.9, 0.3)


def point_list_markups(points: Sequence[Mapping[str, Any]], name: str, color: Sequence[float] = FINDING_COLOR) -> dict:
    """A markups document holding one point list.

    Args:
        points: ``[{"coord": (x, y, z) world LPS mm, "label": str, "description": str (optional)}]``.
        name: the point list's name in Slicer (e.g. ``"<seriesuid> findings"``).
        color: RGB in [0, 1].

    Returns the JSON object (dicts and lists only). Raises ``ValueError`` for a coordinate that is not three
    finite numbers.
    """
    control_points = []
    for i, p in enumerate(points, start=1):
        coord = [float(v) for v in p["coord"]]
        if len(coord) != 3 or not all(math.isfinite(v) for v in coord):
            raise ValueError(f"point {i} ({p.get('label', '')!r}) has coordinate {p['coord']!r}: three finite numbers (world LPS mm) needed")
        control_points.append({
            "id": str(i), "label": str(p["label"]), "description": str(p.get("description", "")),
            "position": coord, "positionStatus": "defined", "locked": True, "visibility": True, "selected": True,
        })
    return {
        "@schema": SCHEMA_URL,
        "markups": [{
            "type": "Fiducial", "name": name, "coordinateSystem": "LPS", "coordinateUnits": "mm",
            "locked": True,  # review, not editing: a click must not drag a finding away
            "labelFormat": "%N-%d", "controlPoints": control_points,
            "display": {"visibility": True, "color": list(color), "selectedColor": list(color),
                        "pointLabelsVisibility": True, "glyphType": "Sphere3D", "glyphScale": 2.0},
        }],
    }


def finding_points(findings: Sequence[Finding], max_points: int | None = None, min_probability: float = -math.inf) -> list[dict]:
    """Points for :func:`point_list_markups` from :class:`~monai_lung.findings.record.Finding` records (centres world
    LPS mm), highest probability first: those with ``probability >= min_probability``, at most ``max_points``. Labels
    read ``"1 p0.93"`` (rank and probability); the description lists the finding's report attributes that are known
    (probability, both stages, sizes, ...)."""
    kept = [f for f in findings if float(f.probability) >= min_probability]
    kept.sort(key=lambda f: -float(f.probability))  # stable: equal scores keep their order
    if max_points is not None:
        kept = kept[: max(int(max_points), 0)]
    return [
        {"coord": list(f.coord), "label": f"{rank} p{float(f.probability):.2f}",
         "description": ", ".join(f"{label} {text}" for label, text in report_items(f, skip_missing=True))}
        for rank, f in enumerate(kept, start=1)
    ]


def annotation_points(rows: Sequence[Mapping[str, Any]]) -> list[dict]:
    """Points from annotation rows ``{"coord": (x, y, z) world LPS mm, "diameter_mm": float}``, in order;
    labels ``"N1 6.2mm"`` (a negative diameter, size unknown in ``annotations_excluded.csv``, reads ``"N1"``)."""
    points = []
    for k, r in enumerate(rows, start=1):
        d = float(r["diameter_mm"])
        size = f" {d:.1f}mm" if d > 0 else ""
        points.append({"coord": r["coord"], "label": f"N{k}{size}", "description": f"diameter {d:.1f} mm" if d > 0 else "size unknown"})
    return points


def write_markups(path: str | os.PathLike, markups: Mapping[str, Any]) -> Path:
    """Write a markups document atomically (``path`` should end in ``.mrk.json``, which Slicer recognises)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, markups)
    return path


def csv_to_markups(
    csv_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    min_probability: float = -math.inf,
    max_per_scan: int | None = None,
) -> dict[str, Path]:
    """One ``<output_dir>/<seriesuid>.mrk.json`` per scan of a LUNA16 CSV; returns ``{seriesuid: path}``.

    The CSV is a submission (``seriesuid,coordX,coordY,coordZ,probability``: points by probability, filtered
    by ``min_probability`` and ``max_per_scan``) or annotations (``...,diameter_mm``: every row, in order);
    world LPS mm either way. A file with neither column, or an unreadable one, raises :class:`DataError`
    naming it.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise DataError(csv_path, "CSV file not found")
    with open(csv_path, encoding="utf-8", errors="replace") as fh:
        header = {c.strip() for c in fh.readline().strip().split(",")}
    if "probability" in header or not header - {""}:  # an empty file: the predictions reader says so
        frame, kind = read_predictions(csv_path), "findings"
    elif "diameter_mm" in header:
        frame, kind = read_annotations(csv_path, allow_negative_diameter=True), "annotations"
    else:
        raise DataError(csv_path, "neither a predictions CSV (…,probability) nor an annotations CSV (…,diameter_mm)")
    output_dir = Path(output_dir)
    written: dict[str, Path] = {}
    for uid in frame["seriesuid"].unique():  # checked before anything is written
        if Path(uid).name != uid or uid in (".", ".."):  # it names a file in output_dir, nothing else
            raise DataError(csv_path, f"seriesuid {uid!r} is not usable as a file name")
    extra = [c for c in csv_columns(Finding)[5:] if c in header] if kind == "findings" else []
    if extra:  # a predictions CSV of `detect` also holds the findings' sizes
        sizes = pd.read_csv(csv_path, usecols=extra)
        frame = frame.join(sizes.loc[frame.index])
    for uid, rows in frame.groupby("seriesuid", sort=False):
        coords = rows[["coordX", "coordY", "coordZ"]].to_numpy(np.float64)
        if kind == "findings":
            items = [Finding(coord=c, probability=r["probability"], **{k: r[k] for k in extra}) for c, (_, r) in zip(coords, rows.iterrows())]
            points = finding_points(items, max_per_scan, min_probability)
            color = FINDING_COLOR
        else:
            points = annotation_points([{"coord": c, "diameter_mm": d} for c, d in zip(coords, rows["diameter_mm"])])
            color = ANNOTATION_COLOR
        written[str(uid)] = write_markups(output_dir / f"{uid}{MARKUPS_SUFFIX}", point_list_markups(points, f"{uid} {kind}", color))
    return written
