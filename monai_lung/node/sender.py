"""Result objects out to the PACS: DICOM C-STORE (pynetdicom) to ``AE@HOST:PORT`` destinations, STOW-RS to DICOMweb.

Every failure to deliver (no association, a refused or unanswered C-STORE, an HTTP error) raises
:class:`DeliveryError`: the node keeps the job pending and tries again later, since a PACS that is down or full
is expected to come back. Objects a destination acknowledged are reported one by one (``on_sent``), so that a
later attempt sends only the rest.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Callable, Sequence

import pydicom
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE

from monai_lung.node.faults import crash_point

logger = logging.getLogger("monai_lung.node.send")
_DESTINATION = re.compile(r"^(?P<ae>[^@]{1,16})@(?P<host>[^:@\s]+|\[[0-9a-fA-F:]+\]):(?P<port>\d{1,5})$")
# success, and the warnings a PACS gives for an instance it stored (coerced, elements discarded, not validated)
_STORED = {0x0000, 0xB000, 0xB006, 0xB007}


class DeliveryError(RuntimeError):
    """A destination did not take an object (one line: the destination and why)."""


@dataclass(frozen=True)
class DicomDestination:
    """A C-STORE destination ``AE@HOST:PORT``."""

    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> "DicomDestination":
        match = _DESTINATION.match(text.strip())
        if not match or not 0 < int(match["port"]) < 65536:
            raise ValueError(f"destination {text!r} is not AE@HOST:PORT (e.g. ORTHANC@pacs.example.org:4242)")
        return cls(match["ae"].strip(), match["host"].strip("[]"), int(match["port"]))

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


def c_store(destination: DicomDestination, paths: Sequence[str], calling_ae: str, on_sent: Callable[[str], None],
            timeout_s: float = 60.0) -> None:
    """Send the DICOM files ``paths`` in one association, in order; ``on_sent(sop_uid)`` after each stored one."""
    if not paths:
        return
    datasets = [pydicom.dcmread(p) for p in paths]
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    for sop_class, syntax in sorted({(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for ds in datasets}):
        ae.add_requested_context(sop_class, list(dict.fromkeys([syntax, ExplicitVRLittleEndian, ImplicitVRLittleEndian])))
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
    if not assoc.is_established:
        why = "rejected the association" if assoc.is_rejected else "did not answer (no association)"
        raise DeliveryError(f"C-STORE to {destination}: {why}")
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            code = int(status.Status) if status and "Status" in status else None
            if code is None:
                raise DeliveryError(f"C-STORE to {destination}: no answer for {ds.SOPInstanceUID} (association lost or timed out)")
            if code not in _STORED:
                raise DeliveryError(f"C-STORE to {destination}: {ds.SOPInstanceUID} refused with status 0x{code:04X}")
            crash_point("acked")
            on_sent(str(ds.SOPInstanceUID))
    finally:
        if assoc.is_established:
            assoc.release()


def stow_rs(url: str, paths: Sequence[str], study_uid: str, on_sent: Callable[[str], None], stow) -> None:
    """STOW-RS ``paths`` in one request with ``stow(url, paths, study_uid)`` (the adapter's)."""
    if not paths:
        return
    try:
        stored = stow(url, list(paths), study_uid)
    except Exception as err:  # the PACS is down or refused: DataError from the DICOMweb client, or a network error
        raise DeliveryError(f"STOW-RS to {url}: {' '.join(str(err).split())[:300]}") from None
    for sop in stored:
        crash_point("acked")
        on_sent(sop)
