"""Distinct studies made from the shared real LIDC-IDRI-0001 series, and dcmtk's ``storescu`` as the scanner.

:func:`write_study` copies the series with new Study, Series, SOP Instance and Frame of Reference UIDs and a new
patient, optionally fewer slices around the nodule and a smaller matrix (block means of ``scale`` x ``scale``
pixels, the geometry adjusted), so that a test gets several different studies of a real chest CT quickly. The
tests and ``benchmarks/node_load.py`` use it.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pydicom
from pydicom.uid import generate_uid

REPO = Path(__file__).resolve().parents[1]
LIDC_DICOM = REPO.parent / "shared" / "real_ct" / "LIDC-IDRI-0001" / "dicom"
NODULE_Z = -115.8675792  # the LUNA16 nodule's centre, world z mm


@dataclass
class Study:
    study_uid: str
    series_uid: str
    folder: Path
    files: list[Path]
    patient_name: str
    patient_id: str


def source_files() -> list[Path]:
    """The real series' files in slice order (z ascending)."""
    files = sorted(LIDC_DICOM.glob("*.dcm"))
    z = [float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]) for f in files]
    return [f for _, f in sorted(zip(z, files))]


def write_study(folder: Path, key: str, slices: int | None = None, scale: int = 1, patient_id: str | None = None,
                patient_name: str | None = None, edit: Callable[[int, pydicom.Dataset], None] | None = None,
                sources: list[Path] | None = None) -> Study:
    """A new study from the real series under ``folder`` (one file per slice). ``key`` seeds its UIDs (the same key
    gives the same study); ``slices``: that many consecutive slices centred on the nodule; ``scale``: the in-plane
    reduction; ``edit(n, ds)``: a last change to each slice's data set."""
    files = sources or source_files()
    if slices is not None:
        zs = np.array([float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]) for f in files])
        k = int(np.argmin(np.abs(zs - NODULE_Z)))
        start = int(np.clip(k - slices // 2, 0, len(files) - slices))
        files = files[start:start + slices]
    # pydicom hashes the sources joined without a separator: ("load-1", "13") and ("load-11", "3") would collide
    study_uid, series_uid, frame_uid = (generate_uid(entropy_srcs=[f"{kind}|{key}"]) for kind in ("study", "series", "frame"))
    number = int(hashlib.sha256(key.encode()).hexdigest(), 16)
    patient_id = patient_id or f"LT-{number % 10**8:08d}"
    patient_name = patient_name or f"Testpatient^{key.replace('-', '').replace('_', '')[:20]}"
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for n, src in enumerate(files):
        ds = pydicom.dcmread(src)
        if scale > 1:
            _shrink(ds, scale)
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.SOPInstanceUID = generate_uid(entropy_srcs=[f"instance|{key}|{n}"])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PatientName, ds.PatientID = patient_name, patient_id
        ds.AccessionNumber = f"A{number % 10**7:07d}"
        ds.InstanceNumber = n + 1
        if edit is not None:
            edit(n, ds)
        path = folder / f"{n:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        out.append(path)
    return Study(study_uid, series_uid, folder, out, patient_name, patient_id)


def _shrink(ds: pydicom.Dataset, scale: int) -> None:
    """Block means of ``scale`` x ``scale`` stored values; pixel spacing and the first pixel's position follow."""
    pixels = ds.pixel_array
    rows, cols = (pixels.shape[0] // scale) * scale, (pixels.shape[1] // scale) * scale
    small = pixels[:rows, :cols].reshape(rows // scale, scale, cols // scale, scale).mean(axis=(1, 3))
    ds.PixelData = np.rint(small).astype(pixels.dtype).tobytes()
    ds.Rows, ds.Columns = small.shape
    row_mm, col_mm = (float(v) for v in ds.PixelSpacing)
    orientation = np.array([float(v) for v in ds.ImageOrientationPatient])
    shift = (scale - 1) / 2.0  # the new first pixel's centre, in old pixels along rows and columns
    position = np.array([float(v) for v in ds.ImagePositionPatient]) + shift * (orientation[:3] * col_mm + orientation[3:] * row_mm)
    ds.ImagePositionPatient = [round(float(v), 4) for v in position]
    ds.PixelSpacing = [row_mm * scale, col_mm * scale]
    for tag in ("LargestImagePixelValue", "SmallestImagePixelValue"):
        if tag in ds:
            del ds[tag]


def storescu(folder_or_files, port: int, calling_ae: str = "SCANNER", called_ae: str = "LUNGCAD", timeout: float = 300) -> subprocess.CompletedProcess:
    """dcmtk's storescu sending a folder (recursively) or files to 127.0.0.1:``port``, verbose (its output names
    each store response: ``Received Store Response (Success)``, ``... (Refused: OutOfResources)``)."""
    targets = [str(folder_or_files)] if isinstance(folder_or_files, (str, Path)) else [str(p) for p in folder_or_files]
    cmd = [storescu_binary(), "-aet", calling_ae, "-aec", called_ae, "+sd", "+r", "-nh", "-v", "127.0.0.1", str(port), *targets]
    return subprocess.run(cmd, capture_output=True, encoding="utf-8", errors="replace", timeout=timeout)


def storescu_binary() -> str | None:
    return shutil.which("storescu")
