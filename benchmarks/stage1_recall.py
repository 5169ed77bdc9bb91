"""Stage-1 recall benchmark: share of test nodules that the UNet's candidates find, and candidates per scan.

    python benchmarks/stage1_recall.py --bundle bundles/lung_nodule_ct_segmentation \
        --data-dir demo_output/data --datalist data_lists/demo_fold0.json --key test

A nodule is found when a candidate's centre lies within its radius (the LUNA16 hit rule), candidates
being the connected components of the lung-gated sliding-window probability map (threshold, minimum
size and near-duplicate merging as the detector does them). Prints one line per scan and a summary.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from monai_lung.datalist import load_datalist_entries
from monai_lung.detection.candidates import extract_candidates
from monai_lung.detection.detector import DetectorConfig, merge_close_candidates
from monai_lung.detection.loading import stage_network
from monai_lung.detection.segment import segment_probability
from monai_lung.transforms import ct_preprocessing, lung_mask, nodule_arrays


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", required=True)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--datalist", required=True)
    p.add_argument("--key", default="test")
    p.add_argument("--threshold", type=float, default=DetectorConfig.seg_threshold)
    p.add_argument("--min-voxels", type=int, default=DetectorConfig.min_voxels)
    p.add_argument("--roi", type=int, default=96)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    network = stage_network(args.bundle).eval()
    prep = ct_preprocessing()
    cfg = DetectorConfig()
    found = total = 0
    comps, seconds = [], []
    for entry in load_datalist_entries(args.datalist, args.key, args.data_dir):
        t = time.perf_counter()
        image = prep({"image": entry["image"]})["image"]
        lung = lung_mask(image, (1.0, 1.0, 1.0))
        prob = segment_probability(network, image, lung, roi_size=(args.roi,) * 3, sw_batch_size=4)
        cands = extract_candidates(prob, image.affine.numpy(), args.threshold, args.min_voxels, max_candidates=None)
        cands = merge_close_candidates(cands, cfg.merge_distance_mm)
        seconds.append(time.perf_counter() - t)
        centres, diameters = nodule_arrays(entry["nodules"])
        pts = cands[["coordX", "coordY", "coordZ"]].to_numpy()
        hits = 0
        for c, d in zip(centres, diameters):
            if len(pts) and np.min(np.linalg.norm(pts - c, axis=1)) <= d / 2:
                hits += 1
        found, total = found + hits, total + len(centres)
        comps.append(len(cands))
        print(f"{entry['seriesuid']}: nodules {hits}/{len(centres)} found, {len(cands)} candidates, {seconds[-1]:.1f} s")
    print(
        f"stage-1 recall {found}/{total} = {found / max(total, 1):.3f}; candidates per scan mean {np.mean(comps):.1f}, "
        f"max {max(comps)}; {np.mean(seconds):.1f} s per scan (threshold {args.threshold}, roi {args.roi})"
    )


if __name__ == "__main__":
    main()
