"""DICOM studies as detection inputs, and the SR + SEG (optionally stored to a PACS) as a scan's extra outputs.

:func:`local_scan` and :func:`pacs_scan` turn a study folder, or a study on a DICOMweb server, into a
:class:`DicomScan`: the chosen series (:func:`~monai_lung.dicom.series.choose_series`) and a folder a
whole-folder reader reads it from. :class:`DicomOutputs` is the detection batch's per-scan hook that writes
``OUT/<SeriesInstanceUID>/{sr,seg}.dcm`` and, with a store URL, sends both to the PACS; a failed store raises,
so that the batch records the scan as failed (the files stay in ``OUT``) and a rerun stores them.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from monai_lung.dicom.dicomweb import fetch_study, store_files
from monai_lung.dicom.objects import write_dicom_outputs
from monai_lung.dicom.series import SeriesInfo, choose_series, series_reading_folder
from monai_lung.findings import ScanResult

logger = logging.getLogger(__name__)
LINK_FOLDER = ".series"  # under the DICOM output folder: links to a chosen series' files
PACS_FOLDER = ".dicomweb"  # under the DICOM output folder: studies pulled from a PACS


@dataclass
class DicomScan:
    """A study's chosen series: ``seriesuid`` (SeriesInstanceUID), ``image`` (a folder holding only it), ``why``."""

    seriesuid: str
    image: str
    series: SeriesInfo
    why: str
    study_uid: str


def local_scan(folder: str | os.PathLike, work_dir: str | os.PathLike) -> DicomScan:
    """The series to detect on in a local study or series folder (links under ``work_dir/.series`` if needed)."""
    info, why = choose_series(folder)
    image = series_reading_folder(info, folder, Path(work_dir) / LINK_FOLDER)
    return DicomScan(info.uid, str(image), info, why, str(info.datasets[0].StudyInstanceUID))


def pacs_scan(url: str, study_uid: str, work_dir: str | os.PathLike, headers: dict | None = None) -> DicomScan:
    """Pull a study's CT series from a DICOMweb server into ``work_dir/.dicomweb/<study>/`` and choose one."""
    t = time.perf_counter()
    folder = fetch_study(url, study_uid, Path(work_dir) / PACS_FOLDER / study_uid, headers=headers)
    logger.info("study %s pulled from %s in %.1f s", study_uid, url, time.perf_counter() - t)
    return local_scan(folder, work_dir)


class DicomOutputs:
    """``(item, scan result) -> {"dicom": {...}}`` for the detection batch (``extra_outputs``).

    Args:
        scans: the :class:`DicomScan` of each item, by seriesuid.
        out_dir: objects go to ``out_dir/<SeriesInstanceUID>/``.
        max_findings: the best findings (by probability) that go into the SR and SEG.
        store_url: a DICOMweb root to STOW-RS both objects to (None: write only).
        headers: extra HTTP headers for the PACS (authentication is otherwise the proxy's).
    """

    def __init__(self, scans: dict[str, DicomScan], out_dir: str | os.PathLike, max_findings: int = 10,
                 store_url: str | None = None, headers: dict | None = None):
        self.scans, self.out_dir, self.max_findings = scans, Path(out_dir), int(max_findings)
        self.store_url, self.headers = store_url, headers

    def __call__(self, item, result: ScanResult) -> dict:
        scan = self.scans.get(item.seriesuid)
        if scan is None:  # not a DICOM input (a file given beside DICOM folders)
            return {}
        kept = result.findings[: self.max_findings]  # findings come sorted by probability
        t = time.perf_counter()
        files = write_dicom_outputs(scan.series, kept, self.out_dir, comments=result.warnings)
        info = {**files, "study_instance_uid": scan.study_uid, "series_choice": scan.why, "num_findings": len(kept),
                "write_s": time.perf_counter() - t}
        if self.store_url:
            t = time.perf_counter()
            paths = [p for p in (files["sr"], files["seg"]) if p]
            info["stored"] = store_files(self.store_url, paths, scan.study_uid, self.headers)
            info["store_url"], info["store_s"] = self.store_url, time.perf_counter() - t
        return {"dicom": info}
