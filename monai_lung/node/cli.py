"""``monai-lung serve``: argument parsing, ``--status``, logging setup; the node itself is :mod:`monai_lung.node.server`."""

from __future__ import annotations

import argparse
import datetime
import logging
import sys
import warnings
from pathlib import Path

from monai_lung.bundle_args import parse_overrides


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--status", type=Path, metavar="WORK_DIR", help="print the job table of a node's work dir and exit")
    p.add_argument("--det-bundle", type=Path, help="the trained two-stage detection bundle folder")
    p.add_argument("--work-dir", type=Path, help="received instances, the job queue (node.sqlite3) and results live here")
    g = p.add_argument_group("receiving (DICOM Storage SCP)")
    g.add_argument("--ae-title", default="LUNGCAD", help="this node's AE title")
    g.add_argument("--port", type=int, default=11112, help="DICOM port")
    g.add_argument("--host", default="0.0.0.0", help="address the DICOM port listens on")
    g.add_argument("--allow-ae", action="extend", nargs="+", default=[], metavar="AE",
                   help="calling AE titles allowed to send (repeatable); without it any AE title is accepted")
    g.add_argument("--stable-seconds", type=float, default=10.0, help="a study is processed once no instance has arrived for this long")
    g.add_argument("--min-free-mb", type=float, default=1024.0,
                   help="refuse instances (C-STORE status 0xA700 out of resources) when the work dir's disk has less free space")
    g = p.add_argument_group("results (sent by C-STORE and/or STOW-RS)")
    g.add_argument("--send-to", action="append", default=[], metavar="AE@HOST:PORT", help="C-STORE destination (repeatable)")
    g.add_argument("--send-to-dicomweb", action="append", default=[], metavar="URL", help="DICOMweb root for STOW-RS (repeatable)")
    g.add_argument("--max-findings", type=int, default=10, help="most probable findings per study in the SR, SEG and key images")
    g.add_argument("--retry-seconds", type=float, default=10.0, help="first wait after a failed delivery (doubles each time)")
    g.add_argument("--retry-max-seconds", type=float, default=600.0, help="longest wait between deliveries")
    g = p.add_argument_group("processing")
    g.add_argument("--workers", type=int, default=1, help="studies detected at once (each needs ~2-4 GB)")
    g.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    g.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="detector parameter override, as for detect")
    g.add_argument("--max-attempts", type=int, default=3, help="tries at a study that fails for reasons other than its input")
    g.add_argument("--stop-timeout", type=float, default=30.0,
                   help="on SIGTERM, seconds a running job may take to finish before it is returned to pending")
    g.add_argument("--keep-days", type=float, default=7.0, help="delete instances and result files of studies idle this long")
    g = p.add_argument_group("monitoring")
    g.add_argument("--http-port", type=int, default=8080, help="GET /health and /metrics on this port (0: none)")
    g.add_argument("--http-host", default="127.0.0.1", help="address of the HTTP port")


def serve_main(args: argparse.Namespace) -> int:
    if args.status is not None:
        return print_status(args.status)
    from monai_lung.node.config import NodeConfig
    from monai_lung.node.sender import DicomDestination

    if args.det_bundle is None or args.work_dir is None:
        raise SystemExit("monai-lung serve: give --det-bundle and --work-dir (or --status WORK_DIR)")
    if not (args.send_to or args.send_to_dicomweb):
        raise SystemExit("monai-lung serve: give a destination for the results: --send-to AE@HOST:PORT and/or --send-to-dicomweb URL")
    if args.workers < 1 or args.max_attempts < 1 or args.stable_seconds < 0:
        raise SystemExit("monai-lung serve: --workers and --max-attempts must be 1 or more, --stable-seconds 0 or more")
    if not (args.det_bundle / "models" / "model.pt").is_file():
        raise SystemExit(f"monai-lung serve: {args.det_bundle}: not a trained detection bundle (no models/model.pt)")
    try:
        send_to = [DicomDestination.parse(d) for d in args.send_to]
    except ValueError as err:
        raise SystemExit(f"monai-lung serve: {err}") from None
    if len(args.ae_title.strip()) > 16 or not args.ae_title.strip():
        raise SystemExit(f"monai-lung serve: --ae-title {args.ae_title!r} must be 1-16 characters")
    # pynetdicom logs every association at INFO; the node logs what matters itself (UIDs and AE titles, no patient data)
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    # pydicom's and highdicom's warnings quote element values, e.g. a patient name that lacks a "^": none in the log
    for module in ("pydicom", "highdicom"):
        warnings.filterwarnings("ignore", module=rf"{module}(\.|$)")
    config = NodeConfig(
        work_dir=args.work_dir, det_bundle=args.det_bundle, ae_title=args.ae_title.strip(), host=args.host, port=args.port,
        send_to=send_to, send_to_dicomweb=args.send_to_dicomweb, allow_ae=args.allow_ae, stable_seconds=args.stable_seconds,
        workers=args.workers, http_host=args.http_host, http_port=args.http_port, device=args.device,
        overrides=parse_overrides(args.set), max_findings=args.max_findings, min_free_mb=args.min_free_mb,
        retry_seconds=args.retry_seconds, retry_max_seconds=args.retry_max_seconds, max_attempts=args.max_attempts,
        stop_timeout=args.stop_timeout, keep_days=args.keep_days,
    )
    from monai_lung.node.server import Node, WorkDirBusy

    try:
        return Node(config).run()
    except WorkDirBusy as err:
        raise SystemExit(f"monai-lung serve: {err}") from None


def _when(t: float | None) -> str:
    return datetime.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S") if t else "-"


def print_status(work_dir: Path, out=None) -> int:
    """The job table of ``work_dir``'s queue, oldest first, and the totals; readable while the node runs."""
    from monai_lung.node.queue import open_read_only

    out = out or sys.stdout
    try:
        db = open_read_only(work_dir)
    except FileNotFoundError as err:
        raise SystemExit(f"monai-lung serve: {work_dir}: no node work dir here ({err} is missing)") from None
    with db:
        rows = db.execute("SELECT id, study_uid, state, stage, attempts, updated_at, not_before, error FROM jobs ORDER BY id").fetchall()
        receiving = db.execute("SELECT COUNT(*) FROM studies WHERE dirty = 1").fetchone()[0]
        studies = db.execute("SELECT COUNT(*) FROM studies").fetchone()[0]
    width = max([len("study")] + [len(r["study_uid"]) for r in rows])
    print(f"{'job':>5}  {'study':<{width}}  {'state':<7}  {'stage':<9}  {'tries':>5}  {'updated':<19}  error", file=out)
    for r in rows:
        error = r["error"] or ""
        if r["state"] == "pending" and r["not_before"] and error:
            error = f"{error} [due {_when(r['not_before'])}]"
        print(f"{r['id']:>5}  {r['study_uid']:<{width}}  {r['state']:<7}  {r['stage']:<9}  {r['attempts']:>5}  {_when(r['updated_at']):<19}  {error}",
              file=out)
    totals = {s: sum(r["state"] == s for r in rows) for s in ("pending", "running", "done", "failed")}
    print(f"{studies} studies received, {receiving} receiving; jobs: " + ", ".join(f"{v} {k}" for k, v in totals.items()), file=out)
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``serve`` to the ``monai-lung`` subcommands."""
    p = commands.add_parser("serve", help="a DICOM node: studies in by C-STORE, SR, SEG and key images out to the PACS (docs/deploy.md)")
    add_serve_arguments(p)
    p.set_defaults(func=serve_main)
