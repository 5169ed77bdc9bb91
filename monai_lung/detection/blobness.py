"""How blob-like the scan is at each stage-1 candidate: a multi-scale Hessian "dot" filter, for ranking.

Stage 1 alone must keep a scan's real nodules among its first few dozen candidates. Its own scores
(``shape_score``) rank a small nodule pressed against a vessel behind bits of the vessel tree: the UNet
scores the pair as one structure. In the CT itself a nodule is a bright blob (curvature strong in all three
directions) where a vessel is a tube (strong in two) and the pleura a plate (one). The dot filter of Li,
Sone and Doi (Med. Phys. 30(8), 2003) measures exactly that from the Hessian's eigenvalues; here it is
evaluated on a small crop around each candidate, so it costs milliseconds per candidate instead of a
whole-volume multi-scale filtering.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import ndimage

#: Gaussian scales (mm) of the dot filter: blobs of about 3-10 mm across (sigma ~ radius / sqrt(3)).
DOT_SIGMAS_MM = (1.0, 1.5, 2.2, 3.0)


def dot_response(
    image: np.ndarray,
    centre_ijk: Sequence[float],
    spacing_mm: Sequence[float],
    radius_mm: float = 1.5,
    sigmas_mm: Sequence[float] = DOT_SIGMAS_MM,
) -> float:
    """Strongest bright-blob (dot) response of ``image`` within ``radius_mm`` of one point.

    Args:
        image: (i, j, k) float intensities, brighter = denser (e.g. the scaled CT in [0, 1]).
        centre_ijk: (3,) continuous voxel index of the point on ``image``'s grid.
        spacing_mm: (3,) mm per voxel along (i, j, k); anisotropic grids are handled (sigmas and derivatives
            in mm).
        radius_mm: voxels within this distance of the point (at least the nearest one) are searched.
        sigmas_mm: Gaussian scales; each scale's Hessian is normalised by sigma^2 so that scales compare.

    Returns:
        max over the scales and searched voxels of ``|l3|**2 / |l1|`` where all three Hessian eigenvalues
        are negative (``|l1| >= |l2| >= |l3|``), else 0: large for a bright ball, near 0 for a tube (``l3 ~
        0``) or a plate, 0 for anything dark. Units: intensity (scale-normalised second derivative).
    """
    spacing = np.asarray(spacing_mm, dtype=np.float64)
    centre = np.asarray(centre_ijk, dtype=np.float64)
    if image.ndim != 3 or spacing.shape != (3,) or centre.shape != (3,):
        raise ValueError(f"dot_response: image must be (i, j, k) with (3,) centre and spacing, got {image.shape}, {centre.shape}, {spacing.shape}")
    # a crop that holds the largest Gaussian's 3-sigma reach around every searched voxel
    half = np.ceil((3.0 * max(sigmas_mm) + radius_mm) / spacing).astype(int) + 1
    nearest = np.clip(np.round(centre).astype(int), 0, np.asarray(image.shape) - 1)
    lo = np.maximum(nearest - half, 0)
    hi = np.minimum(nearest + half + 1, image.shape)
    crop = np.asarray(image[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]], dtype=np.float32)
    offsets_mm = [(np.arange(lo[a], hi[a]) - centre[a]) * spacing[a] for a in range(3)]
    dist2 = sum(np.meshgrid(*[o**2 for o in offsets_mm], indexing="ij"))
    near = dist2 <= radius_mm**2
    near[tuple(nearest - lo)] = True  # a radius smaller than the voxels still searches one
    best = 0.0
    for sigma in sigmas_mm:
        hessian = np.empty((int(near.sum()), 3, 3), dtype=np.float64)
        for a in range(3):
            for b in range(a, 3):
                order = [0, 0, 0]
                order[a] += 1
                order[b] += 1
                d = ndimage.gaussian_filter(crop, sigma / spacing, order=order, mode="nearest")[near]
                # voxel-index derivatives -> per mm^2, then sigma^2 normalisation
                hessian[:, a, b] = hessian[:, b, a] = d * sigma**2 / (spacing[a] * spacing[b])
        eig = np.linalg.eigvalsh(hessian)  # ascending: eig[:, 2] is the largest
        blob = eig[:, 2] < 0
        if blob.any():
            mag = np.abs(eig[blob])  # per row: |l1| >= |l2| >= |l3|
            best = max(best, float(np.max(mag[:, 2] ** 2 / mag[:, 0])))
    return best


def rank_by_blobness(
    candidates: pd.DataFrame,
    image: np.ndarray,
    spacing_mm: Sequence[float],
    top_k: int = 200,
    weight: float = 20.0,
    sigmas_mm: Sequence[float] = DOT_SIGMAS_MM,
) -> pd.DataFrame:
    """Candidates ordered by ``blob_score = shape_score * (1 + weight * dot)``, best first.

    Args:
        candidates: :func:`~monai_lung.detection.candidates.extract_candidates`' frame for ``image``'s grid
            (its ``index_i/j/k`` are voxel indices on that grid).
        image: (i, j, k) scaled CT the probability map was computed on (same grid).
        spacing_mm: (3,) mm per voxel of that grid.
        top_k: only the ``top_k`` best by ``shape_score`` are measured and reordered; the rest follow them in
            ``shape_score`` order with ``dot`` NaN (each measurement is a few ms, and a scan has hundreds of
            candidates).
        weight: how much blobness counts; 0 keeps the ``shape_score`` order. A nodule's ``dot`` is ~0.05-0.15
            on the scaled [0, 1] CT (lung window), a vessel segment's mostly below 0.03.
        sigmas_mm: scales of :func:`dot_response`.

    Returns:
        A copy with columns ``dot`` and ``blob_score`` (``shape_score`` where not measured, placed after the
        measured rows), re-indexed from 0 in rank order.
    """
    frame = candidates.sort_values("shape_score", ascending=False, kind="stable").reset_index(drop=True)
    frame["dot"] = np.nan
    measured = frame.index[: max(int(top_k), 0)]
    for row in measured:
        centre = frame.loc[row, ["index_i", "index_j", "index_k"]].to_numpy(dtype=np.float64)
        # search the component's own extent (its centre of mass can sit on the nodule's edge by a vessel),
        # up to 6 mm: the crop, and the cost, grow with the radius
        radius = min(max(1.5, 0.5 * float(frame.loc[row, "diameter_mm"])), 6.0)
        frame.loc[row, "dot"] = dot_response(image, centre, spacing_mm, radius_mm=radius, sigmas_mm=sigmas_mm)
    head = frame.loc[measured].copy()
    head["blob_score"] = head["shape_score"] * (1.0 + weight * head["dot"])
    tail = frame.drop(index=measured).copy()
    tail["blob_score"] = tail["shape_score"]
    head = head.sort_values("blob_score", ascending=False, kind="stable")
    return pd.concat([head, tail]).reset_index(drop=True)
