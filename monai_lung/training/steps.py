"""The step runner of ``monai-lung train`` (and the demo): steps with fingerprints, and subprocesses with their logs.

Each step has a fingerprint: its settings, the identity of its input files and the fingerprint of the step
before it. A rerun keeps a finished step whose fingerprint is unchanged and redoes the first changed step
and every one after it; a step that was interrupted resumes when it can. ``<work dir>/train_summary.json``
records every step's settings, time and outcome. :func:`run_logged` runs one command of a step, its output
appended to the step's log, a progress bar following the counts it prints.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from monai_lung.io import find_scans, write_json_atomic

# a step's python subprocesses import the monai_lung this process runs (a checkout, an editable install or a wheel)
_PACKAGE_PARENT = str(Path(__file__).resolve().parents[2])
SUMMARY = "train_summary.json"
_EPOCH = re.compile(r"Epoch: (\d+)/(\d+)")
_TQDM = re.compile(r"(\d+)/(\d+) \[")


@dataclasses.dataclass
class Step:
    """One step: ``run(step_dir, resume)`` does the work; ``inputs`` (JSON-able) define its fingerprint."""

    name: str
    inputs: dict
    run: Callable[[Path, bool], None]
    commands: list[list[str]] = dataclasses.field(default_factory=list)  # what --dry-run shows
    resumable: bool = False


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def file_identity(path: Path | None) -> dict | None:
    """A CSV or config's identity for a fingerprint: its path and a hash of its content (edits redo the steps)."""
    if path is None:
        return None
    path = Path(path)
    if not path.is_file():
        return {"path": str(path), "missing": True}
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return {"path": str(path.resolve()), "sha256": digest.hexdigest()[:16]}


def scans_identity(data_dir: Path) -> dict:
    """The data folder's scans for a fingerprint: name, size and modification time of every scan file (no
    pixel is read, so this stays quick on a full LUNA16 download)."""
    items = []
    for uid, (subset, path) in sorted(find_scans(data_dir).items()):
        stat = path.stat()
        raw = path.with_suffix(".raw") if path.suffix == ".mhd" else None
        raw_stat = raw.stat() if raw is not None and raw.is_file() else None
        items.append([uid, subset, stat.st_size, int(stat.st_mtime), raw_stat.st_size if raw_stat else None])
    return {"path": str(Path(data_dir).resolve()), "scans": len(items), "digest": _digest(items)}


def bundle_identity(bundle: Path) -> dict:
    """A bundle template's configs for a fingerprint: what its training and inference read (not its weights, logs
    or ``metadata.json``, whose version and changelog change with documentation too)."""
    configs = sorted(p for p in (Path(bundle) / "configs").glob("*.json") if p.name != "metadata.json")
    return {"path": str(Path(bundle).resolve()), "configs": {p.name: file_identity(p)["sha256"] for p in configs}}


def settings_diff(old: dict, new: dict) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [f"{k} {json.dumps(old.get(k))} -> {json.dumps(new.get(k))}" for k in keys if old.get(k) != new.get(k)]


class StepRunner:
    """Runs steps in order under a work dir, skipping finished ones whose fingerprint is unchanged.

    Each step's state lives in ``<work>/<step>/step.json`` (``fingerprint``, ``status`` started/done,
    ``seconds``); a step's fingerprint covers the one before it, so the first changed step and all later
    ones run again. Every step's record also goes to ``<work>/train_summary.json`` as it finishes.
    """

    def __init__(self, work: Path, header: dict, prefix: str = "[train]", verbose: bool = False, summary_name: str = SUMMARY):
        self.work, self.header, self.prefix, self.verbose = Path(work), header, prefix, verbose
        self.summary_path = self.work / summary_name
        self.records: list[dict] = []
        self.previous = _digest(header.get("identity", {}))
        self.start = time.perf_counter()

    def say(self, line: str) -> None:
        print(f"{self.prefix} {line}", flush=True)

    def _write_summary(self, extra: dict | None = None) -> None:
        data = {**self.header, "steps": self.records, "seconds": round(time.perf_counter() - self.start, 1)}
        if self.summary_path.is_file():
            try:
                old = json.loads(self.summary_path.read_text(encoding="utf-8"))
                if "result" in old and extra is None:
                    data["result"] = old["result"]
            except (OSError, json.JSONDecodeError):
                pass
        data.update(extra or {})
        write_json_atomic(self.summary_path, data)

    def finish(self, result: dict) -> None:
        self._write_summary({"result": result})

    def run(self, step: Step) -> None:
        folder = self.work / step.name
        fingerprint = _digest({"previous": self.previous, "inputs": step.inputs})
        state_file = folder / "step.json"
        state = {}
        if state_file.is_file():
            try:
                state = json.loads(state_file.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                state = {}
        same = state.get("fingerprint") == fingerprint
        record = {"name": step.name, "settings": step.inputs, "fingerprint": fingerprint}
        if same and state.get("status") == "done":
            self.say(f"{step.name}: done before ({state.get('seconds', 0):.0f} s), kept")
            self.records.append({**record, "outcome": "kept", "seconds": state.get("seconds")})
            self.previous = fingerprint
            self._write_summary()
            return
        resume = same and state.get("status") == "started" and step.resumable
        if not resume and folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(state_file, {"fingerprint": fingerprint, "status": "started", "settings": step.inputs})
        self.say(f"{step.name} ..." + (" (resuming the interrupted run)" if resume else ""))
        t = time.perf_counter()
        try:
            step.run(folder, resume)
        except BaseException:
            seconds = round(time.perf_counter() - t, 1)
            self.records.append({**record, "outcome": "failed", "seconds": seconds, "log": str(folder / "log.txt")})
            self._write_summary()
            raise
        seconds = round(time.perf_counter() - t, 1)
        write_json_atomic(state_file, {"fingerprint": fingerprint, "status": "done", "seconds": seconds, "settings": step.inputs})
        self.records.append({**record, "outcome": "done", "seconds": seconds})
        self.previous = fingerprint
        self._write_summary()
        self.say(f"{step.name}: {seconds:.0f} s (total {time.perf_counter() - self.start:.0f} s)")


class StepFailed(RuntimeError):
    """A step's command failed; ``str()`` names the step, the exit code and the log."""


def run_logged(cmd: list, log: Path, prefix: str = "[train]", verbose: bool = False, env: dict | None = None) -> None:
    """Run ``cmd`` in the folder of ``log`` (the step's folder: commands name every path absolutely, so nothing depends
    on where ``train`` was started), appending its output to ``log``; a progress bar follows the ``N/M`` counts it
    prints (epochs, scans). Its python imports the same monai_lung as this process.

    Raises:
        StepFailed: a non-zero exit, with the last lines of the log.
    """
    from tqdm import tqdm

    cmd = [str(c) for c in cmd]
    pythonpath = os.pathsep.join(p for p in (_PACKAGE_PARENT, os.environ.get("PYTHONPATH", "")) if p)
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": pythonpath, **(env or {})}
    with log.open("ab") as out:
        out.write(("$ " + " ".join(cmd) + "\n").encode())
        out.flush()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=str(log.parent), env=full_env)
        bar = None
        buffer = b""
        try:
            while True:
                chunk = proc.stdout.read1(1 << 16) if hasattr(proc.stdout, "read1") else proc.stdout.read(1 << 16)
                if not chunk:
                    break
                out.write(chunk)
                out.flush()
                if verbose:
                    sys.stdout.write(chunk.decode("utf-8", "replace"))
                    sys.stdout.flush()
                    continue
                buffer = (buffer + chunk)[-4096:]
                parts = re.split(rb"[\r\n]", buffer)
                buffer = parts[-1]
                for line in parts[:-1]:
                    text = line.decode("utf-8", "replace")
                    found = _EPOCH.findall(text) or _TQDM.findall(text)
                    if not found:
                        continue
                    done, total = (int(v) for v in found[-1])
                    if total <= 0 or done > total:
                        continue
                    if bar is None or bar.total != total:
                        if bar is not None:
                            bar.close()
                        unit = "epoch" if _EPOCH.search(text) else "it"
                        bar = tqdm(total=total, leave=False, desc=f"{prefix}  ", unit=unit, dynamic_ncols=True, file=sys.stderr,
                                   disable=not sys.stderr.isatty())  # a log file gets the step lines only
                    bar.n = done
                    bar.refresh()
        except BaseException:
            proc.kill()
            raise
        finally:
            if bar is not None:
                bar.close()
            code = proc.wait()
    if code != 0:
        tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-15:]
        at = max((i for i, c in enumerate(cmd) if c == "-m"), default=-1)  # the module run: after torchrun's own
        what = " ".join(cmd[at + 1 : at + 3]) if at >= 0 else cmd[0]
        raise StepFailed(f"{what} exited with {code}; its log: {log}; last lines:\n  " + "\n  ".join(tail))


def quote(value: str) -> str:
    return value if re.fullmatch(r"[\w@%+=:,./#-]+", value) else "'" + value.replace("'", "'\\''") + "'"


