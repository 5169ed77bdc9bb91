"""``monai-lung followup``: matching under a known transform, the status rule and VDT, dates and patients (each
refused with one line), and the command end to end on a phantom pair with a small untrained bundle."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from monai_lung.clinical.ct import ScanCT
from monai_lung.clinical.followup import (
    CSV_COLUMNS, check_pair, match_findings, parse_date, read_input, status_of, volume_doubling_days,
)
from monai_lung.clinical.location import find_lungs
from monai_lung.clinical.lungrads import NoduleFacts
from monai_lung.clinical.registration import register_lungs
from monai_lung.io.errors import DataError
from monai_lung.synthetic.followup import generate_pair
from tests.bundle_utils import REPO, run_cmd, untrained_detection_bundle
from tests.orthanc_server import MISSING_REASON, Orthanc, orthanc_binary

LIDC = REPO.parent / "shared" / "real_ct" / "LIDC-IDRI-0001"
needs_lidc = pytest.mark.skipif(not LIDC.is_dir(), reason="../shared/real_ct (the real LIDC-IDRI-0001 series) is absent")


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A 256-px phantom pair (re-posed, re-sliced, re-noised) written as .mhd files, with its truth."""
    import SimpleITK as sitk

    for seed in range(20):
        p = generate_pair(np.random.default_rng(seed), size=256)
        statuses = {nd["status"] for nd in p.truth["nodules"]}
        if len(p.truth["nodules"]) >= 3 and "new" in statuses and statuses & {"stable", "grown", "shrunk"}:
            break
    root = tmp_path_factory.mktemp("pair")
    sitk.WriteImage(p.prior, str(root / "prior.mhd"))
    sitk.WriteImage(p.current, str(root / "current.mhd"))
    return root, p


def test_registration_and_matching_recover_a_known_transform(pair):
    _, p = pair
    prior, current = ScanCT(p.prior), ScanCT(p.current)
    a, b = prior.coarse(), current.coarse()
    reg = register_lungs(*a, find_lungs(*a).mask, *b, find_lungs(*b).mask)
    truth = p.truth
    rotation, centre, shift = np.asarray(truth["rotation"]), np.asarray(truth["centre_mm"]), np.asarray(truth["shift_mm"])
    probe = centre + np.array([[40.0, 20.0, 30.0], [-50.0, 10.0, -20.0], [0.0, -20.0, 0.0]])
    expected = (rotation @ (probe - centre).T).T + centre + shift
    assert np.linalg.norm(reg.prior_to_current(probe) - expected, axis=1).max() < 3.0
    assert np.linalg.norm(reg.current_to_prior(expected) - probe, axis=1).max() < 3.0
    assert reg.residual_mm < 3.0
    # the truth's nodules as findings: the registered matching pairs exactly the nodules present in both scans
    nodules = truth["nodules"]
    before = [n for n in nodules if n["prior"]]
    after = [n for n in nodules if n["current"]]
    pairs, new, resolved = match_findings(
        reg.prior_to_current([n["prior"]["coord"] for n in before]), [n["prior"]["diameter_mm"] for n in before],
        np.array([n["current"]["coord"] for n in after]), [n["current"]["diameter_mm"] for n in after],
        np.ones(len(before), bool), np.ones(len(after), bool))
    assert [(before[i]["status"], id(before[i]) == id(after[j])) for i, j in pairs] == [
        (n["status"], True) for n in before if n["current"]]
    assert sorted(after[j]["status"] for j in new) == ["new"] * sum(n["status"] == "new" for n in nodules)
    assert [before[i]["status"] for i in resolved] == ["resolved"] * sum(n["status"] == "resolved" for n in nodules)


def test_matching_needs_one_side_above_the_threshold_and_a_close_partner():
    prior = np.array([[0.0, 0.0, 0.0], [50.0, 0.0, 0.0], [100.0, 0.0, 0.0], [0.0, 80.0, 0.0]])
    current = prior[[1, 0, 2]] + [[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 14.0]]  # shuffled; the third moved 14 mm
    sizes = [6.0, 6.0, 6.0, 6.0]
    pairs, new, resolved = match_findings(prior, sizes, current, sizes[:3], [True, False, True, True], [True, False, True])
    assert pairs == [(0, 1), (1, 0)]  # one side of each pair is below the threshold, the other is not
    assert new == [2] and resolved == [2, 3]  # 14 mm is beyond the 10 + 3 mm gate
    assert match_findings(prior, sizes, current, sizes[:3], [False] * 4, [False] * 3) == ([], [], [])
    # a partner below the threshold must be probable and at the registered position: 2 mm away it pairs, 6 mm not
    moved = prior[:2] + [[2.0, 0.0, 0.0], [6.0, 0.0, 0.0]]
    assert match_findings(prior[:2], sizes[:2], moved, sizes[:2], [True, True], [False, False])[0] == [(0, 0)]
    assert match_findings(prior[:2], sizes[:2], moved, sizes[:2], [True, True], [False, False], current_partner=[False, True])[0] == []


def test_a_finding_inside_a_more_probable_one_is_the_same_nodule():
    from monai_lung.clinical.followup import distinct
    from monai_lung.findings import Finding

    big = Finding((0.0, 0.0, 0.0), probability=1.0, diameter_mm=24.0)
    inside = Finding((9.0, 0.0, 0.0), probability=0.999, diameter_mm=10.0)
    apart = Finding((30.0, 0.0, 0.0), probability=0.99, diameter_mm=6.0)
    small = Finding((34.0, 0.0, 0.0), probability=0.5, diameter_mm=4.0)  # 4 mm from a 6 mm one: within 5 mm
    assert distinct([big, inside, apart, small]) == [big, apart]


def test_status_rule_and_volume_doubling_time():
    def solid(d, v):
        return NoduleFacts("solid", d, v)

    assert status_of(solid(6.0, 100.0), solid(6.3, 110.0), 365) == "stable"
    assert status_of(solid(6.0, 100.0), solid(7.6, 115.0), 365) == "grown"  # Lung-RADS growth, confirmed by the volume
    assert status_of(solid(30.2, 6239.0), solid(31.8, 6273.0), 365) == "stable"  # calipers moved, the volume did not
    assert status_of(solid(6.0, 100.0), solid(6.4, 130.0), 365) == "grown"  # volume beyond the 25 % repeatability
    assert status_of(solid(6.0, 100.0), solid(5.8, 75.0), 365) == "shrunk"  # below 1 / 1.25 of the prior
    assert status_of(solid(6.0, 100.0), solid(5.8, 85.0), 365) == "stable"
    assert volume_doubling_days(100.0, 200.0, 300) == pytest.approx(300.0)
    assert volume_doubling_days(200.0, 100.0, 300) == pytest.approx(-300.0)
    assert volume_doubling_days(100.0, 100.0, 300) is None and volume_doubling_days(0.0, 50.0, 300) is None


def test_dates(tmp_path, pair):
    root, _ = pair
    assert parse_date("2024-02-29", "--prior-date") == dt.date(2024, 2, 29) and parse_date("20240229", "x") == dt.date(2024, 2, 29)
    for bad in ("2023-02-29", "29.02.2024", "tomorrow"):
        with pytest.raises(DataError, match="is not a date"):
            parse_date(bad, "--prior-date")
    with pytest.raises(DataError, match="carries no date: give --current-date"):
        read_input("current", root / "current.mhd", None, tmp_path)
    prior = read_input("prior", root / "prior.mhd", "2024-05-01", tmp_path)
    current = read_input("current", root / "current.mhd", "2024-05-01", tmp_path)
    with pytest.raises(DataError, match="is not after the prior's"):
        check_pair(prior, current)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "monai_lung", "followup", *args], capture_output=True, encoding="utf-8",
                          errors="replace", timeout=600, cwd=str(REPO))


def test_a_missing_or_wrong_date_is_one_line(tmp_path, pair):
    root, _ = pair
    common = ["--prior", str(root / "prior.mhd"), "--current", str(root / "current.mhd"), "--det-bundle", str(tmp_path / "nobundle"),
              "--output-dir", str(tmp_path / "out")]
    proc = _cli(*common, "--prior-date", "2024-01-02")
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"monai-lung followup: error: {root / 'current.mhd'}: a scan file carries no date: give --current-date YYYY-MM-DD"]
    proc = _cli(*common, "--prior-date", "2024-01-02", "--current-date", "2024-13-02")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "'2024-13-02' is not a date" in proc.stderr


def _series_copy(folder: Path, patient: str, date: str | None, tag: str) -> Path:
    """Every other slice of the real series as a new study of ``patient`` on ``date`` (None: no StudyDate)."""
    folder.mkdir(parents=True)
    files = sorted((LIDC / "dicom").glob("*.dcm"), key=lambda f: float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]))
    for n, src in enumerate(files[::2]):
        ds = pydicom.dcmread(src)
        ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID = patient, f"1.2.826.0.1.3680043.44.{tag}.1", f"1.2.826.0.1.3680043.44.{tag}.2"
        ds.SOPInstanceUID = f"1.2.826.0.1.3680043.44.{tag}.3.{n + 1}"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        if date is None:
            del ds.StudyDate
        else:
            ds.StudyDate = date
        ds.save_as(folder / f"{n:04d}.dcm")
    return folder


@needs_lidc
def test_dicom_dates_come_from_studydate_and_two_patients_are_refused(tmp_path):
    prior = read_input("prior", LIDC / "dicom", None, tmp_path / "work")
    assert prior.date == dt.date(2000, 1, 1) and prior.patient == "LIDC-IDRI-0001"
    later = read_input("current", _series_copy(tmp_path / "later", "LIDC-IDRI-0001", "20010315", "1"), None, tmp_path / "work")
    assert later.date == dt.date(2001, 3, 15) and check_pair(prior, later) == 439
    undated = _series_copy(tmp_path / "undated", "LIDC-IDRI-0001", None, "2")
    with pytest.raises(DataError, match="has no StudyDate: give --current-date"):
        read_input("current", undated, None, tmp_path / "work")
    assert read_input("current", undated, "2001-01-01", tmp_path / "work").date == dt.date(2001, 1, 1)
    other = _series_copy(tmp_path / "other", "LIDC-IDRI-0002", "20010315", "3")
    proc = _cli("--prior", str(LIDC / "dicom"), "--current", str(other), "--det-bundle", str(tmp_path / "nobundle"),
                "--output-dir", str(tmp_path / "out"))
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"monai-lung followup: error: {other}: patient 'LIDC-IDRI-0002' is not the prior's patient 'LIDC-IDRI-0001': "
        "refusing to compare two patients' scans"]


@pytest.fixture(scope="module")
def untrained_bundle(tmp_path_factory):
    """The detection bundle with untrained (seeded) networks: enough to run every step of the command."""
    return untrained_detection_bundle(tmp_path_factory.mktemp("models"))


@pytest.mark.slow
def test_followup_command_end_to_end_and_reuse(tmp_path, pair, untrained_bundle):
    root, p = pair
    out = tmp_path / "out"
    args = ["-m", "monai_lung", "followup", "--prior", str(root / "prior.mhd"), "--current", str(root / "current.mhd"),
            "--prior-date", p.truth["prior_date"], "--current-date", p.truth["current_date"], "--det-bundle", str(untrained_bundle),
            "--output-dir", str(out), "--device", "cpu", "--threshold", "0", "--max-report", "2",
            "--set", "roi_size=[64,64,64]", "--set", "seg_threshold=0.5", "--set", "max_candidates=4", "--set", "tta=false"]
    log = run_cmd([sys.executable, *args], timeout=900)
    assert "followup: " in log and "exam Lung-RADS" in log and "research use only" in log
    table = pd.read_csv(out / "followup.csv")
    assert list(table.columns) == CSV_COLUMNS and len(table) > 0
    assert set(table["status"]) <= {"new", "stable", "grown", "shrunk", "resolved"}
    assert table.loc[table.status == "new", ["prior_x", "prior_volume_mm3", "vdt_days"]].isna().all().all()
    assert table.loc[table.status == "resolved", ["current_x", "current_volume_mm3", "lungrads"]].isna().all().all()
    assert set(table["type"]) <= {"solid", "part-solid", "non-solid"}
    summary = json.loads((out / "followup.json").read_text())
    assert summary["exam"]["category"] in ("1", "2", "3", "4A", "4B") and summary["registration"]["residual_mm"] < 5.0
    assert summary["thresholds"]["probability"] == 0.0 and summary["interval_days"] == p.truth["interval_days"]
    assert len(summary["nodules"]) == len(table) and "RESEARCH USE ONLY" in summary["research_use"]
    assert (out / "report" / "index.html").is_file() and len(list((out / "report" / "images").glob("*.png"))) == min(2, len(table))
    # a second comparison of the same scans reuses both scans' findings: no detection runs
    log = run_cmd([sys.executable, *args[:-12], "--output-dir", str(tmp_path / "again"), "--findings-dir", str(out / "findings"),
                   "--device", "cpu", "--threshold", "0", "--no-report", *args[-8:]], timeout=900)
    again = json.loads((tmp_path / "again" / "followup.json").read_text())
    assert again["prior"]["findings_reused"] and again["current"]["findings_reused"]
    assert pd.read_csv(tmp_path / "again" / "followup.csv").equals(table)


# a coarse grid and few candidates keep the untrained detector's runs on the real series short (as tests/test_dicom.py)
FAST = ["--device", "cpu", "--set", "seg_spacing=[2.0,2.0,2.0]", "--set", "stage2_spacing=[2.0,2.0,2.0]", "--set", "roi_size=[64,64,64]",
        "--set", "tta=false", "--set", "seg_threshold=0.5", "--set", "max_candidates=4", "--threshold", "0", "--no-report"]


@pytest.fixture(scope="module")
def two_exams(tmp_path_factory):
    """Two studies of patient LIDC-IDRI-0001: every other slice of the real series (2000-01-01) and the same slices as a
    later study (2001-03-15), DICOM; and, for the first, the SR ``monai-lung detect`` writes."""
    if not LIDC.is_dir():
        pytest.skip("../shared/real_ct (the real LIDC-IDRI-0001 series) is absent")
    root = tmp_path_factory.mktemp("exams")
    first = _series_copy(root / "first", "LIDC-IDRI-0001", "20000101", "10")
    second = _series_copy(root / "second", "LIDC-IDRI-0001", "20010315", "11")
    return root, first, second


@pytest.mark.slow
@needs_lidc
def test_dicom_out_carries_the_prior_time_point_and_keeps_tracking_uids(two_exams, untrained_bundle):
    from monai_lung.dicom.objects import read_sr_findings

    root, first, second = two_exams
    detect_fast = [a for a in FAST if a not in ("--threshold", "0", "--no-report")]
    run_cmd([sys.executable, "-m", "monai_lung", "detect", str(first), "--det-bundle", str(untrained_bundle), "--output",
             str(root / "first.csv"), "--dicom-out", str(root / "first_dicom"), "--no-progress", "--prefetch", "0", *detect_fast], timeout=900)
    prior_sr = next((root / "first_dicom").glob("*/sr.dcm"))
    before = read_sr_findings(prior_sr)
    assert before and all(b["time_point"] == "" for b in before)
    out = root / "fu"
    run_cmd([sys.executable, "-m", "monai_lung", "followup", "--prior", str(first), "--current", str(second), "--det-bundle",
             str(untrained_bundle), "--output-dir", str(out), "--dicom-out", str(out / "dicom"), "--prior-sr", str(prior_sr), *FAST], timeout=900)
    summary = json.loads((out / "followup.json").read_text())
    assert summary["prior"]["date"] == "2000-01-01" and summary["current"]["date"] == "2001-03-15" and summary["interval_days"] == 439
    table = pd.read_csv(out / "followup.csv")
    assert len(table) > 0 and set(table["status"]) == {"stable"}  # the same slices: every nodule stays
    after = read_sr_findings(summary["dicom"]["sr"])
    current = [g for g in after if g["time_point"] == "follow-up 2001-03-15"]
    earlier = [g for g in after if g["time_point"] == "prior 2000-01-01"]
    assert len(current) == len(earlier) == len(table)
    # each nodule keeps the tracking UID the prior's own SR gave it, in both of its groups
    prior_uids = {b["tracking_uid"] for b in before}
    assert {g["tracking_uid"] for g in current} <= prior_uids and {g["tracking_uid"] for g in earlier} == {g["tracking_uid"] for g in current}
    assert summary["dicom"]["reused_tracking_uids"] == len(table)
    assert all(g["type"] in ("solid", "part-solid", "non-solid") and g["lungrads"] for g in current)
    if shutil.which("dciodvfy"):
        out_v = subprocess.run(["dciodvfy", summary["dicom"]["sr"]], capture_output=True, encoding="utf-8", errors="replace", timeout=120)
        assert [ln for ln in (out_v.stdout + out_v.stderr).splitlines() if ln.startswith("Error")] == []
    # an SR another program wrote is refused with one line
    proc = _cli("--prior", str(first), "--current", str(second), "--det-bundle", str(untrained_bundle), "--output-dir", str(root / "x"),
                "--dicom-out", str(root / "x" / "d"), "--prior-sr", str(next(first.glob("*.dcm"))), *FAST)
    assert proc.returncode == 2 and "not a DICOM SR written by monai_lung" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.slow
@needs_lidc
@pytest.mark.skipif(orthanc_binary() is None, reason=MISSING_REASON)
def test_dicomweb_prior_auto_compares_with_the_latest_earlier_study_and_stores_the_sr(two_exams, untrained_bundle, tmp_path):
    import requests

    root, first, second = two_exams
    third = _series_copy(tmp_path / "other_patient", "LIDC-IDRI-0002", "20000601", "12")  # another patient: never a prior
    with Orthanc(tmp_path / "orthanc") as pacs:
        for folder in (first, second, third):
            pacs.upload(sorted(folder.glob("*.dcm")))
        out = tmp_path / "fu"
        log = run_cmd([sys.executable, "-m", "monai_lung", "followup", "--dicomweb", pacs.dicomweb, "--study", "1.2.826.0.1.3680043.44.11.1",
                       "--prior", "auto", "--store", "--det-bundle", str(untrained_bundle), "--output-dir", str(out), *FAST], timeout=900)
        summary = json.loads((out / "followup.json").read_text())
        assert summary["prior"]["study_instance_uid"] == "1.2.826.0.1.3680043.44.10.1" and summary["prior"]["date"] == "2000-01-01"
        assert "SR stored to" in log and summary["dicom"]["stored"]
        series = requests.get(f"{pacs.dicomweb}/studies/1.2.826.0.1.3680043.44.11.1/series", timeout=30).json()
        assert "SR" in {s["00080060"]["Value"][0] for s in series}
        # the earliest study has no prior: one line
        proc = _cli("--dicomweb", pacs.dicomweb, "--study", "1.2.826.0.1.3680043.44.10.1", "--det-bundle", str(untrained_bundle),
                    "--output-dir", str(tmp_path / "none"), *FAST)
        errors = [ln for ln in proc.stderr.splitlines() if "error" in ln.lower()]  # the study is pulled (logged) before the search
        assert proc.returncode == 2 and len(errors) == 1 and errors[0].startswith("monai-lung followup: error: ")
        assert "no CT study of patient 'LIDC-IDRI-0001' before 2000-01-01" in errors[0]


@pytest.mark.slow
@needs_lidc
def test_the_dicom_node_compares_a_study_with_the_patients_prior_from_its_own_results(two_exams, tmp_path):
    """The node's prior hook on two job folders (``input/`` instances, the prior's ``out/<series>/sr.dcm``) and the
    node's result summaries: nothing is detected again, the real nodule stays stable and keeps its tracking UID."""
    from monai_lung.dicom.objects import build_sr, read_sr_findings, tracking_uids
    from monai_lung.dicom.pipeline import local_scan
    from monai_lung.findings import Finding
    from monai_lung.node.prior import compare_with_prior

    _, first, second = two_exams
    prior_dir, current_dir = tmp_path / "jobs" / "1", tmp_path / "jobs" / "2"
    shutil.copytree(first, prior_dir / "input")
    shutil.copytree(second, current_dir / "input")
    centre = [56.20840547, 86.34341278, -115.8675792]  # the LUNA16 nodule, world LPS mm (both studies: the same slices)
    found = [{"coord": centre, "diameter_mm": 30.0, "longest_axial_mm": 32.0, "volume_mm3": 6200.0, "probability": 0.999}]
    scan = local_scan(first, tmp_path / "scan")
    prior = {"study_instance_uid": scan.study_uid, "series_instance_uid": scan.seriesuid, "findings": found}
    current = {"study_instance_uid": "1.2.826.0.1.3680043.44.11.1", "series_instance_uid": "1.2.826.0.1.3680043.44.11.2", "findings": found}
    finding = Finding(**found[0])
    uids = tracking_uids(scan.series, [finding])
    (prior_dir / "out" / scan.seriesuid).mkdir(parents=True)
    build_sr(scan.series, [finding], uids).save_as(prior_dir / "out" / scan.seriesuid / "sr.dcm")

    files = compare_with_prior(current, current_dir, prior, prior_dir)
    assert sorted(Path(p).name for p in files) == ["seg.dcm", "sr.dcm"]
    assert all(Path(p).parent.parent == current_dir / "out" / "followup" for p in files)
    table = pd.read_csv(current_dir / "followup" / "followup.csv")
    assert list(table["status"]) == ["stable"] and table["type"].tolist() == ["solid"]
    groups = read_sr_findings(next(p for p in files if p.endswith("sr.dcm")))
    assert sorted(g["time_point"] for g in groups) == ["follow-up 2001-03-15", "prior 2000-01-01"]
    assert {g["tracking_uid"] for g in groups} == set(uids)  # the prior SR's identity of the nodule, at both time points
    summary = json.loads((current_dir / "followup" / "followup.json").read_text())
    assert summary["prior"]["findings_reused"] and summary["current"]["findings_reused"]
    sop = {Path(p).name: str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files}
    again = compare_with_prior(current, current_dir, prior, prior_dir)  # a retried job sends the same objects
    assert {Path(p).name: str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in again} == sop
    # the prior's instances no longer kept, or a "prior" dated after the current study: no comparison, nothing raised
    assert compare_with_prior(prior, prior_dir, current, current_dir) == []
    shutil.rmtree(prior_dir / "input")
    assert compare_with_prior(current, current_dir, prior, prior_dir) == []
