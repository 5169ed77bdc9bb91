"""report: per-finding review PNGs (slices, orientation, aspect, padding) and the run's index.html."""

from __future__ import annotations

import math
from html.parser import HTMLParser

import numpy as np
import pytest
import SimpleITK as sitk
from matplotlib.image import imread
from scipy import ndimage

from monai_lung.findings import Finding
from monai_lung.io import DataError
from monai_lung.report.findings import (
    PADDING_COLOR,
    finding_slices,
    lps_aligned,
    png_stem,
    render_finding_png,
    render_scan_findings,
)
from monai_lung.report.html import write_index_html
from tests.conftest import make_image, rotation_direction

SPACING = (0.7, 0.7, 2.5)  # x, y, z mm
ORIGIN = (-20.3, 15.2, -100.0)  # world LPS mm
SHAPE_ZYX = (30, 64, 64)
SPHERE_HU, LEFT_HU, POST_HU, SUP_HU = 100, 400, 250, 600
AIR_HU = -1000


def _center_world() -> np.ndarray:
    """World LPS (x, y, z) mm of voxel (x=30, y=34, z=14) of the identity-direction phantom grid."""
    return np.asarray(ORIGIN) + np.array([30, 34, 14]) * np.asarray(SPACING)


def _phantom(center_lps, direction=None, markers=True, shape_zyx=SHAPE_ZYX, origin=ORIGIN) -> sitk.Image:
    """int16 HU image [z, y, x] with SPACING, a 5 mm radius sphere at world LPS ``center_lps`` and (optionally)
    cubes 12 mm to the patient's left (+x), posterior (+y) and superior (+z) of it, each with its own HU value.

    Painted in world coordinates, so the same anatomy results for any direction matrix.
    """
    direction = np.eye(3) if direction is None else np.asarray(direction, dtype=float)
    z, y, x = np.meshgrid(*(np.arange(n) for n in shape_zyx), indexing="ij")
    idx_mm = np.stack([x, y, z], axis=-1) * np.asarray(SPACING)  # (..., 3) x, y, z
    world = idx_mm @ direction.T + np.asarray(origin)
    d = world - np.asarray(center_lps, dtype=float)
    arr = np.full(shape_zyx, AIR_HU, dtype=np.int16)
    arr[(d**2).sum(-1) <= 5.0**2] = SPHERE_HU
    if markers:
        for axis, hu in ((0, LEFT_HU), (1, POST_HU), (2, SUP_HU)):
            offset = np.zeros(3)
            offset[axis] = 12.5
            arr[np.all(np.abs(d - offset) <= 3.0, axis=-1)] = hu
    return make_image(arr, spacing_xyz=SPACING, origin_xyz=origin, direction=direction)


def _centroid(mask: np.ndarray) -> np.ndarray:
    assert mask.any(), "expected structure not found in slice"
    return np.argwhere(mask).mean(axis=0)


def _near(arr: np.ndarray, hu: float, tol: float = 1.0) -> np.ndarray:
    return np.abs(np.nan_to_num(arr, nan=-5000.0) - hu) <= tol


# ---------------------------------------------------------------- slices


def test_slices_centred_sized_and_oriented():
    c = _center_world()
    planes = finding_slices(_phantom(c), c, fov_mm=80.0)
    assert set(planes) == {"axial", "coronal", "sagittal"}
    # 80 mm field of view: 2 * ceil(40 / spacing) + 1 pixels per axis, in the scan's own voxels
    n_xy, n_z = 2 * math.ceil(40 / 0.7) + 1, 2 * math.ceil(40 / 2.5) + 1
    assert planes["axial"].array.shape == (n_xy, n_xy) and planes["axial"].spacing_mm == (0.7, 0.7)
    assert planes["coronal"].array.shape == (n_z, n_xy) and planes["coronal"].spacing_mm == (2.5, 0.7)
    assert planes["sagittal"].array.shape == (n_z, n_xy) and planes["sagittal"].spacing_mm == (2.5, 0.7)
    for name, plane in planes.items():
        rows, cols = plane.array.shape
        sr, sc = plane.spacing_mm
        assert rows * sr >= 80.0 and cols * sc >= 80.0, name  # the same physical size in every panel
        centre = np.array([(rows - 1) / 2, (cols - 1) / 2])
        np.testing.assert_allclose(plane.center_px, centre, atol=1e-6)  # coord is exactly a voxel centre
        np.testing.assert_allclose(_centroid(_near(plane.array, SPHERE_HU)), centre, atol=0.5, err_msg=name)
        # physical extent: the finding sits at 0 mm, the panel spans the field of view around it
        left, right, bottom, top = plane.extent_mm()
        assert left <= -40 and right >= 40 and top <= -40 and bottom >= 40

    ax, co, sa = planes["axial"], planes["coronal"], planes["sagittal"]
    # axial: patient left (+x LPS) on the image right (radiological), posterior at the bottom
    assert _centroid(_near(ax.array, LEFT_HU))[1] > ax.center_px[1] + 12
    assert _centroid(_near(ax.array, POST_HU))[0] > ax.center_px[0] + 12
    assert ax.labels == {"top": "A", "bottom": "P", "left": "R", "right": "L"}
    # coronal: head up, patient left on the right
    assert _centroid(_near(co.array, SUP_HU))[0] < co.center_px[0] - 3
    assert _centroid(_near(co.array, LEFT_HU))[1] > co.center_px[1] + 12
    # sagittal: head up, anterior left / posterior right
    assert _centroid(_near(sa.array, SUP_HU))[0] < sa.center_px[0] - 3
    assert _centroid(_near(sa.array, POST_HU))[1] > sa.center_px[1] + 12
    # the sphere spans 10 mm in every direction: ~14 pixels in-plane, ~4 slices in z (physical size kept)
    assert 13 <= _near(ax.array[int(ax.center_px[0])], SPHERE_HU).sum() <= 15
    assert 3 <= _near(co.array[:, int(co.center_px[1])], SPHERE_HU).sum() <= 5


def test_subvoxel_position_is_kept():
    c = _center_world() + np.array([0.2, -0.3, 1.0])  # within the voxel of _center_world()
    planes = finding_slices(_phantom(_center_world()), c, fov_mm=40.0)
    ax, co = planes["axial"], planes["coronal"]
    h = (ax.array.shape[0] - 1) / 2
    np.testing.assert_allclose(ax.center_px, (h + (-0.3 / 0.7), h + 0.2 / 0.7), atol=1e-6)
    hz = (co.array.shape[0] - 1) / 2
    np.testing.assert_allclose(co.center_px[0], hz - 1.0 / 2.5, atol=1e-6)  # z flipped: superior is up


def test_border_finding_is_padded_not_cropped():
    # a finding 2 voxels from the x=0 face and on the last slice: the field of view leaves the scan
    c = np.asarray(ORIGIN) + np.array([2, 34, 29]) * np.asarray(SPACING)
    planes = finding_slices(_phantom(c, markers=False), c, fov_mm=80.0)
    inner = finding_slices(_phantom(_center_world(), markers=False), _center_world(), fov_mm=80.0)
    for name in planes:
        arr = planes[name].array
        assert arr.shape == inner[name].array.shape, name  # same size as away from the border
        centre = ((arr.shape[0] - 1) / 2, (arr.shape[1] - 1) / 2)
        assert np.isnan(arr).any() and np.isfinite(arr).any(), name
        found = _centroid(_near(arr, SPHERE_HU))
        # the sphere is cut by the scan border, so its visible part lies on the inside of the centre
        assert abs(found[0] - centre[0]) <= 3 and abs(found[1] - centre[1]) <= 3, name
        assert _near(arr, SPHERE_HU)[int(centre[0]), int(centre[1])], name
    ax = planes["axial"].array
    half = (ax.shape[1] - 1) // 2
    # columns left of x index 0 (patient right side beyond the scan) are padding, the rest is data
    assert np.isnan(ax[:, : half - 2]).all() and np.isfinite(ax[:, half - 2 :]).any(axis=0).all()
    sag = planes["sagittal"].array  # last slice is the most superior: everything above it is padding
    hz = (sag.shape[0] - 1) // 2
    assert np.isnan(sag[:hz]).all() and np.isfinite(sag[hz]).any()
    # a point far outside the scan gives all-padding slices, not an error
    far = finding_slices(_phantom(c, markers=False), c + np.array([0, 0, 500.0]), fov_mm=20.0)
    assert all(np.isnan(p.array).all() for p in far.values())


@pytest.mark.parametrize("kind", ["flipped", "permuted", "oblique"])
def test_non_identity_directions_show_the_same_anatomy(kind):
    c = _center_world()
    reference = finding_slices(_phantom(c), c, fov_mm=60.0)
    if kind == "flipped":  # NIfTI/RAS-stored array: x and y index axes point right and anterior
        direction = np.diag([-1.0, -1.0, 1.0])
        origin = np.asarray(ORIGIN) + np.array([63 * 0.7, 63 * 0.7, 0.0])
        shape = SHAPE_ZYX
    elif kind == "permuted":  # index x runs along world y and vice versa (square in-plane grid)
        direction = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
        origin, shape = ORIGIN, SHAPE_ZYX
    else:
        direction = rotation_direction(deg_z=20.0, flip_y=False)
        origin, shape = np.asarray(ORIGIN) + np.array([10.0, -12.0, 0.0]), SHAPE_ZYX
    image = _phantom(c, direction=direction, shape_zyx=shape, origin=tuple(origin))
    aligned = lps_aligned(image)
    np.testing.assert_allclose(np.asarray(aligned.GetDirection()).reshape(3, 3), np.eye(3), atol=1e-9)
    planes = finding_slices(image, c, fov_mm=60.0)
    if kind != "oblique":  # pure flips/permutations: the very same voxels
        for name in planes:
            np.testing.assert_array_equal(planes[name].array, reference[name].array, err_msg=name)
            assert planes[name].spacing_mm == reference[name].spacing_mm
        return
    ax, co = planes["axial"], planes["coronal"]  # oblique: resampled, so compare positions
    for plane in (ax, co):
        np.testing.assert_allclose(_centroid(np.abs(np.nan_to_num(plane.array, nan=-5000) - SPHERE_HU) < 30),
                                   plane.center_px, atol=1.0)
    assert _centroid(np.nan_to_num(ax.array, nan=-5000) > 300)[1] > ax.center_px[1] + 12  # left marker on the right
    assert _centroid(np.nan_to_num(co.array, nan=-5000) > 500)[0] < co.center_px[0] - 3  # superior marker up


def test_bad_coordinates_raise():
    image = _phantom(_center_world(), markers=False)
    with pytest.raises(ValueError):
        finding_slices(image, [1.0, float("nan"), 2.0])
    with pytest.raises(ValueError):
        finding_slices(image, [1.0, 2.0])
    with pytest.raises(ValueError):
        render_finding_png(image, Finding(coord=(1.0, float("nan"), 2.0), probability=0.5), "/nonexistent/never.png")


# ---------------------------------------------------------------- PNGs


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """Contiguous [start, end) runs of True in a 1D boolean array."""
    edges = np.diff(np.concatenate([[0], flags.astype(int), [0]]))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)))


def _panel_pixels(rgb: np.ndarray) -> np.ndarray:
    """Pixels of a rendered PNG (rows, cols, RGB in [0, 1]) showing air in the lung window or padding."""
    air = (np.abs(rgb - (AIR_HU + 1350) / 1500) < 0.012).all(axis=-1)
    padding = (np.abs(rgb - np.asarray(PADDING_COLOR)) < 0.012).all(axis=-1)
    return air | padding


@pytest.mark.parametrize("overview", [False, True])
def test_render_finding_png_panels_and_marker(tmp_path, overview):
    c = _center_world()
    out = tmp_path / "f.png"
    finding = Finding(coord=c, diameter_mm=10.0, probability=0.87654)
    assert render_finding_png(_phantom(c, markers=False), finding, out, overview=overview, seriesuid="1.2.3") == out
    assert out.is_file() and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.png"]  # no temporary files left
    rgb = imread(out)[..., :3]
    height, width = rgb.shape[:2]
    assert width / height == pytest.approx(4 * 3.25 / 3.9 if overview else 3 * 3.25 / 3.9, rel=0.02)

    panel_px = _panel_pixels(rgb)
    body = slice(int(0.25 * height), int(0.95 * height))  # below the titles
    panels = [r for r in _runs(panel_px[body].any(axis=0)) if r[1] - r[0] > 50]
    assert len(panels) == (4 if overview else 3)
    # equal panel widths (same 80 mm field of view at the same mm-per-pixel scale)
    assert max(b - a for a, b in panels) - min(b - a for a, b in panels) <= 3
    # the axial panel: the sphere (white in the lung window) is the largest white blob, at the panel centre
    c0, c1 = panels[0]
    rows = np.flatnonzero(panel_px[:, c0:c1].mean(axis=1) > 0.3)  # not antialiased title text
    r0, r1 = rows.min(), rows.max() + 1
    assert (r1 - r0) == pytest.approx(c1 - c0, abs=3)  # square panel
    white = (rgb[r0:r1, c0:c1] > 0.9).all(axis=-1)
    labels, n = ndimage.label(white)
    assert n >= 1
    sizes = ndimage.sum(white, labels, range(1, n + 1))
    blob = labels == (int(np.argmax(sizes)) + 1)
    cy, cx = _centroid(blob)
    assert abs(cy - (r1 - r0 - 1) / 2) <= 3 and abs(cx - (c1 - c0 - 1) / 2) <= 3
    # 10 mm sphere in an 80 mm panel: ~1/8 of the panel wide
    assert np.ptp(np.flatnonzero(blob.any(axis=0))) == pytest.approx((c1 - c0) / 8, rel=0.2)
    # the yellow marker circle: the finding's 5 mm radius, drawn on a ring around the centre (also on the
    # diagonals, where the crosshair ticks are not)
    yellow = (rgb[r0:r1, c0:c1, 0] > 0.8) & (rgb[r0:r1, c0:c1, 1] > 0.6) & (rgb[r0:r1, c0:c1, 2] < 0.3)
    yy, xx = np.nonzero(yellow)
    dy, dx = yy - (r1 - r0 - 1) / 2, xx - (c1 - c0 - 1) / 2
    on_ring = np.abs(np.hypot(dy, dx) - 5.0 * (c1 - c0) / 80.0) <= 2.5
    diagonal = np.abs(np.abs(dy) - np.abs(dx)) <= 3
    assert (on_ring & diagonal & (dy < 0) & (dx < 0)).any() and (on_ring & diagonal & (dy > 0) & (dx > 0)).any()


def test_coronal_panel_is_not_squashed(tmp_path):
    # the sphere must look round in the coronal panel although slices are 3.6x thicker than pixels
    c = _center_world()
    out = tmp_path / "f.png"
    render_finding_png(_phantom(c, markers=False), Finding(coord=c, diameter_mm=10.0, probability=0.5),
                       out, overview=False, crosshair=False)
    rgb = imread(out)[..., :3]
    height = rgb.shape[0]
    panel_px = _panel_pixels(rgb)
    panels = [r for r in _runs(panel_px[int(0.25 * height) : int(0.95 * height)].any(axis=0)) if r[1] - r[0] > 50]
    c0, c1 = panels[1]
    white = (rgb[:, c0:c1] > 0.9).all(axis=-1)
    white[: int(0.25 * height)] = False  # titles
    labels, n = ndimage.label(white)
    blob = labels == (int(np.argmax(ndimage.sum(white, labels, range(1, n + 1)))) + 1)
    tall = np.ptp(np.flatnonzero(blob.any(axis=1)))
    wide = np.ptp(np.flatnonzero(blob.any(axis=0)))
    # 4 slices of 2.5 mm (10 mm) tall vs ~14 pixels of 0.7 mm (~10 mm) wide: similar on screen
    assert 0.75 <= tall / wide <= 1.35


def test_png_stem_is_safe_and_unique():
    assert png_stem("1.3.6.1.4.1.14519.5.2.1.6279.6001.105756658031515062000744821260") == (
        "1.3.6.1.4.1.14519.5.2.1.6279.6001.105756658031515062000744821260"
    )
    a, b = png_stem("../x/<script>"), png_stem("../x/<script]")
    assert a != b and "/" not in a and "<" not in a and not a.startswith(".")


def test_render_scan_findings(tmp_path):
    c = _center_world()
    scan = tmp_path / "scan.mhd"
    sitk.WriteImage(_phantom(c), str(scan))
    findings = [
        Finding(coord=c, diameter_mm=6.0, probability=0.2),
        Finding(coord=c + 5, diameter_mm=10.0, probability=0.9, kind="mass"),
        Finding(coord=c - 5, diameter_mm=4.0, probability=0.5),
    ]
    report = tmp_path / "report"
    rows = render_scan_findings(scan, "1.2.840.99", findings, report, max_findings=2)
    assert [r["probability"] for r in rows] == [0.9, 0.5]
    assert [r["kind"] for r in rows] == ["mass", "nodule"]  # each row is the finding's JSON with its picture
    assert [r["png"] for r in rows] == ["images/1.2.840.99_1.png", "images/1.2.840.99_2.png"]
    assert all(r["seriesuid"] == "1.2.840.99" for r in rows)
    assert [r["coord"] for r in rows] == [list(findings[1].coord), list(findings[2].coord)]
    assert [Finding.from_json(r) for r in rows] == findings[1:]
    assert sorted(p.name for p in (report / "images").iterdir()) == ["1.2.840.99_1.png", "1.2.840.99_2.png"]
    assert render_scan_findings(tmp_path / "missing.mhd", "x", [], report) == []  # nothing to draw: not read
    with pytest.raises(DataError):
        render_scan_findings(tmp_path / "missing.mhd", "x", findings, report)


# ---------------------------------------------------------------- index.html


class _Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.srcs, self.hrefs, self.ids, self.tags = [], [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        if tag == "img":
            self.srcs.append(attrs["src"])
            assert attrs.get("width"), "images need a display width"
        if tag == "a":
            self.hrefs.append(attrs["href"])
        if "id" in attrs:
            self.ids.append(attrs["id"])


def test_index_html(tmp_path):
    c = _center_world()
    scan_a, scan_b = tmp_path / "a.mhd", tmp_path / "b.nii.gz"
    sitk.WriteImage(_phantom(c), str(scan_a))
    sitk.WriteImage(_phantom(c + np.array([3.0, 0, 0]), markers=False), str(scan_b))
    report = tmp_path / "report"
    low = render_scan_findings(scan_a, "1.2.3.low", [Finding(coord=c, diameter_mm=6.0, probability=0.4)], report)
    high = render_scan_findings(scan_b, "1.2.3.high", [
        Finding(coord=c + np.array([3.0, 0, 0]), diameter_mm=9.96, probability=0.71234),
        Finding(coord=(-1.234, 5.678, -90.05), diameter_mm=3.0, probability=0.95, stage1_peak=0.99949, stage2_prob=0.47578),
    ], report)
    evil = '1.2.<script>alert("x")</script>'
    scans = [
        {"seriesuid": "1.2.3.low", "image": str(scan_a), "status": "ok", "error": None, "findings": low,
         "timings_s": {"load": 0.5, "detect": 2.0}},
        {"seriesuid": evil, "image": "/data/x & y.mhd", "status": "failed",
         "error": "DataError: truncated <raw> & 'broken'", "findings": [], "timings_s": {"load": 0.1}},
        {"seriesuid": "1.2.3.none", "image": "/data/none.mhd", "status": "ok", "error": "report: no <pictures>",
         "findings": [], "timings_s": {}},
    ]
    out = write_index_html(report, scans[:1])  # first call with a partial list, as the batch runner does
    assert out == report / "index.html" and "1.2.3.high" not in out.read_text(encoding="utf-8")
    scans.insert(1, {"seriesuid": "1.2.3.high", "image": str(scan_b), "status": "ok", "error": None,
                     "findings": high, "timings_s": {"load": 1.0, "total": 9.0}, "warnings": ["slices of 5 <mm>", "no contrast"]})
    out = write_index_html(report, scans)
    text = out.read_text(encoding="utf-8")

    parser = _Collector()
    parser.feed(text)
    # self-contained: no scripts, no external resources
    assert "script" not in parser.tags and "link" not in parser.tags
    assert not [u for u in parser.srcs + parser.hrefs if "://" in u or u.startswith("//")]
    # escaping: the raw markup never appears, its escaped form does
    assert "<script>" not in text and "<raw>" not in text
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in text
    assert "truncated &lt;raw&gt; &amp; &#x27;broken&#x27;" in text and "x &amp; y.mhd" in text
    # every seriesuid is there; every image exists on disk; every internal link has a target
    for uid in ("1.2.3.low", "1.2.3.high", "1.2.3.none"):
        assert uid in text
    assert len(parser.srcs) == 3 and all((report / s).is_file() for s in parser.srcs)
    assert {h[1:] for h in parser.hrefs if h.startswith("#")} <= set(parser.ids)
    assert len(parser.ids) == len(set(parser.ids))
    # values: probability 3 decimals, diameter and world mm 1 decimal
    assert "0.712" in text and "9.96" not in text and "10.0" in text and "(-1.2, 5.7, -90.0)" in text
    # scan table order: best finding first (high 0.95 > low 0.4 > none), failed scan last with its error
    table = text[text.index('id="scans"'): text.index('id="findings"')]
    pos = [table.index(u) for u in ("1.2.3.high", "1.2.3.low", "1.2.3.none", "&lt;script&gt;")]
    assert pos == sorted(pos)
    assert "failed" in table and "truncated" in table
    assert table.count("report: no &lt;pictures&gt;") == 1 and text.count("report: no &lt;pictures&gt;") == 2
    # findings of a scan by score: the 0.95 finding's figure comes before the 0.712 one
    section = text[text.index('id="findings"'): text.index('id="all"')]
    assert section.index("0.950") < section.index("0.712")
    # both stages' scores beside the final one where the finding has them (the caption, and the flat table)
    assert section.count("stage 1 0.999 · stage 2 0.476") == 1 and section.count("stage 1") == 1
    # the scan's warnings (a per-scan attribute) under its heading, escaped
    assert section.count('<p class="warn">warnings: slices of 5 &lt;mm&gt;; no contrast</p>') == 1
    # flat list of all findings by score
    flat = text[text.index('id="all"'):]
    assert "<th class=\"num\">stage 1</th>" in flat and flat.count(">0.999<") == 1 and flat.count(">0.476<") == 1
    pos = [flat.index(p) for p in ("0.950", "0.712", "0.400")]
    assert pos == sorted(pos)
    # summary: 4 scans, 1 failed, 3 findings
    summary = text[: text.index('id="scans"')]
    assert "<b>4</b>scans" in summary and "<b>3</b>findings" in summary and '"bad">1</b>' in summary
    # atomic writes: only the final files remain
    assert sorted(p.name for p in report.iterdir()) == ["images", "index.html"]
    assert out.stat().st_mode & 0o777 == 0o644 and (report / parser.srcs[0]).stat().st_mode & 0o777 == 0o644
    assert not [p for p in (report / "images").iterdir() if p.name.startswith(".")]


def test_index_html_empty_and_missing_image(tmp_path):
    out = write_index_html(tmp_path, [])
    assert "<b>0</b>scans" in out.read_text(encoding="utf-8")
    scans = [{"seriesuid": "s", "image": "x.mhd", "status": "ok", "error": None, "timings_s": {},
              "findings": [{"seriesuid": "s", "png": "images/gone.png", "coord": [1, 2, 3], "diameter_mm": 5,
                            "probability": 0.5}]}]
    text = write_index_html(tmp_path, scans).read_text(encoding="utf-8")
    assert "<img" not in text and "image not found: images/gone.png" in text
