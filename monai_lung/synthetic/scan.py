"""One synthetic chest CT: anatomy, airways, vessels, nodules, candidates, then blur, noise and int16 HU.

See :mod:`monai_lung.synthetic` for the model and the geometry choices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from monai_lung.synthetic.anatomy import (
    AIRWAY,
    AIRWAY_WALL,
    LUNG,
    MED_FAT,
    NODULE_OK_LUT,
    NUM_LABELS,
    SOFT,
    VESSEL_OK_LUT,
    WALL_LUT,
    Anatomy,
)
from monai_lung.synthetic.geometry import ScanGeometry, random_seriesuid, sample_geometry
from monai_lung.synthetic.masses import MASS_OK_LUT, drawn_mass, place_masses
from monai_lung.synthetic.nodules import Nodule, Placer, place_nodules
from monai_lung.synthetic.shapes import Canvas
from monai_lung.synthetic.vessels import VesselTree, grow_vessels

HU_MIN, HU_MAX = -1024, 3071

_AIRWAY_OK = np.zeros(NUM_LABELS, dtype=bool)
_AIRWAY_OK[[LUNG, MED_FAT, SOFT, AIRWAY, AIRWAY_WALL]] = True


@dataclass
class SyntheticScan:
    """One generated scan.

    Attributes:
        image: SimpleITK int16 image in HU, identity direction; ``sitk.GetArrayFromImage(image)`` is (z, y, x).
        seriesuid: LUNA16-style series UID (the file name without ``.mhd``).
        nodules: ``{"coord_xyz": (x, y, z) world LPS mm, "diameter_mm": float, "kind": str}``, kinds
            ``solid``, ``juxta_pleural``, ``juxta_vascular``, ``ground_glass`` (and, in the screening mix,
            ``part_solid`` with ``solid_diameter_mm`` and ``calcified`` with ``calcification``); diameters in [3, 30] mm.
        excluded: findings under 3 mm, same keys, kind ``small`` (``annotations_excluded.csv``).
        candidates: ``{"coord_xyz": (x, y, z), "class": 0 or 1, "source": "nodule" | "vessel" | "lung" | "wall"}``.
        masses: the masses asked for (:mod:`.masses`): ``{"coord_xyz" (centroid), "diameter_mm" (equivalent sphere),
            "volume_mm3", "kind": "mass", "location": "central" | "peripheral", "drawn_diameter_mm", "box" ((z, y, x)
            slices), "mask" (bool (z, y, x) within box)}``, the sizes those of what was drawn.
    """

    image: sitk.Image
    seriesuid: str
    nodules: list = field(default_factory=list)
    excluded: list = field(default_factory=list)
    candidates: list = field(default_factory=list)
    masses: list = field(default_factory=list)


# ---------------------------------------------------------------------------------------------- airways
def airway_tree(rng: np.random.Generator, anat: Anatomy, vessels: VesselTree) -> VesselTree:
    """Main bronchi (carina to hila) and lobar/segmental bronchi running beside the first arterial generations.

    Returns the airways as a :class:`VesselTree` whose radii are the outer (wall) radii, world LPS mm.
    """
    p = anat.p
    tx, ty, trad, twall = p["trachea"]
    carina = np.array([tx, ty, p["z_carina"]])
    a, b, r0, r1 = [], [], [], []
    for side in ("R", "L"):
        h = anat.hilum(side) + np.array([0.0, 0.06 * p["Bc"], 0.03 * p["H"]])
        a.append(carina)
        b.append(h)
        r0.append(0.75 * (trad + twall))
        r1.append(0.65 * (trad + twall))
    sel = np.flatnonzero(vessels.artery & (vessels.generation <= 2) & (vessels.r0 >= 1.6))
    for j in sel:
        axis = vessels.b[j] - vessels.a[j]
        axis /= max(np.linalg.norm(axis), 1e-9)
        # a bronchus runs alongside its artery: offset sideways, perpendicular to the artery and to z
        side = np.cross(axis, np.array([0.0, 0.0, 1.0]))
        if np.linalg.norm(side) < 1e-6:
            side = np.array([1.0, 0.0, 0.0])
        side /= np.linalg.norm(side)
        ro0, ro1 = 0.9 * vessels.r0[j], 0.9 * vessels.r1[j]
        off = side * (vessels.r0[j] + ro0 + 0.5)
        a.append(vessels.a[j] + off)
        b.append(vessels.b[j] + off)
        r0.append(ro0)
        r1.append(ro1)
    n = len(a)
    return VesselTree(np.array(a), np.array(b), np.array(r0), np.array(r1), np.zeros(n, int), np.zeros(n, bool), np.zeros(n, bool))


def draw_airways(canvas: Canvas, airways: VesselTree, hu_wall: float, hu_air: float) -> None:
    """Airway walls (brightened to ``hu_wall``) then lumens (darkened to ``hu_air``, HU) on ``canvas``."""
    edge = canvas.spacing[0]
    for i in range(len(airways)):
        canvas.tube(airways.a[i], airways.b[i], airways.r0[i], airways.r1[i], hu_wall, _AIRWAY_OK, edge, "max")
    for i in range(len(airways)):
        w0 = 0.4 + 0.12 * airways.r0[i]
        w1 = 0.4 + 0.12 * airways.r1[i]
        canvas.tube(airways.a[i], airways.b[i], max(airways.r0[i] - w0, 0.3), max(airways.r1[i] - w1, 0.3), hu_air, _AIRWAY_OK, edge, "min")


def _concat(t1: VesselTree, t2: VesselTree) -> VesselTree:
    return VesselTree(*(np.concatenate([getattr(t1, k), getattr(t2, k)]) for k in ("a", "b", "r0", "r1", "generation", "forks", "artery")))


# ---------------------------------------------------------------------------------------------- candidates
def make_candidates(
    rng: np.random.Generator, anat: Anatomy, vessels: VesselTree, nodules: list[Nodule], placer: Placer, size: int
) -> list[dict]:
    """Candidate points: every nodule (class 1) and class-0 points on vessels, in the lung and in the chest wall.

    Vessel points are on centrelines of 1.6 mm+ vessels, half of them at bifurcations; all class-0 points keep
    5 mm (plus the radius) away from nodules. About 20–50 class-0 points at default size, fewer in small scans.
    """
    scale = max(0.3, math.sqrt(size / 512.0))
    n_vessel = int(round(rng.uniform(14, 26) * scale))
    n_lung = int(round(rng.uniform(6, 14) * scale))
    n_wall = int(round(rng.uniform(3, 8) * scale))

    def far_from_nodules(pts: np.ndarray) -> np.ndarray:
        ok = np.ones(len(pts), dtype=bool)
        for nd in nodules:
            ok &= np.linalg.norm(pts - nd.centre[None, :], axis=1) > 0.5 * nd.diameter + 5.0
        return ok

    out = [{"coord_xyz": tuple(float(v) for v in nd.centre), "class": 1, "source": "nodule"} for nd in nodules]

    vessel_pts = np.zeros((0, 3))
    if len(vessels) and n_vessel:
        rm = 0.5 * (vessels.r0 + vessels.r1)
        forks = np.flatnonzero(vessels.forks & (vessels.r1 >= 0.8) & (vessels.r1 <= 4.0))
        mids = np.flatnonzero((rm >= 0.8) & (rm <= 4.0))
        fork_pts = vessels.b[rng.permutation(forks)]
        j = rng.permutation(mids)
        t = rng.uniform(0.2, 0.8, j.size)[:, None]
        mid_pts = vessels.a[j] + t * (vessels.b[j] - vessels.a[j])
        fork_pts = fork_pts[anat.in_lung(fork_pts) & far_from_nodules(fork_pts)] if len(fork_pts) else fork_pts
        mid_pts = mid_pts[anat.in_lung(mid_pts) & far_from_nodules(mid_pts)] if len(mid_pts) else mid_pts
        # about half at bifurcations, half mid-segment; one kind makes up for a lack of the other
        n_fork = min(len(fork_pts), max(n_vessel - len(mid_pts), (n_vessel + 1) // 2))
        vessel_pts = np.concatenate([fork_pts[:n_fork], mid_pts[: n_vessel - n_fork]])
    out += [{"coord_xyz": tuple(float(v) for v in np.round(p, 3)), "class": 0, "source": "vessel"} for p in vessel_pts]

    lung_pts = placer.lung_points(4 * n_lung + 8)
    if len(lung_pts):
        # parenchyma, not a vessel or airway wall: those are the other sources
        lung_pts = lung_pts[far_from_nodules(lung_pts)][: 3 * n_lung]
        lung_pts = lung_pts[placer.tubes.surface_distance(lung_pts) > 1.0]
        # and not within blur reach of the pleura: a slice (and 2 mm) away from it in every axis direction
        reach = np.array([2.0, 2.0, max(2.0, anat.geom.spacing_xyz[2])])
        steps = np.concatenate([np.diag(reach), -np.diag(reach)])
        deep = anat.in_lung((lung_pts[:, None, :] + steps[None]).reshape(-1, 3)).reshape(len(lung_pts), 6).all(axis=1)
        lung_pts = lung_pts[deep][:n_lung]
    out += [{"coord_xyz": tuple(float(v) for v in np.round(p, 3)), "class": 0, "source": "lung"} for p in lung_pts]

    wall_pts = []
    starts = placer.lung_points(6 * n_wall + 8)
    if len(starts) and n_wall:
        d = rng.standard_normal((len(starts), 3))
        d[:, 2] *= 0.3
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        step = 0.5
        lo, hi = anat.lung_box()
        s = np.arange(1, int(np.linalg.norm(hi - lo) / step) + 1) * step
        pts = starts[:, None, :] + d[:, None, :] * s[None, :, None]
        lab = anat.labels_at(pts[..., 0].ravel(), pts[..., 1].ravel(), pts[..., 2].ravel()).reshape(pts.shape[:2])
        for i in range(len(starts)):
            k = int(np.argmax(lab[i] != LUNG))
            if lab[i, k] == LUNG or not WALL_LUT[lab[i, k]]:
                continue
            q = starts[i] + d[i] * (s[k] + rng.uniform(1.0, 4.0))
            if WALL_LUT[anat.labels_at_points(q[None, :])[0]] and far_from_nodules(q[None, :])[0]:
                wall_pts.append(q)
            if len(wall_pts) >= n_wall:
                break
    out += [{"coord_xyz": tuple(float(v) for v in np.round(p, 3)), "class": 0, "source": "wall"} for p in wall_pts]
    order = rng.permutation(len(out))
    return [out[i] for i in order]


# ---------------------------------------------------------------------------------------------- finishing
def _kernel3(sigma_vox: float) -> tuple[float, float]:
    """Centre and side weights of a 3-tap sampled Gaussian (sigma in voxels, at most about 0.8)."""
    k1 = math.exp(-0.5 / max(sigma_vox, 1e-3) ** 2)
    norm = 1.0 + 2.0 * k1
    return 1.0 / norm, k1 / norm


def _blur3_axis(src: np.ndarray, dst: np.ndarray, axis: int, k0: float, k1: float, tmp: np.ndarray) -> None:
    """dst = 3-tap blur of src along ``axis`` (edges replicated); float32 arrays of equal shape, ``tmp`` scratch."""
    np.multiply(src, k0, out=dst)
    if src.shape[axis] < 2:
        np.add(dst, src * (2 * k1), out=dst)
        return
    lo = [slice(None)] * src.ndim
    hi = [slice(None)] * src.ndim
    lo[axis] = slice(0, -1)
    hi[axis] = slice(1, None)
    lo, hi = tuple(lo), tuple(hi)
    t = tmp[hi]
    np.multiply(src[lo], k1, out=t)
    dst[hi] += t
    t = tmp[lo]
    np.multiply(src[hi], k1, out=t)
    dst[lo] += t
    first = [slice(None)] * src.ndim
    last = [slice(None)] * src.ndim
    first[axis] = slice(0, 1)
    last[axis] = slice(-1, None)
    dst[tuple(first)] += k1 * src[tuple(first)]
    dst[tuple(last)] += k1 * src[tuple(last)]


def finish(rng: np.random.Generator, vol: np.ndarray, geom: ScanGeometry, slab: int = 8) -> np.ndarray:
    """Add correlated noise and blur, clip to [-1024, 3071] and round: float32 (z, y, x) HU -> int16 (z, y, x) HU.

    The point-spread function is a separable 3-tap Gaussian: in-plane sigma 0.35–0.5 mm, along z 0.3–0.4 of
    the slice spacing (slices are as thick as they are apart). Noise is added before the blur so that it is
    spatially correlated like CT noise; its pre-blur amplitude is set so that the final standard deviation is
    the drawn 15–30 HU. ``vol`` is used as scratch space.
    """
    nz, ny, nx = vol.shape
    sxy = geom.spacing_xyz[0]
    noise_std = rng.uniform(15.0, 30.0)
    sig_xy = min(rng.uniform(0.35, 0.5) / sxy, 0.85)
    sig_z = rng.uniform(0.3, 0.4)
    kxy = _kernel3(sig_xy)
    kz = _kernel3(sig_z)
    gain = math.sqrt(kxy[0] ** 2 + 2 * kxy[1] ** 2) ** 2 * math.sqrt(kz[0] ** 2 + 2 * kz[1] ** 2)
    amp = np.float32(noise_std / gain)
    n1 = np.empty((min(slab, nz), ny, nx), dtype=np.float32)
    n2 = np.empty_like(n1)
    for z0 in range(0, nz, slab):
        z1 = min(nz, z0 + slab)
        a = vol[z0:z1]
        u1, u2 = n1[: z1 - z0], n2[: z1 - z0]
        rng.standard_normal(out=u1, dtype=np.float32)
        u1 *= amp
        a += u1
        _blur3_axis(a, u1, 2, kxy[0], kxy[1], u2)
        _blur3_axis(u1, a, 1, kxy[0], kxy[1], u2)
    out = np.empty((nz, ny, nx), dtype=np.int16)
    k0, k1 = kz
    s, t = n1[0], n2[0]
    for z in range(nz):
        # vol is only read here, so its neighbours are still the unblurred-in-z slices
        np.add(vol[max(z - 1, 0)], vol[min(z + 1, nz - 1)], out=s)
        s *= k1
        np.multiply(vol[z], k0, out=t)
        s += t
        np.clip(s, HU_MIN, HU_MAX, out=s)
        np.rint(s, out=s)
        out[z] = s
    return out


# ---------------------------------------------------------------------------------------------- the scan
def sample_chest(rng: np.random.Generator, geom: ScanGeometry) -> tuple[Anatomy, VesselTree, VesselTree, VesselTree]:
    """``(anatomy, vessels, airways, vessels and airways)`` of one chest on ``geom``, drawn from ``rng``."""
    anat = Anatomy.sample(rng, geom)
    vessels = grow_vessels(rng, anat)
    airways = airway_tree(rng, anat, vessels)
    return anat, vessels, airways, _concat(vessels, airways)


def render_chest(rng: np.random.Generator, anat: Anatomy, geom: ScanGeometry, vessels: VesselTree, airways: VesselTree) -> Canvas:
    """The chest without nodules, blur or noise: a :class:`Canvas` over float32 (z, y, x) HU and its labels."""
    vol, labels = anat.render()
    canvas = Canvas(vol, labels, geom)
    sxy = geom.spacing_xyz[0]
    draw_airways(canvas, airways, float(rng.uniform(10.0, 40.0)), float(rng.uniform(-1000.0, -950.0)))
    hu_vessel = rng.uniform(30.0, 55.0) + rng.uniform(-8.0, 8.0, len(vessels))
    seg = zip(vessels.a.tolist(), vessels.b.tolist(), vessels.r0.tolist(), vessels.r1.tolist(), hu_vessel.tolist())
    for a, b, r0, r1, hu in seg:
        canvas.tube(a, b, r0, r1, hu, VESSEL_OK_LUT, sxy)
    return canvas


def draw_nodules(canvas: Canvas, nodules: list[Nodule]) -> None:
    """Draw ``nodules`` (their blob, spicules and inner blobs) on ``canvas``."""
    sxy = canvas.spacing[0]
    for nd in nodules:
        canvas.blob(nd.centre, 0.5 * nd.diameter, nd.hu, NODULE_OK_LUT, nd.edge_mm, nd.lobes, nd.lobe_amp)
        for s0, s1, r0, r1 in nd.spicules:
            canvas.tube(s0, s1, r0, r1, nd.hu, NODULE_OK_LUT, sxy)
        for c0, r0, hu0, edge0 in nd.inner:
            canvas.blob(c0, r0, hu0, NODULE_OK_LUT, edge0)


def generate_scan(
    rng: np.random.Generator,
    size: int = 512,
    seriesuid: str | None = None,
    slice_spacing_mm: float | None = None,
    num_slices: int | None = None,
    nodule_mix: str = "luna16",
    masses=(),
    mass_rng: np.random.Generator | None = None,
) -> SyntheticScan:
    """Generate one synthetic chest CT with ``size`` x ``size`` slices; everything random comes from ``rng``.

    Args:
        rng: numpy Generator; the same generator state gives the same scan.
        size: in-plane matrix (512 like LUNA16; 64 or 96 for fast tests, with a proportionally smaller patient).
        seriesuid: the scan's UID; drawn from ``rng`` (LUNA16-like) when None.
        slice_spacing_mm, num_slices: a fixed slice grid instead of a drawn one (see
            :func:`~monai_lung.synthetic.geometry.sample_geometry`); the chest fills its z extent.
        nodule_mix: the nodule kinds drawn (:data:`~monai_lung.synthetic.nodules.KIND_MIXES`): ``"luna16"`` (the
            default) or ``"screening"`` (adds part-solid and calcified nodules).
        masses: kinds of lung masses to add, e.g. ``("central", "peripheral")`` (:mod:`.masses`); drawn with
            ``mass_rng`` (default: a generator jumped ahead of ``rng``), so the rest of the scan is unchanged.
    """
    if seriesuid is None:
        seriesuid = random_seriesuid(rng)
    geom = sample_geometry(rng, size, slice_spacing_mm, num_slices)
    anat, vessels, airways, tubes = sample_chest(rng, geom)
    nodules, excluded = place_nodules(rng, anat, vessels, tubes, mix=nodule_mix)
    placer = Placer(rng, anat, tubes, vessels)
    candidates = make_candidates(rng, anat, vessels, nodules, placer, size)

    canvas = render_chest(rng, anat, geom, vessels, airways)
    vol, labels = canvas.vol, canvas.labels
    draw_nodules(canvas, nodules + excluded)
    sxy = geom.spacing_xyz[0]
    drawn_masses = []
    if masses:
        mass_rng = np.random.Generator(rng.bit_generator.jumped()) if mass_rng is None else mass_rng
        taken = [(nd.centre, 0.5 * nd.diameter) for nd in nodules + excluded]
        for ms in place_masses(mass_rng, anat, masses, taken):
            drawn = canvas.blob(ms.centre, 0.5 * ms.diameter, ms.hu, MASS_OK_LUT, sxy, ms.lobes, ms.lobe_amp)
            if drawn is None:
                continue
            truth = drawn_mass(*drawn, geom)
            drawn_masses.append({"coord_xyz": truth["coord_xyz"], "diameter_mm": truth["diameter_mm"], "volume_mm3": truth["volume_mm3"],
                                 "kind": "mass", "location": ms.kind, "drawn_diameter_mm": ms.diameter, "box": drawn[0], "mask": truth["mask"]})
    del labels, canvas
    arr = finish(rng, vol, geom)
    del vol
    image = sitk.GetImageFromArray(arr)
    image.SetSpacing(tuple(float(v) for v in geom.spacing_xyz))
    image.SetOrigin(tuple(float(v) for v in geom.origin_xyz))
    image.SetDirection((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    return SyntheticScan(
        image=image,
        seriesuid=seriesuid,
        nodules=[nd.as_dict() for nd in nodules],
        excluded=[nd.as_dict() for nd in excluded],
        candidates=candidates,
        masses=drawn_masses,
    )
