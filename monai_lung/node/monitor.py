"""``GET /health`` (JSON: liveness and queue depths) and ``GET /metrics`` (Prometheus text format 0.0.4).

Metrics (prefix ``monai_lung_node_``): ``studies_received_total``, ``instances_received_total`` (durable, from the
queue), ``jobs{state}`` (pending, running, done, failed: queue depth and outcomes), ``studies_done_total`` and
``studies_failed_total``, ``queue_depth`` (pending + running), and for this process since its start
``stage_seconds{stage}`` (a summary: ``_sum`` and ``_count`` per stage: receive (per instance), snapshot, detect,
dicom, send, job), the counters of :data:`COUNTER_HELP` (once they are not zero), ``resident_memory_bytes`` and
``peak_resident_memory_bytes``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from monai_lung.node.queue import JobQueue
from monai_lung.node.stats import NodeStats

logger = logging.getLogger("monai_lung.node")
PREFIX = "monai_lung_node_"
COUNTER_HELP = {
    "bytes_received": "Bytes of instances stored",
    "instances_duplicate": "Instances received again (same SOP Instance UID)",
    "associations_rejected": "Associations rejected, by reason (ae_title: not on the allow-list; busy)",
    "associations_refused": "Associations whose instances were all refused, by reason (disk_full)",
    "instances_refused": "Instances refused, by reason (disk_full, write_failed, undecodable, bad_uid)",
    "deliveries_failed": "Failed deliveries of a job's objects to a destination (each is retried)",
    "studies_failed_input": "Jobs failed for bad input (no usable CT series, corrupt instance)",
}


def memory_bytes() -> dict:
    """This process's resident and peak resident memory (``VmRSS``, ``VmHWM`` of /proc/self/status; 0 elsewhere)."""
    out = {"rss": 0, "peak": 0}
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    out["rss" if line.startswith("VmRSS") else "peak"] = int(line.split()[1]) * 1024
    except OSError:
        pass
    return out


def _labels(pairs) -> str:
    return "{" + ",".join(f'{k}="{v}"' for k, v in pairs) + "}" if pairs else ""


def metrics_text(queue: JobQueue, stats: NodeStats) -> str:
    counts = queue.counts()
    counters, stages = stats.snapshot()
    memory = memory_bytes()
    lines = [
        f"# HELP {PREFIX}studies_received_total Studies with at least one instance received (durable).",
        f"# TYPE {PREFIX}studies_received_total counter", f"{PREFIX}studies_received_total {counts['studies']}",
        f"# HELP {PREFIX}instances_received_total Distinct instances stored (durable).",
        f"# TYPE {PREFIX}instances_received_total counter", f"{PREFIX}instances_received_total {counts['instances']}",
        f"# HELP {PREFIX}studies_done_total Jobs done (a study processed again counts again).",
        f"# TYPE {PREFIX}studies_done_total counter", f"{PREFIX}studies_done_total {counts['done']}",
        f"# HELP {PREFIX}studies_failed_total Jobs failed.",
        f"# TYPE {PREFIX}studies_failed_total counter", f"{PREFIX}studies_failed_total {counts['failed']}",
        f"# HELP {PREFIX}queue_depth Jobs pending or running.",
        f"# TYPE {PREFIX}queue_depth gauge", f"{PREFIX}queue_depth {counts['pending'] + counts['running']}",
        f"# HELP {PREFIX}studies_receiving Studies with instances not yet in a job (waiting to be stable).",
        f"# TYPE {PREFIX}studies_receiving gauge", f"{PREFIX}studies_receiving {counts['receiving']}",
        f"# HELP {PREFIX}jobs Jobs by state.", f"# TYPE {PREFIX}jobs gauge",
        *(f'{PREFIX}jobs{{state="{s}"}} {counts[s]}' for s in ("pending", "running", "done", "failed")),
        f"# HELP {PREFIX}stage_seconds Seconds spent per stage since the node started.", f"# TYPE {PREFIX}stage_seconds summary",
    ]
    for stage, (total, count) in sorted(stages.items()):
        lines += [f'{PREFIX}stage_seconds_sum{{stage="{stage}"}} {total:.6f}', f'{PREFIX}stage_seconds_count{{stage="{stage}"}} {count}']
    for name in sorted({name for name, _ in counters}):
        lines.append(f"# HELP {PREFIX}{name}_total {COUNTER_HELP.get(name, name.replace('_', ' '))} (since the node started).")
        lines.append(f"# TYPE {PREFIX}{name}_total counter")
        for (n, labels), value in sorted(counters.items()):
            if n == name:
                lines.append(f"{PREFIX}{name}_total{_labels(labels)} {value:.17g}")
    lines += [
        f"# HELP {PREFIX}resident_memory_bytes Resident memory of the node process.",
        f"# TYPE {PREFIX}resident_memory_bytes gauge", f"{PREFIX}resident_memory_bytes {memory['rss']}",
        f"# HELP {PREFIX}peak_resident_memory_bytes Peak resident memory of the node process since it started.",
        f"# TYPE {PREFIX}peak_resident_memory_bytes gauge", f"{PREFIX}peak_resident_memory_bytes {memory['peak']}",
    ]
    return "\n".join(lines) + "\n"


class Monitor:
    """The HTTP endpoint in a background thread. ``health()`` returns ``(ok, payload)``."""

    def __init__(self, host: str, port: int, queue: JobQueue, stats: NodeStats, health: Callable[[], tuple[bool, dict]]):
        self.queue, self.stats, self.health = queue, stats, health
        monitor = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                path = self.path.split("?", 1)[0]
                try:
                    if path == "/health":
                        ok, payload = monitor.health()
                        self._reply(200 if ok else 503, "application/json", json.dumps(payload, indent=1) + "\n")
                    elif path == "/metrics":
                        self._reply(200, "text/plain; version=0.0.4; charset=utf-8", metrics_text(monitor.queue, monitor.stats))
                    else:
                        self._reply(404, "text/plain; charset=utf-8", "not found: GET /health or /metrics\n")
                except Exception as err:  # the database is busy or gone: an answer, not a hung request
                    self._reply(503, "text/plain; charset=utf-8", f"unavailable: {type(err).__name__}: {err}\n")

            def _reply(self, code: int, kind: str, body: str) -> None:
                data = body.encode("utf-8")
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, fmt, *args):  # requests go to the debug log, not stderr
                logger.debug("http %s %s", self.address_string(), fmt % args)

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="http", daemon=True)
        self.started = time.time()

    def start(self) -> None:
        self.thread.start()
        host, port = self.server.server_address[:2]
        logger.info("health and metrics on http://%s:%d/health and /metrics", host, port)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
