"""LIDC-IDRI readers' XML (``LidcReadMessage``): each reader's nodule outlines, as masks on the series' slices.

Per reading session (one reader), each ``unblindedReadNodule`` has one ``roi`` per slice: ``imageZposition``
(world z mm of the slice), ``inclusion`` (FALSE: a hole) and ``edgeMap`` points, pixel (x = column, y = row)
indices of the outline. LIDC asked readers to draw the outline just outside the nodule, so the outline's own
pixels count as outside (``include_edge=False``, the default) or, as an upper bound, inside.
Nodules under 3 mm have a single point and no outline; they are skipped. Each outlined nodule also carries the
reader's ``characteristics`` ratings (LIDC's 1-5 or 1-6 scales), e.g. ``texture`` (1 ground glass or non-solid,
3 part solid, 5 solid) and ``calcification`` (1 popcorn, 2 laminated, 3 solid, 4 non-central, 5 central, 6 absent).
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from matplotlib.path import Path as PolygonPath

from monai_lung.io.errors import DataError

_NS = {"l": "http://www.nih.gov"}


def read_lidc_readers(path: str | os.PathLike) -> list[dict]:
    """``[{"reader": int, "nodule": str, "rois": [{"z": mm, "inclusion": bool, "xy": (N, 2) int}], "characteristics":
    {name: int}}]`` for every outlined nodule (three or more edge points on some slice) of every reader, in file
    order; ``characteristics`` is empty when the reader gave none."""
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as err:
        raise DataError(path, f"not a readable LIDC XML file ({err})") from None
    out = []
    for reader, session in enumerate(root.findall("l:readingSession", _NS), start=1):
        for nodule in session.findall("l:unblindedReadNodule", _NS):
            rois = []
            for roi in nodule.findall("l:roi", _NS):
                xy = np.array([[int(e.findtext("l:xCoord", namespaces=_NS)), int(e.findtext("l:yCoord", namespaces=_NS))]
                               for e in roi.findall("l:edgeMap", _NS)], dtype=np.int64).reshape(-1, 2)
                z = float(roi.findtext("l:imageZposition", namespaces=_NS))
                rois.append({"z": z, "inclusion": roi.findtext("l:inclusion", namespaces=_NS).strip().upper() == "TRUE", "xy": xy})
            if any(len(r["xy"]) >= 3 for r in rois):
                ratings = nodule.find("l:characteristics", _NS)
                characteristics = {} if ratings is None else {
                    child.tag.split("}", 1)[-1]: int(child.text) for child in ratings if (child.text or "").strip().isdigit()
                }
                out.append({"reader": reader, "nodule": nodule.findtext("l:noduleID", namespaces=_NS).strip(), "rois": rois,
                            "characteristics": characteristics})
    return out


def outline_mask(rois: list[dict], slice_z: np.ndarray, rows: int, columns: int, include_edge: bool = False) -> np.ndarray:
    """A nodule's (slices, rows, columns) bool mask from its ``rois`` on slices at world z ``slice_z`` (mm, the
    series' slice order); pixels whose centre lies inside an outline, minus exclusion outlines."""
    slice_z = np.asarray(slice_z, dtype=np.float64)
    mask = np.zeros((len(slice_z), rows, columns), dtype=bool)
    for roi in sorted(rois, key=lambda r: not r["inclusion"]):  # holes after the outlines they cut
        xy = roi["xy"]
        if len(xy) < 3:
            continue
        s = int(np.argmin(np.abs(slice_z - roi["z"])))
        if abs(slice_z[s] - roi["z"]) > 0.01:
            raise DataError(None, f"LIDC outline at z {roi['z']} mm matches no slice of the series")
        x0, y0 = xy.min(axis=0)
        x1, y1 = xy.max(axis=0)
        yy, xx = np.mgrid[y0:y1 + 1, x0:x1 + 1]
        inside = PolygonPath(xy).contains_points(np.c_[xx.ravel(), yy.ravel()], radius=1e-9).reshape(xx.shape)
        edge = np.zeros_like(inside)
        edge[xy[:, 1] - y0, xy[:, 0] - x0] = True
        region = (inside | edge) if include_edge else (inside & ~edge)
        view = mask[s, y0:y1 + 1, x0:x1 + 1]
        if roi["inclusion"]:
            view |= region
        else:
            view &= ~(inside | edge)
    return mask
