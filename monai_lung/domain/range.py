"""The range of CT the detector is validated on: the one place it is stated (``docs/outputs.md`` shows it).

The models are trained and measured on LUNA16-like CT: 0.5-2.5 mm slices (LUNA16 keeps only those), pixels of
about 0.45-1 mm, chest scans that cover both lungs from apex to base, reconstructed with the kernel families of the
four vendors in LIDC-IDRI, with or without intravenous contrast (LIDC-IDRI holds both; its shared scan
LIDC-IDRI-0001 is enhanced), so contrast is recorded but not a warning. A scan outside any of these still gets
findings, with a warning that names the reason (:func:`~monai_lung.domain.check.check_domain`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: kernel families by vendor naming: a kernel none of these match is outside the validated range
KERNEL_FAMILIES = (
    ("GE (STANDARD, SOFT, CHEST, LUNG, BONE, DETAIL, EDGE)", r"^(STANDARD|SOFT|CHEST|LUNG|BONE|BONEPLUS|DETAIL|EDGE)$"),
    ("Siemens body kernels (B10-B80, Br/Bl/Bf/Bv, I/Q iterative)", r"^(B|BR|BL|BF|BV|I|Q|QR)\d{2}[A-Z]?(\\\d)?$"),
    ("Philips (A-E, L, YA-YC)", r"^(A|B|C|D|E|L|YA|YB|YC)$"),
    ("Toshiba/Canon body kernels (FC01-FC18, FC50-FC56)", r"^FC(0\d|1[0-8]|5[0-6])$"),
)


@dataclass(frozen=True)
class ValidatedRange:
    """Bounds (inclusive) of what the detector was validated on. Units in the field names."""

    slice_step_mm: tuple[float, float] = (0.5, 2.5)
    slice_thickness_mm: tuple[float, float] = (0.5, 2.5)
    pixel_spacing_mm: tuple[float, float] = (0.45, 1.0)
    # adults' lungs on CT, from expiration to full inspiration; less is a scan with little lung (an abdomen)
    lung_volume_l: tuple[float, float] = (1.5, 9.0)
    # lung on the scan's first or last slice, as a share of the largest axial lung area, above which the scan has
    # cut the lungs off (a scan that starts at the apex shows a few voxels of it)
    lung_cut_fraction: float = 0.05
    contrast_enhanced: bool = True  # enhanced scans are inside the range (LIDC-IDRI holds both)

    def kernel_family(self, kernel: str | None) -> str | None:
        """The validated family a ``ConvolutionKernel`` value belongs to; None when it matches none."""
        name = (kernel or "").strip().upper()
        for family, pattern in KERNEL_FAMILIES:
            if re.match(pattern, name):
                return family
        return None

    def rows(self) -> list[tuple[str, str]]:
        """(what, validated range) rows, the table ``docs/outputs.md`` shows."""
        def span(bounds, unit):
            return f"{bounds[0]:g}-{bounds[1]:g} {unit}"

        return [
            ("slice step (distance between slice centres)", span(self.slice_step_mm, "mm")),
            ("slice thickness (DICOM SliceThickness; the step where a file does not record it)", span(self.slice_thickness_mm, "mm")),
            ("pixel spacing (in-plane)", span(self.pixel_spacing_mm, "mm")),
            ("lung coverage", "apex to base: the lungs on the first or last slice cover at most "
             f"{self.lung_cut_fraction:.0%} of their largest axial area"),
            ("lung volume (the detector's lung mask)", span(self.lung_volume_l, "L")),
            ("reconstruction kernel (DICOM ConvolutionKernel, where recorded)", "; ".join(f for f, _ in KERNEL_FAMILIES)),
            ("contrast (DICOM ContrastBolusAgent, where recorded)",
             "non-enhanced only" if not self.contrast_enhanced else "non-enhanced or enhanced (recorded, not a warning)"),
        ]

    def as_dict(self) -> dict:
        return {
            "slice_step_mm": list(self.slice_step_mm),
            "slice_thickness_mm": list(self.slice_thickness_mm),
            "pixel_spacing_mm": list(self.pixel_spacing_mm),
            "lung_volume_l": list(self.lung_volume_l),
            "lung_cut_fraction": self.lung_cut_fraction,
            "kernel_families": [f for f, _ in KERNEL_FAMILIES],
            "contrast_enhanced": self.contrast_enhanced,
        }


#: the detector's validated range (see the module docstring)
VALIDATED_RANGE = ValidatedRange()


def range_table_markdown(validated: ValidatedRange = VALIDATED_RANGE) -> str:
    """The validated range as the Markdown table of ``docs/outputs.md`` (a test keeps the two equal)."""
    lines = ["| what | validated range |", "|---|---|"]
    lines += [f"| {what} | {value} |" for what, value in validated.rows()]
    return "\n".join(lines)
