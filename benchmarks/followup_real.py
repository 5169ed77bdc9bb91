"""The real LIDC-IDRI-0001 chest CT against itself re-posed and re-sliced: repeatability, time, and the readers' texture.

The prior is the original DICOM series (2.5 mm slices); the current is the same scan rotated by a few degrees about
a tilted axis, shifted by centimetres and re-sliced at another slice step (SimpleITK, linear), its slices trimmed to
the scanned volume, written as ``.mha``.
Nothing changed, so the LUNA16 nodule must come out ``stable``; its volume difference is the measurement's
repeatability on real CT. Each pose is one ``monai-lung followup`` run (a subprocess, as users run it), timed with
its own findings cache first empty (two detections) and then reused (no detection): the comparison itself must
stay within two detections plus 5 s on 2 cores. Last, the nodule's type against the four LIDC readers' ``texture``
ratings (1 ground glass, 3 part solid, 5 solid) and ``calcification`` (6 absent) in ``lidc_readers.xml``.

    python benchmarks/followup_real.py --det-bundle B [--real-ct ../shared/real_ct] [--poses 3] [--work /tmp/real_followup]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from monai_lung.io.lidc_xml import read_lidc_readers
from monai_lung.io.sitk_reader import read_sitk_image

LUNA16_CENTRE = np.array([56.20840547, 86.34341278, -115.8675792])
TEXTURE = {"non-solid": 1, "part-solid": 3, "solid": 5}
POSES = [(3.0, (0.2, 0.1, 1.0), (12.0, -8.0, 20.0), 2.0), (5.0, (1.0, 0.3, 0.2), (-15.0, 10.0, -12.0), 1.25),
         (4.0, (0.1, 1.0, 0.4), (8.0, 18.0, 10.0), 3.0)]


def repose(image: sitk.Image, degrees: float, axis, shift, slice_mm: float) -> tuple[sitk.Image, callable]:
    """``image`` re-posed (points p of the patient appear at R (p - c) + c + t) on an axis-aligned grid of the same
    in-plane spacing and ``slice_mm`` slices; returns it and the map of world LPS points from the original to it."""
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    a = np.deg2rad(degrees)
    rot = np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * (k @ k)
    size, spacing = np.asarray(image.GetSize()), np.asarray(image.GetSpacing())
    centre = np.asarray(image.TransformContinuousIndexToPhysicalPoint(((size - 1) / 2.0).tolist()))
    t = np.asarray(shift, float)
    to_patient = sitk.AffineTransform(3)
    to_patient.SetMatrix(tuple(rot.T.ravel()))
    to_patient.SetTranslation(tuple(centre - rot.T @ (centre + t)))
    # like a second scan of the patient: the slices follow the shifted chest, and none reaches beyond the scanned
    # volume (air there would join the lungs to the outside)
    extent = (size[2] - 1) * spacing[2]
    trim = np.sin(np.arccos(np.clip(rot[2, 2], -1.0, 1.0))) * size[0] * spacing[0] / 2.0 + 2.0
    ref = sitk.Image([int(size[0]), int(size[1]), int((extent - 2.0 * trim) / slice_mm) + 1], sitk.sitkInt16)
    ref.SetSpacing((float(spacing[0]), float(spacing[1]), float(slice_mm)))
    ref.SetOrigin(tuple(float(v) for v in np.asarray(image.GetOrigin()) + [0.0, 0.0, t[2] + trim]))
    out = sitk.Resample(image, ref, to_patient, sitk.sitkLinear, -1024.0, sitk.sitkInt16)
    return out, (lambda p: rot @ (np.asarray(p, float) - centre) + centre + t)


def run(args, prior: Path, current: Path, out: Path, findings: Path) -> tuple[float, dict]:
    cmd = [sys.executable, "-m", "monai_lung", "followup", "--prior", str(prior), "--current", str(current),
           "--current-date", "2001-01-01", "--det-bundle", str(args.det_bundle), "--output-dir", str(out),
           "--findings-dir", str(findings), "--device", "cpu", "--no-report", *sum((["--set", s] for s in args.set), [])]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, encoding="utf-8", errors="replace")
    seconds = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    return seconds, json.loads((out / "followup.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--det-bundle", type=Path, required=True)
    ap.add_argument("--real-ct", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared" / "real_ct")
    ap.add_argument("--poses", type=int, default=3)
    ap.add_argument("--work", type=Path, default=Path("/tmp/real_followup"))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()
    series = args.real_ct / "LIDC-IDRI-0001" / "dicom"
    image = read_sitk_image(series)
    args.work.mkdir(parents=True, exist_ok=True)
    rows = []
    for n, (deg, axis, shift, step) in enumerate(POSES[: args.poses]):
        current_path = args.work / f"pose{n}.mha"
        current, pose = repose(image, deg, axis, shift, step)
        sitk.WriteImage(current, str(current_path))
        cache = args.work / f"findings{n}"
        cold, result = run(args, series, current_path, args.work / f"out{n}", cache)
        warm, again = run(args, series, current_path, args.work / f"out{n}_again", cache)
        table = pd.read_csv(args.work / f"out{n}" / "followup.csv")
        nodule = table[np.linalg.norm(table[["prior_x", "prior_y", "prior_z"]].to_numpy(float) - LUNA16_CENTRE, axis=1) < 12.0]
        detect = result["timings_s"]["detect_prior"] + result["timings_s"]["detect_current"]
        rest = result["timings_s"]["total"] - detect
        print(f"pose {n}: {deg} deg, shift {shift} mm, {step} mm slices; residual {result['registration']['residual_mm']} mm; "
              f"{len(table)} rows ({result['counts']}), exam Lung-RADS {result['exam']['category']}")
        print(f"  time: command {cold:.1f} s wall (detections {detect:.1f} s, comparison {rest:.1f} s inside it); with the "
              f"findings reused {warm:.1f} s wall (comparison {again['timings_s']['total']:.1f} s, "
              f"{again['timings_s']['comparison_cpu']:.1f} CPU s)")
        if nodule.empty:
            print("  the LUNA16 nodule is not among the reported nodules")
            continue
        r = nodule.iloc[0]
        detail = next(d for d in result["nodules"] if d["prior_x"] == r["prior_x"])
        moved = np.linalg.norm(np.array([r.current_x, r.current_y, r.current_z]) - pose(LUNA16_CENTRE))
        print(f"  LUNA16 nodule: status {r.status}; volume {r.prior_volume_mm3:.0f} -> {r.current_volume_mm3:.0f} mm3 "
              f"({r.volume_change_pct:+.1f} %), mean diameter {r.prior_mean_diameter_mm} -> {r.current_mean_diameter_mm} mm; "
              f"type {detail['prior']['type']} / {detail['current']['type']}; current centre {moved:.1f} mm from the posed truth")
        rows.append((r.status, r.volume_change_pct, detail["prior"]["type"], detail["current"]["type"], cold, rest,
                     again["timings_s"]["comparison_cpu"]))
    if rows:
        changes = np.array([v for _, v, *_ in rows], float)
        print(f"\nrepeatability on real CT: {sum(s == 'stable' for s, *_ in rows)}/{len(rows)} stable; volume difference "
              f"mean {changes.mean():+.1f} %, largest |{np.abs(changes).max():.1f}| %")
        print(f"followup time: median {np.median([r[4] for r in rows]):.1f} s per command (comparison beyond the two detections: "
              f"median {np.median([r[5] for r in rows]):.1f} s wall, {np.median([r[6] for r in rows]):.1f} CPU s)")
    readers = read_lidc_readers(args.real_ct / "LIDC-IDRI-0001" / "lidc_readers.xml")
    textures = sorted(r["characteristics"].get("texture") for r in readers)
    calcification = sorted(r["characteristics"].get("calcification") for r in readers)
    ours = sorted({t for row in rows for t in row[2:4]})
    median = float(np.median(textures))
    readers_type = "non-solid" if median <= 2 else ("solid" if median >= 4 else "part-solid")
    print(f"LIDC texture check: readers' texture {textures} (median {median:g}: {readers_type}), calcification {calcification} "
          f"(6 absent); ours {ours} (texture {[TEXTURE[t] for t in ours]}): {'agrees' if ours == [readers_type] else 'DISAGREES'}")


if __name__ == "__main__":
    main()
