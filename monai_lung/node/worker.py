"""A worker thread: takes jobs from the queue and runs their phases, each idempotent and recorded.

1. **snapshot** (when the job is taken the first time, or again after dying while detecting): the study's instances
   at that moment are hard-linked into ``jobs/<id>/input/``, so that instances arriving meanwhile do not change
   what this job sees (they make the next job);
2. **detect** (stage ``detecting``): series choice, detection, the result objects in ``jobs/<id>/out/`` and the
   list of files to send in ``jobs/<id>/result.json`` (written last, atomically), then stage ``detected``;
3. **send** (stage ``sending``): each destination gets the objects it has not acknowledged yet; each
   acknowledgement is recorded;
4. **done**.

Bad input (no usable CT series, a localizer-only study, an unreadable instance) fails the job at once with the
problem in one line. Any other error in phases 1-2 is tried again, ``max_attempts`` times in all. A destination
that cannot take the objects keeps the job pending with a growing wait (``retry_seconds`` doubling up to
``retry_max_seconds``), for as long as it takes.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import threading
import time
from pathlib import Path
from typing import Callable

from monai_lung.io.atomic import write_json_atomic
from monai_lung.node.adapter import DataError, Engine, stow
from monai_lung.node.config import NodeConfig
from monai_lung.node.faults import crash_point
from monai_lung.node.prior import compare_with_prior
from monai_lung.node.queue import Claimed, Job, JobQueue, one_line
from monai_lung.node.sender import DeliveryError, c_store, stow_rs
from monai_lung.node.stats import NodeStats

logger = logging.getLogger("monai_lung.node")
JOBS = "jobs"
RESULT = "result.json"


def input_problem(err: BaseException) -> str | None:
    """The one-line :class:`DataError` text if ``err`` is (or wraps, as MONAI's transforms do) bad input, else None."""
    cause: BaseException | None = err
    seen = 0
    while cause is not None and seen < 20:
        if isinstance(cause, DataError):
            return str(cause)
        cause, seen = cause.__cause__ or cause.__context__, seen + 1
    return None


def job_dir(work_dir: Path, job_id: int) -> Path:
    return Path(work_dir) / JOBS / str(job_id)


class Worker(threading.Thread):
    """Runs jobs until ``stopping`` is set (between jobs: a running job is not interrupted)."""

    def __init__(self, index: int, config: NodeConfig, queue: JobQueue, engine: Callable[[], Engine], stats: NodeStats,
                 stopping: threading.Event, poll_seconds: float = 0.5):
        super().__init__(name=f"worker-{index}", daemon=True)
        self.config, self.queue, self.engine, self.stats, self.stopping = config, queue, engine, stats, stopping
        self.poll_seconds = poll_seconds
        self.current: int | None = None  # the job id being run

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                claimed = self.queue.claim(self.config.stable_seconds)
            except Exception:  # the database is locked for over a minute or the disk failed: say so, keep trying
                logger.exception("%s: could not take a job", self.name)
                self.stopping.wait(5.0)
                continue
            if claimed is None:
                self.stopping.wait(self.poll_seconds)
                continue
            self.current = claimed.job.id
            try:
                self.process(claimed)
            except Exception as err:  # a bug in the node itself: keep the job for another try, keep serving
                logger.exception("job %d (study %s): unexpected error", claimed.job.id, claimed.job.study_uid)
                self.queue.retry_later(claimed.job.id, f"node error: {type(err).__name__}: {err}", self._backoff(claimed.job))
            finally:
                self.current = None
        self.queue.close()

    def _backoff(self, job: Job) -> float:
        return min(self.config.retry_seconds * 2 ** max(job.attempts - 1, 0), self.config.retry_max_seconds)

    def process(self, claimed: Claimed) -> None:
        job = claimed.job
        crash_point("claimed")
        folder = job_dir(self.config.work_dir, job.id)
        logger.info("job %d (study %s): attempt %d, stage %s", job.id, job.study_uid, job.attempts, job.stage)
        if job.stage in ("queued", "detecting") and not self._detect(job, claimed.files, folder):
            return
        saved = json.loads((folder / RESULT).read_text(encoding="utf-8"))
        if not self.queue.set_stage(job.id, "sending"):
            return  # the node was stopped and gave the job back meanwhile
        t = time.perf_counter()
        try:
            for destination in self.config.send_to:
                self._deliver(job, str(destination), saved["files"],
                              lambda paths, mark: c_store(destination, paths, self.config.ae_title, mark))
            for url in self.config.send_to_dicomweb:
                self._deliver(job, url, saved["files"], lambda paths, mark: stow_rs(url, paths, job.study_uid, mark, stow))
        except DeliveryError as err:
            delay = self._backoff(job)
            self.stats.inc("deliveries_failed")
            logger.warning("job %d (study %s): %s; pending, next try in %.0f s", job.id, job.study_uid, err, delay)
            self.queue.retry_later(job.id, f"{err} (next try in {delay:.0f} s)", delay)
            return
        send_s = time.perf_counter() - t
        self.stats.observe("send", send_s)
        crash_point("sent")
        summary = dict(saved["summary"])
        summary["seconds"] = {**summary.get("seconds", {}), "send": send_s}
        summary["sent_to"] = self.config.destinations()
        if self.queue.finish(job.id, summary):
            self.stats.observe("job", summary["seconds"].get("total", 0.0) + send_s)
            logger.info("job %d (study %s): done: %d finding(s), %d object(s) sent to %s in %.1f s", job.id, job.study_uid,
                        summary.get("num_findings", 0), len(saved["files"]), ", ".join(summary["sent_to"]), send_s)

    def _deliver(self, job: Job, destination: str, files: list[str], send) -> None:
        done = self.queue.sent(job.id, destination)
        todo = [p for p, sop in files if sop not in done]
        if todo:
            send(todo, lambda sop: self.queue.mark_sent(job.id, destination, [sop]))

    def _snapshot(self, job: Job, files: list[tuple[str, str]] | None, folder: Path) -> Path:
        """Hard links to the job's instances under ``folder/input`` (copies where links are not possible)."""
        target = folder / "input"
        if files is None and target.is_dir():
            return target
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        for sop, path in files or []:
            try:
                os.link(path, target / f"{sop}.dcm")
            except FileNotFoundError:
                logger.warning("job %d (study %s): instance %s is gone from %s", job.id, job.study_uid, sop, path)
            except OSError:
                shutil.copyfile(path, target / f"{sop}.dcm")
        return target

    def _detect(self, job: Job, files, folder: Path) -> bool:
        """Phases 1-2; False when the job failed or waits for another try."""
        t = time.perf_counter()
        inputs = self._snapshot(job, files, folder)
        self.stats.observe("snapshot", time.perf_counter() - t)
        if not self.queue.set_stage(job.id, "detecting"):
            return False
        shutil.rmtree(folder / "out", ignore_errors=True)
        (folder / RESULT).unlink(missing_ok=True)
        try:
            result = self.engine().run(inputs, folder / "out")
        except Exception as err:
            problem = input_problem(err)
            if problem is not None:
                # the job's folder (or a file in it) means nothing to a reader: name the study instead
                problem = re.sub(re.escape(str(inputs)) + r"(/[^:\s]*)?", f"study {job.study_uid}", problem)
                self.stats.inc("studies_failed_input")
                logger.error("job %d (study %s): failed: %s", job.id, job.study_uid, problem)
                self.queue.fail(job.id, problem)
                return False
            tries = job.detect_tries + 1
            message = f"{type(err).__name__}: {one_line(str(err), 300)}"
            if tries >= self.config.max_attempts:
                logger.error("job %d (study %s): failed after %d tries: %s", job.id, job.study_uid, tries, message, exc_info=err)
                self.queue.fail(job.id, f"{message} (after {tries} tries)")
            else:
                logger.warning("job %d (study %s): try %d of %d failed: %s", job.id, job.study_uid, tries, self.config.max_attempts, message,
                               exc_info=err)
                self.queue.retry_later(job.id, message, self._backoff(job))
            return False
        summary = result.summary
        self.stats.observe("detect", summary["seconds"]["detect"])
        self.stats.observe("dicom", summary["seconds"]["dicom"])
        files_out = list(result.files)
        prior = self.queue.prior_job(job.study_uid)
        if prior is not None and prior.result:
            files_out += compare_with_prior(summary, folder, prior.result, job_dir(self.config.work_dir, prior.id))
        sops = [_sop_uid(p) for p in files_out]
        write_json_atomic(folder / RESULT, {"files": [[p, s] for p, s in zip(files_out, sops)], "summary": summary})
        if not self.queue.set_stage(job.id, "detected", result=summary):
            return False
        logger.info("job %d (study %s): %d finding(s) on series %s; detect %.1f s, DICOM objects %.1f s", job.id, job.study_uid,
                    summary["num_findings"], summary["series_instance_uid"], summary["seconds"]["detect"], summary["seconds"]["dicom"])
        crash_point("detected")
        return True


def _sop_uid(path: str) -> str:
    import pydicom

    return str(pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID)
