"""What the DICOM round trip adds per scan: choosing the series, writing the SR and SEG, and, against a DICOMweb
server, pulling the study (QIDO-RS + WADO-RS) and storing both objects (STOW-RS); then dciodvfy on both.

The findings are balls of ``--diameter`` mm spread around the real LIDC-IDRI-0001 nodule, on a 0.75 mm grid like
the detector's stage 1. Detection itself is not timed (benchmarks/detect_speed.py does that).

    python benchmarks/dicom_roundtrip.py [--dicomweb http://127.0.0.1:8042/dicom-web --study STUDY_UID] [--findings 10]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from monai_lung.dicom.dicomweb import fetch_study, store_files
from monai_lung.dicom.objects import write_dicom_outputs
from monai_lung.findings import Finding, FindingMask
from monai_lung.dicom.series import choose_series
from monai_lung.detection.sizing import measure_mask

LUNA16_CENTRE = np.array([56.20840547, 86.34341278, -115.8675792])


def ball_findings(n: int, diameter: float, spacing: float = 0.75):
    rng = np.random.default_rng(0)
    r = diameter / 2
    size = int(2 * np.ceil(r / spacing) + 3)
    grid = np.indices((size, size, size)).transpose(1, 2, 3, 0)
    mask = np.linalg.norm((grid - (size - 1) / 2) * spacing, axis=-1) <= r
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = LUNA16_CENTRE * [-1, -1, 1] - (size - 1) / 2 * spacing  # RAS
    findings = []
    for k in range(n):
        lo = np.zeros(3, int) if k == 0 else rng.integers(-40, 41, 3)
        centre = LUNA16_CENTRE + lo * spacing * np.array([-1, -1, 1])
        shift = np.eye(4)
        shift[:3, 3] = lo
        findings.append(Finding(coord=centre, probability=float(1 - 0.05 * k), **measure_mask(mask, affine),
                                mask=FindingMask(mask, affine @ shift, "RAS")))
    return findings


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--series", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared" / "real_ct" / "LIDC-IDRI-0001" / "dicom")
    p.add_argument("--dicomweb", help="DICOMweb root holding --study (else only the local steps are timed)")
    p.add_argument("--study", help="StudyInstanceUID to pull")
    p.add_argument("--findings", type=int, default=10)
    p.add_argument("--diameter", type=float, default=8.0)
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dicom_roundtrip_"))
    try:
        times = {}
        folder = args.series
        if args.dicomweb:
            t = time.perf_counter()
            folder = fetch_study(args.dicomweb, args.study, work / "pulled")
            times["pull (QIDO-RS + WADO-RS)"] = time.perf_counter() - t
        t = time.perf_counter()
        info, why = choose_series(folder)
        times["choose series (headers)"] = time.perf_counter() - t
        findings = ball_findings(args.findings, args.diameter)
        t = time.perf_counter()
        out = write_dicom_outputs(info, findings, work / "out")
        times[f"write SR + SEG ({args.findings} findings)"] = time.perf_counter() - t
        if args.dicomweb:
            t = time.perf_counter()
            store_files(args.dicomweb, [out["sr"], out["seg"]], str(info.datasets[0].StudyInstanceUID))
            times["store (STOW-RS)"] = time.perf_counter() - t
        print(why)
        for key, value in times.items():
            print(f"{key:40s} {value:6.2f} s")
        print(f"{'total':40s} {sum(times.values()):6.2f} s")
        print(f"SEG {Path(out['seg']).stat().st_size / 1e3:.0f} kB, SR {Path(out['sr']).stat().st_size / 1e3:.0f} kB")
        if shutil.which("dciodvfy"):
            for name in ("sr", "seg"):
                res = subprocess.run(["dciodvfy", out[name]], capture_output=True, text=True)
                lines = (res.stdout + res.stderr).splitlines()
                errors = [ln for ln in lines if ln.startswith("Error")]
                warnings = [ln for ln in lines if ln.startswith("Warning")]
                print(f"dciodvfy {name}: {len(errors)} errors, {len(warnings)} warnings")
                for ln in errors + warnings:
                    print("   ", ln)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
