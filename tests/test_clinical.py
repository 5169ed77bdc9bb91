"""Clinical attributes of findings: nodule type and calcification on phantoms of known kind, Lung-RADS mean diameter,
lung side, zone and pleural contact on synthetic chests, and the real LIDC-IDRI-0001 nodule against its readers."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from monai_lung.clinical.composition import nodule_composition, partial_volume_mm
from monai_lung.clinical.ct import ScanCT, sample_mask, to_lps_affine
from monai_lung.findings import FindingMask
from monai_lung.clinical.findings import describe_finding
from monai_lung.clinical.location import find_lungs, side_and_zone
from monai_lung.clinical.measures import axial_axes, mean_diameter, one_decimal
from monai_lung.synthetic import generate_scan
from monai_lung.synthetic.size_phantom import phantom_seed, size_phantom
from tests.bundle_utils import REPO

LIDC = REPO.parent / "shared" / "real_ct" / "LIDC-IDRI-0001"
LUNA16_CENTRE = np.array([56.20840547, 86.34341278, -115.8675792])  # its annotations.csv row, world LPS mm
needs_lidc = pytest.mark.skipif(not LIDC.is_dir(), reason="../shared/real_ct (the real LIDC-IDRI-0001 series) is absent")


@pytest.mark.parametrize("spacing", [(0.7, 0.7, 1.25), (0.7, 0.7, 2.5)])
@pytest.mark.parametrize("kind,expected", [("solid", "solid"), ("juxta_pleural", "solid"), ("part_solid", "part-solid"),
                                           ("ground_glass", "non-solid"), ("calcified", "solid")])
@pytest.mark.parametrize("diameter", [8.0, 14.0])
def test_phantoms_of_known_kind_get_their_type(kind, expected, diameter, spacing):
    ph = size_phantom(kind, diameter, spacing_xyz=spacing, rng=np.random.default_rng(int(diameter)))
    got = nodule_composition(ph["hu"], ph["affine"], phantom_seed(ph, 1.0), partial_volume_mm(spacing))
    assert got.type == expected
    assert got.calcified == (kind == "calcified") and got.calcification == ("central" if kind == "calcified" else "")
    if kind == "part_solid":  # the phantom's solid core is half its diameter
        assert abs(got.solid_mean_diameter_mm - diameter / 2) <= 1.5 and got.solid_volume_mm3 > 0
        assert got.summary()["solid_mean_diameter_mm"] == got.solid_mean_diameter_mm
    else:
        assert got.summary()["solid_mean_diameter_mm"] is None
    if kind != "juxta_pleural":  # the whole ball is nodule: its volume within 20 %
        assert abs(got.volume_mm3 / ph["volume_mm3"] - 1) < 0.2


def test_lungrads_mean_diameter_of_an_oblique_ellipse():
    """Long axis 12 mm, short axis 6 mm, turned 30 degrees in-plane on 0.5 mm voxels: mean 9.0 mm to one decimal."""
    n = 61
    grid = (np.arange(n) - n // 2) * 0.5
    x, y, z = np.meshgrid(grid, grid, grid, indexing="ij")
    c, s = np.cos(np.pi / 6), np.sin(np.pi / 6)
    u, v = c * x + s * y, -s * x + c * y
    mask = (u / 6.0) ** 2 + (v / 3.0) ** 2 + (z / 3.0) ** 2 <= 1.0
    affine = np.diag([0.5, 0.5, 0.5, 1.0])
    long_axis, short_axis = axial_axes(mask, affine)
    assert abs(long_axis - 12.0) <= 0.6 and abs(short_axis - 6.0) <= 0.6
    assert mean_diameter(mask, affine) == one_decimal((one_decimal(long_axis) + one_decimal(short_axis)) / 2)
    assert abs(mean_diameter(mask, affine) - 9.0) <= 0.5
    assert (one_decimal(5.95), one_decimal(5.94), one_decimal(0.05)) == (6.0, 5.9, 0.1)


@pytest.fixture(scope="module")
def chest():
    """A 256-px synthetic chest of the screening mix with nodules of several kinds, and its lungs."""
    for seed in range(40):
        scan = generate_scan(np.random.default_rng(seed), size=256, nodule_mix="screening")
        kinds = {nd["kind"] for nd in scan.nodules}
        if "juxta_pleural" in kinds and kinds & {"solid", "ground_glass", "part_solid"}:
            ct = ScanCT(scan.image)
            return scan, ct, find_lungs(*ct.coarse())
    raise AssertionError("no chest with a juxta-pleural and an inner nodule among 40 seeds")


def test_lung_side_and_zone_follow_the_anatomy(chest):
    scan, ct, lungs = chest
    assert set(lungs.z_range) == {"right", "left"}
    for name, (lo, hi) in lungs.z_range.items():
        assert hi - lo > 50.0
    # a point in each lung's upper, middle and lower third (world LPS: the right lung has the smaller x)
    for name, value in (("right", 1), ("left", 2)):
        where = np.argwhere(lungs.side == value)
        world = where @ lungs.affine[:3, :3].T + lungs.affine[:3, 3]
        lo, hi = lungs.z_range[name]
        for zone, frac in (("lower", 1 / 6), ("middle", 1 / 2), ("upper", 5 / 6)):
            z = lo + frac * (hi - lo)
            near = world[np.abs(world[:, 2] - z) < 4.0]
            point = near[np.argmin(np.abs(near[:, 0] - np.median(near[:, 0])))]
            assert side_and_zone(lungs, point) == (name, zone)
    right_x = (np.argwhere(lungs.side == 1) @ lungs.affine[:3, :3].T + lungs.affine[:3, 3])[:, 0].mean()
    left_x = (np.argwhere(lungs.side == 2) @ lungs.affine[:3, :3].T + lungs.affine[:3, 3])[:, 0].mean()
    assert right_x < left_x
    # the scan mirrored left-right (same world frame): every point changes side
    arr = sitk.GetArrayFromImage(scan.image)[:, :, ::-1]
    mirrored = sitk.GetImageFromArray(np.ascontiguousarray(arr))
    mirrored.CopyInformation(scan.image)
    mirror_lungs = find_lungs(*ScanCT(mirrored).coarse())
    centre_x = scan.image.TransformContinuousIndexToPhysicalPoint([(scan.image.GetSize()[0] - 1) / 2, 0, 0])[0]
    for nd in scan.nodules:
        p = np.asarray(nd["coord_xyz"])
        q = p.copy()
        q[0] = 2 * centre_x - p[0]
        assert side_and_zone(lungs, p)[0] != side_and_zone(mirror_lungs, q)[0]


def test_juxta_pleural_nodules_touch_the_pleura_and_inner_ones_do_not(chest):
    scan, ct, lungs = chest
    for nd in scan.nodules:
        got = describe_finding(ct, lungs, nd["coord_xyz"], nd["diameter_mm"])
        if nd["kind"] == "juxta_pleural":
            assert got.pleural, nd
        elif nd["kind"] in ("solid", "ground_glass", "part_solid"):
            assert not got.pleural, nd
        summary = got.summary()
        assert summary["side"] in ("right", "left") and summary["zone"] in ("upper", "middle", "lower")
        assert summary["type"] == {"ground_glass": "non-solid", "part_solid": "part-solid"}.get(nd["kind"], "solid")


def test_a_detector_mask_seeds_the_measurement(chest):
    """A finding's mask given on another grid (RAS, as the detector's) lands on the same voxels as the nodule."""
    scan, ct, lungs = chest
    nd = max(scan.nodules, key=lambda n: n["diameter_mm"])
    hu, affine = ct.crop(nd["coord_xyz"], 12.0, 0.8)
    ball = np.linalg.norm(np.stack(np.meshgrid(*[np.arange(n) for n in hu.shape], indexing="ij"), -1) @ affine[:3, :3].T
                          + affine[:3, 3] - nd["coord_xyz"], axis=-1) <= 0.3 * nd["diameter_mm"]
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    mask = FindingMask(ball, ras, "RAS")
    assert np.array_equal(sample_mask(mask.array, to_lps_affine(mask.affine, mask.space), affine, hu.shape), ball)
    seeded = describe_finding(ct, lungs, nd["coord_xyz"], nd["diameter_mm"], mask)
    assert seeded.composition.type == describe_finding(ct, lungs, nd["coord_xyz"], nd["diameter_mm"]).composition.type


@needs_lidc
def test_the_real_lidc_nodule_is_solid_like_its_readers_say():
    """LIDC-IDRI-0001's nodule: the four readers rate its texture 5, 5, 5, 4 (5 solid) and calcification 6 (absent)."""
    from monai_lung.io.lidc_xml import read_lidc_readers

    readers = read_lidc_readers(LIDC / "lidc_readers.xml")
    assert sorted(r["characteristics"]["texture"] for r in readers) == [4, 5, 5, 5]
    assert {r["characteristics"]["calcification"] for r in readers} == {6}
    ct = ScanCT.read(LIDC / "dicom")
    lungs = find_lungs(*ct.coarse())
    got = describe_finding(ct, lungs, LUNA16_CENTRE, 23.35)
    assert got.composition.type == "solid" and not got.composition.calcified
    assert got.side == "left"  # world LPS x > 0: the patient's left
    assert 18.0 < got.composition.mean_diameter_mm < 30.0


@needs_lidc
def test_detect_step_fills_the_finding_record_to_csv_json_and_sr(tmp_path):
    """The step ``monai-lung detect`` runs (registered by importing monai_lung.clinical) fills the clinical attributes of
    the findings at the operating point; they reach the CSV row, the JSON and the DICOM SR (read back, dciodvfy-clean)."""
    import shutil
    import subprocess

    from monai_lung.clinical.findings import DEFAULT_THRESHOLD, describe_scan
    from monai_lung.dicom.objects import read_sr_findings, write_dicom_outputs
    from monai_lung.dicom.series import choose_series
    from monai_lung.findings import Finding, ScanResult, registered_steps

    assert "clinical" in registered_steps()
    ct = ScanCT.read(LIDC / "dicom")
    seed = describe_finding(ct, find_lungs(*ct.coarse()), LUNA16_CENTRE, 23.35)
    mask = FindingMask(seed.composition.mask, seed.crop_affine, "LPS")
    kept = Finding(tuple(LUNA16_CENTRE), probability=0.999, diameter_mm=22.0, volume_mm3=5000.0, longest_axial_mm=25.0, mask=mask)
    low = Finding((-80.0, 50.0, -150.0), probability=DEFAULT_THRESHOLD / 2, diameter_mm=5.0, volume_mm3=60.0, longest_axial_mm=5.0,
                  mask=FindingMask(np.ones((3, 3, 3), bool), np.diag([1.0, 1.0, 1.0, 1.0]) @ np.eye(4), "LPS"))
    scan = ScanResult([kept, low], seriesuid="lidc", image=str(LIDC / "dicom"))
    describe_scan(scan, str(LIDC / "dicom"))
    assert (kept.type, kept.calcified, kept.side, kept.touches_pleura != "") == ("solid", "false", "left", True)
    assert kept.lungrads == "4B" and "4X" in kept.lungrads_review and 18.0 < kept.mean_diameter_mm < 30.0
    assert kept.solid_volume_mm3 is None and scan.lungrads_exam == "4B"
    assert (low.type, low.calcified, low.lungrads, low.mean_diameter_mm) == ("", "", "", None)  # below the operating point
    row = kept.csv_row("lidc")
    assert (row["type"], row["calcified"]) == ("solid", "false")
    data = scan.to_json()
    assert data["lungrads_exam"] == "4B" and data["findings"][0]["zone"] == kept.zone
    info, _ = choose_series(LIDC / "dicom")
    files = write_dicom_outputs(info, [kept], tmp_path)
    (back,) = read_sr_findings(files["sr"])
    assert {k: back[k] for k in ("type", "calcified", "side", "zone", "lungrads")} == {
        "type": "solid", "calcified": "false", "side": "left", "zone": kept.zone, "lungrads": "4B"}
    assert back["mean_diameter_mm"] == pytest.approx(kept.mean_diameter_mm)
    if shutil.which("dciodvfy"):
        out = subprocess.run(["dciodvfy", files["sr"]], capture_output=True, encoding="utf-8", errors="replace", timeout=120)
        assert [ln for ln in (out.stdout + out.stderr).splitlines() if ln.startswith("Error")] == []
