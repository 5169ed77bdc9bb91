"""Steps that fill declared attributes of a scan's findings after detection, registered by the packages that compute them.

A package above detection (``monai_lung.clinical``: nodule type, location, Lung-RADS) cannot be imported by it, so
it registers its step here when it is imported, and the detection batch runs every registered step on each
:class:`~monai_lung.findings.record.ScanResult` before the outputs are written. The ``monai-lung`` command imports
every command package, so its ``detect`` runs them all; a bundle config imports the packages it wants.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

logger = logging.getLogger(__name__)

#: name -> ``step(scan result, image path)``: fills attributes of the result's findings (and of the result) in place
_STEPS: dict[str, Callable] = {}


def register_step(name: str, step: Callable) -> None:
    """Run ``step(scan_result, image)`` on every scan the detection batch processes (``image``: the scan's file or
    DICOM folder); registering a name again replaces its step."""
    _STEPS[name] = step


def registered_steps() -> list[str]:
    return list(_STEPS)


def run_steps(scan, image: str) -> dict:
    """Run the registered steps on ``scan``; returns ``{name: seconds}``. A step that raises fails the scan (the
    batch records it), so that a rerun does it again."""
    timings = {}
    for name, step in _STEPS.items():
        t = time.perf_counter()
        step(scan, image)
        timings[name] = time.perf_counter() - t
    return timings
