"""Comparing a study with the same patient's earlier study processed by this node: ``monai-lung followup`` inside.

The worker calls :func:`compare_with_prior` after detecting a study whose patient (the hash of PatientID and its
issuer) has an earlier done job; the files it returns are sent with the study's results. The comparison is the
follow-up package's (:func:`monai_lung.clinical.followup.run_followup`: registration, matching, new / stable / grown
/ shrunk / resolved, volume doubling time, follow-up Lung-RADS) on the two jobs' kept instances, with the findings
the node already has (nothing is detected again). It writes a second, longitudinal SR and its SEG for the current
series (each nodule at both time points, keeping the tracking UID the prior's SR gave it) and, beside them,
``followup/followup.csv`` and ``followup.json`` in the job's folder.

A comparison that cannot be made (the prior's instances no longer kept, a prior study dated after the current one,
no StudyDate) is logged and skipped: the study's own results go out regardless.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pydicom.uid import generate_uid

from monai_lung.io.errors import DataError

logger = logging.getLogger("monai_lung.node")

#: where the longitudinal SR and SEG go under the current job's ``out/``, apart from the study's own objects
FOLLOWUP_DIR = "followup"


def compare_with_prior(current: dict, current_dir: Path, prior: dict, prior_dir: Path) -> list[str]:
    """DICOM files comparing a study with its prior (the follow-up SR, and its SEG when a nodule has a mask), written
    under ``current_dir / "out" / "followup"``; [] when the comparison cannot be made (logged).

    ``current`` and ``prior`` are the two jobs' result summaries (``study_instance_uid``, ``series_instance_uid``,
    ``findings`` with ``coord`` in world LPS mm, sizes and ``probability``); each job's folder holds its ``input/``
    instances (while kept, see ``--keep-days``) and its ``out/<SeriesInstanceUID>/`` SR and SEG.
    """
    from monai_lung.clinical.detections import GivenFindings
    from monai_lung.clinical.followup import read_input, run_followup
    from monai_lung.node.adapter import restamp

    current_dir, prior_dir = Path(current_dir), Path(prior_dir)
    study, earlier = current.get("study_instance_uid"), prior.get("study_instance_uid")
    if not (prior_dir / "input").is_dir() or not any((prior_dir / "input").iterdir()):
        logger.info("study %s: the prior study %s's instances are no longer kept: no follow-up comparison", study, earlier)
        return []
    work = current_dir / FOLLOWUP_DIR
    try:
        before = read_input("prior", prior_dir / "input", None, work / "input")
        now = read_input("current", current_dir / "input", None, work / "input")
        if before.date >= now.date:  # the node met the studies out of order: a follow-up looks forward in time
            logger.info("study %s (%s): the prior study %s is dated %s, not earlier: no follow-up comparison", study, now.date,
                        earlier, before.date)
            return []
        given = GivenFindings({before.identity: prior.get("findings", []), now.identity: current.get("findings", [])})
        prior_sr = prior_dir / "out" / str(prior.get("series_instance_uid")) / "sr.dcm"
        result = run_followup(before, now, given, work, report=False, dicom_out=current_dir / "out" / FOLLOWUP_DIR,
                              prior_sr=prior_sr if prior_sr.is_file() else None)
    except DataError as err:
        logger.warning("study %s: no follow-up comparison with study %s: %s", study, earlier, err)
        return []
    except Exception as err:  # the comparison is an extra: its failure must not hold back the study's own results
        logger.error("study %s: the follow-up comparison with study %s failed: %s: %s", study, earlier, type(err).__name__, err,
                     exc_info=err)
        return []
    # UIDs from the two studies' instances, as the node's other objects: a retried job sends the same objects again
    seed = "|".join(["monai_lung node followup", str(current.get("series_instance_uid")), str(prior.get("series_instance_uid"))])
    files = []
    for kind in ("seg", "sr"):
        path = result["dicom"].get(kind)
        if path:
            files.append(restamp(path, generate_uid(entropy_srcs=[f"{seed}|{kind}"]), generate_uid(entropy_srcs=[f"{seed}|{kind}-series"])))
    counts = ", ".join(f"{n} {s}" for s, n in result["counts"].items() if n)
    logger.info("study %s: compared with study %s (%s -> %s): %s; exam Lung-RADS %s", study, earlier, before.date, now.date,
                counts or "no nodule", result["exam"]["category"])
    return files
