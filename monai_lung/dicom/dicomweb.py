"""A PACS over DICOMweb (``dicomweb-client``): pull a study's CT series (QIDO-RS, WADO-RS), store results (STOW-RS).

Authentication is left to the site: point ``url`` at the PACS's DICOMweb root, or at a local proxy that adds the
credentials (``headers`` passes fixed ones, e.g. a bearer token). A PACS that cannot be reached or refuses a
request raises :class:`DataError` naming the URL and the request, so that a batch records the scan as failed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient

from monai_lung.io.atomic import atomic_path, write_text_atomic
from monai_lung.io.errors import DataError

COMPLETE_MARKER = ".complete"
_MODALITY, _SERIES_UID = "00080060", "0020000E"


def connect(url: str, headers: dict | None = None, timeout_s: float = 60.0) -> DICOMwebClient:
    session = requests.Session()
    session.request = _with_timeout(session.request, timeout_s)  # dicomweb-client sets none: a dead PACS would hang
    return DICOMwebClient(url=url, session=session, headers=headers)


def _with_timeout(request, timeout_s: float):
    def call(*args, **kwargs):
        kwargs.setdefault("timeout", timeout_s)
        return request(*args, **kwargs)

    return call


def _pacs_error(url: str, what: str, err: Exception) -> DataError:
    first = next((ln.strip() for ln in str(err).splitlines() if ln.strip()), type(err).__name__)
    return DataError(url, f"DICOMweb {what} failed ({type(err).__name__}: {first[:200]})")


def fetch_study(url: str, study_uid: str, folder: str | os.PathLike, modality: str = "CT", headers: dict | None = None) -> Path:
    """Download the ``modality`` series of a study into ``folder/<SeriesInstanceUID>/<SOPInstanceUID>.dcm`` and
    return ``folder``. A folder already marked complete is not downloaded again (a rerun after a failed store)."""
    folder = Path(folder)
    if (folder / COMPLETE_MARKER).is_file():
        return folder
    client = connect(url, headers)
    try:
        found = client.search_for_series(study_instance_uid=study_uid, search_filters={"Modality": modality})
    except Exception as err:  # requests' and dicomweb-client's errors alike: the PACS did not answer
        raise _pacs_error(url, f"search (QIDO-RS) for study {study_uid}", err) from None
    if not found:
        raise DataError(url, f"study {study_uid} has no {modality} series (QIDO-RS)")
    for entry in found:
        series_uid = entry[_SERIES_UID]["Value"][0]
        try:
            instances = client.retrieve_series(study_uid, series_uid)
        except Exception as err:
            raise _pacs_error(url, f"retrieve (WADO-RS) of series {series_uid}", err) from None
        target = folder / series_uid
        target.mkdir(parents=True, exist_ok=True)
        for ds in instances:
            with atomic_path(target / f"{ds.SOPInstanceUID}.dcm") as tmp:
                ds.save_as(tmp, enforce_file_format=True)
    write_text_atomic(folder / COMPLETE_MARKER, "\n".join(e[_SERIES_UID]["Value"][0] for e in found) + "\n")
    return folder


def store_files(url: str, paths: Sequence[str | os.PathLike], study_uid: str | None = None, headers: dict | None = None) -> list[str]:
    """STOW-RS the DICOM files ``paths``; returns their SOP Instance UIDs. A refused instance raises."""
    datasets = [pydicom.dcmread(p) for p in paths]
    client = connect(url, headers)
    try:
        response = client.store_instances(datasets=datasets, study_instance_uid=study_uid)
    except Exception as err:
        raise _pacs_error(url, f"store (STOW-RS) of {len(datasets)} instance(s)", err) from None
    failed = getattr(response, "FailedSOPSequence", None) if response is not None else None
    if failed:
        raise DataError(url, f"STOW-RS refused {len(failed)} instance(s), first {failed[0].get('ReferencedSOPInstanceUID', '?')}")
    return [str(ds.SOPInstanceUID) for ds in datasets]


_STUDY_UID, _STUDY_DATE, _MODALITIES = "0020000D", "00080020", "00080061"


def search_studies(url: str, patient_id: str, headers: dict | None = None) -> list[dict]:
    """A patient's studies on a DICOMweb server (QIDO-RS by PatientID): ``[{"study_uid", "date" (YYYYMMDD or ""),
    "modalities": [...]}]``."""
    client = connect(url, headers)
    try:
        found = client.search_for_studies(search_filters={"PatientID": patient_id},
                                          fields=["StudyDate", "ModalitiesInStudy"])
    except Exception as err:
        raise _pacs_error(url, f"search (QIDO-RS) for the studies of patient {patient_id!r}", err) from None

    def value(entry, tag):
        values = entry.get(tag, {}).get("Value", [])
        return values

    return [{"study_uid": str(value(e, _STUDY_UID)[0]), "date": str((value(e, _STUDY_DATE) or [""])[0]),
             "modalities": [str(m) for m in value(e, _MODALITIES)]} for e in found if value(e, _STUDY_UID)]
