"""``monai-lung followup``: a CT compared with the patient's prior CT.

Steps: read both scans (files or DICOM series; dates from StudyDate or given), refuse two patients or dates out of
order, detect both (:mod:`.detections`, reusing a scan already detected with the same bundle), find their lungs and
register the current scan to the prior (:mod:`.registration`), match findings (:func:`match_findings`), measure
each reported finding on its scan (:mod:`.findings`: type, calcification, Lung-RADS sizes, location), give each a
status (:func:`status_of`), a volume change and a volume doubling time, and a Lung-RADS v2022 category for the
current exam (:mod:`.lungrads`). Outputs: ``followup.csv`` (:data:`CSV_COLUMNS`), ``followup.json`` and a report
with each nodule's prior and current crops side by side (:mod:`.followup_report`). Research use only.

Reported findings are those with a probability of at least the threshold in either scan; a finding below it is
still the other side of a match when the detector finds it probable (:data:`PARTNER_PROBABILITY`) and it lies at the
registered position (:data:`PARTNER_GATE_MM`), so that a nodule scored just under the threshold in one scan is
compared, not called new or resolved, while the many improbable candidates near any point of the lung are not.

**Status rule** (:func:`status_of`): ``grown`` when the nodule's volume rose by more than the measured repeatability
(:data:`VOLUME_REPEATABILITY_PCT`), or when it grew as Lung-RADS defines growth (mean diameter, a part-solid
nodule's solid component, up by more than 1.5 mm within 12 months) and its volume rose by more than half the
repeatability; ``shrunk`` for the same falls; ``stable`` otherwise. Reason: a status must not report what
re-measuring an unchanged nodule produces (measured on phantom pairs and on a real scan against itself,
docs/experiments.md): volume is the more repeatable measure, while a mean diameter, two calipers on one slice,
moved by 1.6 mm on the real nodule re-sliced; Lung-RADS growth, which changes a category, counts once the volume
confirms it.

Coordinates: world LPS mm, each scan's own frame (the prior's findings in the prior's frame, the current's in the
current's); the registration maps between them.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from monai_lung.clinical.ct import ScanCT
from monai_lung.clinical.detections import Detections, ScanDetections, scan_identity
from monai_lung.clinical.findings import DEFAULT_THRESHOLD, Described, describe_finding, facts_of
from monai_lung.clinical.location import Lungs, find_lungs
from monai_lung.clinical.lungrads import NoduleFacts, assess, exam_category, growth
from monai_lung.clinical.registration import Registration, register_lungs
from monai_lung.io.atomic import write_csv_atomic, write_json_atomic
from monai_lung.io.errors import DataError

logger = logging.getLogger(__name__)

#: followup.csv's columns, in order
CSV_COLUMNS = [
    "status", "prior_x", "prior_y", "prior_z", "current_x", "current_y", "current_z", "prior_volume_mm3", "current_volume_mm3",
    "volume_change_pct", "vdt_days", "prior_mean_diameter_mm", "current_mean_diameter_mm", "type", "lungrads", "probability",
]
STATUSES = ("new", "stable", "grown", "shrunk", "resolved")
#: a volume change beyond this (percent, either way) is more than re-measuring an unchanged nodule gives
VOLUME_REPEATABILITY_PCT = 25.0
#: two findings are one nodule when their centres, after registration, lie within this plus half the larger diameter
GATE_MM = 10.0
#: a finding below the threshold is the other side of a pair only when the detector still finds it this probable ...
PARTNER_PROBABILITY = 0.5
#: ... and it lies within this (or half the other finding's diameter) of the registered position
PARTNER_GATE_MM = 5.0


# ---------------------------------------------------------------------------------------------- inputs
@dataclass
class ScanInput:
    """One side of the comparison: the image to read (a file or a folder holding one DICOM series), its date and,
    for DICOM, the patient and study."""

    label: str
    path: str
    image: str
    date: dt.date
    patient: str | None = None
    study_uid: str | None = None
    series_uid: str | None = None
    series: object = None
    identity: str = ""


def parse_date(text: str, option: str) -> dt.date:
    """A YYYY-MM-DD (or DICOM YYYYMMDD) date; anything else is a one-line :class:`DataError` naming ``option``."""
    text = str(text).strip()
    for fmt in ("%Y-%m-%d", "%Y%m%d"):
        try:
            return dt.datetime.strptime(text, fmt).date()
        except ValueError:
            pass
    raise DataError(None, f"{option}: {text!r} is not a date (YYYY-MM-DD)")


def read_input(label: str, path: str | os.PathLike, date: str | None, work_dir: str | os.PathLike) -> ScanInput:
    """The scan at ``path`` (``label`` "prior" or "current"): a DICOM folder's chosen series with its StudyDate, or a
    file with the ``date`` given (``--<label>-date``); a missing date is a one-line :class:`DataError`."""
    option = f"--{label}-date"
    path = Path(path)
    if path.is_dir():
        from monai_lung.dicom.pipeline import local_scan

        scan = local_scan(path, Path(work_dir) / label)
        ds = scan.series.datasets[0]
        study_date = str(getattr(ds, "StudyDate", "") or "").strip()
        if date is not None:
            when = parse_date(date, option)
        elif study_date:
            when = parse_date(study_date, f"{path}: StudyDate")
        else:
            raise DataError(path, f"the DICOM series has no StudyDate: give {option} YYYY-MM-DD")
        patient = str(getattr(ds, "PatientID", "") or "").strip() or str(getattr(ds, "PatientName", "") or "").strip() or None
        instances = [str(d.SOPInstanceUID) for d in scan.series.datasets]
        return ScanInput(label, str(path), scan.image, when, patient, scan.study_uid, scan.seriesuid, scan.series,
                         scan_identity(path, scan.seriesuid, instances))
    if not path.exists():
        raise DataError(path, "scan not found")
    if date is None:
        raise DataError(path, f"a scan file carries no date: give {option} YYYY-MM-DD")
    return ScanInput(label, str(path), str(path), parse_date(date, option), identity=scan_identity(path))


def check_pair(prior: ScanInput, current: ScanInput) -> int:
    """Refuse two patients' scans or dates out of order; return the interval in days."""
    if prior.patient and current.patient and prior.patient != current.patient:
        raise DataError(current.path, f"patient {current.patient!r} is not the prior's patient {prior.patient!r}: "
                                      "refusing to compare two patients' scans")
    days = (current.date - prior.date).days
    if days <= 0:
        raise DataError(current.path, f"the current scan's date {current.date} is not after the prior's {prior.date}")
    return days


# ---------------------------------------------------------------------------------------------- matching and status
def match_findings(prior_in_current: np.ndarray, prior_sizes, current: np.ndarray, current_sizes, prior_keep, current_keep,
                   gate_mm: float = GATE_MM, prior_partner=None, current_partner=None) -> tuple[list, list, list]:
    """Pair the prior's findings with the current's.

    Args:
        prior_in_current: (N, 3) the prior's finding centres mapped into the current scan's frame (world mm).
        current: (M, 3) the current's centres; ``*_sizes``: diameters (mm).
        prior_keep, current_keep: (N,), (M,) bool: findings at or above the threshold. A pair needs one of them.
        prior_partner, current_partner: (N,), (M,) bool: findings below the threshold that may still pair with one
            above it (None: all), and then only within :data:`PARTNER_GATE_MM` or half the kept finding's diameter.

    Returns ``(pairs [(i, j)], new [j], resolved [i])``: one-to-one pairs closer than ``gate_mm`` plus half the
    larger diameter, chosen for the least total distance (Hungarian); unpaired kept findings are new or resolved.
    """
    from scipy.optimize import linear_sum_assignment

    prior_in_current = np.asarray(prior_in_current, dtype=np.float64).reshape(-1, 3)
    current = np.asarray(current, dtype=np.float64).reshape(-1, 3)
    prior_keep, current_keep = np.asarray(prior_keep, bool), np.asarray(current_keep, bool)
    pairs = []
    if len(prior_in_current) and len(current):
        dist = np.linalg.norm(prior_in_current[:, None, :] - current[None, :, :], axis=-1)
        p_size, c_size = np.asarray(prior_sizes, float)[:, None], np.asarray(current_sizes, float)[None, :]
        gate = gate_mm + 0.5 * np.maximum(p_size, c_size)
        both = prior_keep[:, None] & current_keep[None, :]
        # one side below the threshold: a probable candidate at the registered position, not any candidate nearby
        p_ok = np.ones(len(prior_keep), bool) if prior_partner is None else np.asarray(prior_partner, bool)
        c_ok = np.ones(len(current_keep), bool) if current_partner is None else np.asarray(current_partner, bool)
        near = dist <= np.maximum(PARTNER_GATE_MM, 0.5 * np.where(prior_keep[:, None], p_size, c_size))
        one = ((prior_keep[:, None] & c_ok[None, :]) | (current_keep[None, :] & p_ok[:, None])) & near
        allowed = (dist <= gate) & (both | one)
        rows = np.flatnonzero(allowed.any(axis=1))
        cols = np.flatnonzero(allowed.any(axis=0))
        if len(rows) and len(cols):
            sub = np.where(allowed[np.ix_(rows, cols)], dist[np.ix_(rows, cols)], 1e9)
            for a, b in zip(*linear_sum_assignment(sub)):
                if sub[a, b] < 1e9:
                    pairs.append((int(rows[a]), int(cols[b])))
    paired_prior = {i for i, _ in pairs}
    paired_current = {j for _, j in pairs}
    new = [int(j) for j in np.flatnonzero(current_keep) if j not in paired_current]
    resolved = [int(i) for i in np.flatnonzero(prior_keep) if i not in paired_prior]
    return sorted(pairs), new, resolved


def distinct(findings: list) -> list:
    """``findings`` (most probable first) less those whose centre lies inside a more probable one (within half its
    diameter, 5 mm at least): a large irregular nodule can come out of the detector as two findings."""
    kept = []
    for f in findings:
        if all(np.linalg.norm(np.subtract(f.coord, k.coord)) > max(5.0, 0.5 * float(k.diameter_mm or 0.0)) for k in kept):
            kept.append(f)
    return kept


def volume_doubling_days(v1: float, v2: float, days: float) -> float | None:
    """Volume doubling time Δt ln 2 / ln(V2/V1) in days (negative: halving); None when undefined (a volume missing or
    not positive, no change, no time)."""
    if not (v1 and v2 and v1 > 0 and v2 > 0 and days and days > 0) or math.isclose(v1, v2):
        return None
    return days * math.log(2.0) / math.log(v2 / v1)


def status_of(prior: NoduleFacts, current: NoduleFacts, days: float, repeatability_pct: float = VOLUME_REPEATABILITY_PCT) -> str:
    """``grown``, ``shrunk`` or ``stable`` for a nodule seen in both scans (module docstring: the status rule)."""
    facts = NoduleFacts(**{**current.__dict__, "timepoint": "existing", "prior": prior, "interval_days": days})
    growing, _ = growth(facts)
    change = 100.0 * (current.volume_mm3 / prior.volume_mm3 - 1.0) if prior.volume_mm3 > 0 else 0.0
    reverse = NoduleFacts(**{**prior.__dict__, "timepoint": "existing", "prior": current, "interval_days": days})
    falling, _ = growth(reverse)
    beyond = change > repeatability_pct
    below = change < -100.0 * (1.0 - 1.0 / (1.0 + repeatability_pct / 100.0))
    # Lung-RADS growth counts when the volume agrees beyond half the repeatability: a mean diameter is two calipers
    # on one slice, and on a large irregular nodule re-measuring alone moves it by more than 1.5 mm
    if beyond or (growing and change > 0.5 * repeatability_pct):
        return "grown"
    if below or (falling and change < -50.0 * (1.0 - 1.0 / (1.0 + repeatability_pct / 100.0))):
        return "shrunk"
    return "stable"


# ---------------------------------------------------------------------------------------------- the comparison
@dataclass
class Side:
    """One scan ready to compare: its CT, lungs on the coarse grid, and findings."""

    input: ScanInput
    ct: ScanCT
    coarse: tuple
    lungs: Lungs
    detections: ScanDetections
    described: dict = field(default_factory=dict)  # finding index -> Described
    blur_mm: object = None  # the partial-volume width both scans are measured with (compare sets it)

    def describe(self, index: int) -> Described:
        if index not in self.described:
            f = self.detections.findings[index]
            self.described[index] = describe_finding(self.ct, self.lungs, f.coord, f.diameter_mm, f.mask, self.blur_mm)
        return self.described[index]


def prepare_side(scan: ScanInput, detections: ScanDetections) -> Side:
    ct = ScanCT.read(scan.image)
    coarse = ct.coarse()
    return Side(scan, ct, coarse, find_lungs(*coarse), detections)


def compare(prior: Side, current: Side, registration: Registration, days: int, threshold: float,
            repeatability_pct: float = VOLUME_REPEATABILITY_PCT) -> list[dict]:
    """The reported nodules of a pair of scans, one dict each (CSV columns plus details), most suspicious first.

    Both scans' nodules are measured with the coarser scan's partial-volume width (per axis): the same nodule in
    two exams is typed and sized by one rule, at the resolution both of them have."""
    prior.blur_mm = current.blur_mm = np.maximum(prior.ct.blur_mm(), current.ct.blur_mm())
    pf, cf = distinct(prior.detections.findings), distinct(current.detections.findings)
    p_xyz = np.array([f.coord for f in pf], dtype=np.float64).reshape(-1, 3)
    c_xyz = np.array([f.coord for f in cf], dtype=np.float64).reshape(-1, 3)
    p_keep = np.array([f.probability >= threshold for f in pf], dtype=bool)
    c_keep = np.array([f.probability >= threshold for f in cf], dtype=bool)
    mapped = registration.prior_to_current(p_xyz) if len(p_xyz) else p_xyz
    pairs, new, resolved = match_findings(mapped, [f.diameter_mm for f in pf], c_xyz, [f.diameter_mm for f in cf], p_keep, c_keep,
                                          prior_partner=[f.probability >= PARTNER_PROBABILITY for f in pf],
                                          current_partner=[f.probability >= PARTNER_PROBABILITY for f in cf])

    rows = []
    for i, j in pairs:
        a, b = prior.describe(i), current.describe(j)
        before, now = facts_of(a), facts_of(b)
        status = status_of(before, now, days, repeatability_pct)
        now_facts = NoduleFacts(**{**now.__dict__, "timepoint": "existing", "prior": before, "interval_days": days})
        rows.append(_row(status, pf[i], cf[j], a, b, assess(now_facts), days))
    for j in new:
        b = current.describe(j)
        rows.append(_row("new", None, cf[j], None, b, assess(NoduleFacts(**{**facts_of(b).__dict__, "timepoint": "new"})), days))
    for i in resolved:
        rows.append(_row("resolved", pf[i], None, prior.describe(i), None, None, days))
    order = {s: n for n, s in enumerate(STATUSES)}
    rows.sort(key=lambda r: (r["lungrads"] == "", -_rank(r["lungrads"]), order[r["status"]], -r["probability"]))
    return rows


def _rank(category: str) -> int:
    from monai_lung.clinical.lungrads import category_rank

    return category_rank(category or None)


def _row(status: str, p, c, a: Described | None, b: Described | None, assessment, days: int) -> dict:
    pv = a.composition.volume_mm3 if a else None
    cv = b.composition.volume_mm3 if b else None
    change = 100.0 * (cv / pv - 1.0) if pv and cv else None
    vdt = volume_doubling_days(pv, cv, days) if pv and cv else None
    described = b or a
    row = {
        "status": status,
        **{f"prior_{k}": (round(v, 2) if p else None) for k, v in zip("xyz", p.coord if p else (0, 0, 0))},
        **{f"current_{k}": (round(v, 2) if c else None) for k, v in zip("xyz", c.coord if c else (0, 0, 0))},
        "prior_volume_mm3": None if pv is None else round(pv, 1), "current_volume_mm3": None if cv is None else round(cv, 1),
        "volume_change_pct": None if change is None else round(change, 1), "vdt_days": None if vdt is None else round(vdt, 0),
        "prior_mean_diameter_mm": a.composition.mean_diameter_mm if a else None,
        "current_mean_diameter_mm": b.composition.mean_diameter_mm if b else None,
        "type": described.composition.type, "lungrads": (assessment.category or "") if assessment else "",
        "probability": round(float((c or p).probability), 4),
    }
    row["details"] = {
        "prior": None if a is None else {**a.summary(), "probability": round(float(p.probability), 4)},
        "current": None if b is None else {**b.summary(), "probability": round(float(c.probability), 4)},
        "lungrads": None if assessment is None else {**assessment.summary(), "review_text": [r["text"] for r in assessment.review]},
    }
    row["_described"], row["_findings"], row["_assessment"] = (a, b), (p, c), assessment
    return row


def write_outputs(out_dir: Path, rows: list[dict], summary: dict) -> None:
    """``followup.csv`` (exactly :data:`CSV_COLUMNS`, empty cells for what does not apply) and ``followup.json``."""
    frame = pd.DataFrame([{k: r[k] for k in CSV_COLUMNS} for r in rows], columns=CSV_COLUMNS)
    write_csv_atomic(out_dir / "followup.csv", frame)
    nodules = [{**{k: r[k] for k in CSV_COLUMNS}, **r["details"]} for r in rows]
    write_json_atomic(out_dir / "followup.json", {**summary, "nodules": nodules})


def run_followup(prior: ScanInput, current: ScanInput, detections: Detections, out_dir: str | os.PathLike,
                 threshold: float = DEFAULT_THRESHOLD, affine: bool = True, report: bool = True, max_report: int = 20,
                 repeatability_pct: float = VOLUME_REPEATABILITY_PCT, dicom_out: str | os.PathLike | None = None,
                 prior_sr: str | os.PathLike | None = None, store_url: str | None = None) -> dict:
    """The whole comparison (module docstring); returns ``followup.json``'s content. ``dicom_out``: write the current
    exam's SR and SEG there (:mod:`.followup_dicom`; ``prior_sr`` an SR of the prior that monai_lung wrote, whose
    tracking UIDs to keep); ``store_url``: STOW-RS them to that DICOMweb server."""
    if prior_sr is not None and dicom_out is None:
        raise DataError(prior_sr, "--prior-sr needs --dicom-out (the tracking UIDs it gives go into the current SR)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    days = check_pair(prior, current)
    timings = {}
    t = time.perf_counter()
    prior_det = detections(prior.image, prior.identity)
    timings["detect_prior"] = time.perf_counter() - t
    t = time.perf_counter()
    current_det = detections(current.image, current.identity)
    timings["detect_current"] = time.perf_counter() - t
    t = time.perf_counter()
    cpu = time.process_time()  # the comparison's CPU seconds: its cost on a machine others share (wall times vary)
    a, b = prepare_side(prior, prior_det), prepare_side(current, current_det)
    timings["read_and_lungs"] = time.perf_counter() - t
    for side in (a, b):
        if not side.lungs.found():
            raise DataError(side.input.path, "no lungs found in the scan: nothing to register or locate")
    t = time.perf_counter()
    registration = register_lungs(*a.coarse, a.lungs.mask, *b.coarse, b.lungs.mask, affine_stage=affine)
    timings["registration"] = time.perf_counter() - t
    t = time.perf_counter()
    rows = compare(a, b, registration, days, threshold, repeatability_pct)
    timings["measure_and_match"] = time.perf_counter() - t
    timings["comparison_cpu"] = time.process_time() - cpu
    exam = exam_category([assess_of(r) for r in rows if r["status"] != "resolved"])
    summary = {
        "research_use": "RESEARCH USE ONLY - not for diagnosis",
        "prior": _side_summary(prior, prior_det), "current": _side_summary(current, current_det), "interval_days": days,
        "exam": {**exam, "review": [r["id"] for r in exam["review"]]},
        "registration": registration.summary(),
        "thresholds": {
            "probability": threshold, "growth_mean_diameter_mm": 1.5, "growth_interval_days": 365.25,
            "volume_repeatability_pct": repeatability_pct, "match_gate_mm": f"{GATE_MM:g} + half the larger diameter",
            "status_rule": "grown: Lung-RADS growth or volume up by more than the repeatability; shrunk: the same falls; else stable",
        },
        "counts": {s: sum(r["status"] == s for r in rows) for s in STATUSES},
        "coordinate_system": "world LPS mm; prior_* in the prior scan's frame, current_* in the current scan's",
    }
    if report:
        from monai_lung.clinical.followup_report import write_report

        t = time.perf_counter()
        summary["report"] = str(write_report(out_dir / "report", rows[:max_report], a, b, registration, summary))
        timings["report"] = time.perf_counter() - t
    if dicom_out is not None:
        from monai_lung.clinical.followup_dicom import write_followup_dicom

        t = time.perf_counter()
        files = write_followup_dicom(rows, a, b, dicom_out, summary["exam"], prior_sr)
        if store_url:
            from monai_lung.dicom.dicomweb import store_files

            files["stored"] = store_files(store_url, [f for f in (files["sr"], files["seg"]) if f], current.study_uid)
            files["store_url"] = store_url
        summary["dicom"] = files
        timings["dicom"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - start
    summary["timings_s"] = {k: round(v, 2) for k, v in timings.items()}
    write_outputs(out_dir, rows, summary)
    return {**summary, "rows": rows}


def assess_of(row: dict):
    """The row's current Lung-RADS assessment back as an :class:`~.lungrads.Assessment` (for the exam category)."""
    from monai_lung.clinical.lungrads import Assessment, review_entry

    info = row["details"]["lungrads"]
    return Assessment(info["category"], info["row"], info["timepoint"], [review_entry(r) for r in info["review"]])


def _side_summary(scan: ScanInput, det: ScanDetections) -> dict:
    return {"path": scan.path, "date": scan.date.isoformat(), "patient": scan.patient, "study_instance_uid": scan.study_uid,
            "series_instance_uid": scan.series_uid, "findings_reused": det.reused, "detection_s": round(det.seconds, 2),
            "num_findings": len(det.findings)}
