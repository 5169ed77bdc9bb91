"""Is a scan inside the range the detector was validated on? A pure function of what its header, its DICOM
series and its lung mask say.

    facts = ScanFacts.from_parts(geometry_facts(original_affine), dicom_facts(datasets), lung_facts(mask, affine))
    check = check_domain(facts)       # check.in_range, check.warnings (one sentence per reason)
    check = scan_domain(image, lungs, lungs_affine, dicom_facts(datasets))   # the same from a preprocessed image

Facts a source does not record (a NIfTI file has no kernel) are None and checked only where they can be: a
missing slice thickness is taken as the slice step (contiguous slices), a missing kernel or contrast agent is not
a warning.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np

from monai_lung.domain.range import VALIDATED_RANGE, ValidatedRange
from monai_lung.io.coords import slice_axis

# ContrastBolusAgent values that say "no contrast" rather than naming an agent
_NO_CONTRAST = {"", "NONE", "NO", "N", "NO CONTRAST", "NON CONTRAST", "NONCONTRAST", "WITHOUT", "N/A", "NA", "-"}


@dataclass
class ScanFacts:
    """What the domain check looks at; None where the source does not tell.

    Attributes:
        slice_step_mm: distance between slice centres (the source grid's step along the axis nearest world z).
        pixel_spacing_mm: the source's in-plane steps (two values).
        slice_thickness_mm: the reconstructed thickness (DICOM SliceThickness).
        kernel: DICOM ConvolutionKernel.
        contrast_agent: DICOM ContrastBolusAgent when it names an agent, "" when DICOM says none, None when it
            does not tell.
        lung_volume_l: the lung mask's volume.
        lung_extent_mm: the lung mask's height along world z.
        lung_cut: ends of the lungs the scan cuts off, ("apex",), ("base",), both or ().
        lung_border_fraction: lung area on the (bottom, top) slice over the largest axial lung area.
    """

    slice_step_mm: float | None = None
    pixel_spacing_mm: tuple[float, float] | None = None
    slice_thickness_mm: float | None = None
    kernel: str | None = None
    contrast_agent: str | None = None
    lung_volume_l: float | None = None
    lung_extent_mm: float | None = None
    lung_cut: tuple[str, ...] | None = None
    lung_border_fraction: tuple[float, float] | None = None

    @classmethod
    def from_parts(cls, *parts: dict) -> "ScanFacts":
        """Facts from the dicts of :func:`geometry_facts`, :func:`dicom_facts` and :func:`lung_facts` (later
        parts win for a key both give; None values do not overwrite)."""
        merged: dict = {}
        for part in parts:
            merged.update({k: v for k, v in (part or {}).items() if v is not None})
        return cls(**merged)

    def as_dict(self) -> dict:
        out = asdict(self)
        for key in ("pixel_spacing_mm", "lung_cut", "lung_border_fraction"):
            if out[key] is not None:
                out[key] = list(out[key])
        return out


@dataclass
class DomainCheck:
    """The result: ``in_range`` (no warning), ``warnings`` (one sentence per reason), the facts it looked at and
    the range it checked them against."""

    in_range: bool
    warnings: list[str] = field(default_factory=list)
    facts: ScanFacts = field(default_factory=ScanFacts)
    validated_range: dict = field(default_factory=dict)

    def summary(self) -> str:
        """One line for a log or a report: "in the validated range" or the reasons joined."""
        return "in the validated range" if self.in_range else "outside the validated range: " + "; ".join(self.warnings)

    def as_dict(self) -> dict:
        return {"in_range": self.in_range, "warnings": list(self.warnings), "facts": self.facts.as_dict(),
                "validated_range": dict(self.validated_range)}


def geometry_facts(source_affine) -> dict:
    """``slice_step_mm`` and ``pixel_spacing_mm`` of a source grid from its 4x4 (i, j, k) -> world mm affine (RAS or
    LPS: only lengths and the z row are used), e.g. a MONAI image's ``meta["original_affine"]``: the file's own
    voxels, not the resampled grid's."""
    linear = np.asarray(source_affine, dtype=np.float64)[:3, :3]
    steps = np.linalg.norm(linear, axis=0)
    axis = slice_axis(linear)
    return {"slice_step_mm": float(steps[axis]), "pixel_spacing_mm": tuple(float(steps[a]) for a in range(3) if a != axis)}


def image_facts(image) -> dict:
    """:func:`geometry_facts` of a MONAI image's source grid: its ``meta["original_affine"]`` (the file's voxels, what
    :class:`~monai_lung.io.SimpleITKReader` and ``ITKReader`` record before resampling), else its ``affine``; {}
    for an array without either."""
    meta = getattr(image, "meta", None) or {}
    source = meta.get("original_affine")
    if source is None:
        source = getattr(image, "affine", None)
    if source is None:
        return {}
    source = source.detach().cpu().numpy() if hasattr(source, "detach") else np.asarray(source)
    return geometry_facts(source)


def dicom_facts(datasets: Sequence) -> dict:
    """``slice_thickness_mm`` (median SliceThickness), ``kernel`` and ``contrast_agent`` of a series' pydicom
    datasets (headers are enough); keys the series does not record are left out."""
    out: dict = {}
    if not datasets:
        return out
    thickness = []
    for ds in datasets:
        try:
            value = float(ds.get("SliceThickness", None))
        except (TypeError, ValueError):
            continue
        if value > 0:
            thickness.append(value)
    if thickness:
        out["slice_thickness_mm"] = float(np.median(thickness))
    first = datasets[0]
    kernel = first.get("ConvolutionKernel", None)
    if kernel not in (None, ""):
        out["kernel"] = "\\".join(str(v) for v in kernel) if isinstance(kernel, (list, tuple)) or type(kernel).__name__ == "MultiValue" else str(kernel)
    if "ContrastBolusAgent" in first:
        agent = str(first.get("ContrastBolusAgent") or "").strip()
        if agent:  # an empty type-2 value does not tell
            out["contrast_agent"] = "" if agent.upper() in _NO_CONTRAST else agent
    return out


def lung_facts(lung: np.ndarray, affine, cut_fraction: float = VALIDATED_RANGE.lung_cut_fraction) -> dict:
    """``lung_volume_l``, ``lung_extent_mm``, ``lung_cut`` and ``lung_border_fraction`` of an (i, j, k) bool lung
    mask (the lungs themselves, not grown by a margin) on a grid with the 4x4 (i, j, k) -> world mm ``affine``
    (RAS or LPS: both have +z towards the head). An empty mask has volume 0 and both ends "cut"."""
    lung = np.asarray(lung, dtype=bool)
    linear = np.asarray(affine, dtype=np.float64)[:3, :3]
    voxel_ml = abs(float(np.linalg.det(linear))) / 1000.0
    count = int(np.count_nonzero(lung))
    if count == 0:
        return {"lung_volume_l": 0.0, "lung_extent_mm": 0.0, "lung_cut": ("apex", "base"), "lung_border_fraction": (1.0, 1.0)}
    axis = slice_axis(linear)
    area = np.count_nonzero(lung, axis=tuple(a for a in range(3) if a != axis)).astype(np.float64)
    occupied = np.flatnonzero(area)
    step = float(np.linalg.norm(linear[:, axis]))
    top_is_last = linear[2, axis] > 0  # index increasing along the slice axis moves towards the head
    first, last = area[0] / area.max(), area[-1] / area.max()
    bottom, top = (first, last) if top_is_last else (last, first)
    cut = tuple(end for end, share in (("apex", top), ("base", bottom)) if share > cut_fraction)
    return {
        "lung_volume_l": count * voxel_ml / 1000.0,
        "lung_extent_mm": float((occupied[-1] - occupied[0] + 1) * step),
        "lung_cut": cut,
        "lung_border_fraction": (float(bottom), float(top)),
    }


def _outside(value: float, bounds: tuple[float, float]) -> bool:
    return not (bounds[0] - 1e-6 <= value <= bounds[1] + 1e-6)


def scan_domain(image, lungs: np.ndarray | None = None, lungs_affine=None, known: dict | None = None,
               validated: ValidatedRange = VALIDATED_RANGE) -> DomainCheck:
    """:func:`check_domain` of a preprocessed MONAI image (its source grid, :func:`image_facts`), its lungs mask
    (:func:`lung_facts`; (i, j, k) bool on the grid of ``lungs_affine``) and what else is ``known`` of the scan
    (:func:`dicom_facts`' keys)."""
    parts = [image_facts(image), known or {}]
    if lungs is not None:
        parts.append(lung_facts(lungs, lungs_affine, validated.lung_cut_fraction))
    return check_domain(ScanFacts.from_parts(*parts), validated)


def check_domain(facts: ScanFacts, validated: ValidatedRange = VALIDATED_RANGE) -> DomainCheck:
    """Check ``facts`` against ``validated``: one warning sentence per reason a scan lies outside it."""
    warnings: list[str] = []
    r = validated
    if facts.slice_step_mm is not None and _outside(facts.slice_step_mm, r.slice_step_mm):
        warnings.append(f"slice step {facts.slice_step_mm:.2f} mm is outside the validated {r.slice_step_mm[0]:g}-{r.slice_step_mm[1]:g} mm")
    thickness = facts.slice_thickness_mm
    if thickness is not None and _outside(thickness, r.slice_thickness_mm):
        warnings.append(f"slice thickness {thickness:.2f} mm is outside the validated "
                        f"{r.slice_thickness_mm[0]:g}-{r.slice_thickness_mm[1]:g} mm")
    if facts.pixel_spacing_mm is not None:
        bad = [v for v in facts.pixel_spacing_mm if _outside(v, r.pixel_spacing_mm)]
        if bad:
            warnings.append(f"pixel spacing {' x '.join(f'{v:.3f}' for v in facts.pixel_spacing_mm)} mm is outside the validated "
                            f"{r.pixel_spacing_mm[0]:g}-{r.pixel_spacing_mm[1]:g} mm")
    if facts.lung_cut:
        bottom, top = facts.lung_border_fraction or (float("nan"), float("nan"))
        shares = {"apex": top, "base": bottom}
        ends = " and ".join(f"the lung {end} ({shares[end]:.0%} of the largest axial lung area on the {'top' if end == 'apex' else 'bottom'} slice)"
                            for end in facts.lung_cut)
        warnings.append(f"the scan does not cover the lungs from apex to base: it cuts off {ends}")
    if facts.lung_volume_l is not None and _outside(facts.lung_volume_l, r.lung_volume_l):
        warnings.append(f"lung volume {facts.lung_volume_l:.2f} L is outside the validated {r.lung_volume_l[0]:g}-{r.lung_volume_l[1]:g} L"
                        + (" (little lung in the scan: not a chest CT?)" if facts.lung_volume_l < r.lung_volume_l[0] else ""))
    if facts.kernel is not None and r.kernel_family(facts.kernel) is None:
        warnings.append(f"reconstruction kernel {facts.kernel!r} is not one of the validated kernel families")
    if facts.contrast_agent and not r.contrast_enhanced:
        warnings.append(f"contrast-enhanced (ContrastBolusAgent {facts.contrast_agent!r}): validated on non-enhanced CT only")
    return DomainCheck(in_range=not warnings, warnings=warnings, facts=facts, validated_range=r.as_dict())
