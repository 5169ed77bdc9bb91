"""A real Orthanc PACS with its DICOMweb plugin for tests: loopback only, a free port, storage in a temporary folder.

Needs the Debian packages ``orthanc`` and ``orthanc-dicomweb`` (.ci/run installs them); :func:`orthanc_binary`
returns None where they are missing, so that a test can skip with the reason.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from pathlib import Path

import requests

PLUGIN_PATHS = ("/usr/share/orthanc/plugins/libOrthancDicomWeb.so", "/usr/lib/orthanc/libOrthancDicomWeb.so")
MISSING_REASON = "Orthanc with its DICOMweb plugin is not installed (apt-get install orthanc orthanc-dicomweb)"


def orthanc_binary() -> str | None:
    binary = shutil.which("Orthanc") or (str(Path("/usr/sbin/Orthanc")) if Path("/usr/sbin/Orthanc").exists() else None)
    plugin = next((p for p in PLUGIN_PATHS if Path(p).exists()), None)
    return binary if binary and plugin else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Orthanc:
    """``with Orthanc(folder) as pacs: pacs.url, pacs.dicomweb`` (the DICOMweb root). Restarting on the same
    ``folder`` keeps the stored studies. With ``dicom=True`` it also takes C-STORE from any AE title at
    ``pacs.dicom_destination`` (``ORTHANC@127.0.0.1:<port>``); ports stay the same across restarts."""

    AE_TITLE = "ORTHANC"

    def __init__(self, folder: Path, dicom: bool = False):
        self.folder = Path(folder)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.dicomweb = f"{self.url}/dicom-web"
        self.dicom_port = free_port() if dicom else None
        self.dicom_destination = f"{self.AE_TITLE}@127.0.0.1:{self.dicom_port}" if dicom else None
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Orthanc":
        self.folder.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "monai_lung_test", "StorageDirectory": str(self.folder / "db"), "IndexDirectory": str(self.folder / "db"),
            "HttpPort": self.port, "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
            "DicomServerEnabled": self.dicom_port is not None, "OrthancExplorerEnabled": False, "WebDavEnabled": False,
            "Plugins": [next(p for p in PLUGIN_PATHS if Path(p).exists())],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
        }
        if self.dicom_port is not None:
            config.update({"DicomAet": self.AE_TITLE, "DicomPort": self.dicom_port, "DicomCheckCalledAet": False, "DicomAlwaysAllowStore": True})
        config_path = self.folder / f"orthanc-{self.port}.json"
        config_path.write_text(json.dumps(config))
        self.log = open(self.folder / f"orthanc-{self.port}.log", "w")
        self.proc = subprocess.Popen([orthanc_binary(), str(config_path)], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited ({self.proc.returncode}): {(self.folder / f'orthanc-{self.port}.log').read_text(encoding='utf-8')[-2000:]}")
            try:
                if requests.get(f"{self.url}/system", timeout=1).ok:
                    return self
            except requests.RequestException:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("Orthanc did not answer within 30 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if getattr(self, "log", None):
            self.log.close()

    def upload(self, files) -> int:
        """Store DICOM files through Orthanc's REST API (POST /instances); returns how many."""
        n = 0
        for path in files:
            r = requests.post(f"{self.url}/instances", data=Path(path).read_bytes(), timeout=30)
            r.raise_for_status()
            n += 1
        return n

    def series(self, study_uid: str) -> dict[str, list[str]]:
        """The study's series as ``{Modality: [SOP Instance UIDs of all its series of that modality]}`` (REST API)."""
        found = requests.post(f"{self.url}/tools/find", json={"Level": "Study", "Query": {"StudyInstanceUID": study_uid}}, timeout=30).json()
        out: dict[str, list[str]] = {}
        for study in found:
            for series in requests.get(f"{self.url}/studies/{study}/series", timeout=30).json():
                modality = series["MainDicomTags"].get("Modality", "")
                for instance in requests.get(f"{self.url}/series/{series['ID']}/instances", timeout=30).json():
                    out.setdefault(modality, []).append(instance["MainDicomTags"]["SOPInstanceUID"])
        return out

    def __enter__(self) -> "Orthanc":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
