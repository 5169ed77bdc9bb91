"""The node's settings (``monai-lung serve``'s options), in one place for the server, workers and monitor."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from monai_lung.node.sender import DicomDestination


@dataclass
class NodeConfig:
    work_dir: Path
    det_bundle: Path
    ae_title: str = "LUNGCAD"
    host: str = "0.0.0.0"  # the DICOM port's address
    port: int = 11112
    send_to: list[DicomDestination] = field(default_factory=list)
    send_to_dicomweb: list[str] = field(default_factory=list)
    allow_ae: list[str] = field(default_factory=list)
    stable_seconds: float = 10.0  # a study is complete when nothing has arrived for this long
    workers: int = 1
    http_host: str = "127.0.0.1"
    http_port: int = 8080  # 0: no HTTP endpoint
    device: str = "auto"
    overrides: dict = field(default_factory=dict)  # detector parameters (--set)
    max_findings: int = 10
    min_free_mb: float = 1024.0  # below this much free space under the work dir, instances are refused
    retry_seconds: float = 10.0  # first wait after a failed delivery; doubles up to retry_max_seconds
    retry_max_seconds: float = 600.0
    max_attempts: int = 3  # tries at detecting a study that fails for reasons other than its input
    stop_timeout: float = 30.0  # on SIGTERM, how long a running job may take to finish before it is returned to pending
    keep_days: float = 7.0  # instances and result files of studies idle this long are deleted (the queue keeps their rows)

    def destinations(self) -> list[str]:
        return [str(d) for d in self.send_to] + list(self.send_to_dicomweb)
