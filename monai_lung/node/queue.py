"""The node's durable queue: one SQLite file (``<work dir>/node.sqlite3``) in WAL mode, written with full sync.

Tables:

- ``instances``: every stored instance (SOP Instance UID and class, its study and series, the file under ``incoming/``);
- ``studies``: per study, when instances last arrived and whether some arrived since its last job was made
  (``dirty``), and a hash of the patient's ID (never the ID or name themselves) to find a patient's prior study;
- ``jobs``: one row per processing of a study: ``state`` (pending, running, done, failed), ``stage`` (how far it
  got: queued, detecting, detected, sending), ``attempts`` (times a worker took it), ``detect_tries``, ``error``
  (one line), ``not_before`` (backoff), the digest of the instances it processed, and its result summary (JSON);
- ``sent``: the result objects a destination has acknowledged, so that a retried send skips them.

Each method is one transaction; WAL lets ``monai-lung serve --status`` and ``/metrics`` read while the node
writes. Every thread gets its own connection.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

STATES = ("pending", "running", "done", "failed")
DB_NAME = "node.sqlite3"
# the instances that can change what detection sees (CT, Enhanced CT, Legacy Converted Enhanced CT Image Storage):
# only they decide whether a study that receives instances again is processed again, so that the node's own results
# routed back to it by a PACS, or any other SR or presentation state, do not start a job
CT_IMAGE_CLASSES = ("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.2.1", "1.2.840.10008.5.1.4.1.1.2.2")

SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    sop_uid TEXT PRIMARY KEY,
    sop_class TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    received_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS instances_study ON instances (study_uid);
CREATE TABLE IF NOT EXISTS studies (
    study_uid TEXT PRIMARY KEY,
    patient_key TEXT,
    first_received REAL NOT NULL,
    last_received REAL NOT NULL,
    dirty INTEGER NOT NULL DEFAULT 1,
    purged INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    study_uid TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'running', 'done', 'failed')),
    stage TEXT NOT NULL DEFAULT 'queued',
    attempts INTEGER NOT NULL DEFAULT 0,
    detect_tries INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    reason TEXT,
    owner TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    not_before REAL NOT NULL DEFAULT 0,
    digest TEXT,
    num_instances INTEGER,
    result TEXT
);
CREATE INDEX IF NOT EXISTS jobs_study ON jobs (study_uid);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state);
CREATE TABLE IF NOT EXISTS sent (
    job_id INTEGER NOT NULL,
    destination TEXT NOT NULL,
    sop_uid TEXT NOT NULL,
    sent_at REAL NOT NULL,
    PRIMARY KEY (job_id, destination, sop_uid)
);
"""


def instances_digest(sop_uids) -> str:
    """A set of instances' identity: SHA-256 of its sorted SOP Instance UIDs."""
    return hashlib.sha256("\n".join(sorted(sop_uids)).encode()).hexdigest()


def _ct_digest(rows) -> str:
    """The digest of the CT images among ``(sop_uid, sop_class)`` rows: what a job of the study detects on."""
    return instances_digest(sop for sop, sop_class in rows if sop_class in CT_IMAGE_CLASSES)


def patient_key(patient_id: str | None, issuer: str | None = None) -> str | None:
    """A patient's key for finding prior studies: a hash, so that the queue holds no patient identifier."""
    if not patient_id:
        return None
    return hashlib.sha256(f"{issuer or ''}\0{patient_id}".encode()).hexdigest()[:24]


@dataclass
class Job:
    id: int
    study_uid: str
    state: str
    stage: str
    attempts: int
    detect_tries: int
    error: str | None
    reason: str | None
    digest: str | None
    num_instances: int | None
    result: dict | None
    created_at: float
    updated_at: float
    started_at: float | None
    finished_at: float | None
    not_before: float

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> "Job":
        values = {k: row[k] for k in row.keys() if k in cls.__dataclass_fields__}
        values["result"] = json.loads(row["result"]) if row["result"] else None
        return cls(**values)


@dataclass
class Claimed:
    """A job a worker took, and, when this claim fixed the job's inputs, the study's instance files."""

    job: Job
    files: list[tuple[str, str]] | None  # (sop_uid, path), or None when the job keeps the inputs of an earlier attempt


class JobQueue:
    """The node's SQLite queue (module docstring). ``owner`` tags the rows this process runs, so that a worker of
    a process that was stopped cannot overwrite what a later process decided."""

    def __init__(self, path: str | Path, owner: str = ""):
        self.path = Path(path)
        self.owner = owner
        self._local = threading.local()
        self._conn().executescript(SCHEMA)  # idempotent: CREATE ... IF NOT EXISTS

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=60.0, isolation_level=None, check_same_thread=True)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")  # a commit survives a power cut, not only a killed process
            conn.execute("PRAGMA busy_timeout=60000")
            self._local.conn = conn
        return conn

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (``BEGIN IMMEDIATE``: the write lock is taken at once, so no deadlock)."""
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # ---------------------------------------------------------------- receiving

    def add_instance(self, sop_uid: str, study_uid: str, series_uid: str, path: str, size: int, patient: str | None,
                     now: float | None = None, sop_class: str = CT_IMAGE_CLASSES[0]) -> bool:
        """Record a stored instance (its file is already in place) and mark its study as having new instances.
        Returns whether the instance is new to the node (False: the same SOP Instance UID was received before)."""
        now = time.time() if now is None else now
        with self.transaction() as db:
            known = db.execute("SELECT 1 FROM instances WHERE sop_uid = ?", (sop_uid,)).fetchone() is not None
            db.execute("INSERT OR REPLACE INTO instances VALUES (?, ?, ?, ?, ?, ?, ?)", (sop_uid, sop_class, study_uid, series_uid, path, size, now))
            db.execute(
                "INSERT INTO studies (study_uid, patient_key, first_received, last_received, dirty) VALUES (?, ?, ?, ?, 1) "
                "ON CONFLICT (study_uid) DO UPDATE SET last_received = excluded.last_received, dirty = 1, purged = 0, "
                "patient_key = COALESCE(studies.patient_key, excluded.patient_key)",
                (study_uid, patient, now, now),
            )
        return not known

    def known_paths(self) -> set[str]:
        return {r[0] for r in self._conn().execute("SELECT path FROM instances")}

    # ---------------------------------------------------------------- jobs from stable studies

    def make_jobs(self, stable_seconds: float, now: float | None = None) -> list[tuple[str, str, int | None]]:
        """Turn each study that has had new instances and none for ``stable_seconds`` into a pending job.

        Returns ``(study_uid, what happened, job id or None)`` per study looked at: a new job (``"new"``: the
        study's first, ``"again"``: instances arrived after an earlier job ran), ``"same"`` (the instances are
        the ones an earlier job processed: its results stand), ``"queued"`` (a pending job will take them) or
        ``"busy"`` (a job is running: a new one is made once it ends). Only CT images count as new (see
        :data:`CT_IMAGE_CLASSES`); the last job's digest is compared with the study's CT images now.
        """
        now = time.time() if now is None else now
        events = []
        ready_sql = "SELECT study_uid FROM studies WHERE dirty = 1 AND last_received <= ?"
        if self._conn().execute(ready_sql, (now - stable_seconds,)).fetchone() is None:
            return events  # the common case, without taking the write lock the receiving threads need
        with self.transaction() as db:
            ready = db.execute(ready_sql, (now - stable_seconds,)).fetchall()
            for (study,) in ready:
                states = {r[0] for r in db.execute("SELECT state FROM jobs WHERE study_uid = ? AND state IN ('pending', 'running')", (study,))}
                if "running" in states:
                    events.append((study, "busy", None))
                    continue
                if "pending" in states:
                    db.execute("UPDATE studies SET dirty = 0 WHERE study_uid = ?", (study,))
                    events.append((study, "queued", None))
                    continue
                digest = _ct_digest(db.execute("SELECT sop_uid, sop_class FROM instances WHERE study_uid = ?", (study,)).fetchall())
                last = db.execute("SELECT id, digest, state FROM jobs WHERE study_uid = ? ORDER BY id DESC LIMIT 1", (study,)).fetchone()
                db.execute("UPDATE studies SET dirty = 0 WHERE study_uid = ?", (study,))
                if last is not None and last["state"] == "done" and last["digest"] == digest:
                    events.append((study, "same", int(last["id"])))
                    continue
                reason = "new study" if last is None else f"new instances after job {last['id']} ({last['state']})"
                cur = db.execute(
                    "INSERT INTO jobs (study_uid, state, reason, created_at, updated_at) VALUES (?, 'pending', ?, ?, ?)",
                    (study, reason, now, now),
                )
                events.append((study, "new" if last is None else "again", int(cur.lastrowid)))
        return events

    # ---------------------------------------------------------------- workers

    def claim(self, stable_seconds: float, now: float | None = None) -> Claimed | None:
        """Take the oldest pending job that is due and whose study is not receiving; fix its inputs (the study's
        instances now) unless an earlier attempt already got past detection."""
        now = time.time() if now is None else now
        with self.transaction() as db:
            row = db.execute(
                "SELECT jobs.* FROM jobs JOIN studies USING (study_uid) WHERE jobs.state = 'pending' AND jobs.not_before <= ? "
                "AND NOT (studies.dirty = 1 AND studies.last_received > ?) ORDER BY jobs.id LIMIT 1",
                (now, now - stable_seconds),
            ).fetchone()
            if row is None:
                return None
            files = None
            sets = "state = 'running', owner = ?, attempts = attempts + 1, updated_at = ?, started_at = ?"
            params: list = [self.owner, now, now]
            if row["stage"] in ("queued", "detecting"):
                rows = db.execute("SELECT sop_uid, path, sop_class FROM instances WHERE study_uid = ? ORDER BY sop_uid", (row["study_uid"],)).fetchall()
                files = [(r[0], r[1]) for r in rows]
                sets += ", digest = ?, num_instances = ?, stage = 'queued'"
                params += [_ct_digest((r[0], r[2]) for r in rows), len(files)]
                db.execute("UPDATE studies SET dirty = 0 WHERE study_uid = ?", (row["study_uid"],))
            db.execute(f"UPDATE jobs SET {sets} WHERE id = ?", (*params, row["id"]))
            job = Job.from_row(db.execute("SELECT * FROM jobs WHERE id = ?", (row["id"],)).fetchone())
        return Claimed(job, files)

    def _update(self, job_id: int, sets: str, params: tuple) -> bool:
        with self.transaction() as db:
            cur = db.execute(f"UPDATE jobs SET {sets}, updated_at = ? WHERE id = ? AND state = 'running' AND owner = ?",
                             (*params, time.time(), job_id, self.owner))
            return cur.rowcount == 1

    def set_stage(self, job_id: int, stage: str, result: dict | None = None) -> bool:
        if stage == "detecting":
            return self._update(job_id, "stage = ?, detect_tries = detect_tries + 1", (stage,))
        if result is not None:
            return self._update(job_id, "stage = ?, result = ?", (stage, json.dumps(result)))
        return self._update(job_id, "stage = ?", (stage,))

    def finish(self, job_id: int, result: dict) -> bool:
        now = time.time()
        return self._update(job_id, "state = 'done', stage = 'done', error = NULL, finished_at = ?, result = ?", (now, json.dumps(result)))

    def fail(self, job_id: int, error: str) -> bool:
        return self._update(job_id, "state = 'failed', error = ?, finished_at = ?", (one_line(error), time.time()))

    def retry_later(self, job_id: int, error: str, delay_s: float) -> bool:
        """Back to pending, due in ``delay_s`` seconds, with the reason it waits."""
        return self._update(job_id, "state = 'pending', owner = NULL, error = ?, not_before = ?", (one_line(error), time.time() + delay_s))

    def release(self, job_ids=None) -> list[Job]:
        """Return this process's running jobs (or those of ``job_ids``) to pending: a stop that did not wait for them."""
        with self.transaction() as db:
            rows = db.execute("SELECT * FROM jobs WHERE state = 'running' AND owner = ?", (self.owner,)).fetchall()
            rows = [r for r in rows if job_ids is None or r["id"] in job_ids]
            for r in rows:
                db.execute("UPDATE jobs SET state = 'pending', owner = NULL, updated_at = ? WHERE id = ?", (time.time(), r["id"]))
        return [Job.from_row(r) for r in rows]

    def recover(self, max_detect_tries: int) -> list[tuple[Job, str]]:
        """At start: every running job belongs to a process that died (the work dir's lock guarantees one node).
        Each goes back to pending, or fails when it has died detecting ``max_detect_tries`` times (a study that
        kills the process, e.g. by exhausting memory, must not do so forever). Returns ``(job, new state)``."""
        out = []
        with self.transaction() as db:
            for r in db.execute("SELECT * FROM jobs WHERE state = 'running'").fetchall():
                if r["stage"] in ("queued", "detecting") and r["detect_tries"] >= max_detect_tries:
                    error = f"the node stopped {r['detect_tries']} times while detecting this study (out of memory?)"
                    db.execute("UPDATE jobs SET state = 'failed', owner = NULL, error = ?, finished_at = ?, updated_at = ? WHERE id = ?",
                               (error, time.time(), time.time(), r["id"]))
                    out.append((Job.from_row(r), "failed"))
                else:
                    db.execute("UPDATE jobs SET state = 'pending', owner = NULL, not_before = 0, updated_at = ? WHERE id = ?", (time.time(), r["id"]))
                    out.append((Job.from_row(r), "pending"))
        return out

    def mark_sent(self, job_id: int, destination: str, sop_uids) -> None:
        with self.transaction() as db:
            db.executemany("INSERT OR IGNORE INTO sent VALUES (?, ?, ?, ?)", [(job_id, destination, s, time.time()) for s in sop_uids])

    def sent(self, job_id: int, destination: str) -> set[str]:
        return {r[0] for r in self._conn().execute("SELECT sop_uid FROM sent WHERE job_id = ? AND destination = ?", (job_id, destination))}

    def patient_of(self, study_uid: str) -> str | None:
        row = self._conn().execute("SELECT patient_key FROM studies WHERE study_uid = ?", (study_uid,)).fetchone()
        return row[0] if row else None

    def prior_job(self, study_uid: str) -> Job | None:
        """The latest done job of another study of the same patient (for the prior comparison), or None."""
        key = self.patient_of(study_uid)
        if key is None:
            return None
        row = self._conn().execute(
            "SELECT jobs.* FROM jobs JOIN studies USING (study_uid) WHERE studies.patient_key = ? AND jobs.study_uid != ? "
            "AND jobs.state = 'done' ORDER BY jobs.finished_at DESC LIMIT 1", (key, study_uid),
        ).fetchone()
        return Job.from_row(row) if row else None

    # ---------------------------------------------------------------- retention

    def purgeable(self, older_than: float) -> list[str]:
        """Studies whose instances may be deleted: nothing received since ``older_than``, no job waiting or running."""
        return [r[0] for r in self._conn().execute(
            "SELECT study_uid FROM studies WHERE purged = 0 AND dirty = 0 AND last_received < ? AND NOT EXISTS "
            "(SELECT 1 FROM jobs WHERE jobs.study_uid = studies.study_uid AND (state IN ('pending', 'running') OR "
            "COALESCE(finished_at, 0) >= ?))", (older_than, older_than))]

    def job_ids(self, study_uid: str) -> list[int]:
        return [r[0] for r in self._conn().execute("SELECT id FROM jobs WHERE study_uid = ? ORDER BY id", (study_uid,))]

    def purged(self, study_uid: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM instances WHERE study_uid = ?", (study_uid,))
            db.execute("UPDATE studies SET purged = 1 WHERE study_uid = ?", (study_uid,))

    # ---------------------------------------------------------------- reading

    def jobs(self, limit: int | None = None) -> list[Job]:
        sql = "SELECT * FROM jobs ORDER BY id DESC" + (f" LIMIT {int(limit)}" if limit else "")
        return [Job.from_row(r) for r in self._conn().execute(sql)][::-1]

    def job(self, job_id: int) -> Job:
        return Job.from_row(self._conn().execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone())

    def counts(self) -> dict:
        """``{"pending", "running", "done", "failed"}`` job counts, ``"studies"`` and ``"instances"`` received,
        ``"receiving"`` (studies whose instances are not yet a job)."""
        db = self._conn()
        out = {s: 0 for s in STATES}
        out.update({r[0]: r[1] for r in db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state")})
        out["studies"] = db.execute("SELECT COUNT(*) FROM studies").fetchone()[0]
        out["instances"] = db.execute("SELECT COUNT(*) FROM instances").fetchone()[0]
        out["receiving"] = db.execute("SELECT COUNT(*) FROM studies WHERE dirty = 1").fetchone()[0]
        return out


def one_line(text: str, limit: int = 500) -> str:
    return " ".join(str(text).split())[:limit]


def open_read_only(work_dir: str | Path) -> sqlite3.Connection:
    """The queue of a work dir for reading (``serve --status``), also while a node writes it."""
    path = Path(work_dir) / DB_NAME
    if not path.is_file():
        raise FileNotFoundError(path)
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30.0)
    conn.row_factory = sqlite3.Row
    return conn
