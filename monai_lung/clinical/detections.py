"""A scan's findings from the detector, reused when the same scan was already detected with the same bundle.

The detector (:func:`~monai_lung.detection.loading.load_detector`) gives a :class:`~monai_lung.findings.ScanResult`
of :class:`~monai_lung.findings.Finding` records (world LPS mm, each with its mask); :class:`ScanDetections` holds it.

Reuse: each result is kept in ``findings_dir`` as ``<key>.json`` (the ScanResult) and ``<key>.npz`` (the masks), the key
a hash of the scan's identity (a file's absolute path, size and modification time; a DICOM series' UID and its
instances' UIDs) and of the detector's (the bundle's weights and configuration, and any overrides). Comparing this
year's scan with next year's then detects this year's only once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from monai_lung.findings import FindingMask, ScanResult
from monai_lung.io.atomic import atomic_path, write_json_atomic

logger = logging.getLogger(__name__)


@dataclass
class ScanDetections:
    """One scan's findings, most probable first (:class:`~monai_lung.findings.Finding`, world LPS mm, with their
    masks); ``seconds`` the detection's time (0 when reused)."""

    source: str
    findings: list
    seconds: float = 0.0
    reused: bool = False
    key: str = ""


def _digest(*parts) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(json.dumps(part, sort_keys=True, default=str).encode())
    return h.hexdigest()[:32]


def scan_identity(path: str | os.PathLike, series_uid: str | None = None, instance_uids=()) -> str:
    """What identifies a scan's content cheaply: a DICOM series' UID and instances, or a file's path, size and time."""
    if series_uid:
        return _digest("dicom", series_uid, sorted(instance_uids))
    path = Path(path).resolve()
    stat = path.stat()
    data = path.with_suffix(".raw") if path.suffix.lower() == ".mhd" and path.with_suffix(".raw").is_file() else path
    return _digest("file", str(path), stat.st_size, stat.st_mtime_ns, data.stat().st_size, data.stat().st_mtime_ns)


def detector_identity(bundle: str | os.PathLike, overrides: dict) -> str:
    """The detector's identity: a hash of the bundle's weights and configs and the overrides."""
    bundle = Path(bundle)
    h = hashlib.sha256()
    for path in sorted(bundle.glob("configs/*")) + [bundle / "models" / "model.pt"]:
        if path.is_file():
            h.update(path.name.encode())
            h.update(path.read_bytes())
    return _digest(h.hexdigest(), overrides)


class GivenFindings:
    """Findings detected before, by the same detector, handed in rather than read from ``findings_dir``: callable as
    :class:`Detections`. ``by_scan`` maps a scan's identity (:func:`scan_identity`) to its findings, each a
    :class:`~monai_lung.findings.Finding` or a dict of its fields (``coord`` world LPS mm, ``probability``,
    ``diameter_mm``, ...); they carry no masks, so each nodule is measured from its centre and size. The DICOM node
    passes its own results so that a follow-up detects nothing again."""

    def __init__(self, by_scan: dict):
        from monai_lung.findings import Finding

        names = {f.name for f in fields(Finding)}
        self.by_scan = {key: [f if isinstance(f, Finding) else Finding(**{k: v for k, v in f.items() if k in names})
                              for f in found] for key, found in by_scan.items()}

    def __call__(self, image: str | os.PathLike, scan_id: str) -> ScanDetections:
        if scan_id not in self.by_scan:
            raise KeyError(f"no findings were given for the scan {image}")
        return ScanDetections(str(image), sorted(self.by_scan[scan_id], key=lambda f: -f.probability), reused=True, key=scan_id)


class Detections:
    """Detect scans with one bundle, keeping and reusing results in ``findings_dir``.

    Args:
        bundle: the two-stage detection bundle folder.
        findings_dir: where results are kept (None: nothing kept or reused).
        device, overrides: as ``monai-lung detect``'s ``--device`` and ``--set``.
    """

    def __init__(self, bundle: str | os.PathLike, findings_dir: str | os.PathLike | None = None, device: str = "auto",
                 overrides: dict | None = None):
        self.bundle, self.device, self.overrides = Path(bundle), device, dict(overrides or {})
        self.findings_dir = None if findings_dir is None else Path(findings_dir)
        self._detector = None
        self.identity = detector_identity(self.bundle, self.overrides)

    def _load(self):
        if self._detector is None:
            from monai_lung.detection.loading import load_detector

            self._detector, prep = load_detector(self.bundle, device=self.device, config_overrides=self.overrides)
            self._preprocess = prep["transform"]
        return self._detector

    def __call__(self, image: str | os.PathLike, scan_id: str) -> ScanDetections:
        """The findings of the scan at ``image`` (a file or a folder holding one DICOM series), ``scan_id`` from
        :func:`scan_identity`."""
        key = _digest(scan_id, self.identity)
        cached = self._read(key, str(image))
        if cached is not None:
            logger.info("%s: reusing its findings from %s", image, self.findings_dir)
            return cached
        import torch

        detector = self._load()
        t = time.perf_counter()
        with torch.no_grad():
            scan = detector.detect(self._preprocess({"image": str(image)})["image"])
        result = ScanDetections(str(image), list(scan.findings), time.perf_counter() - t, False, key)
        self._write(result, scan)
        return result

    def _paths(self, key: str) -> tuple[Path, Path]:
        return self.findings_dir / f"{key}.json", self.findings_dir / f"{key}.npz"

    def _write(self, result: ScanDetections, scan: ScanResult) -> None:
        if self.findings_dir is None:
            return
        self.findings_dir.mkdir(parents=True, exist_ok=True)
        meta, arrays = self._paths(result.key)
        packed = {}
        for n, f in enumerate(result.findings):
            if f.mask is not None:
                packed[f"mask{n}"], packed[f"affine{n}"] = f.mask.array, f.mask.affine
        with atomic_path(arrays) as tmp:
            with open(tmp, "wb") as out:
                np.savez_compressed(out, **packed)
        write_json_atomic(meta, {**scan.to_json(), "image": result.source, "bundle": str(self.bundle), "detector": self.identity,
                                 "mask_spaces": [f.mask.space if f.mask is not None else None for f in result.findings],
                                 "seconds": result.seconds})

    def _read(self, key: str, source: str) -> ScanDetections | None:
        if self.findings_dir is None:
            return None
        meta, arrays = self._paths(key)
        if not (meta.is_file() and arrays.is_file()):
            return None
        info = json.loads(meta.read_text(encoding="utf-8"))
        findings = ScanResult.from_json(info).findings
        with np.load(arrays) as packed:
            for n, (f, space) in enumerate(zip(findings, info["mask_spaces"])):
                if space is not None:
                    f.mask = FindingMask(packed[f"mask{n}"].astype(bool), packed[f"affine{n}"], space)
        return ScanDetections(source, findings, 0.0, True, key)
