"""Per-finding review images: axial, coronal and sagittal slices through a detected nodule.

Conventions used throughout this module:

- Finding coordinates are **world LPS (x, y, z) mm**: ITK physical points, as in LUNA16 CSVs.
- Slices are cut from the scan's own voxels (no resampling) once the volume is put on an **LPS-aligned
  grid**: index x grows toward patient Left, y toward Posterior, z toward Superior. Scans whose direction
  matrix is a signed axis permutation (identity, flipped NIfTI-style axes, transposed axes) are only
  flipped/transposed (``sitk.DICOMOrient``); oblique scans are resampled (linear) onto that grid.
- The numpy arrays of such a volume are indexed ``[z, y, x]`` (``sitk.GetArrayViewFromImage``).
- Panel orientation (standard radiological display):

  ========  ===================  ======================  ==========================
  panel     rows (top -> bottom)  columns (left -> right)  array
  ========  ===================  ======================  ==========================
  axial     anterior -> posterior  patient right -> left  ``vol[z0, :, :]``
  coronal   superior -> inferior   patient right -> left  ``vol[::-1, y0, :]``
  sagittal  superior -> inferior   anterior -> posterior  ``vol[::-1, :, x0]``
  ========  ===================  ======================  ==========================

  With an LPS-aligned grid, x increases toward patient left, so a plain ``imshow`` of ``vol[z0]`` (rows y,
  columns x) already puts patient left on the image right: the radiological convention, no flip needed.
  Coronal and sagittal flip z so the head is up. Every panel is labelled with its patient directions.
- Display is in millimetres (``imshow`` extents in mm relative to the finding), so anisotropic voxels
  (e.g. 0.7 mm in-plane, 2.5 mm slices) keep their physical aspect ratio and the marker circle is a
  circle in mm (an ellipse in voxels).

Figures use matplotlib's object API with the Agg canvas (no pyplot, no global backend), so rendering is
headless and thread-safe.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import SimpleITK as sitk

from monai_lung.findings import Finding, report_items
from monai_lung.io import atomic_path, read_sitk_image

#: lung window, HU: width 1500, level -600
LUNG_WINDOW_HU = (-1350.0, 150.0)
#: default side of the square field of view around a finding, mm
DEFAULT_FOV_MM = 80.0
#: smallest marker radius, mm, so that tiny findings still get a visible circle
MIN_MARKER_RADIUS_MM = 3.0
#: colour of pixels outside the scan (padding): dark blue, distinct from black air
PADDING_COLOR = (0.10, 0.12, 0.30)

_PLANES = ("axial", "coronal", "sagittal")


@dataclass(frozen=True)
class PlaneSlice:
    """One 2D slice through a finding, ready to display.

    Attributes:
        name: "axial", "coronal" or "sagittal".
        array: float32 (rows, cols) in the image's units (HU for CT); NaN marks pixels outside the scan.
            Displayed as is (row 0 at the top), it is in radiological orientation (see module docstring).
        spacing_mm: (row, col) pixel spacing in mm.
        center_px: (row, col) continuous pixel position of the finding; pixel centres sit at integers.
        labels: patient direction letter at each image edge: keys "top", "bottom", "left", "right".
    """

    name: str
    array: np.ndarray
    spacing_mm: tuple[float, float]
    center_px: tuple[float, float]
    labels: Mapping[str, str] = field(default_factory=dict)

    def extent_mm(self) -> tuple[float, float, float, float]:
        """``imshow`` extent (left, right, bottom, top) in mm relative to the finding (x right, y down)."""
        (sr, sc), (r0, c0) = self.spacing_mm, self.center_px
        rows, cols = self.array.shape
        return ((-0.5 - c0) * sc, (cols - 0.5 - c0) * sc, (rows - 0.5 - r0) * sr, (-0.5 - r0) * sr)


def lps_aligned(image: sitk.Image) -> sitk.Image:
    """Return ``image`` (3D) on a grid whose index axes x, y, z point to patient Left, Posterior, Superior.

    Identity-direction images are returned unchanged. Signed axis permutations are reoriented without
    interpolation (``sitk.DICOMOrient``: voxel values and spacing are kept, axes permuted/flipped). Oblique
    images are resampled linearly onto an identity-direction grid with the reoriented spacing, cast to
    float32, with NaN outside the original volume. Spacing/origin in mm, world LPS.
    """
    if image.GetDimension() != 3:
        raise ValueError(f"expected a 3D image, got {image.GetDimension()}D")
    if np.allclose(image.GetDirection(), np.eye(3).ravel(), atol=1e-6):
        return image
    oriented = sitk.DICOMOrient(image, "LPS")
    if np.allclose(oriented.GetDirection(), np.eye(3).ravel(), atol=1e-6):
        return oriented
    # oblique: bounding box of the voxel-centre corners in world LPS, sampled at the reoriented spacing
    size = np.asarray(oriented.GetSize())
    corners = np.array(
        [oriented.TransformContinuousIndexToPhysicalPoint(tuple(float(v) for v in (np.array(c) * (size - 1))))
         for c in np.ndindex(2, 2, 2)]
    )
    spacing = np.asarray(oriented.GetSpacing(), dtype=float)
    lo, hi = corners.min(axis=0), corners.max(axis=0)
    out_size = [int(n) for n in np.floor((hi - lo) / spacing + 1e-6).astype(int) + 1]
    return sitk.Resample(
        sitk.Cast(oriented, sitk.sitkFloat32), out_size, sitk.Transform(), sitk.sitkLinear,
        tuple(float(v) for v in lo), tuple(float(v) for v in spacing), tuple(np.eye(3).ravel()), float("nan"),
        sitk.sitkFloat32,
    )


def _padded_box(volume_zyx: np.ndarray, center_zyx: Sequence[int], half_zyx: Sequence[int]) -> np.ndarray:
    """Crop a (2*hz+1, 2*hy+1, 2*hx+1) box centred on voxel ``center_zyx`` from ``volume_zyx`` ([z, y, x]).

    The box is float32; where it reaches past the volume it is padded with NaN, so the centre voxel
    is always at the box centre (index ``half_zyx``).
    """
    shape = tuple(2 * h + 1 for h in half_zyx)
    box = np.full(shape, np.nan, dtype=np.float32)
    src, dst = [], []
    for c, h, n in zip(center_zyx, half_zyx, volume_zyx.shape):
        a, b = c - h, c + h + 1  # wanted range in volume indices
        a_in, b_in = max(a, 0), min(b, n)
        if a_in >= b_in:
            return box
        src.append(slice(a_in, b_in))
        dst.append(slice(a_in - a, b_in - a))
    box[tuple(dst)] = volume_zyx[tuple(src)]
    return box


def finding_slices(
    image: sitk.Image, coord_lps: Sequence[float], fov_mm: float = DEFAULT_FOV_MM
) -> dict[str, PlaneSlice]:
    """Axial, coronal and sagittal slices through a world point, each covering at least ``fov_mm`` square.

    Args:
        image: 3D scan (any direction matrix; see :func:`lps_aligned`). Pass an already LPS-aligned image
            to avoid re-orienting it for every finding.
        coord_lps: world LPS (x, y, z) mm of the finding.
        fov_mm: side of the square field of view, mm.

    Returns:
        ``{"axial": PlaneSlice, "coronal": ..., "sagittal": ...}``. Each slice passes through the scan voxel
        nearest to the point, is cut from the scan's own voxels, has an odd number of rows and columns with
        that voxel at the exact centre pixel, and spans ``2 * ceil(fov_mm / 2 / spacing) + 1`` pixels per
        axis; the part outside the scan is NaN (padded, never cropped). ``center_px`` carries the sub-voxel
        position of the point. Arrays are float32 (rows, cols), see :class:`PlaneSlice` for orientation.
    """
    coord = np.asarray(coord_lps, dtype=np.float64).reshape(-1)
    if coord.shape != (3,) or not np.all(np.isfinite(coord)):
        raise ValueError(f"finding coordinate must be 3 finite world mm values, got {coord_lps!r}")
    if not fov_mm > 0:
        raise ValueError(f"fov_mm must be positive, got {fov_mm}")
    img = lps_aligned(image)
    sx, sy, sz = (float(s) for s in img.GetSpacing())
    cont = np.asarray(img.TransformPhysicalPointToContinuousIndex(tuple(coord)))  # (x, y, z)
    nearest = np.round(cont).astype(int)
    frac_x, frac_y, frac_z = cont - nearest
    hx, hy, hz = (int(math.ceil(fov_mm / 2.0 / s - 1e-9)) for s in (sx, sy, sz))
    volume = sitk.GetArrayViewFromImage(img)  # [z, y, x], no copy
    if volume.ndim != 3:
        raise ValueError("multi-component images are not supported")
    box = _padded_box(volume, (nearest[2], nearest[1], nearest[0]), (hz, hy, hx))  # [z, y, x]
    return {
        "axial": PlaneSlice(
            "axial", box[hz, :, :], (sy, sx), (hy + frac_y, hx + frac_x),
            {"top": "A", "bottom": "P", "left": "R", "right": "L"},
        ),
        "coronal": PlaneSlice(
            "coronal", box[::-1, hy, :], (sz, sx), (hz - frac_z, hx + frac_x),
            {"top": "S", "bottom": "I", "left": "R", "right": "L"},
        ),
        "sagittal": PlaneSlice(
            "sagittal", box[::-1, :, hx], (sz, sy), (hz - frac_z, hy + frac_y),
            {"top": "S", "bottom": "I", "left": "A", "right": "P"},
        ),
    }


def overview_slice(image: sitk.Image, coord_lps: Sequence[float]) -> PlaneSlice:
    """The whole axial slice through the voxel nearest to world LPS ``coord_lps`` (x, y, z) mm.

    Returns a :class:`PlaneSlice` (float32 (rows=y, cols=x) in image units, radiological orientation,
    ``center_px`` = the point's continuous (row, col)); all NaN when the point lies above/below the scan.
    """
    img = lps_aligned(image)
    sx, sy, _ = (float(s) for s in img.GetSpacing())
    cont = np.asarray(img.TransformPhysicalPointToContinuousIndex(tuple(float(c) for c in coord_lps)))
    volume = sitk.GetArrayViewFromImage(img)
    z = int(round(cont[2]))
    if 0 <= z < volume.shape[0]:
        arr = np.asarray(volume[z], dtype=np.float32)
    else:
        arr = np.full(volume.shape[1:], np.nan, dtype=np.float32)
    return PlaneSlice("overview", arr, (sy, sx), (float(cont[1]), float(cont[0])),
                      {"top": "A", "bottom": "P", "left": "R", "right": "L"})


def _draw_panel(ax, plane: PlaneSlice, window: tuple[float, float], radius_mm: float, half_fov_mm: float,
                crosshair: bool, cmap, title: str) -> None:
    """Show ``plane`` on ``ax`` in mm around the finding, with marker, direction letters and a 10 mm bar."""
    from matplotlib import patheffects
    from matplotlib.patches import Circle

    outline = [patheffects.withStroke(linewidth=2.5, foreground="black")]  # legible on bright tissue too
    ax.imshow(np.ma.masked_invalid(plane.array), cmap=cmap, vmin=window[0], vmax=window[1],
              extent=plane.extent_mm(), interpolation="nearest", origin="upper")
    ax.set_xlim(-half_fov_mm, half_fov_mm)
    ax.set_ylim(half_fov_mm, -half_fov_mm)  # rows grow downward
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=10)
    ax.add_patch(Circle((0.0, 0.0), radius_mm, fill=False, edgecolor="#ffd400", linewidth=1.2, alpha=0.9))
    if crosshair:  # gapped crosshair: ticks outside the circle, the nodule itself stays unobscured
        a, b = radius_mm + 2.0, radius_mm + 2.0 + min(6.0, half_fov_mm * 0.15)
        for x0, y0, x1, y1 in ((-b, 0, -a, 0), (a, 0, b, 0), (0, -b, 0, -a), (0, a, 0, b)):
            ax.plot([x0, x1], [y0, y1], color="#ffd400", linewidth=1.0, alpha=0.8)
    text = dict(color="#7fdcff", fontsize=9, fontweight="bold", ha="center", va="center", path_effects=outline)
    m = half_fov_mm * 0.9
    ax.text(0, -m, plane.labels.get("top", ""), **text)
    ax.text(0, m, plane.labels.get("bottom", ""), **text)
    ax.text(-m, 0, plane.labels.get("left", ""), **text)
    ax.text(m, 0, plane.labels.get("right", ""), **text)
    # 10 mm scale bar, bottom right
    x1, y = half_fov_mm * 0.92, half_fov_mm * 0.9
    ax.plot([x1 - 10.0, x1], [y, y], color="white", linewidth=2.0, solid_capstyle="butt",
            path_effects=[patheffects.withStroke(linewidth=4.0, foreground="black")])
    ax.text(x1 - 5.0, y - half_fov_mm * 0.05, "10 mm", color="white", fontsize=7, ha="center", va="bottom",
            path_effects=outline)


def _draw_overview(ax, plane: PlaneSlice, window: tuple[float, float], half_fov_mm: float, cmap) -> None:
    """Whole axial slice with the field of view box; axes in mm relative to the finding."""
    from matplotlib import patheffects
    from matplotlib.patches import Rectangle

    ax.imshow(np.ma.masked_invalid(plane.array), cmap=cmap, vmin=window[0], vmax=window[1],
              extent=plane.extent_mm(), interpolation="antialiased", origin="upper")
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title("axial overview", fontsize=10)
    ax.add_patch(Rectangle((-half_fov_mm, -half_fov_mm), 2 * half_fov_mm, 2 * half_fov_mm, fill=False,
                           edgecolor="#ffd400", linewidth=1.0))
    text = dict(color="#7fdcff", fontsize=8, fontweight="bold", ha="center", va="center", transform=ax.transAxes,
                path_effects=[patheffects.withStroke(linewidth=2.5, foreground="black")])
    ax.text(0.5, 0.95, "A", **text)
    ax.text(0.5, 0.05, "P", **text)
    ax.text(0.04, 0.5, "R", **text)
    ax.text(0.96, 0.5, "L", **text)


def render_finding_png(
    image: sitk.Image,
    finding: Finding,
    out_png: str | os.PathLike,
    title_prefix: str = "",
    seriesuid: str = "",
    fov_mm: float = DEFAULT_FOV_MM,
    window_hu: tuple[float, float] = LUNG_WINDOW_HU,
    overview: bool = True,
    crosshair: bool = True,
    dpi: int = 100,
) -> Path:
    """Write one PNG reviewing one finding: axial, coronal, sagittal panels (plus a whole-slice overview).

    Args:
        image: the scan, a 3D ``sitk.Image`` in HU (any direction matrix; an LPS-aligned one from
            :func:`lps_aligned` saves re-orienting per finding).
        finding: the :class:`~monai_lung.findings.record.Finding` (centre world LPS mm); the title shows its report
            attributes (probability, sizes, ...; a missing number as "n/a").
        out_png: output path; written atomically (temporary file beside it, renamed when complete).
        title_prefix: text put in front of the title (e.g. "#3  ").
        seriesuid: the scan's id, for the title.
        fov_mm: side of each square panel, mm (padded with dark blue where it leaves the scan).
        window_hu: display window (low, high) in HU; default lung window W 1500 / L -600.
        overview: add a fourth, whole-axial-slice panel with the field of view outlined.
        crosshair: draw short ticks pointing at the finding, outside its circle.
        dpi: resolution (the figure is 13 x 3.9 inches with the overview, 9.9 x 3.9 without).

    Returns the PNG path. Panels are in radiological orientation and physical aspect ratio (see module
    docstring); the yellow circle has the finding's radius (at least 3 mm).
    """
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    coord = np.asarray(finding.coord, dtype=np.float64).reshape(-1)
    img = lps_aligned(image)
    planes = finding_slices(img, coord, fov_mm)
    diameter = float(finding.diameter_mm)
    radius = max(diameter / 2.0 if math.isfinite(diameter) else 0.0, MIN_MARKER_RADIUS_MM)
    window = (float(window_hu[0]), float(window_hu[1]))
    cmap = colormaps["gray"].with_extremes(bad=PADDING_COLOR)

    n_panels = 4 if overview else 3
    fig = Figure(figsize=(3.25 * n_panels, 3.9), dpi=dpi, facecolor="black")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, n_panels)
    half = fov_mm / 2.0
    for ax, name in zip(axes, _PLANES):
        ax.set_facecolor("black")
        _draw_panel(ax, planes[name], window, radius, half, crosshair, cmap, name)
        ax.title.set_color("white")
    if overview:
        axes[3].set_facecolor("black")
        _draw_overview(axes[3], overview_slice(img, coord), window, half, cmap)
        axes[3].title.set_color("white")

    line1 = f"{title_prefix}{seriesuid or ''}".strip() or "finding"
    items = [f"{label} {text}" for label, text in report_items(finding, exclude=("stage1_peak", "stage2_prob"), skip_missing=True)]
    half = (len(items) + 1) // 2  # two lines of attributes, then the position
    line2, line3 = "    ".join(items[:half]), "    ".join(items[half:] + [f"LPS ({coord[0]:.1f}, {coord[1]:.1f}, {coord[2]:.1f}) mm"])
    fig.suptitle(f"{line1}\n{line2}\n{line3}", color="white", fontsize=10)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.02, top=0.76, wspace=0.04)

    out_png = Path(out_png)
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, facecolor=fig.get_facecolor())
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide the report from a web server or other readers
    return out_png


def png_stem(seriesuid: str) -> str:
    """A file-name-safe stem for ``seriesuid``: kept as is when it holds only ``[A-Za-z0-9._-]``, else the
    unsafe characters become ``_`` and a short hash of the original is appended (no collisions)."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", seriesuid).strip(".") or "scan"
    if safe != seriesuid:
        safe = f"{safe[:80]}-{hashlib.sha1(seriesuid.encode('utf-8')).hexdigest()[:8]}"
    return safe


def _score(finding: Finding) -> float:
    p = float(finding.probability)
    return p if math.isfinite(p) else -math.inf


def render_scan_findings(
    scan_path: str | os.PathLike,
    seriesuid: str,
    findings: Sequence[Finding],
    report_dir: str | os.PathLike,
    max_findings: int = 20,
    **render_kwargs: Any,
) -> list[dict]:
    """Render the top findings of one scan to ``report_dir/images/<seriesuid>_<k>.png`` (k = 1 for the best).

    Args:
        scan_path: .mhd/.nii(.gz)/DICOM folder, read once with :func:`monai_lung.io.read_sitk_image`
            (unreadable scans raise :class:`monai_lung.io.DataError`); not read when there are no findings.
        seriesuid: scan id, used in file names (made file-name safe, see :func:`png_stem`) and titles.
        findings: the scan's :class:`~monai_lung.findings.record.Finding` records (centres world LPS mm).
        report_dir: report folder; images go to its ``images/`` subfolder.
        max_findings: render at most this many, the highest probabilities first.
        render_kwargs: passed to :func:`render_finding_png` (``fov_mm``, ``window_hu``, ``overview``...).

    Returns:
        ``[{"seriesuid", "png": path relative to report_dir (POSIX), **finding.to_json()}]`` sorted by probability,
        descending (ties keep input order; missing probabilities last): what the HTML index reads back.
    """
    ranked = sorted(findings, key=_score, reverse=True)[: max(int(max_findings), 0)]
    if not ranked:
        return []
    image = lps_aligned(read_sitk_image(scan_path))
    report_dir = Path(report_dir)
    stem = png_stem(str(seriesuid))
    out = []
    for k, finding in enumerate(ranked, start=1):
        rel = f"images/{stem}_{k}.png"
        render_finding_png(image, finding, report_dir / rel, title_prefix=f"#{k}  ", seriesuid=seriesuid, **render_kwargs)
        out.append({"seriesuid": seriesuid, "png": rel, **finding.to_json()})
    return out
