"""Which CT series of a study folder to detect on, by explicit rules, and its geometry.

Rules (:func:`choose_series`), applied to every series found under the folder (files that are not DICOM are
ignored):

1. **eligible**: Modality ``CT``, CT Image Storage SOP class, ``ImageType`` without ``LOCALIZER``, axial
   (the slice normal within 18 degrees of the patient's z axis), at least ``min_slices`` slices;
2. **intact** (an eligible series that fails is *broken*): one orientation, one matrix size and pixel spacing,
   no two slices at one position, and uniform spacing between slice positions (within 10% of the median step;
   a step of 1.5 median steps or more is reported as missing slices);
3. among eligible, intact series: the smallest slice step, then the most slices, then a soft (not sharp) kernel
   (``ConvolutionKernel`` without LUNG/BONE/SHARP/B60+ style names), then the lowest series number.

A series asked for by UID must itself be eligible and intact. A folder with no eligible, intact series is refused
with one :class:`DataError` line naming the series and its problem.

Geometry is world LPS mm: the ``affine`` maps (column, row, slice) indices of the sorted slices to DICOM patient
coordinates, which are ITK/LPS physical points (LUNA16).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from monai_lung.io.errors import DataError
from monai_lung.io.sitk_reader import read_image_header

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MIN_SLICES = 30
AXIAL_COS = float(np.cos(np.deg2rad(18.0)))
SPACING_TOLERANCE = 0.10  # relative deviation of one slice step from the median step
MISSING_STEP = 1.5  # a step this many median steps or longer means slices are missing
_SHARP_KERNEL = re.compile(r"LUNG|BONE|SHARP|EDGE|DETAIL|B[6-9]\d|FC5\d|YC|YD|\bL\b", re.IGNORECASE)


@dataclass
class SeriesInfo:
    """One series of a folder: its sorted slices and what the rules found (``problem`` None when usable)."""

    uid: str
    files: list[Path]
    datasets: list  # pydicom datasets without pixel data, in the order of ``files``
    modality: str = ""
    description: str = ""
    number: int | None = None
    kernel: str = ""
    step_mm: float = float("nan")  # distance between slice centres along the slice normal
    ineligible: str | None = None  # why the rules do not consider it (not CT, localizer, ...)
    broken: str | None = None  # why an eligible series cannot be used (missing slices, ...)
    affine: np.ndarray = field(default_factory=lambda: np.eye(4))  # (column, row, slice) -> world LPS mm
    others_in_folder: int = 0  # how many other series the folder it was found in holds

    @property
    def problem(self) -> str | None:
        return self.ineligible or self.broken

    @property
    def shape(self) -> tuple[int, int, int]:
        """(columns, rows, slices): the index order of :attr:`affine`."""
        ds = self.datasets[0]
        return int(ds.Columns), int(ds.Rows), len(self.files)

    def label(self) -> str:
        desc = f" ({self.description})" if self.description else ""
        return f"series {self.uid}{desc}"

    def summary(self) -> str:
        return (f"{len(self.files)} slices, step {self.step_mm:.2f} mm, kernel {self.kernel or 'n/a'}, "
                f"series number {self.number if self.number is not None else 'n/a'}")


def _float_list(value) -> np.ndarray | None:
    try:
        return np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None


def read_folder(folder: str | os.PathLike) -> dict[str, SeriesInfo]:
    """Every DICOM series under ``folder`` (recursively), by SeriesInstanceUID, headers only."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(folder, "DICOM folder not found")
    groups: dict[str, list] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, EOFError):
            continue  # not DICOM (a README, a DICOMDIR's sidecar): not a series
        uid = str(ds.get("SeriesInstanceUID", ""))
        if not uid or "SOPClassUID" not in ds:
            continue
        groups.setdefault(uid, []).append((path, ds))
    series = {}
    for uid, members in groups.items():
        info = SeriesInfo(uid=uid, files=[p for p, _ in members], datasets=[d for _, d in members])
        _inspect(info)
        series[uid] = info
    return series


def _inspect(info: SeriesInfo) -> None:
    """Sort the slices along their normal and fill in the rule checks and the geometry."""
    first = info.datasets[0]
    info.modality = str(first.get("Modality", ""))
    info.description = str(first.get("SeriesDescription", "") or "")
    number = first.get("SeriesNumber")
    info.number = int(number) if number not in (None, "") else None
    kernel = first.get("ConvolutionKernel", "")
    info.kernel = "\\".join(kernel) if isinstance(kernel, (list, pydicom.multival.MultiValue)) else str(kernel or "")
    image_type = [str(v).upper() for v in (first.get("ImageType") or [])]
    if info.modality != "CT":
        info.ineligible = f"modality {info.modality or 'missing'}, not CT"
        return
    if str(first.SOPClassUID) != CT_IMAGE_STORAGE:
        info.ineligible = f"SOP class {first.SOPClassUID} is not CT Image Storage"
        return
    if "LOCALIZER" in image_type:
        info.ineligible = "a localizer (ImageType LOCALIZER)"
        return
    orientations = [_float_list(ds.get("ImageOrientationPatient")) for ds in info.datasets]
    positions = [_float_list(ds.get("ImagePositionPatient")) for ds in info.datasets]
    if any(o is None or o.size != 6 for o in orientations) or any(p is None or p.size != 3 for p in positions):
        info.broken = "slices without ImageOrientationPatient/ImagePositionPatient"
        return
    if any(np.abs(o - orientations[0]).max() > 1e-3 for o in orientations):
        info.broken = "mixed slice orientations"
        return
    row, col = orientations[0][:3], orientations[0][3:]
    normal = np.cross(row, col)
    if abs(normal[2]) < AXIAL_COS:
        info.ineligible = "not axial (slice normal more than 18 degrees from the patient's z axis)"
        return
    if len(info.files) < MIN_SLICES:
        info.ineligible = f"{len(info.files)} slices, fewer than {MIN_SLICES}"
        return
    sizes = {(int(ds.Rows), int(ds.Columns), tuple(np.round(_float_list(ds.get("PixelSpacing", [0, 0])), 4))) for ds in info.datasets}
    if len(sizes) > 1:
        info.broken = "mixed matrix sizes or pixel spacings"
        return
    along = np.array([float(p @ normal) for p in positions])
    order = np.argsort(along, kind="stable")
    info.files = [info.files[i] for i in order]
    info.datasets = [info.datasets[i] for i in order]
    along = along[order]
    steps = np.diff(along)
    if (steps < 1e-3).any():
        k = int(np.flatnonzero(steps < 1e-3)[0])
        info.broken = f"two slices at one position ({info.files[k].name}, {info.files[k + 1].name})"
        return
    median = float(np.median(steps))
    info.step_mm = median
    if (steps >= MISSING_STEP * median).any():
        k = int(np.argmax(steps))
        info.broken = (f"missing slices: a gap of {steps[k]:.2f} mm between {info.files[k].name} and "
                       f"{info.files[k + 1].name}, the series' step is {median:.2f} mm")
        return
    if (np.abs(steps - median) > SPACING_TOLERANCE * median).any():
        k = int(np.argmax(np.abs(steps - median)))
        info.broken = f"uneven slice spacing: {steps[k]:.2f} mm after {info.files[k].name}, the median step is {median:.2f} mm"
        return
    row_spacing, col_spacing = _float_list(info.datasets[0].PixelSpacing)
    affine = np.eye(4)
    affine[:3, 0] = row * col_spacing  # column index runs along the row direction
    affine[:3, 1] = col * row_spacing  # row index runs along the column direction
    affine[:3, 2] = normal * median
    affine[:3, 3] = _float_list(info.datasets[0].ImagePositionPatient)
    info.affine = affine


def _sharp(kernel: str) -> bool:
    return bool(_SHARP_KERNEL.search(kernel or ""))


def choose_series(folder: str | os.PathLike, series_uid: str | None = None) -> tuple[SeriesInfo, str]:
    """The series of ``folder`` to detect on (module docstring's rules) and one line saying why.

    Raises :class:`DataError` naming the folder and the series (and its problem) when none can be used.
    """
    series = read_folder(folder)
    if not series:
        raise DataError(folder, "no DICOM series found")
    if series_uid:
        if series_uid not in series:
            raise DataError(folder, f"series {series_uid} not found (the folder holds {', '.join(sorted(series))})")
        info = series[series_uid]
        if info.problem:
            raise DataError(folder, f"{info.label()} cannot be used: {info.problem}")
        return info, f"{info.label()} chosen by its UID: {info.summary()}"
    for info in series.values():
        info.others_in_folder = len(series) - 1
    usable = [s for s in series.values() if s.problem is None]
    if not usable:
        broken = [s for s in series.values() if s.broken]
        worst = broken[0] if broken else next(iter(series.values()))
        others = f" ({len(series) - 1} other series: none usable)" if len(series) > 1 else ""
        raise DataError(folder, f"{worst.label()} cannot be used: {worst.problem}{others}")
    usable.sort(key=lambda s: (round(s.step_mm, 3), -len(s.files), _sharp(s.kernel), s.number if s.number is not None else 1 << 30))
    chosen = usable[0]
    skipped = [f"{s.uid}: {s.problem}" for s in series.values() if s.problem]
    why = (f"{chosen.label()} chosen: {chosen.summary()}; the thinnest-sliced of {len(usable)} usable CT series"
           + (f"; skipped {'; '.join(skipped)}" if skipped else ""))
    return chosen, why


def check_image_on_series(path: str | os.PathLike, info: SeriesInfo, tolerance_mm: float | None = None) -> None:
    """Refuse an image file (``.mhd``, ``.nii.gz``...) that does not cover the same world box as the series ``info``
    (e.g. a LUNA16 ``.mhd`` made from it): its first and last voxel centres must lie within ``tolerance_mm``
    (default: half the series' largest voxel step) of the series'. Reads the header only."""
    reader = read_image_header(path)
    size = np.asarray(reader.GetSize()[:3], dtype=np.float64)
    linear = np.asarray(reader.GetDirection(), dtype=np.float64).reshape(3, 3) @ np.diag(reader.GetSpacing()[:3])
    first = np.asarray(reader.GetOrigin()[:3], dtype=np.float64)
    corners = np.array([first, first + linear @ (size - 1)])
    theirs = np.array([info.affine[:3, 3], info.affine[:3, 3] + info.affine[:3, :3] @ (np.asarray(info.shape, dtype=np.float64) - 1)])
    tolerance = 0.5 * float(np.linalg.norm(info.affine[:3, :3], axis=0).max()) if tolerance_mm is None else tolerance_mm
    gap = float(np.abs(corners - theirs).max())
    if gap > tolerance:
        raise DataError(path, f"does not lie on reference {info.label()}: its corner voxels are {gap:.1f} mm from the series' "
                              f"(world LPS box {np.round(corners, 1).tolist()} vs {np.round(theirs, 1).tolist()})")


def series_reading_folder(info: SeriesInfo, folder: str | os.PathLike, link_root: str | os.PathLike) -> Path:
    """A folder holding only ``info``'s files, for a reader that reads whole folders: ``folder`` itself when it
    holds no other DICOM file, else ``link_root/<uid>/`` with symbolic links to the series' files."""
    folder = Path(folder)
    if info.others_in_folder == 0 and all(p.parent == folder for p in info.files):
        return folder
    target = Path(link_root) / info.uid
    target.mkdir(parents=True, exist_ok=True)
    for n, path in enumerate(info.files):
        link = target / f"{n:05d}.dcm"
        if not link.exists():
            link.symlink_to(Path(path).resolve())
    return target
