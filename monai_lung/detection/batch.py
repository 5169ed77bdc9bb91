"""Batch detection over data lists: resumable, failure-isolated, atomic outputs, split across torchrun ranks.

Outputs for ``--output preds.csv``:

- ``preds.csv``: LUNA16 submission rows ``seriesuid,coordX,coordY,coordZ,probability`` (world LPS mm), then the
  findings' CSV attributes (:func:`~monai_lung.findings.record.csv_columns`), rewritten atomically from the per-scan
  results, in data-list order then by probability;
- ``preds_scans/<seriesuid>.json``: one file per finished scan, a :class:`~monai_lung.findings.record.ScanResult`
  (findings with sizes and both stages' scores, timings, warnings). These are the ledger: a rerun skips scans that
  have one, so nothing is done twice and no row is ever duplicated;
- ``preds_failures.csv`` beside ``preds.csv``: ``seriesuid,image,error`` for scans that could not be processed
  (unreadable, not 3D, NaNs, smaller than a patch...). The run goes on with the other scans.
- with a report dir: ``index.html``, a PNG per shown finding (``images/``) and per scan a 3D Slicer point list
  of the same findings (``slicer/<seriesuid>.mrk.json``, world LPS mm).

Under ``torchrun`` each rank takes every WORLD_SIZE-th scan and writes its own JSON files and
``preds_failures.rank<R>.csv``; rank 0 merges them when all ranks are done.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import pandas as pd

from monai_lung.datalist import entry_seriesuid, load_datalist_entries
from monai_lung.domain import scan_domain
from monai_lung.findings import Finding, ScanResult, attributes, csv_columns, run_steps
from monai_lung.io import DataError, seriesuid_of, write_csv_atomic, write_json_atomic

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScanItem:
    """One scan to process: its seriesuid and path (a file or a DICOM folder)."""

    seriesuid: str
    image: str


def items_from_datalist(datalist_file: str | os.PathLike, data_dir: str | os.PathLike | None, key: str = "test") -> list[ScanItem]:
    """Scans of list ``key`` of a Decathlon-style data list (image paths relative to ``data_dir``)."""
    entries = load_datalist_entries(datalist_file, key, data_dir)
    return [ScanItem(entry_seriesuid(e), str(e["image"])) for e in entries]


def items_from_paths(paths: Sequence[str | os.PathLike]) -> list[ScanItem]:
    """Scans given directly (files or DICOM folders); the seriesuid is the file name without its suffix."""
    return [ScanItem(seriesuid_of(p), str(p)) for p in paths]


def short_error(err: BaseException) -> str:
    """One line naming the problem: a :class:`DataError`'s own text, also when MONAI wrapped it."""
    cause: BaseException | None = err
    while cause is not None:  # MONAI's Compose re-raises as "applying transform ..." with ours as the cause
        if isinstance(cause, DataError):
            return str(cause)
        for line in str(cause).splitlines():  # LoadImage folds its readers' tracebacks into its message
            if "DataError: " in line:
                return line.split("DataError: ", 1)[1].strip()
        cause = cause.__cause__ or cause.__context__
    text = str(err)
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return f"{type(err).__name__}: {first}"[:500]


def scans_dir_for(output_csv: str | os.PathLike) -> Path:
    output_csv = Path(output_csv)
    return output_csv.with_name(output_csv.stem + "_scans")


def failures_path_for(output_csv: str | os.PathLike, rank: int | None = None) -> Path:
    """``<stem>_failures.csv`` beside ``output_csv`` (``<stem>_failures.rank<R>.csv`` for one rank's part): named after
    the output, like its per-scan folder, so that two runs into one folder keep their own failure records."""
    output_csv = Path(output_csv)
    return output_csv.with_name(output_csv.stem + "_failures" + ("" if rank is None else f".rank{rank}") + ".csv")


def read_scan_result(path: str | os.PathLike) -> ScanResult:
    """A per-scan JSON file of the ledger as a :class:`~monai_lung.findings.record.ScanResult`."""
    return ScanResult.from_json(json.loads(Path(path).read_text(encoding="utf-8")))


LEDGER_FINDING_COLUMNS = ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm", "probability", "stage1_peak", "stage2_prob"]


def ledger_findings(scans_dir: str | os.PathLike) -> pd.DataFrame:
    """Every finding of the per-scan JSON results in ``scans_dir`` (all of a scan's candidates, not only the
    100 per scan a submission keeps), one row each: :data:`LEDGER_FINDING_COLUMNS` (centre world LPS mm,
    diameter mm, final probability and both stages' scores). Scans in file-name order, findings as stored."""
    frames = []
    for path in sorted(Path(scans_dir).glob("*.json")):
        scan = read_scan_result(path)
        frames.append(scan.frame(LEDGER_FINDING_COLUMNS[1:]).assign(seriesuid=scan.seriesuid))
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True)[LEDGER_FINDING_COLUMNS] if frames else pd.DataFrame(columns=LEDGER_FINDING_COLUMNS)


def merge_outputs(items: Sequence[ScanItem], output_csv: str | os.PathLike, world_size: int = 1) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Write ``output_csv`` and its failures file (:func:`failures_path_for`) from the per-scan JSON files and the ranks' failure files."""
    output_csv = Path(output_csv)
    scans_dir = scans_dir_for(output_csv)
    rows = []
    for item in items:
        path = scans_dir / f"{item.seriesuid}.json"
        if path.is_file():
            scan = read_scan_result(path)
            rows.extend(sorted((f.csv_row(scan.seriesuid) for f in scan.findings), key=lambda r: -r["probability"]))
    preds = pd.DataFrame(rows, columns=csv_columns(Finding))
    write_csv_atomic(output_csv, preds)
    failures = []
    for rank in range(world_size):
        part = failures_path_for(output_csv, rank)
        if part.is_file():
            failures.append(pd.read_csv(part, dtype=str, keep_default_na=False))
    fail = pd.concat(failures, ignore_index=True) if failures else pd.DataFrame(columns=["seriesuid", "image", "error"])
    done = {p.stem for p in scans_dir.glob("*.json")} if scans_dir.is_dir() else set()
    fail = fail[~fail["seriesuid"].isin(done)]  # a scan that failed before and succeeded on a rerun is not a failure
    write_csv_atomic(failures_path_for(output_csv), fail)
    return preds, fail


def _prepared_stream(items: Sequence[ScanItem], prepare: Callable[[ScanItem], Any] | None, prefetch: int) -> Iterator[tuple]:
    """``(index, item, prepare(item) or None, error or None)`` for each item in order; with ``prefetch`` > 0 and a
    ``prepare``, the preparing runs that many items ahead in a background thread. Errors are yielded, not raised,
    so that one bad scan does not end the stream."""

    def stream():
        for index, item in enumerate(items):
            if prepare is None:
                yield index, item, None, None
                continue
            try:
                yield index, item, prepare(item), None
            except Exception as err:
                yield index, item, None, err

    if prepare is None or prefetch <= 0:
        return stream()
    from monai.data import ThreadBuffer

    return iter(ThreadBuffer(stream(), buffer_size=prefetch))


def run_batch(
    detect_scan: Callable[[ScanItem], dict],
    items: Sequence[ScanItem],
    output_csv: str | os.PathLike,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
    on_scan_done: Callable[[dict], None] | None = None,
    barrier: Callable[[], None] | None = None,
    prepare: Callable[[ScanItem], Any] | None = None,
    prefetch: int = 0,
    prior_failures: Sequence[dict] = (),
) -> dict:
    """Run ``detect_scan`` over this rank's share of ``items`` and write the outputs (module docstring).

    Args:
        detect_scan: ``item -> result``, a JSON-able dict (a :class:`~monai_lung.findings.record.ScanResult`'s
            ``to_json()``, with the scan's other outputs); raising marks the scan failed. With ``prepare``:
            ``(item, prepare(item)) -> result``.
        rank, world_size: this process's share is ``items[rank::world_size]``.
        on_scan_done: called with each finished scan's result (report pictures).
        barrier: waits for all ranks before rank 0 merges (``torch.distributed.barrier``).
        prepare: optional first step of a scan (reading, resampling: CPU work); raising marks the scan failed.
        prefetch: with ``prepare``, how many scans it may run ahead of ``detect_scan``, in a background thread
            (MONAI's ``ThreadBuffer``), so that a GPU does not wait while the next scan is read; 0: one scan at a
            time. Up to ``prefetch + 1`` prepared volumes wait in memory beside the one being detected.
        prior_failures: ``{"seriesuid", "image", "error"}`` rows of inputs that failed before becoming items (a study
            the PACS did not deliver); recorded like this run's failures (rank 0 only).

    Returns:
        ``{"processed", "skipped", "failed", "predictions" (rank 0: rows in the merged CSV), "seconds"}``.
    """
    from tqdm import tqdm

    output_csv = Path(output_csv)
    scans_dir = scans_dir_for(output_csv)
    scans_dir.mkdir(parents=True, exist_ok=True)
    mine = list(items)[rank::world_size]
    failures_part = failures_path_for(output_csv, rank)
    failures: list[dict] = []
    stats = {"processed": 0, "skipped": 0, "failed": 0}
    start = time.perf_counter()
    todo = []
    for item in mine:
        if (scans_dir / f"{item.seriesuid}.json").is_file():
            stats["skipped"] += 1
        else:
            todo.append(item)

    def record_failure(item: ScanItem, message: str) -> None:
        logger.warning("scan %s failed: %s", item.seriesuid, message)
        failures.append({"seriesuid": item.seriesuid, "image": item.image, "error": message})
        write_csv_atomic(failures_part, pd.DataFrame(failures, columns=["seriesuid", "image", "error"]))
        stats["failed"] += 1

    def process(item: ScanItem, prepared: Any, error: BaseException | None) -> None:
        if error is None:
            try:
                result = detect_scan(item) if prepare is None else detect_scan(item, prepared)
            except Exception as err:  # one bad scan must not stop a run over thousands
                error = err
        if error is not None:
            logger.debug("scan %s failed", item.seriesuid, exc_info=error)
            record_failure(item, short_error(error))
            return
        result = {"seriesuid": item.seriesuid, "image": item.image, "status": "ok", **result}
        write_json_atomic(scans_dir / f"{item.seriesuid}.json", result)
        stats["processed"] += 1
        timings = result.get("timings_s", {})
        logger.info(
            "%s: %d findings; %s", item.seriesuid, len(result.get("findings", [])),
            ", ".join(f"{k} {v:.2f} s" for k, v in timings.items()),
        )
        for warning in result.get("warnings", []):
            logger.warning("%s: %s", item.seriesuid, warning)
        if on_scan_done is not None:
            on_scan_done(result)

    for row in prior_failures if rank == 0 else ():
        record_failure(ScanItem(str(row["seriesuid"]), str(row["image"])), str(row["error"]))
    reached = 0  # the stream keeps the order, so the scans reached are a prefix of todo
    bar = tqdm(total=len(todo), desc=f"detect (rank {rank}/{world_size})" if world_size > 1 else "detect", unit="scan", disable=not progress)
    for index, item, prepared, error in _prepared_stream(todo, prepare, prefetch):
        reached = index + 1
        process(item, prepared, error)
        prepared = None  # free this volume before waiting for the next one
        bar.update(1)
    bar.close()
    for item in todo[reached:]:  # only if the preparing thread died: say so rather than lose the scan quietly
        record_failure(item, "not processed: the background thread preparing scans stopped (see the log)")
    if not failures and failures_part.exists():
        failures_part.unlink()  # this run's failures replace an earlier run's
    if barrier is not None:
        barrier()
    if rank == 0:
        preds, fail = merge_outputs(items, output_csv, world_size)
        stats["predictions"] = len(preds)
        stats["failures_total"] = len(fail)
    stats["seconds"] = time.perf_counter() - start
    return stats


def scan_steps(
    detector, preprocess: Callable[[dict], dict], report_dir: str | os.PathLike | None = None, max_report_findings: int = 10,
    extra_outputs: Callable[[ScanItem, ScanResult], dict] | None = None, scan_facts: Callable[[ScanItem], dict] | None = None,
    strict_domain: bool = False,
):
    """The two steps of one scan for :func:`run_batch`: ``prepare(item) -> (image, seconds)`` (read, resample,
    window: CPU only, so it can run ahead in a background thread) and ``detect(item, prepared) -> result dict``
    (both stages, and optionally the report pictures).

    ``detector`` is a :class:`~monai_lung.detection.detector.TwoStageDetector`; ``preprocess`` the CT chain
    (``{"image": path} -> {"image": (1, i, j, k) MetaTensor}``, RAS grid, windowed to [0, 1]). The result is the
    detector's :class:`~monai_lung.findings.record.ScanResult` as JSON (findings world LPS mm) with the outputs
    written from it. ``extra_outputs(item, scan result) -> dict`` (e.g. DICOM objects) adds its entries to the
    result; raising fails the scan, so that a rerun does it again.

    ``scan_facts(item) -> dict``: what is known of a scan beyond its image for the domain check (a DICOM series'
    slice thickness, kernel, contrast: :func:`monai_lung.domain.dicom_facts`). ``strict_domain``: a scan outside the
    validated range fails (a failure row naming the reasons) instead of getting findings with warnings; what its
    header and DICOM series say is checked before detection, its lungs after stage 1.
    """

    def prepare(item: ScanItem):
        t = time.perf_counter()
        image = preprocess({"image": item.image})["image"]
        if strict_domain:
            _refuse_outside(item, scan_domain(image, known=scan_facts(item) if scan_facts else None))
        return image, time.perf_counter() - t

    def detect(item: ScanItem, prepared) -> dict:
        image, total_prep = prepared
        read_s, resample_s = float(image.meta.get("read_s", 0.0)), float(image.meta.get("resample_s", 0.0))
        scan = detector.detect(image, scan_facts(item) if scan_facts else None)
        if strict_domain:
            _refuse_outside(item, scan.domain)
        scan.seriesuid, scan.image = item.seriesuid, item.image
        step_timings = run_steps(scan, item.image)  # attributes computed above detection (monai_lung.findings.steps)
        scan.timings_s = {"load": read_s, "resample": resample_s, "preprocess_other": max(total_prep - read_s - resample_s, 0.0),
                          **scan.timings_s, **step_timings}
        result = scan.to_json()
        if extra_outputs is not None:
            t = time.perf_counter()
            result.update(extra_outputs(item, scan))
            result["timings_s"]["dicom"] = time.perf_counter() - t
        if report_dir is not None:
            t = time.perf_counter()
            try:
                from monai_lung.report.findings import render_scan_findings

                result["report"] = render_scan_findings(item.image, item.seriesuid, scan.findings, report_dir, max_report_findings)
            except Exception as err:  # a picture must not cost the detections
                result["report_error"] = short_error(err)
            try:
                result["markups"] = write_scan_markups(report_dir, item.seriesuid, scan.findings, max_report_findings)
            except Exception as err:  # neither may the Slicer file
                result["report_error"] = "; ".join(filter(None, [result.get("report_error"), short_error(err)]))
            result["timings_s"]["report"] = time.perf_counter() - t
        return result

    return prepare, detect


def _refuse_outside(item: ScanItem, check) -> None:
    """Raise :class:`DataError` naming the reasons when a domain check (a DomainCheck or its dict) is out of range."""
    check = check if isinstance(check, dict) else check.as_dict()
    if check and not check.get("in_range", True):
        raise DataError(item.image, "outside the validated range (--strict-domain): " + "; ".join(check.get("warnings", [])))


def write_scan_markups(report_dir: str | os.PathLike, seriesuid: str, findings: Sequence[Finding], max_findings: int) -> str:
    """``report_dir/slicer/<seriesuid>.mrk.json``: the scan's ``max_findings`` best findings (world LPS mm) as a
    3D Slicer point list; returns its path relative to ``report_dir``."""
    from monai_lung.report.slicer import MARKUPS_SUFFIX, finding_points, point_list_markups, write_markups

    relative = Path("slicer") / f"{seriesuid}{MARKUPS_SUFFIX}"
    write_markups(Path(report_dir) / relative, point_list_markups(finding_points(findings, max_findings), f"{seriesuid} findings"))
    return relative.as_posix()


def write_report_index(output_csv: str | os.PathLike, report_dir: str | os.PathLike, items: Sequence[ScanItem]) -> Path:
    """``report_dir/index.html`` over every scan of ``items``: their findings' pictures, or their failure."""
    from monai_lung.report.html import write_index_html

    output_csv = Path(output_csv)
    scans_dir = scans_dir_for(output_csv)
    failures_path = failures_path_for(output_csv)
    failed = pd.read_csv(failures_path, dtype=str, keep_default_na=False) if failures_path.is_file() else pd.DataFrame(columns=["seriesuid", "error"])
    errors = dict(zip(failed["seriesuid"], failed["error"]))
    scans = []
    for item in items:
        path = scans_dir / f"{item.seriesuid}.json"
        if path.is_file():
            res = json.loads(path.read_text(encoding="utf-8"))
            scans.append({"seriesuid": item.seriesuid, "image": item.image, "status": "ok", "error": res.get("report_error"),
                          "findings": res.get("report", []), "timings_s": res.get("timings_s", {}),
                          "markups": res.get("markups"), **{name: res[name] for name, _ in attributes(ScanResult) if name in res}})
        elif item.seriesuid in errors:
            scans.append({"seriesuid": item.seriesuid, "image": item.image, "status": "failed", "error": errors[item.seriesuid],
                          "findings": [], "timings_s": {}})
    return write_index_html(report_dir, scans)


def detect_items(
    detector,
    preprocess: Callable[[dict], dict],
    items: Sequence[ScanItem],
    output_csv: str | os.PathLike,
    report_dir: str | os.PathLike | None = None,
    max_report_findings: int = 10,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
    barrier: Callable[[], None] | None = None,
    prefetch: int = 1,
    extra_outputs: Callable[[ScanItem, ScanResult], dict] | None = None,
    prior_failures: Sequence[dict] = (),
    scan_facts: Callable[[ScanItem], dict] | None = None,
    strict_domain: bool = False,
) -> dict:
    """Detect over ``items`` and write every output (the CLI's ``detect`` and the detection bundle's ``run``);
    ``prefetch`` scans are read and resampled ahead in a background thread (:func:`run_batch`); ``extra_outputs``,
    ``scan_facts`` and ``strict_domain`` as in :func:`scan_steps`."""
    prepare, detect = scan_steps(detector, preprocess, report_dir, max_report_findings, extra_outputs, scan_facts, strict_domain)
    stats = run_batch(
        detect, items, output_csv, rank=rank, world_size=world_size, progress=progress, barrier=barrier,
        prepare=prepare, prefetch=prefetch, prior_failures=prior_failures,
    )
    if rank == 0 and report_dir is not None:
        write_report_index(output_csv, report_dir, items)
    return stats
