"""LUNA16 FROC evaluation: hit rules, the FROC curve, the CPM and bootstrap confidence intervals.

Coordinates are world millimetres ``(x, y, z)`` in ITK/LPS, as in the LUNA16 CSVs; only Euclidean
distances between points of the same scan are used, so any common world frame gives the same result.

Rules (those of the LUNA16 challenge; where the challenge leaves a choice open, ours is named):

1. **Cap.** Per scan, at most ``max_predictions_per_scan`` (100) predictions are kept: the highest
   probabilities, ties broken by file order (a stable sort), before anything is matched.
2. **Hit.** A prediction hits a nodule when its distance to the nodule's centre is ``<=`` the nodule's
   radius ``diameter_mm / 2`` (a closed ball: a prediction exactly on the sphere hits; compared as
   squared distances, so a boundary value such as 5.0 mm is exact).
3. **One TP per nodule.** Each nodule counts once, as a true positive at the probability of its
   best-scoring hit (equal best scores: the first in file order). Every other prediction that hits a
   nodule is a *duplicate*: neither TP nor FP, and it does not move the curve.
4. **A prediction inside two nodules** hits both. It can be the best hit of both, and then detects both
   (two TPs from one prediction), since sensitivity counts nodules, not predictions; it is never an FP.
5. **Excluded findings.** A prediction that hits no nodule but lies within (``<=``) the radius of an
   excluded finding (``annotations_excluded.csv``) is ignored: neither TP nor FP. A negative diameter
   there means "size unknown" and stands for ``excluded_default_diameter_mm`` (default
   :data:`DEFAULT_EXCLUDED_DIAMETER_MM` = 10 mm, i.e. a 5 mm radius: above LUNA16's 3 mm nodule
   threshold and about the size of a typical annotated nodule, so a prediction on such a finding is
   forgiven without the finding swallowing a large part of the lung).
6. **FP.** Every other kept prediction is a false positive.
7. **Denominators.** FPs per scan divide by the number of evaluated scans (scans without predictions
   and scans without nodules included); sensitivity divides by the number of nodules in the
   evaluated scans. Predictions (and annotations) naming scans outside the evaluated set are ignored;
   the predictions are counted and their seriesuids reported.
8. **Curve and ties.** Sweeping a threshold ``t`` over the distinct probabilities of TPs and FPs
   (predictions with probability ``>= t`` are accepted) gives one operating point per distinct
   probability, all predictions with an equal probability entering together, plus the origin (0, 0)
   for ``t = +inf``. Sensitivity at ``r`` FPs/scan is read off the piecewise-linear curve through
   these points: take the last point with FPs/scan ``<= r`` and interpolate linearly towards the next
   one (beyond the last point, the last sensitivity). Because tied predictions share one point, the
   curve only rises across a segment whose tie group holds both TPs and FPs, and there linear
   interpolation is exactly the expected sensitivity if the tie were broken in random order; elsewhere
   it equals the step reading (the sensitivity of the most permissive threshold with at most ``r``
   FPs/scan). This is the challenge's curve (interpolated operating points), evaluated exactly at
   ``r`` rather than on a grid.
9. **CPM** is the mean sensitivity at 1/8, 1/4, 1/2, 1, 2, 4 and 8 FPs per scan (``fp_rates``).
10. **Bootstrap.** 95% percentile intervals from ``n_bootstrap`` resamples of the evaluated scans with
    replacement (``numpy.random.default_rng(seed)``). A resample keeps the number of scans; each
    scan brings its nodules, TPs and FPs as often as it was drawn, so a scan drawn twice counts twice
    in every numerator and denominator. Matching is done once (it does not depend on the resample);
    only the weights change, which makes the bootstrap a few vectorised array operations. Resamples
    that contain no nodule (sensitivity undefined) are left out and counted in ``n_bootstrap_used``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Sequence

import numpy as np
import pandas as pd

from monai_lung.io import DataError
from monai_lung.io.annotations import DEFAULT_EXCLUDED_DIAMETER_MM, within_radius  # LUNA16's hit rule, shared with stage 2

DEFAULT_FP_RATES: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
DEFAULT_MAX_PREDICTIONS_PER_SCAN = 100
CONFIDENCE = 0.95

#: Outcome of every input prediction, column ``outcome`` of :attr:`FROCResult.predictions`.
OUTCOME_TP = "tp"  # best-scoring hit of at least one nodule
OUTCOME_DUPLICATE = "duplicate"  # hits a nodule that a better (or equal, earlier) prediction detects: ignored
OUTCOME_EXCLUDED = "excluded"  # hits no nodule, lies on an excluded finding: ignored
OUTCOME_FP = "fp"
OUTCOME_CAPPED = "capped"  # beyond the per-scan cap: not evaluated
OUTCOME_OUTSIDE = "outside"  # its scan is not in the evaluated set: not evaluated

COORD_COLUMNS = ["coordX", "coordY", "coordZ"]
_FINDING_COLUMNS = ["seriesuid", *COORD_COLUMNS, "diameter_mm"]
_PREDICTION_COLUMNS = ["seriesuid", *COORD_COLUMNS, "probability"]

RULES = {
    "hit": "distance(prediction, nodule centre) <= diameter_mm / 2 (closed ball), world mm",
    "duplicates": "each nodule is one TP at its best-scoring hit; other hits on it are ignored (not FP)",
    "two_nodules": "a prediction inside two nodules hits both and can detect both; it is never an FP",
    "excluded": "a prediction hitting no nodule but within an excluded finding's radius is ignored (not FP)",
    "cap": "highest-probability predictions per scan kept before matching; ties at the cut in file order",
    "curve": "one operating point per distinct probability (ties enter together) plus the origin; "
    "sensitivity at r FPs/scan interpolated linearly between the last point with FPs/scan <= r and the next",
    "bootstrap": "scans resampled with replacement (as many as evaluated); percentile intervals",
}


# ----------------------------------------------------------------------------------------------------
# Matching one scan
# ----------------------------------------------------------------------------------------------------


def match_predictions(
    pred_xyz_mm: np.ndarray,
    pred_scores: np.ndarray,
    nodule_xyz_mm: np.ndarray,
    nodule_diameter_mm: np.ndarray,
    excluded_xyz_mm: np.ndarray | None = None,
    excluded_radius_mm: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Match the (already capped) predictions of one scan to its nodules and excluded findings.

    Args:
        pred_xyz_mm: (M, 3) prediction positions, world mm (x, y, z), same frame as the nodules.
        pred_scores: (M,) probabilities; equal best scores on one nodule go to the lower row index.
        nodule_xyz_mm: (N, 3) nodule centres, world mm (x, y, z).
        nodule_diameter_mm: (N,) nodule diameters in mm (> 0); the hit radius is half of it.
        excluded_xyz_mm: (X, 3) excluded finding centres, world mm (x, y, z), or None.
        excluded_radius_mm: (X,) their radii in mm (negative diameters already replaced), or None.

    Returns:
        ``outcome`` (M,) array of str (``"tp"``, ``"duplicate"``, ``"excluded"``, ``"fp"``; see the
        module docstring, rules 2-6) and ``best`` (N,) int: for each nodule the row of its best-scoring
        hit, -1 when no prediction hits it.
    """
    pred = np.asarray(pred_xyz_mm, dtype=np.float64).reshape(-1, 3)
    scores = np.asarray(pred_scores, dtype=np.float64).reshape(-1)
    nod = np.asarray(nodule_xyz_mm, dtype=np.float64).reshape(-1, 3)
    radius = np.asarray(nodule_diameter_mm, dtype=np.float64).reshape(-1) / 2.0
    m, n = len(pred), len(nod)
    if len(scores) != m or len(radius) != n:
        raise ValueError("match_predictions: coordinate and score/diameter arrays differ in length")
    hits = within_radius(pred, nod, radius)  # (M, N)
    best = np.full(n, -1, dtype=np.int64)
    if m and n:
        masked = np.where(hits, scores[:, None], -np.inf)
        top = masked.max(axis=0)  # (N,)
        is_top = hits & (masked == top[None, :])
        detected = hits.any(axis=0)
        best[detected] = is_top[:, detected].argmax(axis=0)  # first row among equal best scores
    is_best = np.zeros(m, dtype=bool)
    is_best[best[best >= 0]] = True
    any_hit = hits.any(axis=1) if n else np.zeros(m, dtype=bool)
    on_excluded = np.zeros(m, dtype=bool)
    if excluded_xyz_mm is not None and len(excluded_xyz_mm):
        exc = np.asarray(excluded_xyz_mm, dtype=np.float64).reshape(-1, 3)
        exc_r = np.asarray(excluded_radius_mm, dtype=np.float64).reshape(-1)
        on_excluded = within_radius(pred, exc, exc_r).any(axis=1)
    outcome = np.where(
        is_best,
        OUTCOME_TP,
        np.where(any_hit, OUTCOME_DUPLICATE, np.where(on_excluded, OUTCOME_EXCLUDED, OUTCOME_FP)),
    ).astype(object)
    return outcome, best


# ----------------------------------------------------------------------------------------------------
# Curves from weighted events (the point estimate has weight 1 per scan; a bootstrap draw, its counts)
# ----------------------------------------------------------------------------------------------------


@dataclass
class FROCEvents:
    """TP and FP events of an evaluation, ready to be turned into curves for any per-scan weights.

    Attributes:
        num_scans: S, the number of evaluated scans.
        nodules_per_scan: (S,) number of nodules of each scan.
        tp_scan, tp_score: (T,) scan index and probability of each detected nodule (its best hit),
            sorted by probability, highest first.
        fp_scan, fp_score: (F,) the same for each false positive.
        thresholds: (K + 1,) ``+inf`` then the distinct TP/FP probabilities, highest first; curve point
            ``k`` accepts the predictions with probability ``>= thresholds[k]``.
        tp_index, fp_index: (K + 1,) number of TP (FP) events accepted at each curve point.
    """

    num_scans: int
    nodules_per_scan: np.ndarray
    tp_scan: np.ndarray
    tp_score: np.ndarray
    fp_scan: np.ndarray
    fp_score: np.ndarray
    thresholds: np.ndarray = field(init=False)
    tp_index: np.ndarray = field(init=False)
    fp_index: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.nodules_per_scan = np.asarray(self.nodules_per_scan, dtype=np.int64).reshape(-1)
        tp_score, fp_score = np.asarray(self.tp_score, dtype=np.float64), np.asarray(self.fp_score, dtype=np.float64)
        order = np.argsort(-tp_score, kind="stable")
        self.tp_scan, self.tp_score = np.asarray(self.tp_scan, dtype=np.int64)[order], tp_score[order]
        order = np.argsort(-fp_score, kind="stable")
        self.fp_scan, self.fp_score = np.asarray(self.fp_scan, dtype=np.int64)[order], fp_score[order]
        levels = np.unique(np.concatenate([self.tp_score, self.fp_score]))[::-1]
        self.thresholds = np.concatenate([[np.inf], levels])
        # events with score >= level: searchsorted on the ascending negated scores
        self.tp_index = np.searchsorted(-self.tp_score, -self.thresholds, side="right")
        self.fp_index = np.searchsorted(-self.fp_score, -self.thresholds, side="right")

    def counts(self, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Weighted FP and TP counts at every curve point, and the weighted number of nodules.

        Args:
            weights: (C, S) non-negative integer weight of each scan in each of C resamples
                (all ones: the evaluated set itself; a bootstrap draw: how often each scan was drawn).

        Returns:
            ``fp`` (C, K + 1) and ``tp`` (C, K + 1) float64 counts (integer valued, non-decreasing
            along the curve), and ``nodules`` (C,) float64.
        """
        w = np.asarray(weights, dtype=np.float64)
        fp = _cumulative(w[:, self.fp_scan])[:, self.fp_index]
        tp = _cumulative(w[:, self.tp_scan])[:, self.tp_index]
        return fp, tp, w @ self.nodules_per_scan.astype(np.float64)


def _cumulative(w: np.ndarray) -> np.ndarray:
    """(C, E) event weights -> (C, E + 1) running sums with a leading zero column."""
    out = np.zeros((w.shape[0], w.shape[1] + 1), dtype=np.float64)
    np.cumsum(w, axis=1, out=out[:, 1:])
    return out


def interpolate_counts(fp: np.ndarray, tp: np.ndarray, fp_limit: np.ndarray) -> np.ndarray:
    """TP count read off each row's curve at each FP-count limit (rule 8 of the module docstring).

    Args:
        fp: (C, P) FP counts of the curve points, non-decreasing along each row, integer valued,
            ``fp[:, 0] == 0`` (the origin).
        tp: (C, P) TP counts (or sensitivities) of the same points.
        fp_limit: (Q,) FP-count limits ``>= 0`` (FPs per scan times the number of scans).

    Returns:
        (C, Q): for each row and limit, the value at the last point with ``fp <= limit``, linearly
        interpolated towards the next point (constant beyond the last point).
    """
    fp = np.asarray(fp, dtype=np.float64)
    tp = np.asarray(tp, dtype=np.float64)
    q = np.asarray(fp_limit, dtype=np.float64).reshape(-1)
    c, p = fp.shape
    q_int = np.floor(q + 1e-9)  # fp counts are integers: fp <= q  <=>  fp <= floor(q)
    span = float(fp[:, -1].max(initial=0.0) + q_int.max(initial=0.0) + 2.0)
    rows = np.arange(c)
    offset = (span * rows)[:, None]  # rows laid end to end in one sorted array, exact in float64
    pos = np.searchsorted((fp + offset).ravel(), q_int[None, :] + offset, side="right")
    i = pos - (rows * p)[:, None] - 1  # (C, Q), >= 0 since fp[:, 0] == 0 <= q
    j = np.minimum(i + 1, p - 1)
    fi, fj = np.take_along_axis(fp, i, 1), np.take_along_axis(fp, j, 1)
    ti, tj = np.take_along_axis(tp, i, 1), np.take_along_axis(tp, j, 1)
    gap = fj - fi
    frac = np.where(gap > 0, (q[None, :] - fi) / np.where(gap > 0, gap, 1.0), 0.0)
    return ti + np.clip(frac, 0.0, 1.0) * (tj - ti)


def interpolate_froc(fps_per_scan: np.ndarray, sensitivity: np.ndarray, at_fps: float | Sequence[float]) -> np.ndarray:
    """Sensitivity of a FROC curve at given FPs per scan (rule 8), for curves whose x are FPs/scan.

    Args:
        fps_per_scan: (P,) non-decreasing FPs per scan of the curve points, starting at 0.
        sensitivity: (P,) sensitivity (0..1) of the same points.
        at_fps: scalar or (Q,) FPs per scan.

    Returns:
        (Q,) float64 sensitivities (a 0-d array for a scalar).
    """
    fps = np.asarray(fps_per_scan, dtype=np.float64)
    sens = np.asarray(sensitivity, dtype=np.float64)
    q = np.asarray(at_fps, dtype=np.float64)
    idx = np.searchsorted(fps, q.reshape(-1), side="right") - 1
    idx = np.clip(idx, 0, len(fps) - 1)
    nxt = np.minimum(idx + 1, len(fps) - 1)
    gap = fps[nxt] - fps[idx]
    frac = np.where(gap > 0, (q.reshape(-1) - fps[idx]) / np.where(gap > 0, gap, 1.0), 0.0)
    out = sens[idx] + np.clip(frac, 0.0, 1.0) * (sens[nxt] - sens[idx])
    return out.reshape(q.shape)


# ----------------------------------------------------------------------------------------------------
# Result
# ----------------------------------------------------------------------------------------------------


def format_rate(rate: float) -> str:
    """FPs per scan as the challenge writes them: 0.125 -> "1/8", 2.0 -> "2", 0.3 -> "0.3"."""
    frac = Fraction(rate).limit_denominator(64)
    if abs(float(frac) - rate) < 1e-12:
        return str(frac.numerator) if frac.denominator == 1 else f"{frac.numerator}/{frac.denominator}"
    return f"{rate:g}"


def _num(x) -> float | None:
    """float for JSON; NaN/inf -> None."""
    x = float(x)
    return x if math.isfinite(x) else None


@dataclass
class FROCResult:
    """Everything an evaluation produced. Sensitivities are fractions (0..1); FP rates are FPs per scan.

    Attributes:
        cpm: mean of :attr:`sensitivities` over :attr:`fp_rates`.
        sensitivities: FP rate -> sensitivity at that rate.
        ci_low, ci_high: FP rate -> bounds of the 95% bootstrap interval (NaN without bootstrap).
        cpm_ci_low, cpm_ci_high: the CPM's 95% bootstrap interval.
        fps_per_scan, sensitivity, thresholds: (P,) the FROC curve; point 0 is the origin with threshold
            ``+inf``, point k accepts predictions with probability ``>= thresholds[k]``.
        curve_ci_low, curve_ci_high: (P,) 95% bootstrap band of the sensitivity at each point's FPs/scan
            (points that share an FPs/scan value share the band, that of the top of the jump; beyond
            ``MAX_BAND_POINTS`` distinct FP counts it is computed on a geometric grid and interpolated).
        num_scans: evaluated scans (the FP denominator). num_nodules: nodules in them.
        num_predictions_used: predictions on evaluated scans kept by the cap (TP + duplicate + excluded + FP
            predictions). num_tp: detected nodules (a prediction detecting two nodules counts twice).
        num_fp, num_ignored_excluded, num_ignored_duplicate: predictions by outcome.
        num_dropped_by_cap: predictions on evaluated scans beyond the per-scan cap.
        num_ignored_outside, ignored_seriesuids: predictions naming scans outside the evaluated set, and
            those scans (sorted). num_nodules_outside: annotations on such scans (not evaluated).
        nodules: per-nodule table ``seriesuid, coordX, coordY, coordZ`` (world mm), ``diameter_mm``,
            ``hit`` (bool), ``best_score`` (NaN when missed), ``prediction_row`` (row of the best hit in the
            predictions table given, -1 when missed).
        predictions: the predictions given, in their order, plus ``outcome`` (see ``OUTCOME_*``).
        n_bootstrap_used: bootstrap draws that contained at least one nodule (the others are left out).
    """

    cpm: float
    sensitivities: dict[float, float]
    ci_low: dict[float, float]
    ci_high: dict[float, float]
    cpm_ci_low: float
    cpm_ci_high: float
    fps_per_scan: np.ndarray
    sensitivity: np.ndarray
    thresholds: np.ndarray
    curve_ci_low: np.ndarray
    curve_ci_high: np.ndarray
    num_scans: int
    num_nodules: int
    num_predictions_used: int
    num_tp: int
    num_fp: int
    num_ignored_excluded: int
    num_ignored_duplicate: int
    num_dropped_by_cap: int
    num_ignored_outside: int
    ignored_seriesuids: list[str]
    num_nodules_outside: int
    nodules: pd.DataFrame
    predictions: pd.DataFrame
    fp_rates: tuple[float, ...]
    max_predictions_per_scan: int | None
    excluded_default_diameter_mm: float
    n_bootstrap: int
    n_bootstrap_used: int
    seed: int
    confidence: float = CONFIDENCE

    def sensitivity_at(self, fps_per_scan: float | Sequence[float]) -> np.ndarray:
        """Sensitivity at any FPs per scan (scalar or (Q,)), read off the curve like the seven rates."""
        return interpolate_froc(self.fps_per_scan, self.sensitivity, fps_per_scan)

    def to_dict(self, include_curve: bool = True, include_nodules: bool = True) -> dict:
        """JSON-ready dict of all figures (NaN and inf become None; FP rates are listed, not keys)."""
        out = {
            "cpm": _num(self.cpm),
            "cpm_ci": [_num(self.cpm_ci_low), _num(self.cpm_ci_high)],
            "sensitivities": [
                {
                    "fps_per_scan": float(r),
                    "sensitivity": _num(self.sensitivities[r]),
                    "ci_low": _num(self.ci_low[r]),
                    "ci_high": _num(self.ci_high[r]),
                }
                for r in self.fp_rates
            ],
            "counts": {
                "num_scans": self.num_scans,
                "num_nodules": self.num_nodules,
                "num_predictions_used": self.num_predictions_used,
                "num_tp": self.num_tp,
                "num_fp": self.num_fp,
                "num_ignored_excluded": self.num_ignored_excluded,
                "num_ignored_duplicate": self.num_ignored_duplicate,
                "num_dropped_by_cap": self.num_dropped_by_cap,
                "num_ignored_outside": self.num_ignored_outside,
                "num_nodules_outside": self.num_nodules_outside,
                "ignored_seriesuids": list(self.ignored_seriesuids),
            },
            "settings": {
                "fp_rates": [float(r) for r in self.fp_rates],
                "max_predictions_per_scan": self.max_predictions_per_scan,
                "excluded_default_diameter_mm": float(self.excluded_default_diameter_mm),
                "n_bootstrap": self.n_bootstrap,
                "n_bootstrap_used": self.n_bootstrap_used,
                "seed": self.seed,
                "confidence": self.confidence,
                "coordinates": "world mm (x, y, z), ITK/LPS as in LUNA16 CSVs",
            },
            "rules": dict(RULES),
        }
        if include_curve:
            out["curve"] = {
                "fps_per_scan": [float(x) for x in self.fps_per_scan],
                "sensitivity": [float(x) for x in self.sensitivity],
                "ci_low": [_num(x) for x in self.curve_ci_low],
                "ci_high": [_num(x) for x in self.curve_ci_high],
                "threshold": [_num(x) for x in self.thresholds],
            }
        if include_nodules:
            out["nodules"] = [
                {
                    "seriesuid": row.seriesuid,
                    "center": [float(row.coordX), float(row.coordY), float(row.coordZ)],
                    "diameter_mm": float(row.diameter_mm),
                    "hit": bool(row.hit),
                    "best_score": _num(row.best_score),
                }
                for row in self.nodules.itertuples(index=False)
            ]
        return out

    def curve_frame(self) -> pd.DataFrame:
        """The curve as ``fps_per_scan, sensitivity, ci_low, ci_high, threshold`` (threshold inf at the origin)."""
        return pd.DataFrame(
            {
                "fps_per_scan": self.fps_per_scan,
                "sensitivity": self.sensitivity,
                "ci_low": self.curve_ci_low,
                "ci_high": self.curve_ci_high,
                "threshold": self.thresholds,
            }
        )


# ----------------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------------


def _table(frame: pd.DataFrame | None, columns: list[str], name: str) -> pd.DataFrame:
    """Check a findings/predictions table and return a copy with ``columns`` (seriesuid str, the rest float64)."""
    if frame is None:
        return pd.DataFrame({c: pd.Series(dtype=str if c == "seriesuid" else np.float64) for c in columns})
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(None, f"{name} table misses column(s) {', '.join(missing)}")
    out = pd.DataFrame({"seriesuid": frame["seriesuid"].astype(str).str.strip().to_numpy(dtype=object)})
    for col in columns[1:]:
        values = pd.to_numeric(frame[col], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        if not np.isfinite(values).all():
            row = int(np.flatnonzero(~np.isfinite(values))[0])
            raise DataError(None, f"{name} table: column {col} has a non-finite value in row {row}")
        out[col] = values
    return out


def _groups(uids: np.ndarray) -> dict[str, np.ndarray]:
    """seriesuid -> row indices (ascending), for an array of seriesuids."""
    if len(uids) == 0:
        return {}
    return {k: np.asarray(v) for k, v in pd.Series(uids).groupby(uids, sort=False).indices.items()}


def evaluate_froc(
    annotations_df: pd.DataFrame,
    excluded_df: pd.DataFrame | None,
    predictions_df: pd.DataFrame,
    seriesuids: Sequence[str],
    max_predictions_per_scan: int | None = DEFAULT_MAX_PREDICTIONS_PER_SCAN,
    fp_rates: Sequence[float] = DEFAULT_FP_RATES,
    n_bootstrap: int = 1000,
    seed: int = 0,
    excluded_default_diameter_mm: float = DEFAULT_EXCLUDED_DIAMETER_MM,
) -> FROCResult:
    """LUNA16 FROC evaluation of ``predictions_df`` on the scans ``seriesuids`` (rules: module docstring).

    Args:
        annotations_df: nodules, columns ``seriesuid, coordX, coordY, coordZ`` (world mm, LPS) and
            ``diameter_mm`` (> 0); rows on scans outside ``seriesuids`` are ignored.
        excluded_df: excluded findings, same columns (negative ``diameter_mm``: size unknown, replaced by
            ``excluded_default_diameter_mm``), or None.
        predictions_df: ``seriesuid, coordX, coordY, coordZ`` (world mm, LPS) and ``probability``.
        seriesuids: the evaluated scans (duplicates are dropped); the FP denominator is their number.
        max_predictions_per_scan: keep at most this many highest-probability predictions per scan
            (ties at the cut in table order); None: no cap.
        fp_rates: FPs per scan at which sensitivity is reported; the CPM is their mean.
        n_bootstrap: number of bootstrap resamples of the scans (0: no intervals, NaN).
        seed: seed of the bootstrap's ``numpy.random.default_rng``.
        excluded_default_diameter_mm: diameter (mm) standing for a negative one in ``excluded_df``
            (default 10 mm, radius 5 mm).

    Returns:
        :class:`FROCResult`.

    Raises:
        DataError: a table misses a column or has a non-finite number, no scans are given, a nodule
            diameter is not positive, or the evaluated scans hold no nodule (sensitivity undefined).
    """
    ann = _table(annotations_df, _FINDING_COLUMNS, "annotations")
    exc = _table(excluded_df, _FINDING_COLUMNS, "excluded")
    pred = _table(predictions_df, _PREDICTION_COLUMNS, "predictions")
    uids = list(dict.fromkeys(str(u).strip() for u in seriesuids))
    if not uids:
        raise DataError(None, "no scans to evaluate (empty seriesuid list)")
    fp_rates = tuple(float(r) for r in fp_rates)
    if not fp_rates or min(fp_rates) <= 0:
        raise DataError(None, f"fp_rates must be positive FPs per scan, got {fp_rates}")
    if max_predictions_per_scan is not None and int(max_predictions_per_scan) < 1:
        raise DataError(None, f"max_predictions_per_scan must be >= 1 or None, got {max_predictions_per_scan}")
    if excluded_default_diameter_mm <= 0:
        raise DataError(None, f"excluded_default_diameter_mm must be positive, got {excluded_default_diameter_mm}")
    if n_bootstrap < 0:
        raise DataError(None, f"n_bootstrap must be >= 0, got {n_bootstrap}")
    if (ann["diameter_mm"] <= 0).any():
        row = int(np.flatnonzero((ann["diameter_mm"] <= 0).to_numpy())[0])
        raise DataError(None, f"annotations table: diameter_mm must be positive, got {ann['diameter_mm'].iloc[row]} in row {row}")

    scan_index = {u: i for i, u in enumerate(uids)}
    num_scans = len(uids)
    in_set_ann = ann["seriesuid"].isin(set(uids)).to_numpy()
    num_nodules_outside = int((~in_set_ann).sum())
    nod = ann[in_set_ann].reset_index(drop=True)
    if len(nod) == 0:
        raise DataError(None, f"no annotated nodule in the {num_scans} evaluated scan(s): sensitivity is undefined")
    exc = exc[exc["seriesuid"].isin(set(uids))].reset_index(drop=True)
    exc_radius = np.where(exc["diameter_mm"] < 0, excluded_default_diameter_mm, exc["diameter_mm"]) / 2.0

    pred_uids = pred["seriesuid"].to_numpy(dtype=object)
    pred_xyz = pred[COORD_COLUMNS].to_numpy(dtype=np.float64)
    pred_score = pred["probability"].to_numpy(dtype=np.float64)
    outcome = np.full(len(pred), OUTCOME_OUTSIDE, dtype=object)
    nod_xyz = nod[COORD_COLUMNS].to_numpy(dtype=np.float64)
    nod_diam = nod["diameter_mm"].to_numpy(dtype=np.float64)
    exc_xyz = exc[COORD_COLUMNS].to_numpy(dtype=np.float64)
    nodule_best_row = np.full(len(nod), -1, dtype=np.int64)

    pred_groups = _groups(pred_uids)
    nod_groups = _groups(nod["seriesuid"].to_numpy(dtype=object))
    exc_groups = _groups(exc["seriesuid"].to_numpy(dtype=object))
    empty = np.zeros(0, dtype=np.int64)
    for uid in uids:
        rows = pred_groups.get(uid, empty)
        if len(rows) == 0:
            continue
        rows = rows[np.argsort(-pred_score[rows], kind="stable")]  # highest first, ties in table order
        if max_predictions_per_scan is not None and len(rows) > max_predictions_per_scan:
            outcome[rows[max_predictions_per_scan:]] = OUTCOME_CAPPED
            rows = rows[:max_predictions_per_scan]
        nrows = nod_groups.get(uid, empty)
        erows = exc_groups.get(uid, empty)
        # rows are sorted by score, so "first among equal best scores" is the earliest row in table order
        out, best = match_predictions(
            pred_xyz[rows], pred_score[rows], nod_xyz[nrows], nod_diam[nrows], exc_xyz[erows], exc_radius[erows]
        )
        outcome[rows] = out
        nodule_best_row[nrows] = np.where(best >= 0, rows[np.maximum(best, 0)], -1)

    hit = nodule_best_row >= 0
    best_score = np.where(hit, pred_score[np.maximum(nodule_best_row, 0)] if len(pred) else np.nan, np.nan)
    nod_scan = nod["seriesuid"].map(scan_index).to_numpy(dtype=np.int64)
    is_fp = outcome == OUTCOME_FP
    events = FROCEvents(
        num_scans=num_scans,
        nodules_per_scan=np.bincount(nod_scan, minlength=num_scans),
        tp_scan=nod_scan[hit],
        tp_score=best_score[hit],
        fp_scan=np.array([scan_index[u] for u in pred_uids[is_fp]], dtype=np.int64),
        fp_score=pred_score[is_fp],
    )

    # point estimate: every scan once
    fp0, tp0, n0 = events.counts(np.ones((1, num_scans)))
    fps_per_scan = fp0[0] / num_scans
    sensitivity = tp0[0] / n0[0]
    rate_limits = np.asarray(fp_rates) * num_scans
    sens_rates = interpolate_counts(fp0, tp0, rate_limits)[0] / n0[0]
    cpm = float(sens_rates.mean())

    # bootstrap
    band_fp = _band_grid(fp0[0])
    boot_rates, boot_band = _bootstrap(events, rate_limits, band_fp, n_bootstrap, seed)
    n_used = len(boot_rates)
    alpha = (1.0 - CONFIDENCE) / 2.0 * 100.0
    if n_used:
        lo_r, hi_r = np.percentile(boot_rates, [alpha, 100.0 - alpha], axis=0)
        lo_c, hi_c = np.percentile(boot_rates.mean(axis=1), [alpha, 100.0 - alpha])
        lo_b, hi_b = np.percentile(boot_band, [alpha, 100.0 - alpha], axis=0)
        curve_lo = np.interp(fp0[0], band_fp, lo_b.astype(np.float64))
        curve_hi = np.interp(fp0[0], band_fp, hi_b.astype(np.float64))
    else:
        lo_r = hi_r = np.full(len(fp_rates), np.nan)
        lo_c = hi_c = np.nan
        curve_lo = curve_hi = np.full(len(fps_per_scan), np.nan)

    nodules = nod.copy()
    nodules["hit"] = hit
    nodules["best_score"] = best_score
    nodules["prediction_row"] = nodule_best_row
    predictions = pred.copy()
    predictions["outcome"] = outcome
    outside = outcome == OUTCOME_OUTSIDE
    counts = {k: int((outcome == k).sum()) for k in (OUTCOME_TP, OUTCOME_DUPLICATE, OUTCOME_EXCLUDED, OUTCOME_FP)}
    return FROCResult(
        cpm=cpm,
        sensitivities={r: float(s) for r, s in zip(fp_rates, sens_rates)},
        ci_low={r: float(x) for r, x in zip(fp_rates, lo_r)},
        ci_high={r: float(x) for r, x in zip(fp_rates, hi_r)},
        cpm_ci_low=float(lo_c),
        cpm_ci_high=float(hi_c),
        fps_per_scan=fps_per_scan,
        sensitivity=sensitivity,
        thresholds=events.thresholds.copy(),
        curve_ci_low=curve_lo,
        curve_ci_high=curve_hi,
        num_scans=num_scans,
        num_nodules=len(nod),
        num_predictions_used=sum(counts.values()),
        num_tp=int(hit.sum()),
        num_fp=counts[OUTCOME_FP],
        num_ignored_excluded=counts[OUTCOME_EXCLUDED],
        num_ignored_duplicate=counts[OUTCOME_DUPLICATE],
        num_dropped_by_cap=int((outcome == OUTCOME_CAPPED).sum()),
        num_ignored_outside=int(outside.sum()),
        ignored_seriesuids=sorted(set(pred_uids[outside])),
        num_nodules_outside=num_nodules_outside,
        nodules=nodules,
        predictions=predictions,
        fp_rates=fp_rates,
        max_predictions_per_scan=None if max_predictions_per_scan is None else int(max_predictions_per_scan),
        excluded_default_diameter_mm=float(excluded_default_diameter_mm),
        n_bootstrap=int(n_bootstrap),
        n_bootstrap_used=n_used,
        seed=int(seed),
    )


#: The curve's band is computed at every distinct FP count up to this many, else on a geometric grid of them.
MAX_BAND_POINTS = 4000


def _band_grid(fp_counts: np.ndarray) -> np.ndarray:
    """FP counts (ascending, from 0) at which the bootstrap band is computed, for a curve's (P,) FP counts.

    Every distinct count when there are at most :data:`MAX_BAND_POINTS` (the band is then exact at every
    curve point); otherwise 0 plus a geometric grid of counts from 1 to the largest, and the band at
    the curve points in between is interpolated linearly (bounds memory: draws x grid float32).
    """
    distinct = np.unique(fp_counts)
    if len(distinct) <= MAX_BAND_POINTS:
        return distinct
    top = float(distinct[-1])
    grid = np.unique(np.round(np.geomspace(1.0, top, MAX_BAND_POINTS - 1)))
    return np.concatenate([[0.0], grid])


def bootstrap_weights(num_scans: int, n_bootstrap: int, seed: int) -> np.ndarray:
    """(n_bootstrap, num_scans) int64: how often each scan is drawn in each resample (rows sum to num_scans)."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, num_scans, size=(n_bootstrap, num_scans))
    flat = draws + (np.arange(n_bootstrap) * num_scans)[:, None]
    return np.bincount(flat.ravel(), minlength=n_bootstrap * num_scans).reshape(n_bootstrap, num_scans)


def _bootstrap(
    events: FROCEvents, rate_limits: np.ndarray, band_fp: np.ndarray, n_bootstrap: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Bootstrap sensitivities: (D, R) at the FP-count limits ``rate_limits`` and (D, B) float32 at ``band_fp``.

    D counts the draws holding at least one nodule. Draws are processed in chunks to bound memory.
    """
    if n_bootstrap == 0:
        return np.zeros((0, len(rate_limits))), np.zeros((0, len(band_fp)), dtype=np.float32)
    weights = bootstrap_weights(events.num_scans, n_bootstrap, seed)
    width = len(events.fp_scan) + len(events.tp_scan) + 2 * len(events.thresholds) + len(band_fp) + 1
    chunk = int(max(1, min(n_bootstrap, 1_500_000 // width)))
    rates, band = [], []
    for start in range(0, n_bootstrap, chunk):
        w = weights[start : start + chunk]
        fp, tp, nodules = events.counts(w)
        keep = nodules > 0
        if not keep.any():
            continue
        fp, tp, nodules = fp[keep], tp[keep], nodules[keep]
        rates.append(interpolate_counts(fp, tp, rate_limits) / nodules[:, None])
        band.append((interpolate_counts(fp, tp, band_fp) / nodules[:, None]).astype(np.float32))
    if not rates:
        return np.zeros((0, len(rate_limits))), np.zeros((0, len(band_fp)), dtype=np.float32)
    return np.concatenate(rates), np.concatenate(band)
