"""Run a real MONAI Label 0.8.5 server on our bundles, for ``tests/test_monailabel.py`` (issue 7).

The server runs from a separate venv (``make monailabel-venv`` builds ``.venv-monailabel`` from
``requirements-monailabel.txt``): MONAI Label needs torchvision, which has no wheel that imports beside the main
venv's CPU torch.  This module only starts and talks to that python; it imports nothing from MONAI Label.

What the server gets, and why (see also docs/monailabel.md):
  * an app folder: a copy of the ``monaibundle`` sample app that the monailabel wheel installs under
    ``<sys.prefix>/monailabel/sample-apps``, with our bundles copied to ``<app>/model/<name>/`` (a bundle without
    ``models/model.pt`` is dropped from ``/info/`` without an error, so that is checked here first);
  * ``--conf zoo_source ngc``: anything but ``monaihosting`` makes MONAI Label use the local bundle folders instead
    of downloading the model-zoo index; ``skip_trainers``/``sam2``/``preload``: no trainers, no SAM2 download, load
    the networks on the first request;
  * ``MONAI_LABEL_DATASTORE_FILE_EXT``: the default list has no ``*.mhd``; ``..._AUTO_RELOAD=false``: no file
    watcher thread; ``MONAI_LABEL_SESSION_PATH``: not ``~/.cache/monailabel``;
  * the working directory is a fresh folder because pydantic-settings reads ``./.env``;
  * ``PYTHONPATH`` = this checkout, so the server runs this checkout's ``monai_lung`` whatever the venv points at.

Only 127.0.0.1 is contacted (urllib with proxies disabled).  The server runs in its own process group and is
stopped with SIGTERM, then SIGKILL after a grace period; on Linux it also gets SIGTERM if the test process dies.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYTHON_ENV_VAR = "MONAI_LUNG_MONAILABEL_PY"
REQUIRE_ENV_VAR = "MONAI_LUNG_REQUIRE_MONAILABEL"  # "1": a missing venv fails the tests instead of skipping them
DEFAULT_PYTHON = REPO / ".venv-monailabel" / "bin" / "python"
CREATE_COMMAND = "make monailabel-venv"
MONAILABEL_VERSION = "0.8.5"


# ------------------------------------------------------------------------------------------- the MONAI Label python
def monailabel_python() -> Path:
    """The python that runs the server: ``$MONAI_LUNG_MONAILABEL_PY`` or ``<repo>/.venv-monailabel/bin/python``."""
    value = os.environ.get(PYTHON_ENV_VAR)
    return Path(value) if value else DEFAULT_PYTHON


def missing_reason(python: Path) -> str | None:
    """Why the server cannot be started (None when ``python`` exists): the text a skipped test shows."""
    if python.is_file() and os.access(python, os.X_OK):
        return None
    where = f"${PYTHON_ENV_VAR}={python}" if os.environ.get(PYTHON_ENV_VAR) else str(python)
    return (
        f"MONAI Label venv not found ({where} is missing): create it with `{CREATE_COMMAND}` "
        f"(a separate venv from requirements-monailabel.txt), or set {PYTHON_ENV_VAR} to a python with "
        f"monailabel=={MONAILABEL_VERSION} and monai_lung installed"
    )


_INSTALL_PROBE = """
import json, os, pathlib, sys
import monailabel
package_root = pathlib.Path(monailabel.__file__).resolve().parents[1]
candidates = [package_root / "monailabel", pathlib.Path(sys.prefix) / "monailabel",
              pathlib.Path(sys.prefix) / "local" / "monailabel"]
apps = [str(c / "sample-apps" / "monaibundle") for c in candidates if (c / "sample-apps" / "monaibundle" / "main.py").is_file()]
print(json.dumps({"version": monailabel.__version__, "prefix": sys.prefix, "monaibundle": apps[0] if apps else None}))
"""


@dataclass
class Installation:
    python: Path
    version: str
    prefix: Path
    monaibundle: Path


def inspect_installation(python: Path, timeout: float = 120.0) -> Installation:
    """Ask ``python`` for its monailabel version and sample-app folder (the places ``monailabel apps`` looks in).

    Raises RuntimeError with the interpreter's output when monailabel does not import there: a broken venv is a
    failure, not a reason to skip.
    """
    proc = subprocess.run([str(python), "-c", _INSTALL_PROBE], capture_output=True, encoding="utf-8", errors="replace", timeout=timeout,
                          env=_clean_env(), cwd="/")
    if proc.returncode != 0:
        raise RuntimeError(f"{python} cannot import monailabel (rebuild it with `{CREATE_COMMAND}`):\n"
                           f"{(proc.stdout + proc.stderr)[-3000:]}")
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    if not info["monaibundle"]:
        raise RuntimeError(f"monailabel {info['version']} in {info['prefix']} has no sample-apps/monaibundle")
    return Installation(python, info["version"], Path(info["prefix"]), Path(info["monaibundle"]))


def _clean_env() -> dict[str, str]:
    env = dict(os.environ)
    for key in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"):
        env.pop(key, None)
    return env


# ------------------------------------------------------------------------------------------------------------- app
def make_app(sample_app: Path, app_dir: Path, bundles: dict[str, Path]) -> Path:
    """Copy the ``monaibundle`` sample app to ``app_dir`` and each bundle to ``app_dir/model/<name>``."""
    shutil.copytree(sample_app, app_dir, ignore=shutil.ignore_patterns("__pycache__", "logs", "model"))
    for name, bundle in bundles.items():
        for needed in ("configs/inference.json", "configs/metadata.json", "models/model.pt"):
            if not (bundle / needed).is_file():
                # without model.pt MONAI Label leaves the bundle out of /info/ with only a log line
                raise FileNotFoundError(f"bundle {bundle} has no {needed}")
        shutil.copytree(bundle, app_dir / "model" / name,
                        ignore=shutil.ignore_patterns("__pycache__", "eval", "runs", "logs", "cache", "checkpoint_*.pt"))
    return app_dir


# ---------------------------------------------------------------------------------------------------------- server
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command(python: Path, app_dir: Path, studies_dir: Path, port: int, models: list[str]) -> list[str]:
    return [
        str(python), "-m", "monailabel.main", "start_server",
        "--app", str(app_dir), "--studies", str(studies_dir), "--host", "127.0.0.1", "--port", str(port),
        "--conf", "models", ",".join(models),
        "--conf", "zoo_source", "ngc",  # not "monaihosting": local bundle folders, no model-zoo index download
        "--conf", "skip_trainers", "true",  # inference only (training from MONAI Label: docs/monailabel.md)
        "--conf", "sam2", "false",  # the sample app adds SAM2 (a download) when the module imports
        "--conf", "preload", "false",  # load a network on its first request
    ]


def server_env(work_dir: Path, threads: int = 1) -> dict[str, str]:
    env = _clean_env()
    env.update({
        "MONAI_LABEL_DATASTORE_FILE_EXT": '["*.mhd"]',
        "MONAI_LABEL_DATASTORE_AUTO_RELOAD": "false",
        "MONAI_LABEL_SESSION_PATH": str(work_dir / "sessions"),
        "BUNDLE_DOWNLOAD_SRC": "ngc",
        "PYTHONPATH": str(REPO),  # this checkout's monai_lung, whatever the venv's editable install points at
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
    })
    return env


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: SIGTERM this child when the process that started it exits (a killed pytest leaves no server)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


@dataclass
class Server:
    """A running MONAI Label server.  Use :func:`start_server`; always call :meth:`stop` (idempotent)."""

    proc: subprocess.Popen
    base_url: str
    log_path: Path
    command: list[str]
    startup_s: float = 0.0

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def request(self, method: str, path: str, form: dict | None = None, timeout: float = 600.0):
        """(status, headers, body bytes) of ``method base_url+path``; ``form`` is sent url-encoded."""
        if self.proc.poll() is not None:
            raise RuntimeError(f"MONAI Label server exited with {self.proc.returncode}:\n{self.log_tail()}")
        return http(method, self.base_url + path, form, timeout)

    def stop(self, grace_s: float = 20.0) -> int | None:
        """SIGTERM the server's process group, SIGKILL it after ``grace_s``, then SIGKILL whatever is left in the
        group (the server is its leader: ``start_new_session``); returns the server's exit code."""
        for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
            if self.proc.poll() is not None:
                break
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout=wait_s)
            except subprocess.TimeoutExpired:
                continue
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # children that outlived the server, if any
        except (ProcessLookupError, PermissionError):
            pass
        return self.proc.poll()


def start_server(install: Installation, work_dir: Path, app_dir: Path, studies_dir: Path, models: list[str],
                 timeout_s: float = 240.0, threads: int = 1) -> Server:
    """Start the server in ``work_dir`` on a free 127.0.0.1 port and wait until ``GET /info/`` answers 200.

    On a start failure the process group is stopped before the error (with the log's tail) is raised.
    """
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = server_command(install.python, app_dir, studies_dir, port, models)
    log_path = work_dir / "server.log"
    kwargs = {"preexec_fn": _die_with_parent} if sys.platform.startswith("linux") else {}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=str(work_dir), env=server_env(work_dir, threads), stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, **kwargs)
    server = Server(proc, base, log_path, cmd)
    t0 = time.monotonic()
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"MONAI Label server exited with {proc.returncode} while starting:\n{server.log_tail()}")
            try:
                status, _, _ = http("GET", base + "/info/", timeout=10)
                if status == 200:
                    break
            except (urllib.error.URLError, ConnectionError, socket.timeout, TimeoutError):
                pass
            if time.monotonic() - t0 > timeout_s:
                raise RuntimeError(f"MONAI Label server did not answer /info/ within {timeout_s:.0f} s:\n{server.log_tail()}")
            time.sleep(0.5)
    except BaseException:
        server.stop()
        raise
    server.startup_s = time.monotonic() - t0
    return server


# ------------------------------------------------------------------------------------------------------------ http
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through a proxy


def http(method: str, url: str, form: dict | None = None, timeout: float = 600.0):
    """(status, headers, body bytes); HTTP errors are returned, not raised.  Only 127.0.0.1 is allowed."""
    if not url.startswith("http://127.0.0.1:"):
        raise ValueError(f"only the local test server may be contacted, not {url}")
    data = urllib.parse.urlencode(form).encode() if form is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    try:
        with _OPENER.open(req, timeout=timeout) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


def infer_url(model: str, image_id: str, output: str | None = None) -> str:
    query = {"image": image_id}
    if output:
        query["output"] = output
    return f"/infer/{model}?{urllib.parse.urlencode(query)}"


def split_multipart(content_type: str, body: bytes) -> dict[str, tuple[str | None, bytes]]:
    """{field name: (file name or None, exact bytes)} of a multipart/form-data answer (``/infer`` without ``output=``).

    Split by hand on the boundary, so that binary parts (a ``.nii.gz``) come back byte for byte.
    """
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    if not content_type.startswith("multipart/") or not match:
        raise ValueError(f"not a multipart answer: {content_type!r}")
    delimiter = b"--" + match.group(1).encode()
    parts = {}
    for chunk in body.split(delimiter)[1:]:
        if chunk.startswith(b"--"):  # the closing delimiter
            break
        head, sep, payload = chunk.partition(b"\r\n\r\n")
        if not sep:
            raise ValueError("multipart part without a header block")
        headers = head.decode("latin-1")
        name = re.search(r'\bname="([^"]*)"', headers)
        filename = re.search(r'\bfilename="([^"]*)"', headers)
        if name is None:
            raise ValueError(f"multipart part without a name: {headers!r}")
        parts[name.group(1)] = (filename.group(1) if filename else None, payload[:-2] if payload.endswith(b"\r\n") else payload)
    return parts
