"""The node: one process holding the work dir, with the Storage SCP, the workers, the HTTP monitor and a main loop
that turns stable studies into jobs.

Start: take the work dir's lock (one node per work dir, so that every ``running`` job found at start belongs to a
process that died), return those jobs to pending, record instance files a killed process wrote but did not record,
load the detector, then open the DICOM and HTTP ports and start the workers.

Stop (SIGTERM or SIGINT): close the DICOM port, let running jobs finish for up to ``stop_timeout`` seconds, return
the others to pending (they run again, with the same result UIDs, at the next start) and exit 0.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import signal
import threading
import time
import uuid
from pathlib import Path

from monai_lung.node.config import NodeConfig
from monai_lung.node.monitor import Monitor, memory_bytes
from monai_lung.node.queue import DB_NAME, JobQueue
from monai_lung.node.stats import NodeStats
from monai_lung.node.storage import INCOMING, StorageSCP, adopt_orphans, free_bytes
from monai_lung.node.worker import Worker, job_dir

logger = logging.getLogger("monai_lung.node")
LOCK_NAME = "node.lock"
PURGE_EVERY_S = 600.0


class WorkDirBusy(RuntimeError):
    pass


def lock_work_dir(work_dir: Path):
    """An exclusive lock on ``work_dir/node.lock`` held while the returned file is open."""
    handle = open(work_dir / LOCK_NAME, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "?"
        handle.close()
        raise WorkDirBusy(f"{work_dir} is in use by another monai-lung serve (pid {holder})") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


class Node:
    def __init__(self, config: NodeConfig):
        self.config = config
        self.stopping = threading.Event()
        self.stats = NodeStats()
        self.started = time.time()
        self.scp: StorageSCP | None = None
        self.workers: list[Worker] = []
        self._engine = None

    def engine(self):
        return self._engine

    def health(self) -> tuple[bool, dict]:
        counts = self.queue.counts()
        alive = sum(w.is_alive() for w in self.workers)
        ok = bool(self.scp and self.scp.running) and alive == len(self.workers) and not self.stopping.is_set()
        payload = {
            "status": "ok" if ok else ("stopping" if self.stopping.is_set() else "unhealthy"),
            "ae_title": self.config.ae_title, "dicom_port": self.config.port, "uptime_s": round(time.time() - self.started, 1),
            "scp_listening": bool(self.scp and self.scp.running), "workers": len(self.workers), "workers_alive": alive,
            "running_jobs": [w.current for w in self.workers if w.current is not None],
            "queue": {k: counts[k] for k in ("receiving", "pending", "running", "done", "failed")},
            "studies_received": counts["studies"], "instances_received": counts["instances"],
            "disk_free_bytes": free_bytes(self.config.work_dir), "resident_memory_bytes": memory_bytes()["rss"],
            "destinations": self.config.destinations(),
        }
        return ok, payload

    def run(self) -> int:
        cfg = self.config
        cfg.work_dir.mkdir(parents=True, exist_ok=True)
        lock = lock_work_dir(cfg.work_dir)
        try:
            return self._run()
        finally:
            lock.close()

    def _run(self) -> int:
        cfg = self.config
        self.queue = JobQueue(cfg.work_dir / DB_NAME, owner=uuid.uuid4().hex)
        for job, state in self.queue.recover(cfg.max_attempts):
            logger.warning("job %d (study %s) was interrupted at stage %s (the node stopped): %s", job.id, job.study_uid, job.stage,
                           "back to pending" if state == "pending" else "failed, it stopped the node too often")
        adopted = adopt_orphans(cfg.work_dir / INCOMING, self.queue)
        if adopted:
            logger.warning("recorded %d instance file(s) stored before the node stopped", adopted)
        from monai_lung.node.adapter import Engine

        t = time.perf_counter()
        self._engine = Engine(cfg.det_bundle, cfg.device, cfg.overrides, cfg.max_findings)
        logger.info("detector %s loaded on %s in %.1f s", self._engine.identity, self._engine.detector.device, time.perf_counter() - t)
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        monitor = None
        try:
            self.scp = StorageSCP(cfg.work_dir, self.queue, self.stats, cfg.ae_title, cfg.port, cfg.host, cfg.allow_ae,
                                  int(cfg.min_free_mb * (1 << 20)))
            self.scp.start()
            if cfg.http_port:
                monitor = Monitor(cfg.http_host, cfg.http_port, self.queue, self.stats, self.health)
                monitor.start()
            self.workers = [Worker(i, cfg, self.queue, self.engine, self.stats, self.stopping) for i in range(cfg.workers)]
            for w in self.workers:
                w.start()
            logger.info("node %s ready: results to %s; a study is processed %.0f s after its last instance", cfg.ae_title,
                        ", ".join(cfg.destinations()), cfg.stable_seconds)
            self._loop()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            self._shutdown(monitor)
        return 0

    def _on_signal(self, signum, frame) -> None:
        if not self.stopping.is_set():
            logger.info("%s received: stopping", signal.Signals(signum).name)
        self.stopping.set()

    def _loop(self) -> None:
        tick = max(0.2, min(1.0, self.config.stable_seconds / 4))
        next_purge = time.time() + 60.0
        while not self.stopping.wait(tick):
            for study, what, job_id in self.queue.make_jobs(self.config.stable_seconds):
                if what == "new":
                    logger.info("study %s complete (no instance for %.0f s): job %d queued", study, self.config.stable_seconds, job_id)
                elif what == "again":
                    logger.info("study %s received new instances after its job ran: processing it again (job %d)", study, job_id)
                elif what == "same":
                    logger.info("study %s received again with no new CT image: the results of job %d stand", study, job_id)
            if time.time() >= next_purge:
                self.purge()
                next_purge = time.time() + PURGE_EVERY_S

    def purge(self) -> None:
        """Delete instances and result files of studies idle for ``keep_days`` (their queue rows stay)."""
        for study in self.queue.purgeable(time.time() - self.config.keep_days * 86400.0):
            shutil.rmtree(self.config.work_dir / INCOMING / study, ignore_errors=True)
            for job_id in self.queue.job_ids(study):
                for sub in ("input", "out"):
                    shutil.rmtree(job_dir(self.config.work_dir, job_id) / sub, ignore_errors=True)
            self.queue.purged(study)
            logger.info("study %s: instances and result files deleted after %.0f idle days", study, self.config.keep_days)

    def _shutdown(self, monitor: Monitor | None) -> None:
        self.stopping.set()
        if self.scp is not None:
            self.scp.stop()
        deadline = time.time() + self.config.stop_timeout
        busy = [w for w in self.workers if w.current is not None]
        if busy:
            logger.info("waiting up to %.0f s for %d running job(s)", self.config.stop_timeout, len(busy))
        for w in self.workers:
            w.join(timeout=max(0.0, deadline - time.time()))
        released = self.queue.release()
        for job in released:
            logger.warning("job %d (study %s) returned to pending: the node stopped during stage %s", job.id, job.study_uid, job.stage)
        if monitor is not None:
            monitor.stop()
        logger.info("node stopped")
        if any(w.is_alive() for w in self.workers):
            for handler in logging.getLogger().handlers:  # a worker still inside the detector: do not wait for it
                handler.flush()
            os._exit(0)
