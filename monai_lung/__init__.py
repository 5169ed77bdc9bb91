"""monai_lung: a MONAI-based two-stage lung nodule detector for chest CT (LUNA16 layout)."""

__version__ = "0.1.0"
