"""Nodule type and calcification on screening-mix phantoms of known kind: the check behind the type rule's threshold.

Each phantom (``generate_scan(..., nodule_mix="screening")``: solid, juxta-pleural, juxta-vascular, ground-glass,
part-solid and calcified nodules) is measured at its truth centres and diameters with
:func:`monai_lung.clinical.findings.describe_finding` (no detector: the rule alone). Prints the type accuracy per
drawn kind, each miss, whether calcified nodules are called calcified (and others not), and the real ground-glass
share (``ground_glass_fraction``) of solid nodules (largest) and of part-solid ones with a ground-glass rim of 2 mm
or more (smallest): the type rule's threshold (``composition.GROUND_GLASS_FRACTION``) must lie between them.

    python benchmarks/nodule_type.py [--seeds 100-139] [--size 512] [--cache /tmp/nodule_type]
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from monai_lung.clinical.composition import GROUND_GLASS_FRACTION
from monai_lung.clinical.ct import ScanCT
from monai_lung.clinical.findings import describe_finding
from monai_lung.clinical.location import find_lungs
from monai_lung.synthetic import generate_scan

#: the type each drawn kind must get (the others are solid)
EXPECTED = {"part_solid": "part-solid", "ground_glass": "non-solid"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="100-139", help="first-last phantom seeds")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/nodule_type"), help="phantoms kept here between runs")
    args = ap.parse_args()
    first, last = (int(v) for v in args.seeds.split("-"))
    args.cache.mkdir(parents=True, exist_ok=True)
    right, misses, solid_gg, part_gg, calcified = defaultdict(list), [], [], [], {"hit": 0, "n": 0, "false": 0}
    for seed in range(first, last + 1):
        path = args.cache / f"screening_{args.size}_{seed}.mha"
        if not path.is_file():
            scan = generate_scan(np.random.default_rng(seed), size=args.size, nodule_mix="screening")
            sitk.WriteImage(scan.image, str(path))
            path.with_suffix(".json").write_text(json.dumps(scan.nodules))
        nodules = json.loads(path.with_suffix(".json").read_text())
        if not nodules:
            continue
        ct = ScanCT(sitk.ReadImage(str(path)))
        lungs = find_lungs(*ct.coarse())
        for nd in nodules:
            c = describe_finding(ct, lungs, nd["coord_xyz"], nd["diameter_mm"]).composition
            expected = EXPECTED.get(nd["kind"], "solid")
            right[nd["kind"]].append(c.type == expected)
            if c.type != expected:
                misses.append(f"seed {seed}: {nd['kind']} {nd['diameter_mm']:.1f} mm (solid part {nd.get('solid_diameter_mm') or 0:.1f} mm) "
                              f"typed {c.type}, ground glass {100 * c.ground_glass_fraction:.1f} %")
            if expected == "solid":
                solid_gg.append(c.ground_glass_fraction)
            elif nd["kind"] == "part_solid" and nd["diameter_mm"] - nd["solid_diameter_mm"] >= 4.0:  # a rim of 2 mm or more
                part_gg.append(c.ground_glass_fraction)
            if nd["kind"] == "calcified":
                calcified["n"] += 1
                calcified["hit"] += bool(c.calcified)
            else:
                calcified["false"] += bool(c.calcified)
    total = sum(len(v) for v in right.values())
    print(f"screening-mix phantoms, seeds {first}-{last}, size {args.size}: {total} nodules at their truth centres")
    for kind, hits in sorted(right.items()):
        print(f"  {kind:15s} typed right {sum(hits)}/{len(hits)}")
    print(f"type accuracy: {sum(sum(v) for v in right.values())}/{total}")
    for line in misses:
        print(f"  miss: {line}")
    print(f"calcified: {calcified['hit']}/{calcified['n']} found; {calcified['false']} others called calcified")
    if solid_gg and part_gg:
        print(f"real ground-glass share: solid nodules at most {100 * max(solid_gg):.1f} % (n={len(solid_gg)}); part-solid with a "
              f"rim of 2 mm or more at least {100 * min(part_gg):.1f} % (n={len(part_gg)}); threshold {100 * GROUND_GLASS_FRACTION:g} %")


if __name__ == "__main__":
    main()
