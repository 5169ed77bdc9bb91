"""The validated range of CT and the per-scan check against it (``domain`` in every scan's result)."""

from monai_lung.domain.check import DomainCheck, ScanFacts, check_domain, scan_domain, dicom_facts, geometry_facts, image_facts, lung_facts
from monai_lung.domain.range import KERNEL_FAMILIES, VALIDATED_RANGE, ValidatedRange, range_table_markdown

__all__ = [
    "DomainCheck", "ScanFacts", "check_domain", "scan_domain", "dicom_facts", "geometry_facts", "image_facts", "lung_facts",
    "KERNEL_FAMILIES", "VALIDATED_RANGE", "ValidatedRange", "range_table_markdown",
]
