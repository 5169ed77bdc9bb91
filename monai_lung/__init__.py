"""monai_lung: a MONAI-based two-stage lung nodule detector for chest CT (LUNA16 layout)."""

import importlib

__version__ = "0.10.0"

_SUBPACKAGES = ("bundle_args", "io", "networks", "transforms", "training", "datalist", "synthetic", "evaluation", "domain", "findings", "stage1", "stage2", "fpr", "detection", "report", "dicom", "clinical")


def __getattr__(name: str):
    # lazy subpackages: bundle configs write `$import monai_lung` then `monai_lung.io.SimpleITKReader(...)`,
    # while `monai-lung --help` stays fast because nothing heavy is imported up front
    if name in _SUBPACKAGES:
        return importlib.import_module(f"monai_lung.{name}")
    raise AttributeError(f"module 'monai_lung' has no attribute {name!r}")
