"""The node's DICOM Storage SCP (pynetdicom): C-ECHO and C-STORE of any storage SOP class and transfer syntax.

- **Allow-list**: with calling AE titles given, an association from any other is rejected (A-ASSOCIATE-RJ,
  "calling AE title not recognised") and logged; without, any is accepted and the log says so once.
- **Atomic storage**: an instance is written as it was sent (no decoding of its pixels) to a temporary file,
  flushed to disk, renamed to ``incoming/<study>/<series>/<sop>.dcm`` and recorded in the queue; only then is
  success returned, so an acknowledged instance is never lost and a half-written one is never seen.
- **Full disk**: when the association is requested (and again before each instance), the free space of the work
  dir is checked against a reserve; below it, every C-STORE of the association is answered 0xA700 (refused: out
  of resources) and nothing is written, so a sender keeps the study and retries later.
- Logs name AE titles, addresses and UIDs, never patient data.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import threading
import time
from pathlib import Path

from pynetdicom import ALL_TRANSFER_SYNTAXES, AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification

from monai_lung.node.faults import crash_point
from monai_lung.node.queue import JobQueue, patient_key
from monai_lung.node.stats import NodeStats

logger = logging.getLogger("monai_lung.node.scp")
INCOMING = "incoming"
STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC000
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def valid_uid(value) -> bool:
    text = str(value or "")
    return 0 < len(text) <= 64 and bool(_UID.match(text))


def free_bytes(path: str | os.PathLike) -> int:
    return shutil.disk_usage(path).free


class StorageSCP:
    """``StorageSCP(work_dir, queue, stats, ae_title, port).start()``; ``stop()`` closes the port.

    Args:
        allow_ae: calling AE titles accepted (empty: any).
        min_free_bytes: the disk reserve below which instances are refused.
    """

    def __init__(self, work_dir: str | os.PathLike, queue: JobQueue, stats: NodeStats, ae_title: str, port: int,
                 host: str = "0.0.0.0", allow_ae: list[str] | None = None, min_free_bytes: int = 1 << 30):
        self.root = Path(work_dir) / INCOMING
        self.root.mkdir(parents=True, exist_ok=True)
        self.queue, self.stats = queue, stats
        self.ae_title, self.host, self.port = ae_title, host, int(port)
        self.allow_ae = [a.strip() for a in (allow_ae or []) if a.strip()]
        self.min_free_bytes = int(min_free_bytes)
        self._full: dict[int, bool] = {}  # association id -> refused for lack of disk space
        self._lock = threading.Lock()
        self._server = None

    def start(self) -> None:
        ae = AE(ae_title=self.ae_title)
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        ae.maximum_associations = 32
        ae.maximum_pdu_size = 0  # unlimited: fewer, larger PDUs per instance
        if self.allow_ae:
            ae.require_calling_aet = self.allow_ae
            logger.info("accepting associations from calling AE titles %s only", ", ".join(self.allow_ae))
        else:
            logger.warning("no --allow-ae given: associations from any calling AE title are accepted")
        handlers = [
            (evt.EVT_C_ECHO, lambda event: STATUS_SUCCESS),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_RELEASED, self._on_closed),
            (evt.EVT_ABORTED, self._on_closed),
        ]
        self._server = ae.start_server((self.host, self.port), block=False, evt_handlers=handlers)
        logger.info("Storage SCP %s listening on %s:%d", self.ae_title, self.host, self.port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    @property
    def running(self) -> bool:
        return self._server is not None

    # ---------------------------------------------------------------- events

    def _peer(self, event) -> str:
        req = event.assoc.requestor
        title = str(req.ae_title or "").strip()
        if not title and req.primitive is not None:  # before negotiation only the request carries it
            title = str(req.primitive.calling_ae_title or "").strip()
        return f"AE {title or '?'} at {req.address}:{req.port}"

    def _low_disk(self) -> int | None:
        """The free bytes when below the reserve, else None."""
        free = free_bytes(self.root)
        return free if free < self.min_free_bytes else None

    def _on_requested(self, event) -> None:
        free = self._low_disk()
        with self._lock:
            self._full[id(event.assoc)] = free is not None
        if free is not None:
            self.stats.inc("associations_refused", reason="disk_full")
            logger.error("%s: refusing its instances (C-STORE status 0xA700 out of resources): %d MB free under %s, "
                         "the reserve is %d MB", self._peer(event), free >> 20, self.root, self.min_free_bytes >> 20)

    def _on_rejected(self, event) -> None:
        calling = str(event.assoc.requestor.primitive.calling_ae_title).strip()
        reason = "calling AE title not on the allow-list" if self.allow_ae and calling not in self.allow_ae else "too many associations"
        self.stats.inc("associations_rejected", reason="ae_title" if reason.startswith("calling") else "busy")
        logger.warning("association from %s rejected: %s", self._peer(event), reason)

    def _on_closed(self, event) -> None:
        with self._lock:
            self._full.pop(id(event.assoc), None)

    def _on_store(self, event) -> int:
        t = time.perf_counter()
        with self._lock:
            full = self._full.get(id(event.assoc), False)
        if full or self._low_disk() is not None:
            self.stats.inc("instances_refused", reason="disk_full")
            return STATUS_OUT_OF_RESOURCES
        try:
            ds = event.dataset
            study, series, sop = (str(ds.get(k, "")) for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"))
            sop_class = str(ds.get("SOPClassUID", "") or event.request.AffectedSOPClassUID)
            patient = patient_key(str(ds.get("PatientID", "") or ""), str(ds.get("IssuerOfPatientID", "") or ""))
        except Exception as err:  # the peer's bytes do not decode: nothing to file it under
            self.stats.inc("instances_refused", reason="undecodable")
            logger.warning("%s: instance %s refused: its data set does not decode (%s)", self._peer(event),
                           event.request.AffectedSOPInstanceUID, type(err).__name__)
            return STATUS_CANNOT_UNDERSTAND
        if not (valid_uid(study) and valid_uid(series) and valid_uid(sop)):
            self.stats.inc("instances_refused", reason="bad_uid")
            logger.warning("%s: instance refused: Study/Series/SOP Instance UID missing or not a UID (%r, %r, %r)",
                           self._peer(event), study[:70], series[:70], sop[:70])
            return STATUS_CANNOT_UNDERSTAND
        data = event.encoded_dataset(include_meta=True)
        path = self.root / study / series / f"{sop}.dcm"
        try:
            write_durably(path, data)
        except OSError as err:  # the disk filled up meanwhile, or failed: nothing half-written stays, the sender retries
            self.stats.inc("instances_refused", reason="write_failed")
            logger.error("%s: instance %s of study %s refused: writing it failed (%s)", self._peer(event), sop, study, err.strerror or err)
            return STATUS_OUT_OF_RESOURCES
        crash_point("stored")
        new = self.queue.add_instance(sop, study, series, str(path), len(data), patient, sop_class=sop_class)
        self.stats.inc("bytes_received", len(data))
        if not new:
            self.stats.inc("instances_duplicate")
        self.stats.observe("receive", time.perf_counter() - t)
        return STATUS_SUCCESS


def write_durably(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file that is flushed to disk and renamed: the file is
    either absent or complete, also after a power cut."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)  # the rename itself
        finally:
            os.close(folder)
    finally:
        if tmp.exists():
            tmp.unlink()


def orphan_files(root: Path, known: set[str]) -> list[Path]:
    """Instance files under ``root`` (``incoming/``) that the queue does not know: written by a process that died
    before recording them. Leftover temporary files are deleted."""
    out = []
    if not root.is_dir():
        return out
    for study in root.iterdir():
        for series in (study.iterdir() if study.is_dir() else ()):
            for path in (series.iterdir() if series.is_dir() else ()):
                if path.name.startswith("."):
                    path.unlink(missing_ok=True)  # a write that never finished
                elif path.suffix == ".dcm" and str(path) not in known:
                    out.append(path)
    return out


def adopt_orphans(root: Path, queue: JobQueue) -> int:
    """Record the instance files a killed process wrote but did not record (:func:`orphan_files`); returns how many.
    A file there is complete (it was renamed into place after being written), so it is as good as acknowledged."""
    import pydicom

    count = 0
    for path in orphan_files(root, queue.known_paths()):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            patient = patient_key(str(ds.get("PatientID", "") or ""), str(ds.get("IssuerOfPatientID", "") or ""))
            sop_class = str(ds.get("SOPClassUID", ""))
        except Exception:  # recorded all the same: the job will report the file as unreadable
            patient, sop_class = None, ""
        queue.add_instance(path.stem, path.parent.parent.name, path.parent.name, str(path), path.stat().st_size, patient,
                           sop_class=sop_class)
        count += 1
    return count
