"""Load test of ``monai-lung serve``: 20 studies from 4 concurrent storescu clients, one worker, a real Orthanc.

    python benchmarks/node_load.py --det-bundle demo_output/lung_nodule_ct_two_stage_detection
    python benchmarks/node_load.py --det-bundle B --studies 4 --clients 2 --slices 40 --scale 4   # a quick look

The studies are the real LIDC-IDRI-0001 series of ``../shared/real_ct`` with their UIDs and patient rewritten
(tests/dicom_studies.py), at full size by default (512 x 512 x 133). First ``monai-lung detect`` runs on one of
them alone (the baseline: its per-scan seconds and the process's peak RSS; again at the end, as the load of a shared
machine changes); then the node starts (``--workers``),
the clients send their share of the studies one after another, all clients at once, and the script waits until
every study's job is done and checks that Orthanc holds exactly one SR, one SEG, one KOS and a key image per
finding for each study.

Printed: throughput (studies per hour, from the first instance sent to the last job done), the node's peak RSS
while studies arrived and overall (sampled ``VmRSS`` every 0.2 s and the kernel's ``VmHWM``), per study the
median and worst job time (taken -> done) split into detection, DICOM objects and sending, the median of the jobs
that started after every instance had arrived (nothing else competing for the CPU) against the baseline ``detect``
time plus 3 s, and the load average (the machine may be shared).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.dicom_studies import source_files, storescu, write_study  # noqa: E402
from tests.node_process import NodeProcess  # noqa: E402
from tests.orthanc_server import Orthanc  # noqa: E402


def proc_memory(pid: int) -> dict:
    out = {"rss": 0, "peak": 0}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                out["rss"] = int(line.split()[1]) * 1024
            elif line.startswith("VmHWM:"):
                out["peak"] = int(line.split()[1]) * 1024
    except OSError:
        pass
    return out


def baseline_detect(bundle: Path, folder: Path, work: Path, device: str, overrides: list[str]) -> dict:
    """``monai-lung detect`` on one study folder: its own per-scan seconds (model loading excluded) and peak RSS."""
    cmd = [sys.executable, "-m", "monai_lung", "detect", str(folder), "--det-bundle", str(bundle), "--output", str(work / "preds.csv"),
           "--no-progress", "--device", device, *overrides]
    t = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, encoding="utf-8", errors="replace", cwd=str(REPO),
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    wall = time.perf_counter() - t
    if done.returncode != 0:
        raise SystemExit(f"detect failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    seconds = float(re.search(r"processed.* in ([0-9.]+) s", done.stdout + done.stderr).group(1))
    return {"scan_s": seconds, "wall_s": wall, "peak_rss": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--det-bundle", type=Path, required=True)
    p.add_argument("--studies", type=int, default=20)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--slices", type=int, default=None, help="slices per study around the nodule (default: all 133)")
    p.add_argument("--scale", type=int, default=1, help="in-plane reduction (1: 512 x 512)")
    p.add_argument("--stable-seconds", type=float, default=5.0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="detector override for both detect and serve")
    p.add_argument("--work", type=Path, default=None, help="keep everything here (default: a temporary folder, deleted)")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = p.parse_args()

    tmp = None if args.work else tempfile.TemporaryDirectory(prefix="node_load_")
    work = args.work or Path(tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    overrides = [a for s in args.set for a in ("--set", s)]
    t = time.perf_counter()
    sources = source_files()
    studies = [write_study(work / "studies" / f"s{n:02d}", f"load-{n}", slices=args.slices, scale=args.scale, sources=sources)
               for n in range(args.studies)]
    print(f"{len(studies)} studies of {len(studies[0].files)} slices written in {time.perf_counter() - t:.0f} s", flush=True)

    base = baseline_detect(args.det_bundle, studies[0].folder, work / "baseline", args.device, overrides)
    print(f"baseline detect on one study: {base['scan_s']:.1f} s per scan, peak RSS {base['peak_rss'] / 2**30:.2f} GiB", flush=True)

    figures: dict = {"studies": len(studies), "clients": args.clients, "workers": args.workers, "slices": len(studies[0].files),
                     "baseline_detect_s": base["scan_s"], "baseline_detect_peak_rss_gib": base["peak_rss"] / 2**30}
    with Orthanc(work / "orthanc", dicom=True) as pacs:
        node = NodeProcess(work / "W", args.det_bundle, ["--send-to", pacs.dicom_destination, "--workers", str(args.workers),
                                                         "--stable-seconds", str(args.stable_seconds), "--device", args.device,
                                                         *overrides])
        node.start()
        try:
            samples: list[tuple[float, int]] = []
            arriving = threading.Event()
            arriving.set()
            stop = threading.Event()

            def sample():
                while not stop.wait(0.2):
                    samples.append((time.time(), proc_memory(node.proc.pid)["rss"]))

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            shares = [studies[i::args.clients] for i in range(args.clients)]
            failures = []

            def client(i: int) -> None:
                for study in shares[i]:
                    done = storescu(study.folder, node.port, calling_ae=f"SCANNER{i + 1}", timeout=1800)
                    if done.returncode != 0 or "Refused" in done.stdout + done.stderr:
                        failures.append(f"client {i + 1}, {study.study_uid}: {done.stdout[-500:]}{done.stderr[-500:]}")

            t0 = time.time()
            clients = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
            for c in clients:
                c.start()
            for c in clients:
                c.join()
            t_sent = time.time()
            if failures:
                raise SystemExit("storescu failed:\n" + "\n".join(failures))
            print(f"all instances sent in {t_sent - t0:.0f} s", flush=True)
            jobs = node.wait_for(lambda: (lambda js: len(js) >= len(studies) and all(j["state"] in ("done", "failed") for j in js) and js)(node.jobs()),
                                 24 * 3600, "every study done", poll=1.0)
            stop.set()
            peak_overall = proc_memory(node.proc.pid)["peak"]
        finally:
            node.stop()
        t_end = max(j["finished_at"] for j in jobs)
        failed = [j for j in jobs if j["state"] != "done"]
        if failed:
            raise SystemExit(f"{len(failed)} job(s) failed: {[(j['study_uid'], j['error']) for j in failed]}")
        problems = []
        for study in studies:
            [job] = [j for j in jobs if j["study_uid"] == study.study_uid]
            n = job["result"]["num_findings"]
            want = {"SR": 1, "SEG": 1, "OT": n, "KO": 1} if n else {"SR": 1}
            got = {k: len(v) for k, v in pacs.series(study.study_uid).items()}
            if got != want:
                problems.append(f"{study.study_uid}: {got}, expected {want}")
        if problems:
            raise SystemExit("Orthanc does not hold exactly one set of results per study:\n" + "\n".join(problems))

    # detect again now that the node has stopped: the machine's load may have changed while the node ran
    after = baseline_detect(args.det_bundle, studies[0].folder, work / "baseline_after", args.device, overrides)
    figures["baseline_detect_after_s"] = after["scan_s"]
    arrival = [rss for ts, rss in samples if ts <= t_sent]
    per_job = [j["finished_at"] - j["started_at"] for j in jobs]
    seconds = [j["result"]["seconds"] for j in jobs]
    figures.update({
        "throughput_studies_per_hour": len(studies) / (t_end - t0) * 3600.0,
        "wall_s": t_end - t0, "sending_s": t_sent - t0,
        "peak_rss_while_arriving_gib": max(arrival, default=0) / 2**30, "peak_rss_gib": peak_overall / 2**30,
        "job_s_median": statistics.median(per_job), "job_s_max": max(per_job),
        "detect_s_median": statistics.median(s["detect"] for s in seconds),
        "dicom_s_median": statistics.median(s["dicom"] for s in seconds),
        "send_s_median": statistics.median(s["send"] for s in seconds),
        "dicom_work_s_median": statistics.median(pj - s["detect"] for pj, s in zip(per_job, seconds)),
        # jobs that started once every instance had arrived: no receiving competes with them for the CPU
        "jobs_after_arrival": sum(j["started_at"] >= t_sent for j in jobs),
        "job_s_median_after_arrival": statistics.median([j["finished_at"] - j["started_at"] for j in jobs if j["started_at"] >= t_sent] or [float("nan")]),
        "load_average": os.getloadavg(),
    })
    detect_alone = statistics.mean([base["scan_s"], after["scan_s"]])
    figures["job_within_detect_plus_3s"] = figures["job_s_median_after_arrival"] <= detect_alone + 3.0
    print(f"\n{len(studies)} studies, {args.clients} clients, {args.workers} worker(s), {len(studies[0].files)} slices each, "
          f"{os.cpu_count()} CPUs (load average now {figures['load_average'][0]:.1f})")
    print(f"throughput: {figures['throughput_studies_per_hour']:.0f} studies/hour ({figures['wall_s']:.0f} s from the first instance "
          f"sent to the last job done; sending took {figures['sending_s']:.0f} s)")
    print(f"node peak RSS: {figures['peak_rss_while_arriving_gib']:.2f} GiB while studies arrived, {figures['peak_rss_gib']:.2f} GiB overall "
          f"(detect alone: {figures['baseline_detect_peak_rss_gib']:.2f} GiB)")
    print(f"per study (taken -> done): median {figures['job_s_median']:.1f} s, worst {figures['job_s_max']:.1f} s; of which detection "
          f"{figures['detect_s_median']:.1f} s, DICOM objects {figures['dicom_s_median']:.1f} s, sending {figures['send_s_median']:.1f} s; "
          f"all but detection {figures['dicom_work_s_median']:.1f} s")
    print(f"per study once all had arrived ({figures['jobs_after_arrival']} jobs): median {figures['job_s_median_after_arrival']:.1f} s; "
          f"detect on the same series alone: {base['scan_s']:.1f} s before, {after['scan_s']:.1f} s after the node ran -> a node study "
          f"{'is' if figures['job_within_detect_plus_3s'] else 'is NOT'} within detect + 3 s")
    print("Orthanc: exactly one SR, one SEG, one KOS and a key image per finding for every study")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
