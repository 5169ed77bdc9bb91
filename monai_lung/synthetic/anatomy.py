"""Analytic chest anatomy of one synthetic scan: a tissue label for any world point, and the base HU volume.

Every structure is a closed-form shape in world LPS millimetres (+x patient left, +y posterior, +z head):
super-ellipse body outline with skin, subcutaneous fat, muscle and a rib band (obliquely running ribs,
costal cartilage, sternum) around the thoracic cavity; vertebral body with discs, spinal canal and
posterior elements; inside the cavity the mediastinum (fat, with trachea, oesophagus, ascending and
descending aorta, superior vena cava), a tilted ellipsoidal heart with pericardial fat, the two lungs
(shrinking to rounded apices, resting on diaphragm domes, the right one higher) and liver / upper abdomen
below the domes; optionally a curved CT table under the back.

:meth:`Anatomy.labels_at` evaluates all of that for broadcastable coordinate arrays, so the same code
labels a whole voxel grid (rendering) and scattered points (placing vessels, nodules and candidates):
what the generator checks at a point is exactly what is drawn there.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from monai_lung.synthetic.geometry import ScanGeometry

# Tissue labels (uint8). Kept small and dense: they index the per-scan HU look-up tables.
AIR, TABLE_SHELL, TABLE_CORE, SKIN, FAT, MUSCLE, RIB, CARTILAGE, STERNUM, SOFT = range(10)
LUNG, MED_FAT, HEART, BIG_VESSEL, AIRWAY, AIRWAY_WALL, OESOPHAGUS, VERTEBRA, DISC, CANAL = range(10, 20)
LIVER, ABDOMEN = 20, 21
NUM_LABELS = 22

#: HU range each label's mean is drawn from, per scan.
LABEL_HU = {
    AIR: (-1000.0, -1000.0),
    TABLE_SHELL: (120.0, 220.0),
    TABLE_CORE: (-900.0, -800.0),
    SKIN: (20.0, 40.0),
    FAT: (-120.0, -80.0),
    MUSCLE: (35.0, 55.0),
    RIB: (250.0, 450.0),
    CARTILAGE: (100.0, 160.0),
    STERNUM: (200.0, 350.0),
    SOFT: (30.0, 50.0),
    LUNG: (-875.0, -825.0),
    MED_FAT: (-110.0, -70.0),
    HEART: (30.0, 50.0),
    BIG_VESSEL: (35.0, 50.0),
    AIRWAY: (-990.0, -960.0),
    AIRWAY_WALL: (20.0, 40.0),
    OESOPHAGUS: (30.0, 45.0),
    VERTEBRA: (200.0, 350.0),
    DISC: (70.0, 100.0),
    CANAL: (10.0, 25.0),
    LIVER: (50.0, 65.0),
    ABDOMEN: (25.0, 45.0),
}

#: Labels vessels may be drawn into (drawing is a max, so soft tissue hides them; fat and air must not show them).
VESSEL_OK = (LUNG, MED_FAT, SOFT, HEART, BIG_VESSEL, MUSCLE, OESOPHAGUS, LIVER, ABDOMEN, RIB, CARTILAGE, STERNUM)
#: Labels nodules may be drawn into: lung, and the chest wall a juxta-pleural nodule leans on.
NODULE_OK = (LUNG, SOFT, MUSCLE, RIB, CARTILAGE, STERNUM, HEART, BIG_VESSEL, LIVER, ABDOMEN)
#: Labels that count as chest wall / pleura for juxta-pleural nodules and "wall" candidates.
WALL_LABELS = (MUSCLE, RIB, CARTILAGE, STERNUM, SOFT)


def _lut(labels: tuple[int, ...]) -> np.ndarray:
    lut = np.zeros(NUM_LABELS, dtype=bool)
    lut[list(labels)] = True
    return lut


VESSEL_OK_LUT = _lut(VESSEL_OK)
NODULE_OK_LUT = _lut(NODULE_OK)
WALL_LUT = _lut(WALL_LABELS)
#: What the mediastinal tubes (aorta, vena cava, trachea, oesophagus) may replace.
MEDIASTINUM_LUT = _lut((SOFT, LUNG, MED_FAT, HEART, BIG_VESSEL, OESOPHAGUS, AIRWAY_WALL, AIRWAY))


def _select(lab: np.ndarray, value: int, mask) -> None:
    """``lab[mask] = value`` in place for a uint8 array and a broadcastable bool mask.

    Done with wrapping uint8 arithmetic: far faster than ``np.copyto(where=)`` or boolean indexing.
    """
    d = np.subtract(np.uint8(value), lab)
    d *= mask
    lab += d


def _smoothstep(t):
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


@dataclass
class Anatomy:
    """Per-scan anatomical parameters (world LPS mm, HU). Draw one with :meth:`sample`."""

    geom: ScanGeometry
    p: dict = field(default_factory=dict)  # shape parameters, mm
    hu: np.ndarray = None  # (NUM_LABELS,) float32 mean HU per label
    tex_amp: np.ndarray = None  # (NUM_LABELS,) float32 texture amplitude (HU per unit texture)
    lung_grad: float = 0.0  # HU from the front to the back of the lung (gravity-dependent density)
    texture: np.ndarray = None  # coarse (z, y, x) float32 unit-std smooth noise
    tex_origin: tuple = (0.0, 0.0, 0.0)  # world (x, y, z) mm of texture[0, 0, 0]
    tex_step: float = 5.0  # mm between texture samples

    # ------------------------------------------------------------------ sampling
    @classmethod
    def sample(cls, rng: np.random.Generator, geom: ScanGeometry) -> "Anatomy":
        """Draw body size, organ positions and tissue HU for ``geom`` (the body fills most of the field of view)."""
        nz, ny, nx = geom.shape_zyx
        sxy = geom.spacing_xyz[0]
        lo = geom.extent_min_xyz
        hi = geom.extent_max_xyz
        fov = nx * sxy
        U = rng.uniform
        p: dict = {}
        cx, cy = 0.5 * (lo[0] + hi[0]), 0.5 * (lo[1] + hi[1])
        A = 0.5 * fov * U(0.80, 0.90)  # half width of the body, left-right
        B = A * U(0.66, 0.78)  # half depth, front-back
        unit = A / 165.0  # anatomical scale: 1 for an average adult in a 512 matrix
        p.update(unit=unit, A=A, B=B, pexp=U(2.3, 2.8), cexp=U(2.0, 2.3))
        p["bx"] = cx + U(-0.02, 0.02) * fov
        p["by"] = cy + U(-0.05, 0.0) * fov
        ts, tf, tm, tr, pe = 1.5 * unit, U(6, 22) * unit, U(9, 14) * unit, U(6, 8) * unit, U(18, 28) * unit
        p.update(t_skin=ts, t_fat=tf, t_mus=tm, t_rib=tr, post_extra=pe)
        Ac = A - ts - tf - tm - tr
        Bc = B - ts - tf - tm - tr - 0.5 * pe
        yc = p["by"] - 0.5 * pe
        p.update(Ac=Ac, Bc=Bc, yc=yc)
        # z landmarks: lungs span most of the scan, with the diaphragm near the bottom
        z0, z1 = lo[2], hi[2]
        E = z1 - z0
        z_base = z0 + U(0.07, 0.14) * E
        z_apex = z1 - U(0.04, 0.09) * E
        H = z_apex - z_base
        p.update(z0=z0, z1=z1, E=E, z_base=z_base, z_apex_R=z_apex - U(0, 0.02) * E, z_apex_L=z_apex - U(0, 0.03) * E, H=H)
        p.update(neck_z=z1 - U(0.10, 0.16) * E, neck_drop=U(0.06, 0.14))
        p.update(taper_z=z_base + U(0.3, 0.4) * H, taper=U(0.12, 0.22))
        # mediastinum and heart
        xm = p["bx"] + U(0.0, 0.05) * Ac
        wm = U(0.19, 0.25) * Ac
        p.update(xm=xm, wm=wm)
        p.update(
            xh=xm + U(0.12, 0.18) * Ac, yh=yc - U(0.12, 0.2) * Bc, zh=z_base + U(0.17, 0.24) * H,
            ah=U(0.40, 0.48) * Ac, bh=U(0.46, 0.56) * Bc, ch=U(0.22, 0.28) * H, th=np.deg2rad(U(20, 40)),
            rim=U(1.12, 1.22),
        )
        # spine and posterior elements
        rv = U(14, 18) * unit
        yv = yc + Bc + tr - 0.9 * rv
        rcan = U(6, 8) * unit
        p.update(rv=rv, yv=yv, rcan=rcan, ycan=yv + rv + rcan + 1 * unit, disc_period=U(24, 30) * unit,
                 disc_phase=U(0, 1), disc_duty=U(0.18, 0.24))
        # big vessels, trachea, oesophagus (x, y, radius)
        zt = p["zh"] + p["ch"] * U(0.35, 0.55)
        z_arch = z_base + U(0.74, 0.82) * H
        p.update(z_arch=z_arch, z_great=zt, z_carina=z_base + U(0.62, 0.7) * H)
        p["aorta_d"] = (p["bx"] + rv + U(11, 14) * unit, yv - 0.55 * rv, U(10, 13) * unit)
        p["aorta_a"] = (xm - U(0.0, 0.06) * Ac, yc - U(0.25, 0.32) * Bc, U(12, 16) * unit)
        p["pulm_trunk"] = (xm + U(0.10, 0.15) * Ac, yc - U(0.22, 0.30) * Bc, U(11, 14) * unit)
        p["svc"] = (xm - U(0.13, 0.17) * Ac, yc - U(0.18, 0.24) * Bc, U(7, 10) * unit)
        p["trachea"] = (xm + U(-0.02, 0.02) * Ac, yc + U(-0.05, 0.05) * Bc, U(7, 10) * unit, U(1.5, 2.5) * unit)
        p["oesophagus"] = (xm + U(0.02, 0.08) * Ac, yv - rv - U(5, 8) * unit, U(5, 7) * unit)
        # ribs: oblique bands, the front end lower than the back
        P = U(24, 30) * unit
        p.update(rib_period=P, rib_phase=U(0, 1), rib_duty=U(0.30, 0.40), rib_slope=U(2.6, 3.4) * P)
        # lungs: hemithorax centres, apex taper and diaphragm domes
        hw = Ac - wm
        p.update(
            xlR=0.5 * (xm - wm + p["bx"] - Ac), xlL=0.5 * (xm + wm + p["bx"] + Ac), yl=yc + 0.1 * Bc,
            al=0.62 * hw, bl=1.15 * Bc, Ha=U(0.18, 0.24) * H,
        )
        D = U(0.14, 0.20) * H
        p.update(dome_D=D, dome_R=z_base + 1.25 * D + U(0.03, 0.06) * H, dome_L=z_base + 1.25 * D,
                 dome_y=yc - U(0.1, 0.2) * Bc, dome_ax=0.62 * hw, dome_ay=1.0 * Bc)
        # table: a curved carbon-fibre cradle under the back, when it fits in the field of view
        gap = U(0.5, 4) * unit
        y_tab = p["by"] + B + gap
        th_shell, th_core = max(U(1.5, 3) * unit, 1.2 * sxy), max(U(8, 14) * unit, 2.5 * sxy)  # no sub-voxel shells
        p.update(table=bool(y_tab + 2 * th_shell + th_core + 20 * unit < hi[1]), y_tab=y_tab, tab_shell=th_shell,
                 tab_core=th_core, tab_half=0.46 * fov, tab_curv=U(15, 30) * unit / (0.46 * fov) ** 2)

        hu = np.array([U(*LABEL_HU[k]) for k in range(NUM_LABELS)], dtype=np.float32)
        tex_amp = np.full(NUM_LABELS, 4.0, dtype=np.float32)
        tex_amp[[AIR, AIRWAY, TABLE_SHELL, TABLE_CORE]] = 0.0
        tex_amp[LUNG] = U(12.0, 22.0)
        tex_amp[FAT] = tex_amp[MED_FAT] = 6.0
        anat = cls(geom=geom, p=p, hu=hu, tex_amp=tex_amp, lung_grad=float(U(40.0, 90.0)))
        anat._sample_texture(rng)
        return anat

    def _sample_texture(self, rng: np.random.Generator) -> None:
        """Coarse smooth noise (z, y, x), unit std, on a ``tex_step`` mm grid covering the scan plus a margin."""
        step = max(3.0, 5.0 * self.p["unit"])
        lo = self.geom.extent_min_xyz - step
        hi = self.geom.extent_max_xyz + step
        n_xyz = np.ceil((hi - lo) / step).astype(int) + 2
        noise = rng.standard_normal((n_xyz[2], n_xyz[1], n_xyz[0])).astype(np.float32)
        noise = ndimage.gaussian_filter(noise, 1.0, mode="wrap")
        noise /= max(float(noise.std()), 1e-6)
        self.texture, self.tex_origin, self.tex_step = noise, tuple(lo), step

    # ------------------------------------------------------------------ evaluation
    def body_scale(self, z):
        """Cross-section scale of the body outline at world z (mm): 1 over the chest, narrowing towards the neck."""
        p = self.p
        t = (np.asarray(z) - p["neck_z"]) / max(p["z1"] - p["neck_z"], 1e-6)
        return 1.0 - p["neck_drop"] * _smoothstep(t)

    def cavity_scale(self, z):
        """Cross-section scale of the thoracic cavity at world z (mm): the lungs narrow towards the apices."""
        p = self.p
        t = np.clip((np.asarray(z) - p["taper_z"]) / max(p["z1"] - p["taper_z"], 1e-6), 0.0, 1.0)
        return (1.0 - p["taper"] * t**1.5) * self.body_scale(z)

    def _labels(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Tissue labels (uint8, shape (R, N)) of in-plane points ``x``, ``y`` (1, N) mm at heights ``z`` mm.

        ``z`` is either (R, 1) (R slices of the same N pixels: a slab) or (1, N) (one height per point).
        Structures that cover a small part of the plane are evaluated on just the columns they can touch.
        """
        p = self.p
        unit = p["unit"]
        R = max(z.shape[0], 1)
        N = x.shape[1]
        lab = np.zeros((R, N), dtype=np.uint8)
        per_point = z.shape[1] > 1

        def put(value, mask):
            _select(lab, value, mask)

        def cols_of(mask2d):
            """Columns where an in-plane (1, N) mask holds; None when all of them do."""
            c = np.flatnonzero(mask2d[0])
            return None if c.size == N else c

        def put_local(value, cols, mask_fn):
            """``mask_fn(x, y, z, lab)`` on the columns ``cols`` only; labels its True entries ``value``."""
            if cols is not None and cols.size == 0:
                return
            if cols is None:
                put(value, mask_fn(x, y, z, lab))
                return
            zc = z[:, cols] if per_point else z
            sub = lab[:, cols]
            _select(sub, value, mask_fn(x[:, cols], y[:, cols], zc, sub))
            lab[:, cols] = sub

        zmin, zmax = float(np.min(z)), float(np.max(z))
        pe, pc = p["pexp"], p["cexp"]
        dx = x - p["bx"]
        adx = np.abs(dx) ** pe
        ady = np.abs(y - p["by"]) ** pe
        dyc = y - p["yc"]
        adxc = np.abs(dx) ** pc
        adyc = np.abs(dyc) ** pc
        s = self.body_scale(z)
        thr = 1.0 if bool(np.all(s == 1.0)) else s**pe
        sc = self.cavity_scale(z)
        thr_c = 1.0 if bool(np.all(sc == 1.0)) else sc**pc

        if p["table"]:
            top = p["y_tab"] - p["tab_curv"] * dx * dx
            d = y - top
            shell = (np.abs(dx) < p["tab_half"]) & (d >= 0) & (d < 2 * p["tab_shell"] + p["tab_core"])
            put(TABLE_SHELL, shell)
            put(TABLE_CORE, shell & (d >= p["tab_shell"]) & (d < p["tab_shell"] + p["tab_core"]))

        A, B = p["A"], p["B"]
        t1 = p["t_skin"]
        t2 = t1 + p["t_fat"]
        put(SKIN, adx / A**pe + ady / B**pe < thr)
        put(FAT, adx / (A - t1) ** pe + ady / (B - t1) ** pe < thr)
        put(MUSCLE, adx / (A - t2) ** pe + ady / (B - t2) ** pe < thr)
        Ac, Bc, tr = p["Ac"], p["Bc"], p["t_rib"]
        r_out = adxc / (Ac + tr) ** pc + adyc / (Bc + tr) ** pc
        r_cav = adxc / Ac**pc + adyc / Bc**pc
        cavity = r_cav < thr_c
        # ribs: the phase runs along z and drops towards the front, so one slice cuts several ribs obliquely
        thr_hi, thr_lo = float(np.max(thr_c)), float(np.min(thr_c))

        def rib_fn(x_, y_, z_, l_, front):
            dx_, dy_ = x_ - p["bx"], y_ - p["yc"]
            ro = np.abs(dx_) ** pc / (Ac + tr) ** pc + np.abs(dy_) ** pc / (Bc + tr) ** pc
            rc = np.abs(dx_) ** pc / Ac**pc + np.abs(dy_) ** pc / Bc**pc
            tc = thr_c if (np.ndim(thr_c) == 0 or thr_c.shape[1] == 1 or cols_band is None) else thr_c[:, cols_band]
            cos_post = dy_ / (np.sqrt(dx_ * dx_ + dy_ * dy_) + 1e-6)
            phase = (z_ - p["rib_slope"] * cos_post) / p["rib_period"] + p["rib_phase"]
            rib = (ro < tc) & (rc >= tc) & ((phase - np.floor(phase)) < p["rib_duty"])
            if front:
                return rib & (cos_post < -0.75) & (np.abs(dx_) > 12 * unit)
            return rib & (cos_post >= -0.75)

        cols_band = cols_of((r_out < thr_hi) & (r_cav >= thr_lo))
        put_local(RIB, cols_band, lambda *a: rib_fn(*a, front=False))
        put_local(CARTILAGE, cols_band, lambda *a: rib_fn(*a, front=True))
        y_st = p["yc"] - Bc - 0.5 * tr
        st_a, st_b = 14 * unit, 0.5 * tr + unit
        st2d = (dx / st_a) ** 2 + ((y - y_st) / st_b) ** 2 < 1
        put_local(STERNUM, cols_of(st2d), lambda x_, y_, z_, l_: (((x_ - p["bx"]) / st_a) ** 2 + ((y_ - y_st) / st_b) ** 2 < 1)
                  & WALL_LUT[l_])
        put(SOFT, cavity)
        if not np.any(cavity):
            return self._spine(lab, x, y, z, put_local, cols_of)

        # inside the cavity: abdomen below the diaphragm domes, mediastinum, heart, lungs
        right = x < p["xm"]
        if zmin > max(p["dome_R"], p["dome_L"]):
            above = np.ones((1, 1), dtype=bool)
        else:
            dyd = ((y - p["dome_y"]) / p["dome_ay"]) ** 2
            dome_R = p["dome_R"] - p["dome_D"] * (((x - p["xlR"]) / p["dome_ax"]) ** 2 + dyd)
            dome_L = p["dome_L"] - p["dome_D"] * (((x - p["xlL"]) / p["dome_ax"]) ** 2 + dyd)
            above = z > np.maximum(np.where(right, dome_R, dome_L), p["z_base"])
        cav_above = cavity & above
        med2d = ((x - p["xm"]) / p["wm"]) ** 2 + (dyc / (1.02 * Bc)) ** 2 < 1
        put(MED_FAT, cav_above & med2d)
        # heart: a tilted ellipse in-plane times an ellipsoidal z profile, wrapped in pericardial fat
        if zmax > p["zh"] - p["ch"] * p["rim"] and zmin < p["zh"] + p["ch"] * p["rim"]:
            c, sn = np.cos(p["th"]), np.sin(p["th"])
            hx, hy = x - p["xh"], y - p["yh"]
            u_ = (c * hx - sn * hy) / p["ah"]
            v_ = (sn * hx + c * hy) / p["bh"]
            heart2d = u_ * u_ + v_ * v_
            cols = cols_of(heart2d < p["rim"] ** 2)
            if cols is None or cols.size:
                h2 = heart2d if cols is None else heart2d[:, cols]
                zc = z[:, cols] if (per_point and cols is not None) else z
                hr = h2 + ((zc - p["zh"]) / p["ch"]) ** 2
                ok = cav_above if cols is None else (cav_above[:, cols] if cav_above.shape[1] > 1 else cav_above)
                sub = lab if cols is None else lab[:, cols]
                _select(sub, MED_FAT, ok & (hr < p["rim"] ** 2))
                _select(sub, HEART, ok & (hr < 1.0))
                if cols is not None:
                    lab[:, cols] = sub
        z_top = p["z1"] + 1.0

        def circle(xyr, zlo, zhi, value, extra=0.0):
            cx_, cy_, r_ = xyr
            r2 = (r_ + extra) ** 2
            if zmax < zlo or zmin >= zhi:
                return
            m2d = (x - cx_) ** 2 + (y - cy_) ** 2 < r2
            put_local(value, cols_of(m2d), lambda x_, y_, z_, l_: ((x_ - cx_) ** 2 + (y_ - cy_) ** 2 < r2)
                      & (z_ >= zlo) & (z_ < zhi) & MEDIASTINUM_LUT[l_])

        tx, ty, trad, twall = p["trachea"]
        structures = [
            (p["aorta_d"], p["z0"] - 1.0, p["z_arch"], BIG_VESSEL),
            (p["aorta_a"], p["z_great"], p["z_arch"], BIG_VESSEL),
            (p["pulm_trunk"], p["z_great"] - 0.05 * p["H"], p["z_great"] + 0.08 * p["H"], BIG_VESSEL),
            (p["svc"], p["z_great"], z_top, BIG_VESSEL),
            (p["oesophagus"], p["z0"] - 1.0, z_top, OESOPHAGUS),
            ((tx, ty, trad + twall), p["z_carina"], z_top, AIRWAY_WALL),
            ((tx, ty, trad), p["z_carina"], z_top, AIRWAY),
        ]

        # lungs: what is left of the cavity above the domes, inside the apex taper, away from spine and aorta
        lung = (lab == SOFT) & cav_above
        for side, xl, z_apex in (("R", p["xlR"], p["z_apex_R"]), ("L", p["xlL"], p["z_apex_L"])):
            if zmax > z_apex - p["Ha"]:
                t = np.clip((z - (z_apex - p["Ha"])) / p["Ha"], 0.0, 1.0)
                inside = ((x - xl) / p["al"]) ** 2 + ((y - p["yl"]) / p["bl"]) ** 2 < 1.0 - t * t
                lung &= inside | (~right if side == "R" else right)
        lung &= (dx * dx + (y - p["yv"]) ** 2) > (p["rv"] + 4 * unit) ** 2
        ax_, ay_, ar_ = p["aorta_d"]
        keep = (x - ax_) ** 2 + (y - ay_) ** 2 > (ar_ + 2.5 * unit) ** 2
        lung &= keep if zmax < p["z_arch"] else (keep | (z >= p["z_arch"]))
        put(LUNG, lung)
        # abdomen below the domes (the liver on the right); only in slices that reach below a dome
        if not (above.shape == (1, 1) and bool(above.all())):
            below = cavity & ~above
            put(LIVER, below & (x < p["xm"] + 0.1 * Ac))
            put(ABDOMEN, below & (x >= p["xm"] + 0.1 * Ac))
        for xyr, zlo, zhi, value in structures:
            circle(xyr, zlo, zhi, value)
        return self._spine(lab, x, y, z, put_local, cols_of)

    def _spine(self, lab, x, y, z, put_local, cols_of):
        """Vertebral body (with discs), spinal canal and posterior elements, over whatever is there."""
        p = self.p
        unit = p["unit"]
        dx = x - p["bx"]
        rv, rcan, ycan = p["rv"], p["rcan"], p["ycan"]

        def vert_fn(x_, y_, z_, l_):
            return (x_ - p["bx"]) ** 2 + (y_ - p["yv"]) ** 2 < rv**2

        def disc_fn(x_, y_, z_, l_):
            ph = z_ / p["disc_period"] + p["disc_phase"]
            return vert_fn(x_, y_, z_, l_) & ((ph - np.floor(ph)) < p["disc_duty"])

        cols = cols_of(dx * dx + (y - p["yv"]) ** 2 < rv**2)
        put_local(VERTEBRA, cols, vert_fn)
        put_local(DISC, cols, disc_fn)
        ring = (rcan + 4 * unit) ** 2
        sp_a, sp_b, sp_y = 3.5 * unit, 9 * unit, ycan + rcan + 7 * unit

        def post_fn(x_, y_, z_, l_):
            dx_ = x_ - p["bx"]
            d2 = dx_ * dx_ + (y_ - ycan) ** 2
            return (d2 < ring) | ((dx_ / sp_a) ** 2 + ((y_ - sp_y) / sp_b) ** 2 < 1)

        def canal_fn(x_, y_, z_, l_):
            return (x_ - p["bx"]) ** 2 + (y_ - ycan) ** 2 < rcan**2

        post2d = post_fn(x, y, None, None)
        cols = cols_of(post2d)
        put_local(VERTEBRA, cols, lambda x_, y_, z_, l_: post_fn(x_, y_, z_, l_) & (l_ != AIR))
        put_local(CANAL, cols, lambda x_, y_, z_, l_: canal_fn(x_, y_, z_, l_) & (l_ != AIR))
        return lab

    def labels_at(self, x, y, z) -> np.ndarray:
        """Tissue labels (uint8) at world LPS points given as 1-D arrays ``x``, ``y``, ``z`` (mm) of equal length."""
        x = np.atleast_1d(np.asarray(x, dtype=np.float64))[None, :]
        y = np.atleast_1d(np.asarray(y, dtype=np.float64))[None, :]
        z = np.atleast_1d(np.asarray(z, dtype=np.float64))[None, :]
        x, y, z = np.broadcast_arrays(x, y, z)
        if x.shape[1] == 0:
            return np.zeros(0, dtype=np.uint8)
        return self._labels(x, y, z)[0]

    def labels_at_points(self, points_xyz: np.ndarray) -> np.ndarray:
        """Tissue labels (N,) uint8 at world LPS points (N, 3) mm."""
        pts = np.asarray(points_xyz, dtype=np.float64).reshape(-1, 3)
        return self.labels_at(pts[:, 0], pts[:, 1], pts[:, 2])

    def in_lung(self, points_xyz: np.ndarray) -> np.ndarray:
        """Whether world LPS points (N, 3) mm lie in lung parenchyma; (N,) bool."""
        return self.labels_at_points(points_xyz) == LUNG

    def lung_box(self) -> tuple[np.ndarray, np.ndarray]:
        """World (x, y, z) mm corners (lo, hi) of a box holding both lungs."""
        p = self.p
        lo = np.array([p["bx"] - p["Ac"], p["yc"] - p["Bc"], p["z_base"]])
        hi = np.array([p["bx"] + p["Ac"], p["yc"] + p["Bc"], max(p["z_apex_R"], p["z_apex_L"])])
        return lo, hi

    def hilum(self, side: str) -> np.ndarray:
        """World (x, y, z) mm of a lung's hilum ("R" or "L"): on the mediastinal edge, a bit below the carina."""
        p = self.p
        sign = -1.0 if side == "R" else 1.0
        z = p["z_base"] + (0.53 if side == "R" else 0.56) * p["H"]
        return np.array([p["xm"] + sign * p["wm"] * 0.92, p["yc"] + 0.05 * p["Bc"], z])

    # ------------------------------------------------------------------ rendering
    def render(self, slab: int = 8) -> tuple[np.ndarray, np.ndarray]:
        """Base volume without vessels, nodules, blur or noise.

        Returns:
            hu: float32 numpy (z, y, x), HU (mean tissue values; texture and a front-to-back gradient in the lungs).
            labels: uint8 numpy (z, y, x), tissue labels.
        """
        g = self.geom
        p = self.p
        nz, ny, nx = g.shape_zyx
        xs, ys, zs = g.axis_mm("x"), g.axis_mm("y"), g.axis_mm("z")
        labels = np.empty((nz, ny, nx), dtype=np.uint8)
        hu = np.empty((nz, ny, nx), dtype=np.float32)
        xx = np.broadcast_to(xs.astype(np.float32)[None, :], (ny, nx)).ravel()
        yy = np.broadcast_to(ys.astype(np.float32)[:, None], (ny, nx)).ravel()
        # Pixels outside the rib band and the spine hold z-independent tissue (skin, fat, muscle, table) below
        # the neck: label them once. Only the rest is labelled slice by slice.
        dx = xx - p["bx"]
        pc = p["cexp"]
        near = np.abs(dx) ** pc / (p["Ac"] + p["t_rib"] + 1.0) ** pc + np.abs(yy - p["yc"]) ** pc / (p["Bc"] + p["t_rib"] + 1.0) ** pc < 1.0
        near |= dx * dx + (yy - p["yv"]) ** 2 < (p["rv"] + 1.0) ** 2
        # (the cavity only narrows above taper_z, which leaves those pixels alone; the body narrows above neck_z)
        z_still = p["neck_z"]
        z_ref = min(z_still, p["taper_z"], zs[0])
        lab2d = self._labels(xx[None, :], yy[None, :], np.array([[z_ref]]))[0]
        hu2d = self.hu[lab2d]
        body = np.flatnonzero(lab2d != AIR)
        varying = np.flatnonzero(near)
        lab2d = lab2d.reshape(ny, nx)
        hu2d = hu2d.reshape(ny, nx)
        tox, toy, _ = self.tex_origin
        fx = (xx - tox) / self.tex_step
        fy = (yy - toy) / self.tex_step
        for z0 in range(0, nz, slab):
            z1 = min(nz, z0 + slab)
            zc = zs[z0:z1]
            labels[z0:z1] = lab2d
            hu[z0:z1] = hu2d
            cols = body if zc[-1] > z_still else varying
            lab = self._labels(xx[cols][None, :], yy[cols][None, :], zc.astype(np.float32)[:, None])
            val = self.hu[lab]
            lung = lab == LUNG
            if lung.any():
                lcols = np.flatnonzero(lung.any(axis=0))
                t = self._texture_at(fx[cols[lcols]], fy[cols[lcols]], zc)
                t *= self.tex_amp[LUNG]
                t += (self.lung_grad * 0.5 * (yy[cols[lcols]] - p["yc"]) / p["Bc"]).astype(np.float32)
                t *= lung[:, lcols]
                val[:, lcols] += t
            labels[z0:z1].reshape(z1 - z0, -1)[:, cols] = lab
            hu[z0:z1].reshape(z1 - z0, -1)[:, cols] = val
        return hu, labels

    def _texture_at(self, fx: np.ndarray, fy: np.ndarray, z_mm: np.ndarray) -> np.ndarray:
        """Unit-std lung texture, float32 (len(z_mm), N), at in-plane texture-grid coordinates ``fx``, ``fy`` (N,)
        (continuous indices into the coarse grid) and slice heights ``z_mm``; trilinear interpolation."""
        t = self.texture
        fz = (np.asarray(z_mm, dtype=np.float64) - self.tex_origin[2]) / self.tex_step
        iz = np.clip(np.floor(fz).astype(np.intp), 0, t.shape[0] - 2)
        wz = np.clip(fz - iz, 0.0, 1.0).astype(np.float32)[:, None, None]
        tz = t[iz] * (1 - wz) + t[iz + 1] * wz
        ix = np.clip(np.floor(fx).astype(np.intp), 0, t.shape[2] - 2)
        iy = np.clip(np.floor(fy).astype(np.intp), 0, t.shape[1] - 2)
        wx = np.clip(fx - ix, 0.0, 1.0).astype(np.float32)
        wy = np.clip(fy - iy, 0.0, 1.0).astype(np.float32)
        top = tz[:, iy, ix] * (1 - wx) + tz[:, iy, ix + 1] * wx
        bottom = tz[:, iy + 1, ix] * (1 - wx) + tz[:, iy + 1, ix + 1] * wx
        return top * (1 - wy) + bottom * wy
