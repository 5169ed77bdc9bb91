"""Points against annotated findings: LUNA16's hit rule, the one every part of the project matches with.

The evaluation (a prediction hits a nodule), stage 2's crop bank (a negative keeps away from every finding) and the
hard-negative miner (a stage-1 candidate is a hit, a false positive or on an excluded finding) all use
:func:`within_radius`, so that "a hit" means the same everywhere. Centres and points are world mm (x, y, z) in one
frame (LUNA16: ITK/LPS); radii are mm.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

#: Diameter (mm) given to excluded findings whose diameter is negative (size unknown): radius 5 mm, above LUNA16's 3 mm
#: nodule threshold and about the size of a typical annotated nodule, so a prediction on such a finding is forgiven
#: without the finding swallowing a large part of the lung.
DEFAULT_EXCLUDED_DIAMETER_MM = 10.0


def within_radius(points: np.ndarray, centres: np.ndarray, radii: np.ndarray, margin_mm: float = 0.0) -> np.ndarray:
    """LUNA16's hit rule: (M, N) bool ``|points[i] - centres[j]| <= radii[j] + margin_mm`` (a closed ball, compared as
    squared distances so that a boundary value is exact). points (M, 3) and centres (N, 3) in the same world frame,
    mm; radii (N,) mm."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    centres = np.asarray(centres, dtype=np.float64).reshape(-1, 3)
    if len(points) == 0 or len(centres) == 0:
        return np.zeros((len(points), len(centres)), dtype=bool)
    d2 = ((points[:, None, :] - centres[None, :, :]) ** 2).sum(axis=-1)
    reach = np.asarray(radii, dtype=np.float64).reshape(-1) + margin_mm
    return d2 <= (reach * reach)[None, :]


def away_from_findings(points: np.ndarray, centres: np.ndarray, radii: np.ndarray, margin_mm: float = 0.0) -> np.ndarray:
    """Bool (N,): point (N, 3) lies farther than ``radius + margin_mm`` from every finding centre (M, 3).

    All in world mm (same space for points and centres). True for every point when there are no findings.
    """
    return ~within_radius(points, centres, radii, margin_mm).any(axis=1)


def finding_arrays(findings: Sequence[dict] | None, unknown_diameter_mm: float = DEFAULT_EXCLUDED_DIAMETER_MM):
    """Data-list findings ``[{"center": [x, y, z], "diameter_mm": d}]`` -> centres (M, 3) world LPS mm, radii (M,) mm.

    A non-positive diameter (size unknown in ``annotations_excluded.csv``) becomes ``unknown_diameter_mm``.
    """
    findings = list(findings or [])
    centres = np.array([f["center"] for f in findings], dtype=np.float64).reshape(-1, 3)
    diam = np.array([float(f.get("diameter_mm", -1.0)) for f in findings], dtype=np.float64)
    diam = np.where(diam > 0, diam, unknown_diameter_mm)
    return centres, diam / 2.0


def nearest_distance(points: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Distance (N,) mm from each point (N, 3) to the nearest centre (M, 3), both world mm; NaN when M = 0."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    if len(centres) == 0:
        return np.full(len(points), np.nan)
    d = np.linalg.norm(points[:, None, :] - np.asarray(centres)[None, :, :], axis=2)
    return d.min(axis=1)
