"""The hook for comparing a study with the same patient's earlier study processed by this node.

The worker calls :func:`compare_with_prior` after detecting a study whose patient (the hash of PatientID and its
issuer) has an earlier done job; the files it returns are sent with the study's results. The comparison itself
(matching findings, growth, Lung-RADS) belongs to the follow-up package (``monai-lung followup``, issue 44); until it
is wired in here, there is nothing to compare with and nothing extra is sent.
"""

from __future__ import annotations

import logging
from pathlib import Path

logger = logging.getLogger("monai_lung.node")


def compare_with_prior(current: dict, current_dir: Path, prior: dict, prior_dir: Path) -> list[str]:
    """DICOM files comparing a study with its prior, written under ``current_dir / "out"``; [] for now.

    ``current`` and ``prior`` are the two jobs' result summaries (``study_instance_uid``, ``series_instance_uid``,
    ``findings`` with ``coord`` in world LPS mm and sizes); each job's folder holds its ``input/`` instances
    (while kept, see ``--keep-days``) and its ``out/<SeriesInstanceUID>/`` SR and SEG.
    """
    logger.info("study %s: the same patient's study %s was processed before; no prior comparison is installed",
                current.get("study_instance_uid"), prior.get("study_instance_uid"))
    return []
