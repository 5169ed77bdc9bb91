"""The finding record: what the detector found in a scan, in one form for every output (see
:mod:`monai_lung.findings.record`, which also says how to add an attribute)."""

from monai_lung.findings.record import (
    KIND_CODES,
    PRIVATE_SCHEME,
    Attribute,
    Finding,
    FindingMask,
    ScanResult,
    SRCode,
    SRMeasurement,
    attribute,
    attributes,
    csv_columns,
    report_items,
    sr_items,
)
from monai_lung.findings.steps import register_step, registered_steps, run_steps
