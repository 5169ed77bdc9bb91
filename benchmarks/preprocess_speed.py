"""Preprocessing cost of one default-size scan: our SimpleITK reader (resampling while reading) against
MONAI's LoadImaged + Orientationd + Spacingd on the float tensor. Each path runs in a fresh process so
that its peak RSS is its own.

    python benchmarks/preprocess_speed.py [--scan SCAN.mhd] [--spacing 1.0]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
import numpy as np
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Orientationd, Spacingd
from monai_lung.io import SimpleITKReader
path, mode, spacing = sys.argv[1], sys.argv[2], float(sys.argv[3])
pix = (spacing,) * 3
reader = SimpleITKReader(spacing=pix) if mode == "reader" else SimpleITKReader()
chain = Compose([LoadImaged("image", reader=reader), EnsureChannelFirstd("image"),
                 Orientationd("image", axcodes="RAS", labels=None), Spacingd("image", pixdim=pix, mode="bilinear")])
t = time.perf_counter()
out = chain({"image": path})["image"]
print(json.dumps({"mode": mode, "seconds": time.perf_counter() - t, "shape": list(out.shape),
                  "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2}))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scan", type=Path)
    p.add_argument("--spacing", type=float, default=1.0)
    args = p.parse_args()
    scan = args.scan
    if scan is None:
        import numpy as np

        from monai_lung.io import write_image_atomic
        from monai_lung.synthetic import generate_scan

        s = generate_scan(np.random.default_rng(5), size=512)
        scan = Path(tempfile.mkdtemp()) / f"{s.seriesuid}.mhd"
        write_image_atomic(scan, s.image)
    for mode in ("reader", "spacingd"):
        out = subprocess.run([sys.executable, "-c", CHILD, str(scan), mode, str(args.spacing)], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        label = "SimpleITKReader(spacing) + Orientationd + Spacingd (no-op)" if mode == "reader" else "LoadImaged + Orientationd + Spacingd (MONAI resampling)"
        print(f"{label:<60} {r['seconds']:6.2f} s   peak RSS {r['peak_rss_gb']:.2f} GB   output {r['shape']}")


if __name__ == "__main__":
    main()
