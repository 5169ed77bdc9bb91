"""``monai-lung serve`` as a real process for tests and benchmarks: start, wait for its HTTP endpoint, read its
queue, stop it with SIGTERM or SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import requests

from tests.orthanc_server import free_port

REPO = Path(__file__).resolve().parents[1]


class NodeProcess:
    """One run of ``python -m monai_lung serve --work-dir WORK ...``; ``start()`` may be called again after the
    process ended (a restart on the same work dir and ports). Its output goes to ``WORK/../node-<port>-<n>.log``."""

    def __init__(self, work_dir: Path, bundle: Path, args: list[str], env: dict | None = None, ae_title: str = "LUNGCAD"):
        self.work_dir, self.bundle, self.args = Path(work_dir), Path(bundle), list(args)
        self.env = dict(env or {})
        self.ae_title = ae_title
        self.port, self.http_port = free_port(), free_port()
        self.proc: subprocess.Popen | None = None
        self.runs = 0
        self.logs: list[Path] = []

    def command(self) -> list[str]:
        return [sys.executable, "-m", "monai_lung", "serve", "--det-bundle", str(self.bundle), "--work-dir", str(self.work_dir),
                "--ae-title", self.ae_title, "--port", str(self.port), "--host", "127.0.0.1", "--http-port", str(self.http_port),
                *self.args]

    def start(self, env: dict | None = None, wait: bool = True, timeout: float = 240.0) -> "NodeProcess":
        self.runs += 1
        log = self.work_dir.parent / f"node-{self.port}-{self.runs}.log"
        self.logs.append(log)
        full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO), **self.env, **(env or {})}
        with open(log, "w") as out:
            self.proc = subprocess.Popen(self.command(), cwd=str(REPO), env=full_env, stdout=out, stderr=subprocess.STDOUT)
        if wait:
            self.wait_for(lambda: self.health(allow_down=True) is not None, timeout, "the node's /health")
        return self

    def log(self) -> str:
        return "".join(p.read_text(encoding="utf-8", errors="replace") for p in self.logs if p.exists())

    def health(self, allow_down: bool = False) -> dict | None:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"the node exited ({self.proc.returncode}):\n{self.log()[-4000:]}")
        try:
            return requests.get(f"http://127.0.0.1:{self.http_port}/health", timeout=5).json()
        except requests.RequestException:
            if allow_down:
                return None
            raise

    def metrics(self) -> dict[str, float]:
        """``/metrics`` as ``{"name{labels}": value}``."""
        text = requests.get(f"http://127.0.0.1:{self.http_port}/metrics", timeout=5).text
        return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line and not line.startswith("#")}

    def jobs(self) -> list[dict]:
        """The queue's jobs (read-only, also while the node runs), oldest first; ``result`` decoded."""
        db = sqlite3.connect(f"file:{self.work_dir / 'node.sqlite3'}?mode=ro", uri=True, timeout=30)
        db.row_factory = sqlite3.Row
        try:
            rows = [dict(r) for r in db.execute("SELECT * FROM jobs ORDER BY id")]
        except sqlite3.OperationalError:  # no queue yet
            rows = []
        finally:
            db.close()
        for r in rows:
            r["result"] = json.loads(r["result"]) if r["result"] else None
        return rows

    def wait_for(self, predicate: Callable[[], object], timeout: float, what: str, poll: float = 0.2):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc is not None and self.proc.poll() is not None and self.proc.returncode != 0:
                raise AssertionError(f"the node exited ({self.proc.returncode}) while waiting for {what}:\n{self.log()[-4000:]}")
            value = predicate()
            if value:
                return value
            time.sleep(poll)
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; jobs {self.jobs()}\n{self.log()[-4000:]}")

    def wait_exit(self, timeout: float = 120.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 120.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"the node did not stop within {timeout:.0f} s of signal {sig}:\n{self.log()[-3000:]}")
