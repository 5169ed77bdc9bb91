"""The bundle templates that ``monai-lung train`` and ``demo`` copy and train: where they are, in a checkout or a wheel.

The repository's ``bundles/`` is their one source (``python -m monai.bundle`` users run it as it is); a wheel carries
the same files as the package data ``monai_lung/bundles/`` (``setup.cfg`` maps that package onto ``bundles/``), so an
installed monai_lung trains from any folder. Nothing here writes into a template.
"""

from __future__ import annotations

import os
from pathlib import Path

#: the three bundles of the recipe, by their MONAI bundle ids
SEG_NAME, STAGE2_NAME, DET_NAME = "lung_nodule_ct_segmentation", "lung_nodule_ct_classification", "lung_nodule_ct_two_stage_detection"


def template_root() -> Path:
    """The folder holding the bundle templates: ``monai_lung/bundles`` in an installed wheel, else the checkout's
    ``bundles/`` beside the package."""
    package = Path(__file__).resolve().parent
    shipped = package / "bundles"
    return shipped if shipped.is_dir() else package.parent / "bundles"


def resolve_template(value: str | os.PathLike) -> Path:
    """A bundle setting (``seg_bundle``, ``stage2_bundle``, ``det_bundle``) as a folder: an absolute path as it is;
    a path that exists from the working folder; else a template by its name (``lung_nodule_ct_segmentation``, also
    written ``bundles/lung_nodule_ct_segmentation`` as settings of earlier releases did)."""
    path = Path(value)
    if path.is_absolute() or path.exists():
        return path.resolve()
    if path.parent in (Path("."), Path("bundles")) and (template_root() / path.name).is_dir():
        return template_root() / path.name
    return path.resolve()  # not found: the recipe's check names it
