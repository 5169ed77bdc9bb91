"""Deprecated name of :mod:`monai_lung.stage2`, kept for one release: bundles copied before the rename write
``$import monai_lung.fpr`` and ``monai_lung.fpr.CropBankDataset``. Everything here is the stage-2 package's own."""

import sys
import warnings

import monai_lung.stage2 as _stage2
from monai_lung.stage2 import *  # noqa: F401,F403 - the same names under the old package
from monai_lung.stage2 import bank, cli, dataset, mining, scoring, transforms  # noqa: F401

for _name in ("bank", "cli", "dataset", "mining", "scoring", "transforms"):
    sys.modules[f"{__name__}.{_name}"] = getattr(_stage2, _name)

warnings.warn("monai_lung.fpr is deprecated and will be removed; use monai_lung.stage2", DeprecationWarning, stacklevel=2)
