"""``monai-lung serve`` against real servers on loopback: dcmtk's storescu plays the scanner, a real Orthanc is the
PACS, the studies are the shared real LIDC-IDRI-0001 series with their UIDs rewritten (40 slices, 128 x 128, for
speed), the detection bundle has seeded untrained weights. Every fault of issue 45's item 2 is exercised: kill -9 in
each phase, a destination that is down, the same study twice, new instances after a job ran, a corrupt instance, a
study without a usable CT series, a localizer-only study, a full disk, and a rejected AE title.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pydicom
import pytest

from monai_lung.node.faults import CRASH_ENV
from monai_lung.node.queue import JobQueue, instances_digest
from tests.dicom_studies import LIDC_DICOM, Study, storescu, storescu_binary, write_study
from tests.node_process import NodeProcess
from tests.orthanc_server import MISSING_REASON, Orthanc, orthanc_binary
from tests.test_dicom import dciodvfy_errors, untrained_models  # noqa: F401 (a fixture)

needs_lidc = pytest.mark.skipif(not LIDC_DICOM.is_dir(), reason="../shared/real_ct (the real LIDC-IDRI-0001 series) is absent")
_SERVER_MARKS = [
    needs_lidc,
    pytest.mark.skipif(orthanc_binary() is None, reason=MISSING_REASON),
    pytest.mark.skipif(storescu_binary() is None or shutil.which("echoscu") is None,
                       reason="dcmtk's storescu and echoscu are not installed (apt-get install dcmtk)"),
    pytest.mark.slow,
]


def needs_servers(test):
    for mark in _SERVER_MARKS:
        test = mark(test)
    return test
# a coarse grid and few candidates keep detection on a CPU to a few seconds per study (as tests/test_dicom.py's FAST)
DETECTOR = ["--device", "cpu", "--max-findings", "3", "--set", "seg_spacing=[2.0,2.0,2.0]", "--set", "stage2_spacing=[2.0,2.0,2.0]",
            "--set", "roi_size=[64,64,64]", "--set", "tta=false", "--set", "seg_threshold=0.5", "--set", "max_candidates=8"]
SMALL = dict(slices=40, scale=4)


def _localizer(n, ds):
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]


def _corrupt(n, ds):
    if n == 17:
        ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]


def _objects(pacs: Orthanc, study: Study) -> dict[str, int]:
    return {k: len(v) for k, v in pacs.series(study.study_uid).items()}


def _done(node: NodeProcess, count: int):
    jobs = node.jobs()
    return len(jobs) >= count and all(j["state"] in ("done", "failed") for j in jobs) and jobs


# ---------------------------------------------------------------- the queue alone


def test_queue_makes_one_job_per_set_of_instances_and_recovers_running_jobs(tmp_path):
    q = JobQueue(tmp_path / "node.sqlite3", owner="a")
    q.add_instance("1.2.8", "1.1", "1.1.8", "/x/8.dcm", 10, "p1", now=99.0, sop_class="1.2.840.10008.5.1.4.1.1.88.34")  # an SR
    for n in range(3):
        q.add_instance(f"1.2.{n}", "1.1", "1.1.1", f"/x/{n}.dcm", 10, "p1", now=100.0 + n)
    assert q.make_jobs(10.0, now=105.0) == []  # still receiving
    assert q.claim(10.0, now=105.0) is None
    [(study, what, job_id)] = q.make_jobs(10.0, now=112.5)
    assert (study, what) == ("1.1", "new")
    claimed = q.claim(10.0, now=113.0)
    assert claimed.job.id == job_id and [s for s, _ in claimed.files] == ["1.2.0", "1.2.1", "1.2.2", "1.2.8"]
    assert claimed.job.digest == instances_digest(["1.2.2", "1.2.0", "1.2.1"]) and claimed.job.attempts == 1
    # another process (a later start) cannot finish this process's job; a restart returns it to pending
    other = JobQueue(tmp_path / "node.sqlite3", owner="b")
    assert not other.finish(job_id, {})
    assert [(j.id, state) for j, state in other.recover(max_detect_tries=3)] == [(job_id, "pending")]
    assert not q.finish(job_id, {})  # the first owner's late answer is ignored
    again = other.claim(10.0, now=200.0)
    assert again.job.id == job_id and again.job.attempts == 2
    assert other.set_stage(job_id, "detected", {"n": 1}) and other.finish(job_id, {"n": 1})
    # the same instances again: no new job; one more instance: a new job
    q.add_instance("1.2.1", "1.1", "1.1.1", "/x/1.dcm", 10, "p1", now=300.0)
    assert q.make_jobs(10.0, now=311.0) == [("1.1", "same", job_id)]
    q.add_instance("1.2.7", "1.1", "1.1.7", "/x/7.dcm", 10, "p1", now=320.0, sop_class="1.2.840.10008.5.1.4.1.1.66.4")  # a SEG
    assert q.make_jobs(10.0, now=331.0) == [("1.1", "same", job_id)]  # only CT images are new input
    q.add_instance("1.2.9", "1.1", "1.1.2", "/x/9.dcm", 10, "p1", now=400.0)
    [(_, what, second)] = q.make_jobs(10.0, now=411.0)
    assert what == "again" and second != job_id
    # a job that died detecting too often fails instead of killing the node forever
    for _ in range(2):
        c = other.claim(10.0, now=500.0)
        assert c.job.id == second and other.set_stage(second, "detecting")
        other.recover(max_detect_tries=2)
    assert other.job(second).state == "failed" and "out of memory" in other.job(second).error
    assert q.counts()["done"] == 1 and q.counts()["failed"] == 1
    # retention: a study idle long enough, with no job waiting, may lose its files; its rows stay
    assert q.purgeable(older_than=450.0) == []  # its last job ended after that
    assert q.purgeable(older_than=time.time() + 1) == ["1.1"]
    q.purged("1.1")
    assert q.known_paths() == set() and q.counts()["studies"] == 1 and len(q.jobs()) == 2


# ---------------------------------------------------------------- key images


@needs_lidc
@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (Debian package dicom3tools) is not installed")
def test_key_images_and_kos_on_the_real_series_pass_dciodvfy(tmp_path):
    import numpy as np
    from pydicom.uid import generate_uid

    from monai_lung.dicom.keyimages import KeyFinding, build_key_images, build_key_object_selection, slice_position
    from monai_lung.dicom.series import choose_series

    info, _ = choose_series(LIDC_DICOM)
    centre = [56.20840547, 86.34341278, -115.8675792]  # the LUNA16 nodule, world LPS mm
    images = build_key_images(info, [KeyFinding(centre, 23.4, ["Finding 1 of 1", "probability 0.93"])], generate_uid(), [generate_uid()])
    kos = build_key_object_selection(images, generate_uid(), generate_uid(), "test")
    k, column, row = slice_position(info, centre)
    assert abs(float(info.datasets[k].ImagePositionPatient[2]) - centre[2]) <= 1.25  # the nodule's slice (2.5 mm steps)
    sc = images[0]
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == info.datasets[k].SOPInstanceUID
    assert sc.StudyInstanceUID == info.datasets[0].StudyInstanceUID and sc.PatientID == info.datasets[0].PatientID
    pixels = sc.pixel_array
    assert pixels.shape == (512, 512, 3)
    ring = pixels[int(row) - 25: int(row) + 26, int(column) - 25: int(column) + 26]
    yellow = (ring[..., 0] > 200) & (ring[..., 1] > 180) & (ring[..., 2] < 60)
    assert yellow.sum() > 100  # the circle around the nodule
    assert [str(ref.ReferencedSOPInstanceUID) for ref in kos.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
            .ReferencedSOPSequence] == [sc.SOPInstanceUID]
    for name, ds in (("sc.dcm", sc), ("kos.dcm", kos)):
        ds.save_as(tmp_path / name)
        assert dciodvfy_errors(tmp_path / name) == []
    assert np.asarray(pixels).dtype == np.uint8


# ---------------------------------------------------------------- the node against Orthanc and storescu


@needs_servers
def test_studies_in_results_out_faults_failed_resend_idempotent(untrained_models, tmp_path):  # noqa: F811
    studies = tmp_path / "studies"
    # the first patient's name lacks a "^", which highdicom warns about quoting it: the log must not show it
    good = [write_study(studies / f"good{n}", f"node-good-{n}", patient_name="Nodetest Quoted" if n == 0 else None, **SMALL) for n in range(2)]
    corrupt = write_study(studies / "corrupt", "node-corrupt", edit=_corrupt, **SMALL)
    scout = write_study(studies / "scout", "node-scout", slices=3, scale=4, edit=_localizer)
    gap = write_study(studies / "gap", "node-gap", **SMALL)
    for path in gap.files[12:15]:
        path.unlink()
    # a scout of good[1] that arrives after its job ran (same study, a series of its own)
    late = write_study(studies / "late", "node-late", slices=3, scale=4, edit=_localizer, patient_id=good[1].patient_id)
    for path in late.files:
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID = good[1].study_uid
        ds.save_as(path)
    with Orthanc(tmp_path / "orthanc", dicom=True) as pacs:
        node = NodeProcess(tmp_path / "W", untrained_models, ["--send-to", pacs.dicom_destination, "--allow-ae", "SCANNER1", "SCANNER2",
                                                               "--stable-seconds", "2", *DETECTOR])
        node.start()
        try:
            echo = subprocess.run(["echoscu", "-aet", "SCANNER1", "-aec", "LUNGCAD", "127.0.0.1", str(node.port)], capture_output=True, timeout=60)
            assert echo.returncode == 0, echo.stderr
            rejected = storescu(good[0].folder, node.port, calling_ae="INTRUDER")
            assert "Association Rejected" in rejected.stdout + rejected.stderr
            assert not (tmp_path / "W" / "incoming" / good[0].study_uid).exists()

            # two scanners at once
            sends = {}
            threads = [threading.Thread(target=lambda ae, folders: sends.__setitem__(ae, storescu(folders, node.port, calling_ae=ae)),
                                        args=args)
                       for args in (("SCANNER1", [good[0].folder, corrupt.folder, scout.folder]), ("SCANNER2", [good[1].folder, gap.folder]))]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            for ae, proc in sends.items():
                assert proc.returncode == 0, f"{ae}: {proc.stdout}{proc.stderr}"
            jobs = node.wait_for(lambda: _done(node, 5), 400, "five jobs")
            by_study = {j["study_uid"]: j for j in jobs}
            assert len(by_study) == 5
            for study in good:
                job = by_study[study.study_uid]
                assert job["state"] == "done" and job["attempts"] == 1, job
            assert by_study[corrupt.study_uid]["state"] == "failed" and "corrupt instance" in by_study[corrupt.study_uid]["error"]
            assert "a localizer" in by_study[scout.study_uid]["error"] and "missing slices" in by_study[gap.study_uid]["error"]
            for study in (corrupt, scout, gap):
                error = by_study[study.study_uid]["error"]
                assert "\n" not in error and study.study_uid in error and str(tmp_path / "W") not in error, error

            # the PACS has one SR, one SEG, a key image per finding and one KOS per good study
            for study in good:
                job = by_study[study.study_uid]
                n = job["result"]["num_findings"]
                assert n > 0 and _objects(pacs, study) == {"SR": 1, "SEG": 1, "OT": n, "KO": 1}
                out = tmp_path / "W" / "jobs" / str(job["id"]) / "out" / job["result"]["series_instance_uid"]
                kos = pydicom.dcmread(out / "kos.dcm")
                referenced = [str(r.ReferencedSOPInstanceUID) for r in kos.CurrentRequestedProcedureEvidenceSequence[0]
                              .ReferencedSeriesSequence[0].ReferencedSOPSequence]
                assert sorted(referenced) == sorted(pacs.series(study.study_uid)["OT"]) == sorted(job["result"]["key_image_uids"])
                sc = pydicom.dcmread(out / "sc_01.dcm")
                source = sc.SourceImageSequence[0].ReferencedSOPInstanceUID
                assert any(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID == source for f in study.files)
                assert f"{job['result']['findings'][0]['probability']:.2f}" in sc.ImageComments
                if shutil.which("dciodvfy"):
                    assert dciodvfy_errors(out / "sc_01.dcm") == [] and dciodvfy_errors(out / "kos.dcm") == []

            # the same study again: no new job, no new objects
            before = _objects(pacs, good[0])
            assert storescu(good[0].folder, node.port, calling_ae="SCANNER1").returncode == 0
            node.wait_for(lambda: "received again with no new CT image" in node.log(), 60, "the resend to be noticed")
            assert len(node.jobs()) == 5 and _objects(pacs, good[0]) == before
            # the node's own results routed back to it (a PACS forwarding whole studies) start no job either
            job = by_study[good[0].study_uid]
            echo = sorted((tmp_path / "W" / "jobs" / str(job["id"]) / "out" / job["result"]["series_instance_uid"]).glob("*.dcm"))
            assert len(echo) == job["result"]["num_findings"] + 3 and storescu(echo, node.port, calling_ae="SCANNER1").returncode == 0
            node.wait_for(lambda: node.log().count("received again with no new CT image") == 2, 60, "the echo to be noticed")
            assert len(node.jobs()) == 5

            # new instances after the job ran: processed again; the chosen series is the same, so are the objects
            assert storescu(late.folder, node.port, calling_ae="SCANNER2").returncode == 0
            jobs = node.wait_for(lambda: _done(node, 6), 300, "the study processed again")
            assert f"study {good[1].study_uid} received new instances after its job ran: processing it again" in node.log()
            first, second = [j for j in jobs if j["study_uid"] == good[1].study_uid]
            assert second["state"] == "done" and second["num_instances"] == first["num_instances"] + 3
            assert _objects(pacs, good[1]) == {"SR": 1, "SEG": 1, "OT": first["result"]["num_findings"], "KO": 1}

            health = node.health()
            assert health["status"] == "ok" and health["queue"]["done"] == 3 and health["queue"]["failed"] == 3
            metrics = node.metrics()
            assert metrics["monai_lung_node_studies_received_total"] == 5
            assert metrics["monai_lung_node_studies_failed_total"] == 3 and metrics["monai_lung_node_queue_depth"] == 0
            assert metrics['monai_lung_node_associations_rejected_total{reason="ae_title"}'] == 1
            assert metrics['monai_lung_node_stage_seconds_count{stage="detect"}'] == 3
            status = subprocess.run([sys.executable, "-m", "monai_lung", "serve", "--status", str(tmp_path / "W")], capture_output=True,
                                    encoding="utf-8", timeout=120, cwd=str(Path(__file__).resolve().parents[1]))
            second = subprocess.run(node.command(), capture_output=True, encoding="utf-8", timeout=120, cwd=str(Path(__file__).resolve().parents[1]))
            assert second.returncode == 2 and "is in use by another monai-lung serve" in second.stderr  # one node per work dir
            assert status.returncode == 0 and "3 done, 3 failed" in status.stdout
            row = next(line for line in status.stdout.splitlines() if corrupt.study_uid in line)
            assert " failed " in row and "corrupt instance" in row
        finally:
            code = node.stop(signal.SIGTERM)
    assert code == 0 and "node stopped" in node.log()
    log = node.log()
    assert "AE INTRUDER" in log and "not on the allow-list" in log
    for study in (*good, corrupt, scout, gap):  # UIDs in the log, never patient names or IDs
        assert study.patient_name not in log and study.patient_name.replace("^", " ") not in log and study.patient_id not in log


@needs_servers
def test_a_patients_next_study_is_compared_with_the_prior_and_the_followup_sr_is_sent(untrained_models, tmp_path):  # noqa: F811
    def dated(day):
        return lambda n, ds: setattr(ds, "StudyDate", day)

    first = write_study(tmp_path / "studies" / "first", "node-fu-1", patient_id="NODE-FU-1", edit=dated("20200101"), **SMALL)
    second = write_study(tmp_path / "studies" / "second", "node-fu-2", patient_id="NODE-FU-1", edit=dated("20210115"), **SMALL)
    with Orthanc(tmp_path / "orthanc", dicom=True) as pacs:
        node = NodeProcess(tmp_path / "W", untrained_models, ["--send-to", pacs.dicom_destination, "--stable-seconds", "1", *DETECTOR])
        node.start()
        try:
            assert storescu(first.folder, node.port).returncode == 0
            node.wait_for(lambda: _done(node, 1), 300, "the first study")
            assert _objects(pacs, first)["SR"] == 1  # no prior: the study's own SR only
            assert storescu(second.folder, node.port).returncode == 0
            jobs = node.wait_for(lambda: _done(node, 2), 300, "the second study")
            job = next(j for j in jobs if j["study_uid"] == second.study_uid)
            assert job["state"] == "done", job
            assert f"compared with study {first.study_uid} (2020-01-01 -> 2021-01-15)" in node.log()
            folder = tmp_path / "W" / "jobs" / str(job["id"])
            assert (folder / "followup" / "followup.csv").is_file()
            followup_sr = next((folder / "out" / "followup").glob("*/sr.dcm"))
            assert _objects(pacs, second)["SR"] == 2  # its own SR and the longitudinal one
            assert str(pydicom.dcmread(followup_sr, stop_before_pixels=True).SOPInstanceUID) in pacs.series(second.study_uid)["SR"]
        finally:
            node.stop()


@needs_servers
def test_a_destination_that_is_down_is_retried_until_it_is_back(untrained_models, tmp_path):  # noqa: F811
    study = write_study(tmp_path / "studies" / "a", "node-down", **SMALL)
    pacs = Orthanc(tmp_path / "orthanc", dicom=True)  # not started yet: its ports refuse connections
    node = NodeProcess(tmp_path / "W", untrained_models, ["--send-to", pacs.dicom_destination, "--send-to-dicomweb", pacs.dicomweb,
                                                          "--stable-seconds", "1", "--retry-seconds", "1", "--retry-max-seconds", "3", *DETECTOR])
    node.start()
    try:
        assert storescu(study.folder, node.port).returncode == 0
        job = node.wait_for(lambda: next((j for j in node.jobs() if j["attempts"] >= 3 and j["state"] == "pending"), None), 300,
                            "three tries while the PACS is down")
        assert job["stage"] == "sending" and "did not answer" in job["error"] and "next try in" in job["error"]
        assert node.health()["queue"]["pending"] == 1
        with pacs:
            [job] = node.wait_for(lambda: _done(node, 1), 120, "delivery once the PACS is back")
            assert job["state"] == "done" and job["stage"] == "done" and job["error"] is None
            n = job["result"]["num_findings"]
            # C-STORE and STOW-RS delivered the same objects (same UIDs): Orthanc keeps one copy of each
            assert _objects(pacs, study) == {"SR": 1, "SEG": 1, "OT": n, "KO": 1}
        assert node.metrics()["monai_lung_node_deliveries_failed_total"] >= 3
        assert "did not answer" in node.log() and "detect" in node.log()
    finally:
        node.stop()


@needs_servers
def test_kill_9_in_every_phase_then_each_study_is_done_exactly_once(untrained_models, tmp_path):  # noqa: F811
    study = write_study(tmp_path / "studies" / "k", "node-kill", **SMALL)
    other = write_study(tmp_path / "studies" / "t", "node-term", **SMALL)
    with Orthanc(tmp_path / "orthanc", dicom=True) as pacs:
        node = NodeProcess(tmp_path / "W", untrained_models, ["--send-to", pacs.dicom_destination, "--stable-seconds", "1",
                                                              "--stop-timeout", "0", *DETECTOR])
        try:
            # receiving: killed with an instance file in place but not recorded; the scanner's send fails
            node.start(env={CRASH_ENV: "stored"})
            storescu(study.folder, node.port)
            assert node.wait_exit() == -signal.SIGKILL
            # the scanner sends again; killed once a worker took the job
            node.start(env={CRASH_ENV: "claimed"})
            assert "recorded 1 instance file(s) stored before the node stopped" in node.log()
            storescu(study.folder, node.port)
            assert node.wait_exit(300) == -signal.SIGKILL
            # then after detection, after the PACS acknowledged an object not yet recorded, after sending everything
            for point in ("detected", "acked", "sent"):
                node.start(env={CRASH_ENV: point}, wait=False)  # it may die before its HTTP port answers
                assert node.wait_exit(300) == -signal.SIGKILL, point
                assert node.jobs()[0]["state"] == "running"
            node.start()
            [job] = node.wait_for(lambda: _done(node, 1), 300, "the study done after five kills")
            assert job["state"] == "done" and job["attempts"] == 5 and job["detect_tries"] == 1
            assert node.log().count("finding(s) on series") == 1  # detected once; the later runs only sent
            n = job["result"]["num_findings"]
            assert _objects(pacs, study) == {"SR": 1, "SEG": 1, "OT": n, "KO": 1}

            # SIGTERM while a job runs, with --stop-timeout 0: the job goes back to pending and runs at the next start
            assert storescu(other.folder, node.port).returncode == 0
            node.wait_for(lambda: any(j["state"] == "running" for j in node.jobs()), 120, "the second job to run", poll=0.05)
            assert node.stop(signal.SIGTERM, timeout=60) == 0
            assert node.jobs()[1]["state"] == "pending" and "returned to pending" in node.log()
            node.start()
            jobs = node.wait_for(lambda: _done(node, 2), 300, "the second study after the restart")
            assert [j["state"] for j in jobs] == ["done", "done"]
            assert _objects(pacs, other) == {"SR": 1, "SEG": 1, "OT": jobs[1]["result"]["num_findings"], "KO": 1}
        finally:
            node.stop()


@needs_servers
def test_a_full_disk_is_refused_with_out_of_resources(untrained_models, tmp_path):  # noqa: F811
    study = write_study(tmp_path / "studies" / "f", "node-full", slices=30, scale=8)
    # a reserve larger than any disk: the node's real free-space check finds the disk "full"
    node = NodeProcess(tmp_path / "W", untrained_models, ["--send-to", "ORTHANC@127.0.0.1:9", "--min-free-mb", "1e12", *DETECTOR])
    node.start()
    try:
        sent = storescu(study.folder, node.port)
        output = sent.stdout + sent.stderr
        assert output.count("Received Store Response (Refused: OutOfResources)") == len(study.files), output
        assert not any((tmp_path / "W" / "incoming").iterdir())
        metrics = node.metrics()
        assert metrics['monai_lung_node_instances_refused_total{reason="disk_full"}'] == len(study.files)
        assert metrics["monai_lung_node_studies_received_total"] == 0
        assert "AE SCANNER at 127.0.0.1" in node.log() and "refusing its instances (C-STORE status 0xA700 out of resources)" in node.log()
        echo = subprocess.run(["echoscu", "-aec", "LUNGCAD", "127.0.0.1", str(node.port)], capture_output=True, timeout=60)
        assert echo.returncode == 0  # the node still answers
    finally:
        node.stop()
