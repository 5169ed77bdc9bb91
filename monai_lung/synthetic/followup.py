"""Phantom follow-up pairs: one synthetic patient scanned twice, with nodules that stayed, grew, shrank, went or came.

:func:`generate_pair` draws a chest (screening nodule mix) on a fine grid (1 mm slices), then makes two scans of it:

- the **prior**: the patient as drawn, sampled at one slice step (:data:`~.geometry.SLICE_SPACINGS_MM`);
- the **current**: the patient re-posed (rotated by :data:`ROTATION_DEG` about a random axis through the chest's
  centre, shifted by :data:`SHIFT_MM`), sampled at another slice step, on the same kind of axis-aligned grid
  following the chest (its z range shifted with it, trimmed so that no slice reaches beyond the drawn chest).

Each sampling averages over the slice's thickness (a Gaussian along z of 0.4 slice steps before sampling), then the
generator's own point-spread and noise (:func:`~.scan.finish`, drawn afresh: re-noised). The prior's nodules each
stay (``stable``), grow (diameter x :data:`GROWTH`), shrink (x :data:`SHRINKAGE`) or go (``resolved``), with
:data:`STATUS_PROBS`; calcified ones stay; the current scan also gets ``new`` nodules. Dates: the prior on a drawn
day, the current :data:`INTERVAL_DAYS` later.

Truth (world LPS mm, each scan's own frame): per nodule its status, kind, centre, diameter, volume and solid-core
volume in each scan where it is present. Volumes count the drawn shape's share of each voxel of lung (a
juxta-pleural nodule's part in the chest wall is not visible, so not counted).
"""

from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from monai_lung.io.atomic import write_image_atomic, write_json_atomic
from monai_lung.synthetic.anatomy import LUNG
from monai_lung.synthetic.geometry import SLICE_SPACINGS_MM, ScanGeometry, random_seriesuid, sample_geometry
from monai_lung.synthetic.nodules import Nodule, Placer, place_nodules
from monai_lung.synthetic.scan import HU_MIN, draw_nodules, finish, render_chest, sample_chest
from monai_lung.synthetic.shapes import Canvas

ROTATION_DEG = (2.0, 6.0)
SHIFT_MM = (10.0, 30.0)
STATUS_PROBS = {"stable": 0.4, "grown": 0.25, "shrunk": 0.15, "resolved": 0.2}
GROWTH = (1.25, 1.6)  # diameter factor: volume x 2 to 4
SHRINKAGE = (0.6, 0.8)  # diameter factor: volume x 0.2 to 0.5
INTERVAL_DAYS = (90, 730)
FINE_SLICE_MM = 1.0
TYPE_OF_KIND = {"ground_glass": "non-solid", "part_solid": "part-solid"}  # every other kind is solid


@dataclass
class FollowupPair:
    """Two scans of one phantom patient: ``prior``/``current`` int16 HU ``sitk.Image`` (identity direction, world
    LPS), their dates (``datetime.date``), and ``truth`` (module docstring; JSON-ready)."""

    prior: sitk.Image
    current: sitk.Image
    prior_date: dt.date
    current_date: dt.date
    truth: dict


def _rotation(rng: np.random.Generator, degrees: float) -> np.ndarray:
    axis = rng.standard_normal(3)
    axis /= np.linalg.norm(axis)
    k = np.array([[0.0, -axis[2], axis[1]], [axis[2], 0.0, -axis[0]], [-axis[1], axis[0], 0.0]])
    angle = np.deg2rad(degrees)
    return np.eye(3) + np.sin(angle) * k + (1.0 - np.cos(angle)) * (k @ k)


def _scaled(nd: Nodule, factor: float) -> Nodule:
    """``nd`` grown or shrunk about its centre by ``factor`` (diameter, spicules and inner blobs alike)."""
    spicules = [(nd.centre + factor * (a - nd.centre), nd.centre + factor * (b - nd.centre), r0, r1) for a, b, r0, r1 in nd.spicules]
    inner = [(nd.centre + factor * (c - nd.centre), r * factor, hu, edge) for c, r, hu, edge in nd.inner]
    extra = {k: (v * factor if k == "solid_diameter_mm" else v) for k, v in nd.extra.items()}
    return replace(nd, diameter=float(np.round(max(nd.diameter * factor, 3.0), 2)), spicules=spicules, inner=inner, extra=extra)


def _visible_volume(canvas: Canvas, nd: Nodule) -> tuple[float, float]:
    """(volume, solid-core volume) mm^3 of a nodule's shape in the lung voxels of ``canvas`` (fine grid)."""
    voxel = float(np.prod(canvas.spacing))

    def share(centre, radius, edge, lobes=None, amps=None) -> float:
        drawn = canvas.blob_alpha(centre, radius, edge, lobes, amps)
        if drawn is None:
            return 0.0
        box, alpha = drawn
        return float((alpha * (canvas.labels[box] == LUNG)).sum()) * voxel

    volume = share(nd.centre, 0.5 * nd.diameter, nd.edge_mm, nd.lobes, nd.lobe_amp)
    core = sum(share(c, r, e) for c, r, _, e in nd.inner) if nd.kind == "part_solid" else 0.0
    return volume, core


def _sample(volume: np.ndarray, fine: ScanGeometry, target: ScanGeometry, transform: sitk.Transform | None) -> np.ndarray:
    """The fine (z, y, x) float32 HU volume seen on the ``target`` grid: averaged over the slice thickness (Gaussian
    along z, 0.4 slice steps), then sampled linearly at the target's voxel centres mapped by ``transform`` (target
    world -> fine world; None: identity)."""
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing(tuple(float(v) for v in fine.spacing_xyz))
    image.SetOrigin(tuple(float(v) for v in fine.origin_xyz))
    sigma = 0.4 * target.spacing_xyz[2]
    if sigma > 0.5 * fine.spacing_xyz[2]:
        image = sitk.RecursiveGaussian(image, sigma=sigma, direction=2)
    reference = sitk.Image([int(v) for v in target.shape_zyx[::-1]], sitk.sitkFloat32)
    reference.SetSpacing(tuple(float(v) for v in target.spacing_xyz))
    reference.SetOrigin(tuple(float(v) for v in target.origin_xyz))
    out = sitk.Resample(image, reference, transform or sitk.Transform(), sitk.sitkLinear, float(HU_MIN), sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out)


def _image(arr: np.ndarray, geom: ScanGeometry) -> sitk.Image:
    image = sitk.GetImageFromArray(arr)
    image.SetSpacing(tuple(float(v) for v in geom.spacing_xyz))
    image.SetOrigin(tuple(float(v) for v in geom.origin_xyz))
    return image


def generate_pair(rng: np.random.Generator, size: int = 512, mean_nodules: float = 2.5, mean_new: float = 1.0) -> FollowupPair:
    """One phantom follow-up pair (module docstring), everything random from ``rng``. ``size``: the in-plane matrix
    (as :func:`~.scan.generate_scan`); ``mean_nodules``/``mean_new``: Poisson means of the prior's and the new nodules."""
    patient = random_seriesuid(rng)
    drawn = sample_geometry(rng, size)
    steps = rng.choice(SLICE_SPACINGS_MM, size=2, replace=False)
    fine = ScanGeometry((int(round((drawn.shape_zyx[0] - 1) * drawn.spacing_xyz[2] / FINE_SLICE_MM)) + 1, size, size),
                        (drawn.spacing_xyz[0], drawn.spacing_xyz[1], FINE_SLICE_MM), drawn.origin_xyz)
    extent = (fine.shape_zyx[0] - 1) * FINE_SLICE_MM
    anat, vessels, airways, tubes = sample_chest(rng, fine)
    placer = Placer(rng, anat, tubes, vessels)
    before = []
    while not before:  # a pair with nothing to compare says little
        before, _ = place_nodules(rng, anat, vessels, tubes, mean_count=mean_nodules, mix="screening", placer=placer)
    statuses = list(STATUS_PROBS)
    changes = [("stable" if nd.kind == "calcified" else str(rng.choice(statuses, p=list(STATUS_PROBS.values())))) for nd in before]
    after = []
    for nd, status in zip(before, changes):
        if status == "grown":
            after.append(_scaled(nd, rng.uniform(*GROWTH)))
        elif status == "shrunk":
            after.append(_scaled(nd, rng.uniform(*SHRINKAGE)))
        elif status == "stable":
            after.append(nd)
        else:
            after.append(None)
    new, _ = place_nodules(rng, anat, vessels, tubes, mean_count=mean_new, mix="screening", placer=placer)

    base = render_chest(rng, anat, fine, vessels, airways)
    prior_canvas = Canvas(base.vol.copy(), base.labels, fine)
    draw_nodules(prior_canvas, before)
    draw_nodules(base, [nd for nd in after if nd is not None] + new)

    # the current scan: patient points p appear at q = R (p - c) + c + t
    rotation = _rotation(rng, rng.uniform(*ROTATION_DEG))
    direction = rng.standard_normal(3)
    shift = direction / np.linalg.norm(direction) * rng.uniform(*SHIFT_MM)
    centre = np.asarray(fine.origin_xyz) + 0.5 * (np.asarray(fine.shape_zyx[::-1]) - 1) * np.asarray(fine.spacing_xyz)
    to_patient = sitk.AffineTransform(3)  # q -> p, what resampling the current grid needs
    to_patient.SetMatrix(tuple(rotation.T.ravel()))
    to_patient.SetTranslation(tuple(centre - rotation.T @ (centre + shift)))

    def pose(p):
        return rotation @ (np.asarray(p, dtype=np.float64) - centre) + centre + shift

    # the current scan covers the re-posed chest as the prior covers the chest: its z range follows the shift, less
    # what the tilt takes out of the drawn volume at its ends (no slice may reach beyond the drawn patient)
    fov = size * fine.spacing_xyz[0]
    tilt = float(np.degrees(np.arccos(np.clip(rotation[2, 2], -1.0, 1.0))))
    trim = np.sin(np.radians(tilt)) * fov / 2.0 + 2.0
    grids = [ScanGeometry((int(np.floor(extent / steps[0])) + 1, size, size), (fine.spacing_xyz[0], fine.spacing_xyz[1], float(steps[0])),
                          fine.origin_xyz),
             ScanGeometry((int(np.floor((extent - 2.0 * trim) / steps[1])) + 1, size, size),
                          (fine.spacing_xyz[0], fine.spacing_xyz[1], float(steps[1])),
                          (fine.origin_xyz[0], fine.origin_xyz[1], float(np.round(fine.origin_xyz[2] + shift[2] + trim, 4))))]

    prior = _image(finish(rng, _sample(prior_canvas.vol, fine, grids[0], None), grids[0]), grids[0])
    del prior_canvas
    current = _image(finish(rng, _sample(base.vol, fine, grids[1], to_patient), grids[1]), grids[1])
    prior_date = dt.date(2020, 1, 1) + dt.timedelta(days=int(rng.integers(0, 1500)))
    current_date = prior_date + dt.timedelta(days=int(rng.integers(*INTERVAL_DAYS)))

    def state(nd: Nodule, where) -> dict:
        volume, core = _visible_volume(base, nd)
        return {"coord": [round(float(v), 3) for v in where], "diameter_mm": float(nd.diameter), "volume_mm3": round(volume, 2),
                "solid_volume_mm3": round(core, 2), "type": TYPE_OF_KIND.get(nd.kind, "solid"), **nd.extra}

    nodules = []
    for nd, status, later in zip(before, changes, after):
        nodules.append({"status": status, "kind": nd.kind, "prior": state(nd, nd.centre),
                        "current": None if later is None else state(later, pose(later.centre))})
    nodules += [{"status": "new", "kind": nd.kind, "prior": None, "current": state(nd, pose(nd.centre))} for nd in new]
    truth = {
        "patient": patient, "prior_date": prior_date.isoformat(), "current_date": current_date.isoformat(),
        "interval_days": (current_date - prior_date).days, "slice_spacing_mm": [float(s) for s in steps],
        "rotation": [[round(float(v), 6) for v in row] for row in rotation], "shift_mm": [round(float(v), 3) for v in shift],
        "centre_mm": [round(float(v), 3) for v in centre],
        "coordinates": "world LPS mm, each scan's own frame; current = rotation (prior - centre) + centre + shift",
        "nodules": nodules,
    }
    return FollowupPair(prior, current, prior_date, current_date, truth)


def generate_pairs(out_dir: str | os.PathLike, num_pairs: int = 4, seed: int = 0, size: int = 512, progress: bool = False) -> list[Path]:
    """Write ``num_pairs`` pairs as ``out_dir/pair_<k>/{prior.mhd, current.mhd, truth.json}``; pair ``k`` is drawn from
    child ``k`` of ``numpy.random.SeedSequence(seed)``. Returns the pair folders."""
    folders = []
    for k, child in enumerate(np.random.SeedSequence(seed).spawn(num_pairs)):
        pair = generate_pair(np.random.default_rng(child), size=size)
        folder = Path(out_dir) / f"pair_{k:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        write_image_atomic(folder / "prior.mhd", pair.prior)
        write_image_atomic(folder / "current.mhd", pair.current)
        write_json_atomic(folder / "truth.json", pair.truth)
        folders.append(folder)
        if progress:
            counts = {}
            for nd in pair.truth["nodules"]:
                counts[nd["status"]] = counts.get(nd["status"], 0) + 1
            print(f"[{k + 1}/{num_pairs}] {folder}: {counts}, {pair.truth['interval_days']} days", flush=True)
    return folders
