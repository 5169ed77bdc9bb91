"""Follow-up results as DICOM: the current exam's SR and SEG with the prior time point, and the prior from a PACS.

:func:`write_followup_dicom` writes the current series' TID 1500 SR (and SEG) through
:func:`monai_lung.dicom.objects.write_dicom_outputs`: each current finding with its clinical attributes and its
follow-up Lung-RADS category at the current time point (TID 1502, order 2), and, when the prior is a DICOM series,
each prior finding that was matched or resolved at the prior time point (order 1, on the prior series). A nodule seen
in both keeps one tracking UID: the prior SR's (``--prior-sr``, when monai_lung wrote it), else a new one shared by
its two groups; so a PACS follows one nodule across a patient's exams.

:func:`find_prior_study` finds, on a DICOMweb server, the patient's most recent CT study before the current one
(QIDO-RS by PatientID), for ``--prior auto``.
"""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path

import numpy as np
from pydicom.uid import generate_uid

from monai_lung.io.errors import DataError

logger = logging.getLogger(__name__)


def check_prior_sr(path: str | os.PathLike) -> None:
    """Refuse, with one line, a file that is not a DICOM SR monai_lung wrote (checked before anything is read)."""
    import pydicom

    try:
        header = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as err:
        raise DataError(path, f"not a readable DICOM file ({type(err).__name__})") from None
    if str(getattr(header, "Manufacturer", "")) != "monai_lung" or str(getattr(header, "Modality", "")) != "SR":
        raise DataError(path, "not a DICOM SR written by monai_lung: its tracking UIDs cannot be reused")


def prior_tracking_uids(path: str | os.PathLike, prior_series_uid: str | None) -> list[dict]:
    """The findings of a prior SR that monai_lung wrote (``coord`` world LPS mm, ``tracking_uid``, ...), those on the
    prior's series (a follow-up SR also carries its own prior's); another file is refused with one line."""
    from monai_lung.dicom.objects import read_sr_findings

    check_prior_sr(path)
    found = read_sr_findings(path)
    return [f for f in found if not prior_series_uid or not f["series_uid"] or f["series_uid"] == prior_series_uid]


def _nearest(coord, candidates: list[dict], radius_mm: float) -> dict | None:
    best, best_d = None, radius_mm
    for c in candidates:
        d = float(np.linalg.norm(np.asarray(c["coord"], float) - np.asarray(coord, float)))
        if d <= best_d:
            best, best_d = c, d
    return best


def write_followup_dicom(rows: list[dict], prior, current, out_dir: str | os.PathLike, exam: dict,
                         prior_sr: str | os.PathLike | None = None) -> dict:
    """Write the current exam's SR and SEG (module docstring) for the compared ``rows``; ``prior``/``current`` are the
    compared sides (:class:`~.followup.Side`). Returns :func:`~monai_lung.dicom.objects.write_dicom_outputs`' dict."""
    from monai_lung.clinical.findings import facts_of, fill_finding
    from monai_lung.clinical.lungrads import assess
    from monai_lung.dicom.objects import PriorGroup, TimePoint, write_dicom_outputs
    from monai_lung.findings import FindingMask

    if current.input.series is None:
        raise DataError(current.input.path, "--dicom-out needs the current scan as a DICOM series (its SR references it)")
    earlier = prior_tracking_uids(prior_sr, prior.input.series_uid) if prior_sr else []
    now = TimePoint(f"follow-up {current.input.date.isoformat()}", 2, current.input.date.isoformat())
    then = TimePoint(f"prior {prior.input.date.isoformat()}", 1, prior.input.date.isoformat())
    findings, tracking, prior_groups = [], [], []
    for row in rows:
        p_finding, c_finding = row["_findings"]
        a, b = row["_described"]
        uid = None
        if p_finding is not None:
            reused = _nearest(p_finding.coord, earlier, max(5.0, 0.5 * float(p_finding.diameter_mm or 0.0)))
            uid = reused["tracking_uid"] if reused else generate_uid(entropy_srcs=[
                str(prior.input.series_uid or prior.input.path), "nodule", *(f"{v:.2f}" for v in p_finding.coord)])
        if c_finding is not None:
            record = copy.copy(c_finding)
            fill_finding(record, b, row["_assessment"])
            if record.mask is None:  # findings handed in without masks (the DICOM node's): the measured nodule
                record.mask = FindingMask(b.composition.mask, b.crop_affine, "LPS")
            findings.append(record)
            tracking.append(uid)
        if p_finding is not None and prior.input.series is not None:
            record = copy.copy(p_finding)
            fill_finding(record, a, assess(facts_of(a)))
            prior_groups.append(PriorGroup(record, prior.input.series, uid, then))
    comments = [f"Exam Lung-RADS v2022 category {exam['category']} (research use only)",
                f"Compared with the prior CT of {prior.input.date.isoformat()}" + (f", study {prior.input.study_uid}" if prior.input.study_uid else "")]
    files = write_dicom_outputs(current.input.series, findings, out_dir, comments=comments, tracking=tracking,
                                time_point=now, prior_groups=prior_groups)
    files["reused_tracking_uids"] = sum(u is not None and any(u == e["tracking_uid"] for e in earlier) for u in tracking)
    return files


def find_prior_study(url: str, current_study: str, patient_id: str, current_date, headers: dict | None = None) -> str:
    """The StudyInstanceUID of the patient's most recent CT study before ``current_date`` on the DICOMweb server; a
    patient without one is a one-line :class:`DataError`."""
    import datetime as dt

    from monai_lung.dicom.dicomweb import search_studies

    earlier = []
    for study in search_studies(url, patient_id, headers):
        if study["study_uid"] == current_study or (study["modalities"] and "CT" not in study["modalities"]):
            continue
        try:
            when = dt.datetime.strptime(study["date"], "%Y%m%d").date()
        except ValueError:
            continue  # an undated study cannot be placed before the current one
        if when < current_date:
            earlier.append((when, study["study_uid"]))
    if not earlier:
        raise DataError(url, f"no CT study of patient {patient_id!r} before {current_date.isoformat()} (QIDO-RS): nothing to compare with")
    when, uid = max(earlier)
    logger.info("prior study %s of %s (patient %s)", uid, when, patient_id)
    return uid
