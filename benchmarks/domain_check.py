"""The domain check of scans, without a model: what each scan's header, DICOM series and lungs say against the
validated range (:mod:`monai_lung.domain`), as ``monai-lung detect`` records it in each scan's result.

    python benchmarks/domain_check.py                       # the shared real scans of ../shared/real_ct
    python benchmarks/domain_check.py scan.mhd dicom_dir/   # your own (files or DICOM series folders)

The lungs are the detector's (:func:`monai_lung.stage1.stage1_lung_masks` on its stage-1 grid, the lesions lying in
them kept); a DICOM folder's chosen series adds its slice thickness, kernel and contrast agent. Prints per scan the
facts and the verdict with its reasons.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

REAL = Path(__file__).resolve().parents[1] / ".." / "shared" / "real_ct"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("scans", nargs="*", type=Path, help="scan files or DICOM series folders (default: ../shared/real_ct)")
    args = p.parse_args()

    from monai_lung.detection.detector import DetectorConfig
    from monai_lung.dicom.series import choose_series
    from monai_lung.domain import dicom_facts, scan_domain
    from monai_lung.io.coords import voxel_spacing
    from monai_lung.stage1 import stage1_lung_masks
    from monai_lung.transforms.preprocessing import ct_preprocessing
    from monai_lung.transforms.zoom import zoom_to_spacing

    scans = args.scans or [REAL / "LIDC-IDRI-0001" / "dicom", REAL / "abdomen_ct_3mm.nii.gz"]
    cfg = DetectorConfig()
    preprocess = ct_preprocessing(hu_window=cfg.hu_window)
    for scan in scans:
        t = time.perf_counter()
        known = dicom_facts(choose_series(scan)[0].datasets) if Path(scan).is_dir() else {}
        image = preprocess({"image": str(scan)})["image"]
        grid = zoom_to_spacing(image, cfg.seg_spacing)
        _, _, lungs = stage1_lung_masks(grid, voxel_spacing(grid), cfg, candidates=False, lungs=True)
        check = scan_domain(image, lungs, grid.affine.numpy(), known)
        facts = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in check.facts.as_dict().items() if v is not None}
        print(f"{scan}\n  facts: {facts}\n  {check.summary()}\n  ({time.perf_counter() - t:.1f} s)")


if __name__ == "__main__":
    main()
