"""The stage-2 crop bank: crops around nodules and negatives, cut once per scan and stored on disk.

Loading and resampling a LUNA16 scan takes seconds, cutting a crop out of it microseconds, so the bank
loads each scan once through :func:`~monai_lung.transforms.ct_preprocessing` (1 mm grid, RAS, lung window
scaled to [0, 1]: the grid and scaling stage 2 scores on) and keeps ``crop_size``^3 float16 crops (64^3 by
default: room for +-8 voxels of jitter and a zoom around the final training crop, 32^3 by default).

Layout of a bank folder::

    bank.json                 settings the crops were cut with (a resumed run must use the same)
    index.csv                 one row per crop (INDEX_COLUMNS), all scans; rewritten at the end of a run
    crops/<seriesuid>.npy     (N, S, S, S) float16, crop n centred (voxel S // 2) on row n's point
    crops/<seriesuid>.csv     the scan's rows of the index; written after the .npy, so it marks a finished scan
    hard_negatives/<uid>.csv  stage-1 candidates of the scan with their labels (when mined), a cache

Every file is written under a temporary name and renamed, so a crash leaves either a finished scan or
none; a rerun skips finished scans.

Sources of crops (column ``source``):

- ``nodule`` (label 1): ``positives_per_nodule`` points per annotated nodule, the first at its centre and
  the others uniformly in a ball of ``positive_jitter`` x its radius.
- ``candidates_csv`` (label 0): class-0 points of a LUNA16 ``candidates.csv`` (at most
  ``candidates_per_scan``, a random subset).
- ``random_lung`` (label 0): ``random_per_scan`` uniform points of the (generous) lung mask.
- ``hard_negative`` (label 0): stage-1 false-positive components (at most ``hard_negatives_per_scan``,
  the most confident first), see :mod:`monai_lung.stage2.mining`.

Every negative lies farther than the radius of every annotated nodule from its centre (the LUNA16 hit
criterion) and outside excluded findings (``annotations_excluded.csv``; unknown size: 10 mm diameter).
Points near the scan border are kept: their crops are padded with 0 (air).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import zlib
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pandas as pd

from monai_lung.datalist import entry_seriesuid
from monai_lung.io import DataError, index_to_world, read_candidates, read_mined_candidates, voxel_spacing, world_to_index
from monai_lung.io.annotations import DEFAULT_EXCLUDED_DIAMETER_MM, away_from_findings, finding_arrays, nearest_distance
from monai_lung.io.atomic import atomic_path, write_csv_atomic, write_json_atomic
from monai_lung.transforms.crops import extract_crops
from monai_lung.transforms.lung_mask import lung_mask
from monai_lung.transforms.preprocessing import DEFAULT_HU_WINDOW, ct_preprocessing

logger = logging.getLogger(__name__)

BANK_FORMAT = "monai_lung.stage2 crop bank v1"
SOURCES = ("nodule", "candidates_csv", "random_lung", "hard_negative")
INDEX_COLUMNS = [
    "seriesuid",
    "row",  # row of crops/<seriesuid>.npy
    "label",  # 1 nodule, 0 not
    "source",  # one of SOURCES
    "coordX", "coordY", "coordZ",  # crop centre, world LPS mm
    "index_i", "index_j", "index_k",  # crop centre, continuous index on the preprocessed (RAS, 1 mm) grid
    "diameter_mm",  # nodule: its annotated diameter; hard negative: stage-1 component diameter; else NaN
    "nodule_distance_mm",  # distance to the nearest annotated nodule centre (NaN: scan without nodules)
    "score",  # hard negative: stage-1 peak probability; else NaN
]


@dataclasses.dataclass
class CropBankSettings:
    """How crops are cut. Stored in ``bank.json``; a resumed run must use the same values.

    Attributes:
        crop_size: stored crop edge in voxels (= mm at 1 mm spacing).
        spacing: preprocessing grid (i, j, k) in mm.
        hu_window: HU range scaled to [0, 1].
        positives_per_nodule: crops per annotated nodule (the first at its centre).
        positive_jitter: positive offsets are uniform in a ball of this fraction of the nodule radius.
        random_per_scan: random lung points per scan.
        candidates_per_scan: cap on class-0 ``candidates.csv`` points per scan (LUNA16 has ~850 per scan).
        hard_negatives_per_scan: cap on stage-1 false positives per scan (half the most confident, half at random).
        negative_margin_mm: negatives keep this much more than a nodule radius from its centre.
        excluded_diameter_mm: diameter assumed for excluded findings of unknown (negative) size.
        seed: random seed; each scan draws from ``(seed, crc32(seriesuid))``, so reruns give the same crops.
    """

    crop_size: int = 64
    spacing: tuple = (1.0, 1.0, 1.0)
    hu_window: tuple = DEFAULT_HU_WINDOW
    positives_per_nodule: int = 8
    positive_jitter: float = 0.5
    random_per_scan: int = 32
    candidates_per_scan: int = 64
    hard_negatives_per_scan: int = 64
    negative_margin_mm: float = 0.0
    excluded_diameter_mm: float = DEFAULT_EXCLUDED_DIAMETER_MM
    seed: int = 0

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["spacing"], d["hu_window"] = [float(v) for v in self.spacing], [float(v) for v in self.hu_window]
        return d

    @classmethod
    def from_json(cls, d: dict) -> "CropBankSettings":
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in d.items() if k in fields}
        for key in ("spacing", "hu_window"):
            if key in values:
                values[key] = tuple(float(v) for v in values[key])
        return cls(**values)


def scan_rng(seed: int, seriesuid: str, stream: int = 0) -> np.random.Generator:
    """A random generator that depends only on ``seed``, the scan and ``stream`` (reruns reproduce crops)."""
    return np.random.default_rng([int(seed), zlib.crc32(seriesuid.encode("utf-8")), int(stream)])


def positive_points(
    centres: np.ndarray, radii: np.ndarray, per_nodule: int, jitter: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Crop centres for positives: (M * per_nodule, 3) world mm points and the (M * per_nodule,) nodule index.

    Per nodule the first point is its centre, the others are uniform in a ball of ``jitter * radius`` mm
    around it (inside the nodule for ``jitter <= 1``), so each nodule is seen off-centre as stage 1 may find it.
    """
    centres = np.asarray(centres, dtype=np.float64).reshape(-1, 3)
    out, owner = [], []
    for m, (centre, radius) in enumerate(zip(centres, radii)):
        n_extra = max(per_nodule - 1, 0)
        direction = rng.normal(size=(n_extra, 3))
        direction /= np.maximum(np.linalg.norm(direction, axis=1, keepdims=True), 1e-12)
        dist = jitter * radius * np.cbrt(rng.uniform(size=(n_extra, 1)))  # cube root: uniform in the volume
        pts = np.vstack([centre[None], centre[None] + direction * dist])[: max(per_nodule, 1)]
        out.append(pts)
        owner.append(np.full(len(pts), m))
    if not out:
        return np.zeros((0, 3)), np.zeros(0, dtype=int)
    return np.vstack(out), np.concatenate(owner)


def random_lung_points(
    lung: np.ndarray,
    n: int,
    rng: np.random.Generator,
    accept: Callable[[np.ndarray], np.ndarray] | None = None,
    max_rounds: int = 50,
) -> np.ndarray:
    """Up to ``n`` distinct random voxel indices (K, 3) int (i, j, k) inside the bool (i, j, k) ``lung`` mask.

    Rejection sampling in the mask's bounding box (no list of the tens of millions of lung voxels is
    built). ``accept(idx (K, 3)) -> bool (K,)`` filters further (e.g. away from nodules). Fewer than ``n``
    come back only when the mask has too few acceptable voxels.
    """
    if n <= 0 or not lung.any():
        return np.zeros((0, 3), dtype=int)
    nz = [np.flatnonzero(lung.any(axis=tuple(a for a in range(3) if a != ax))) for ax in range(3)]
    lo = np.array([v[0] for v in nz])
    hi = np.array([v[-1] + 1 for v in nz])
    chosen: list[np.ndarray] = []
    seen: set[tuple[int, int, int]] = set()
    for _ in range(max_rounds):
        need = n - len(chosen)
        if need <= 0:
            break
        idx = rng.integers(lo, hi, size=(max(4 * need, 64), 3))
        idx = idx[lung[idx[:, 0], idx[:, 1], idx[:, 2]]]
        if accept is not None and len(idx):
            idx = idx[accept(idx)]
        for row in idx:
            key = tuple(int(v) for v in row)
            if key not in seen:
                seen.add(key)
                chosen.append(row)
                if len(chosen) == n:
                    break
    return np.array(chosen, dtype=int).reshape(-1, 3)


def _subset(frame: pd.DataFrame, cap: int, rng: np.random.Generator, order: str | None = None) -> pd.DataFrame:
    """At most ``cap`` rows: drawn at random, or with ``order`` (hard negatives) half of them the highest
    ``order`` values and half drawn at random from the rest. The detector hands stage 2 up to 300
    candidates per scan, most of middling stage-1 peak: a bank of only the top ones would teach stage 2
    the most nodule-like false positives and nothing of the rest."""
    if cap < 0 or len(frame) <= cap:
        return frame
    if order is not None:
        ranked = frame.sort_values(order, ascending=False, kind="stable")
        top = (cap + 1) // 2
        rest = ranked.iloc[top:]
        pick = np.sort(rng.choice(len(rest), size=cap - top, replace=False))
        return pd.concat([ranked.iloc[:top], rest.iloc[pick]])
    return frame.iloc[np.sort(rng.choice(len(frame), size=cap, replace=False))]


def build_scan_crops(
    image,
    entry: dict,
    settings: CropBankSettings,
    lung: np.ndarray | None = None,
    candidates: pd.DataFrame | None = None,
    hard_negatives: pd.DataFrame | None = None,
) -> tuple[np.ndarray, pd.DataFrame]:
    """All crops of one preprocessed scan.

    Args:
        image: (1, i, j, k) MetaTensor from :func:`~monai_lung.transforms.ct_preprocessing` (scaled to [0, 1],
            its ``affine`` maps voxel index to world mm in ``meta["space"]``, RAS by default).
        entry: data-list entry (``seriesuid``, ``nodules`` and ``excluded`` with world LPS mm centres).
        lung: (i, j, k) bool lung mask of ``image`` (needed for ``random_lung`` points).
        candidates: this scan's rows of ``candidates.csv`` (``coordX/Y/Z`` world LPS mm, ``class``).
        hard_negatives: this scan's stage-1 candidates labelled by :func:`~monai_lung.stage2.mining.label_candidates`
            (``label == 0`` rows are used).

    Returns:
        crops (N, S, S, S) float16 with S = ``settings.crop_size``, values in [0, 1] (0 where padded
        outside the scan), the point at voxel S // 2; and a DataFrame of N rows with :data:`INDEX_COLUMNS`
        (``row`` = 0..N-1).
    """
    uid = entry_seriesuid(entry)
    affine = image.affine.numpy() if hasattr(image, "affine") else np.eye(4)
    space = str(image.meta.get("space", "RAS")) if hasattr(image, "meta") else "RAS"
    shape = np.asarray(image.shape[1:])
    nod_c, nod_r = finding_arrays(entry.get("nodules"))
    exc_c, exc_r = finding_arrays(entry.get("excluded"), settings.excluded_diameter_mm)

    def is_negative(points_lps: np.ndarray) -> np.ndarray:
        return away_from_findings(points_lps, nod_c, nod_r, settings.negative_margin_mm) & away_from_findings(
            points_lps, exc_c, exc_r
        )

    parts: list[pd.DataFrame] = []

    def add(points_lps: np.ndarray, label: int, source: str, diameter=np.nan, score=np.nan) -> None:
        points_lps = np.asarray(points_lps, dtype=np.float64).reshape(-1, 3)
        if len(points_lps) == 0:
            return
        idx = np.atleast_2d(world_to_index(points_lps, affine, space=space, points_space="LPS"))
        parts.append(
            pd.DataFrame(
                {
                    "seriesuid": uid, "label": label, "source": source,
                    "coordX": points_lps[:, 0], "coordY": points_lps[:, 1], "coordZ": points_lps[:, 2],
                    "index_i": idx[:, 0], "index_j": idx[:, 1], "index_k": idx[:, 2],
                    "diameter_mm": diameter, "nodule_distance_mm": nearest_distance(points_lps, nod_c), "score": score,
                }
            )
        )

    pos, owner = positive_points(
        nod_c, nod_r, settings.positives_per_nodule, settings.positive_jitter, scan_rng(settings.seed, uid, 1)
    )
    add(pos, 1, "nodule", diameter=(2 * nod_r[owner]) if len(owner) else np.nan)

    if candidates is not None and len(candidates):
        neg = candidates[candidates["class"] == 0]
        neg = neg[is_negative(neg[["coordX", "coordY", "coordZ"]].to_numpy())]
        neg = _subset(neg, settings.candidates_per_scan, scan_rng(settings.seed, uid, 2))
        add(neg[["coordX", "coordY", "coordZ"]].to_numpy(), 0, "candidates_csv")

    if settings.random_per_scan > 0 and lung is not None:

        def accept(idx: np.ndarray) -> np.ndarray:
            return is_negative(np.atleast_2d(index_to_world(idx.astype(np.float64), affine, space=space, points_space="LPS")))

        vox = random_lung_points(np.asarray(lung, dtype=bool), settings.random_per_scan, scan_rng(settings.seed, uid, 3), accept)
        add(index_to_world(vox.astype(np.float64), affine, space=space, points_space="LPS"), 0, "random_lung")

    if hard_negatives is not None and len(hard_negatives):
        hard = hard_negatives[hard_negatives["label"] == 0]
        hard = hard[is_negative(hard[["coordX", "coordY", "coordZ"]].to_numpy())]  # re-checked: cache may predate edits
        hard = _subset(hard, settings.hard_negatives_per_scan, scan_rng(settings.seed, uid, 4), order="peak_prob")
        add(
            hard[["coordX", "coordY", "coordZ"]].to_numpy(), 0, "hard_negative",
            diameter=hard["diameter_mm"].to_numpy(), score=hard["peak_prob"].to_numpy(),
        )

    meta = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame({c: pd.Series(dtype=float) for c in INDEX_COLUMNS})
    meta["row"] = np.arange(len(meta))
    meta = meta[INDEX_COLUMNS]
    outside = ~np.all((np.rint(meta[["index_i", "index_j", "index_k"]].to_numpy()) >= 0) & (np.rint(meta[["index_i", "index_j", "index_k"]].to_numpy()) < shape), axis=1)
    if outside.any():
        logger.warning("%s: %d crop centre(s) lie outside the scan (kept, all padding)", uid, int(outside.sum()))
    size = (settings.crop_size,) * 3
    crops = np.zeros((len(meta), *size), dtype=np.float16)
    idx_all = meta[["index_i", "index_j", "index_k"]].to_numpy()
    for start in range(0, len(meta), 32):  # bounded float32 temporaries
        chunk = extract_crops(image, idx_all[start : start + 32], size, pad_value=0.0)
        crops[start : start + len(chunk)] = chunk[:, 0].numpy().astype(np.float16)
    return crops, meta


def bank_spacing(bank_dir: str | os.PathLike) -> tuple[float, float, float]:
    """The (i, j, k) voxel size in mm a crop bank was cut at (its ``bank.json``). Crops are plain tensors
    without an affine: transforms that work in mm (the synthetic nodules of stage-2 training) take it."""
    settings = CropBank(bank_dir).settings()
    if settings is None:
        raise DataError(bank_dir, "not a crop bank (no bank.json); build one with `monai-lung crops`")
    return tuple(float(v) for v in settings.spacing)


class CropBank:
    """A crop bank folder (see the module docstring for its layout)."""

    def __init__(self, bank_dir: str | os.PathLike):
        self.dir = Path(bank_dir)

    @property
    def settings_file(self) -> Path:
        return self.dir / "bank.json"

    @property
    def index_file(self) -> Path:
        return self.dir / "index.csv"

    def crops_file(self, uid: str) -> Path:
        return self.dir / "crops" / f"{uid}.npy"

    def meta_file(self, uid: str) -> Path:
        return self.dir / "crops" / f"{uid}.csv"

    def hard_negative_file(self, uid: str) -> Path:
        return self.dir / "hard_negatives" / f"{uid}.csv"

    def settings(self) -> CropBankSettings | None:
        if not self.settings_file.is_file():
            return None
        return CropBankSettings.from_json(json.loads(self.settings_file.read_text(encoding="utf-8"))["settings"])

    def open(self, settings: CropBankSettings, extra: dict | None = None) -> None:
        """Create the bank, or check that an existing one was cut with the same ``settings`` and ``extra``.

        ``extra`` records what else shapes the crops (stage-1 weights, candidates file); a mismatch is an
        error rather than a silent mix of crops from two configurations.
        """
        record = {"format": BANK_FORMAT, "settings": settings.to_json(), "inputs": extra or {}}
        if self.settings_file.is_file():
            old = json.loads(self.settings_file.read_text(encoding="utf-8"))
            diffs = [
                f"{k}: {old.get('settings', {}).get(k)} -> {v}" for k, v in record["settings"].items() if old.get("settings", {}).get(k) != v
            ]
            for k, v in record["inputs"].items():
                if k in old.get("inputs", {}) and old["inputs"][k] != v:
                    diffs.append(f"{k}: {old['inputs'][k]} -> {v}")
            if old.get("format") != BANK_FORMAT or diffs:
                raise DataError(
                    self.settings_file,
                    f"crop bank was built with other settings ({'; '.join(diffs) or old.get('format')}); "
                    "use another output folder or delete this one",
                )
            merged = {**old.get("inputs", {}), **record["inputs"]}
            if merged != old.get("inputs", {}):
                write_json_atomic(self.settings_file, {**record, "inputs": merged})
            return
        write_json_atomic(self.settings_file, record)

    def done(self, uid: str) -> bool:
        return self.meta_file(uid).is_file() and self.crops_file(uid).is_file()

    def write_scan(self, uid: str, crops: np.ndarray, meta: pd.DataFrame) -> None:
        """Store one scan: the crops first, then the metadata CSV that marks the scan finished."""
        self.crops_file(uid).parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.crops_file(uid)) as tmp:
            with open(tmp, "wb") as fh:  # a file object: np.save would append ".npy" to a bare name
                np.save(fh, np.ascontiguousarray(crops, dtype=np.float16))
        write_csv_atomic(self.meta_file(uid), meta[INDEX_COLUMNS])

    def finished_uids(self) -> list[str]:
        folder = self.dir / "crops"
        if not folder.is_dir():
            return []
        return sorted(p.stem for p in folder.glob("*.csv") if not p.name.startswith(".") and self.crops_file(p.stem).is_file())

    def write_index(self) -> pd.DataFrame:
        """Rebuild ``index.csv`` from every finished scan (atomically) and return it."""
        frames = [pd.read_csv(self.meta_file(u), dtype={"seriesuid": str}) for u in self.finished_uids()]
        frames = [f for f in frames if len(f)]
        index = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=INDEX_COLUMNS)
        write_csv_atomic(self.index_file, index[INDEX_COLUMNS])
        return index

    def read_index(self) -> pd.DataFrame:
        """The bank's ``index.csv`` (:data:`INDEX_COLUMNS`); rebuilt from the per-scan files when missing or older."""
        if not self.settings_file.is_file():
            raise DataError(self.dir, "not a crop bank (no bank.json); build one with `monai-lung crops`")
        metas = list((self.dir / "crops").glob("*.csv")) if (self.dir / "crops").is_dir() else []
        newest = max((p.stat().st_mtime for p in metas), default=0.0)
        if not self.index_file.is_file() or newest > self.index_file.stat().st_mtime:
            return self.write_index()  # an interrupted run finished scans after the last index
        return pd.read_csv(self.index_file, dtype={"seriesuid": str})

    def load_crops(self, uid: str, mmap: bool = True) -> np.ndarray:
        """(N, S, S, S) float16 crops of a scan (memory-mapped by default: the page cache does the caching)."""
        return np.load(self.crops_file(uid), mmap_mode="r" if mmap else None)


def _file_fingerprint(path: str | os.PathLike | None) -> str | None:
    if path is None:
        return None
    st = Path(path).stat()
    return f"{Path(path).resolve()}:{st.st_size}:{int(st.st_mtime)}"


def build_crop_bank(
    entries: Iterable[dict],
    bank_dir: str | os.PathLike,
    settings: CropBankSettings | None = None,
    candidates: pd.DataFrame | str | os.PathLike | None = None,
    miner=None,
    hard_negatives: pd.DataFrame | str | os.PathLike | None = None,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Fill ``bank_dir`` with the crops of every data-list entry, skipping scans already finished there.

    Args:
        entries: data-list entries with absolute ``image`` paths (see :func:`monai_lung.datalist.load_datalist_entries`).
        settings: crop settings (defaults: :class:`CropBankSettings`).
        candidates: ``candidates.csv`` (path or DataFrame, world LPS mm) for ``candidates_csv`` negatives.
        miner: a :class:`~monai_lung.stage2.mining.HardNegativeMiner`: stage 1 is run on each scan (cached per scan
            in ``hard_negatives/``) for ``hard_negative`` crops.
        hard_negatives: alternatively, precomputed labelled stage-1 candidates (CSV path or DataFrame with
            ``seriesuid, coordX, coordY, coordZ, diameter_mm, peak_prob, label`` as written by
            ``monai-lung hard-negatives``).
        log: progress callback (one line per scan).

    Returns:
        ``{"scans": processed, "skipped": already finished, "crops": rows in the index, "by_source": {...}}``.
    """
    settings = settings or CropBankSettings()
    log = log or logger.info
    bank = CropBank(bank_dir)
    extra = {}
    if isinstance(candidates, (str, os.PathLike)):
        extra["candidates"] = _file_fingerprint(candidates)
        candidates = read_candidates(candidates)
    if isinstance(hard_negatives, (str, os.PathLike)):
        extra["hard_negatives"] = _file_fingerprint(hard_negatives)
        hard_negatives = read_mined_candidates(hard_negatives, with_diameter=True)
    if miner is not None:
        extra["stage1"] = miner.fingerprint
    bank.open(settings, extra)
    cand_groups = dict(tuple(candidates.groupby("seriesuid"))) if candidates is not None else {}
    hard_groups = dict(tuple(hard_negatives.groupby("seriesuid"))) if hard_negatives is not None else {}
    preprocess = ct_preprocessing("image", spacing=settings.spacing, hu_window=settings.hu_window)
    entries = list(entries)
    processed = skipped = 0
    for n, entry in enumerate(entries, start=1):
        uid = entry_seriesuid(entry)
        if bank.done(uid):
            skipped += 1
            continue
        image = preprocess({"image": entry["image"]})["image"]
        lung = lung_mask(image, voxel_spacing(image), hu_window=settings.hu_window)
        hard = hard_groups.get(uid)
        if miner is not None:
            cache = bank.hard_negative_file(uid)
            if cache.is_file():
                hard = read_mined_candidates(cache, with_diameter=True)
            else:
                hard = miner(image, entry)
                write_csv_atomic(cache, hard)
        crops, meta = build_scan_crops(image, entry, settings, lung=lung, candidates=cand_groups.get(uid), hard_negatives=hard)
        bank.write_scan(uid, crops, meta)
        processed += 1
        counts = meta["source"].value_counts().to_dict()
        log(f"[{n}/{len(entries)}] {uid}: {len(meta)} crops ({', '.join(f'{k} {v}' for k, v in sorted(counts.items()))})")
    index = bank.write_index()
    return {
        "scans": processed,
        "skipped": skipped,
        "crops": int(len(index)),
        "by_source": {str(k): int(v) for k, v in index["source"].value_counts().items()} if len(index) else {},
    }


def centre_view(crop, size: int | None):
    """The central ``size``³ block of a (..., S, S, S) crop (a view, no copy), the candidate point moving from
    voxel S // 2 to voxel size // 2; the whole crop when ``size`` is None or not smaller than S."""
    full = crop.shape[-1]
    if size is None or int(size) >= full:
        return crop
    start = full // 2 - int(size) // 2
    block = slice(start, start + int(size))
    return crop[..., block, block, block]
