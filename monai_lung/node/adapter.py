"""The node's one coupling to the detector and the DICOM writers (``monai_lung.detection``, ``monai_lung.dicom``).

:class:`Engine` loads the detection bundle once and turns a study folder into the files the node sends: the
series choice and detection of ``monai-lung detect`` (the same code: :func:`~monai_lung.detection.batch.scan_steps`
with the DICOM hook of :mod:`monai_lung.dicom.pipeline`), the SR and SEG, a Secondary Capture key image per
finding and a Key Object Selection pointing at them.

UIDs of all these objects derive from the chosen series' SOP Instance UIDs and the detector's identity (bundle
name, version and weights), not from the findings: the same instances always give the same objects, so a PACS
that receives them twice keeps one copy, while another model or another set of slices gives new objects.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

from monai_lung import __version__
from monai_lung.detection.batch import ScanItem, scan_steps
from monai_lung.detection.loading import load_detector
from monai_lung.dicom.dicomweb import store_files
from monai_lung.dicom.integrity import check_series_pixels
from monai_lung.dicom.keyimages import KeyFinding, build_key_images, build_key_object_selection
from monai_lung.dicom.pipeline import DicomOutputs, local_scan
from monai_lung.io.atomic import atomic_path
from monai_lung.io.errors import DataError

logger = logging.getLogger("monai_lung.node")
SC_NAME, KOS_NAME = "sc_{:02d}.dcm", "kos.dcm"


@dataclass
class StudyResult:
    """What detection made of a study: the files to send (SEG, SR, key images, KOS: a KOS after what it
    references) and a JSON-safe summary."""

    files: list[str]
    summary: dict = field(default_factory=dict)


def bundle_identity(bundle: str | os.PathLike) -> str:
    """``name version sha256(model.pt)[:16]`` of a detection bundle: part of every result UID."""
    bundle = Path(bundle)
    meta_path = bundle / "configs" / "metadata.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.is_file() else {}
    digest = hashlib.sha256()
    with open(bundle / "models" / "model.pt", "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return f"{meta.get('name', bundle.name)} {meta.get('version', '?')} {digest.hexdigest()[:16]}"


class Engine:
    """The detector, loaded once, and the study -> result objects step (module docstring).

    Args:
        det_bundle: the two-stage detection bundle folder.
        device: ``auto``, ``cpu``, ``cuda``...
        overrides: detector parameters (``--set``), as for ``monai-lung detect``.
        max_findings: the most probable findings that go into the SR, SEG and key images.
    """

    def __init__(self, det_bundle: str | os.PathLike, device: str = "auto", overrides: dict | None = None, max_findings: int = 10):
        self.detector, prep = load_detector(det_bundle, device=device, config_overrides=overrides)
        self.preprocess = prep["transform"]
        self.identity = bundle_identity(det_bundle)
        self.max_findings = int(max_findings)

    def uid(self, seed: str, kind: str) -> str:
        # one joined source: pydicom concatenates its sources without a separator, which could make two kinds collide
        return generate_uid(entropy_srcs=["|".join(["monai_lung node", __version__, self.identity, seed, kind])])

    def run(self, study_folder: str | os.PathLike, out_dir: str | os.PathLike) -> StudyResult:
        """Choose the series of ``study_folder``, detect, write the result objects under ``out_dir``.

        Bad input (no usable CT series, a localizer-only study, an unreadable instance) raises :class:`DataError`.
        """
        out_dir = Path(out_dir)
        t0 = time.perf_counter()
        scan = local_scan(study_folder, out_dir)
        logger.info("study %s: %s", scan.study_uid, scan.why)
        check_series_pixels(scan.series)  # a received slice may be incomplete, which the reader would not notice
        seed = hashlib.sha256("\n".join(sorted(str(ds.SOPInstanceUID) for ds in scan.series.datasets)).encode()).hexdigest()
        hook = DicomOutputs({scan.seriesuid: scan}, out_dir, self.max_findings)
        prepare, detect = scan_steps(self.detector, self.preprocess, extra_outputs=hook)
        item = ScanItem(scan.seriesuid, scan.image)
        result = detect(item, prepare(item))
        timings = dict(result["timings_s"])
        t = time.perf_counter()
        dicom = result["dicom"]
        kept = result["findings"][: dicom["num_findings"]]
        files = []
        if dicom["seg"]:
            files.append(restamp(dicom["seg"], self.uid(seed, "seg"), self.uid(seed, "seg-series")))
        files.append(restamp(dicom["sr"], self.uid(seed, "sr"), self.uid(seed, "sr-series")))
        key_uids = []
        if kept:
            marks = [KeyFinding(f["coord"], f["diameter_mm"], _caption(n, len(kept), f)) for n, f in enumerate(kept, start=1)]
            key_uids = [self.uid(seed, f"sc{n}") for n in range(1, len(kept) + 1)]
            images = build_key_images(scan.series, marks, self.uid(seed, "sc-series"), key_uids)
            for n, image in enumerate(images, start=1):
                files.append(_save(image, out_dir / scan.seriesuid / SC_NAME.format(n)))
            kos = build_key_object_selection(images, self.uid(seed, "kos-series"), self.uid(seed, "kos"),
                                             f"monai_lung: {len(images)} nodule finding(s), most probable first - RESEARCH USE ONLY")
            files.append(_save(kos, out_dir / scan.seriesuid / KOS_NAME))
        timings["key_images"] = time.perf_counter() - t
        detect_s = sum(v for k, v in timings.items() if k not in ("dicom", "key_images"))
        summary = {
            "study_instance_uid": scan.study_uid, "series_instance_uid": scan.seriesuid, "series_choice": scan.why,
            "num_findings": len(kept), "num_candidates": result.get("num_candidates"),
            "findings": [{k: f[k] for k in ("coord", "diameter_mm", "longest_axial_mm", "volume_mm3", "probability")} for f in kept],
            "detector": self.identity, "key_image_uids": key_uids,
            "seconds": {"detect": detect_s, "dicom": timings.get("dicom", 0.0) + timings["key_images"],
                        "total": time.perf_counter() - t0},
            "timings_s": timings,
        }
        return StudyResult(files, summary)


def _caption(n: int, total: int, finding: dict) -> list[str]:
    return [
        f"Finding {n} of {total} (monai_lung)",
        f"diameter {finding['diameter_mm']:.1f} mm, longest axial {finding['longest_axial_mm']:.1f} mm, volume {finding['volume_mm3']:.0f} mm3",
        f"probability {finding['probability']:.2f}",
    ]


def _save(dataset, path: Path) -> str:
    with atomic_path(path) as tmp:
        dataset.save_as(tmp)
    return str(path)


def restamp(path: str, sop_uid: str, series_uid: str) -> str:
    """Give a written object the node's input-derived SOP and Series Instance UIDs (the writer derives them from
    the findings, which another run could compute a hair differently)."""
    ds = pydicom.dcmread(path)
    ds.SOPInstanceUID = sop_uid
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.SeriesInstanceUID = series_uid
    with atomic_path(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    return path


def stow(url: str, paths: list[str], study_uid: str, headers: dict | None = None) -> list[str]:
    """STOW-RS ``paths`` to ``url``; a PACS that is down or refuses raises :class:`DataError`."""
    return store_files(url, paths, study_uid, headers)


__all__ = ["DataError", "Engine", "StudyResult", "bundle_identity", "stow"]
