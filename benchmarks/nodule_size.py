"""Nodule size error: phantoms of known size (solid, part-solid, juxta-pleural; 3-30 mm) and the real LIDC-IDRI-0001
nodule against its four LIDC readers.

The measured mask is :func:`monai_lung.detection.sizing.refine_mask` from a stage-1-like component: the phantom's
nodule shrunk by ``--shrink`` mm (positive: a component inside the edge; negative: one reaching into the lung), or
the readers' 2-of-4 consensus shrunk the same way. Prints one row per phantom and the readers' and our sizes.

    python benchmarks/nodule_size.py [--shrink 1.0] [--real-ct ../shared/real_ct]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from monai_lung.detection.sizing import measure_mask, refine_mask
from monai_lung.dicom.series import choose_series
from monai_lung.io.lidc_xml import outline_mask, read_lidc_readers
from monai_lung.synthetic.size_phantom import SIZE_PHANTOM_KINDS, phantom_seed, size_phantom

LUNA16_CENTRE = np.array([56.20840547, 86.34341278, -115.8675792])
LUNA16_DIAMETER = 23.35064438


def phantoms(shrinks, repeats: int) -> None:
    print("kind           d_mm  seed_shrink  ESD err % (mean, worst)  volume err % (mean, worst)  longest axial err mm (mean, worst)")
    for kind in SIZE_PHANTOM_KINDS:
        for d in (3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 12.0, 15.0, 20.0, 25.0, 30.0):
            for shrink in shrinks:
                esd, vol, ax = [], [], []
                for r in range(repeats):
                    ph = size_phantom(kind, d, rng=np.random.default_rng(1000 * r + int(10 * d)))
                    mask, _ = refine_mask(ph["hu"], ph["affine"], phantom_seed(ph, shrink))
                    got = measure_mask(mask, ph["affine"])
                    esd.append(100 * (got["diameter_mm"] / ph["diameter_mm"] - 1))
                    vol.append(100 * (got["volume_mm3"] / ph["volume_mm3"] - 1))
                    ax.append(got["longest_axial_mm"] - ph["longest_axial_mm"])

                def stat(v):
                    v = np.asarray(v)
                    return f"{v.mean():+6.1f} {v[np.argmax(np.abs(v))]:+6.1f}"

                print(f"{kind:14s} {d:4.0f}  {shrink:+5.1f}        {stat(esd)}               {stat(vol)}                  {stat(ax)}")


def lidc(real_ct: Path, shrink: float) -> None:
    info, _ = choose_series(real_ct / "LIDC-IDRI-0001" / "dicom")
    z = np.array([float(ds.ImagePositionPatient[2]) for ds in info.datasets])
    masks = []
    print("\nLIDC-IDRI-0001, LUNA16 nodule (LUNA16 diameter 23.4 mm); sizes on the series' own grid")
    for nodule in read_lidc_readers(real_ct / "LIDC-IDRI-0001" / "lidc_readers.xml"):
        sizes = []
        for edge in (False, True):
            m = outline_mask(nodule["rois"], z, 512, 512, include_edge=edge).transpose(2, 1, 0)
            centre = info.affine[:3, :3] @ np.argwhere(m).mean(axis=0) + info.affine[:3, 3]
            if np.linalg.norm(centre - LUNA16_CENTRE) > LUNA16_DIAMETER / 2:
                break
            sizes.append(measure_mask(m, info.affine))
            if not edge:
                masks.append(m)
        if sizes:
            a, b = sizes
            print(f"reader {nodule['reader']}: volume {a['volume_mm3']:7.0f} mm3 ({b['volume_mm3']:7.0f} with the outline's pixels), "
                  f"ESD {a['diameter_mm']:5.1f} mm ({b['diameter_mm']:5.1f}), longest axial {a['longest_axial_mm']:5.1f} mm ({b['longest_axial_mm']:5.1f})")
    consensus = np.sum(masks, axis=0) >= 2
    c = measure_mask(consensus, info.affine)
    print(f"2-of-4 consensus: volume {c['volume_mm3']:7.0f} mm3, ESD {c['diameter_mm']:5.1f} mm, longest axial {c['longest_axial_mm']:5.1f} mm")
    hu = sitk.GetArrayFromImage(sitk.ReadImage([str(f) for f in info.files])).transpose(2, 1, 0).astype(np.float32)
    spacing = np.linalg.norm(info.affine[:3, :3], axis=0)
    for s in sorted({shrink, 0.0, 2.0}):
        seed = ndimage.distance_transform_edt(consensus, sampling=spacing) > s if s > 0 else consensus
        mask, threshold = refine_mask(hu, info.affine, seed)
        o = measure_mask(mask, info.affine)
        print(f"ours from the consensus shrunk {s:.1f} mm (threshold {threshold:.0f} HU): volume {o['volume_mm3']:7.0f} mm3, "
              f"ESD {o['diameter_mm']:5.1f} mm, longest axial {o['longest_axial_mm']:5.1f} mm")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shrink", type=float, default=1.0, help="mm the stage-1-like seed lies inside the nodule's edge")
    p.add_argument("--repeats", type=int, default=3, help="phantoms per kind and size (noise and sub-voxel position)")
    p.add_argument("--real-ct", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared" / "real_ct")
    args = p.parse_args()
    phantoms((args.shrink, -args.shrink), args.repeats)
    if (args.real_ct / "LIDC-IDRI-0001").is_dir():
        lidc(args.real_ct, args.shrink)


if __name__ == "__main__":
    main()
