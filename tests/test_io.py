"""io: the SimpleITK MONAI reader, coordinate conventions (world LPS/RAS <-> voxel), CSV schemas, atomic writes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from monai.transforms import Compose, EnsureChannelFirstd, LoadImage, LoadImaged, Orientationd, Spacingd

from monai_lung.io import (
    DataError,
    SimpleITKReader,
    index_to_world,
    lps_to_ras,
    read_annotations,
    read_candidates,
    read_excluded,
    read_predictions,
    sitk_index_to_world,
    voxel_spacing,
    world_to_index,
    world_to_sitk_index,
    write_image_atomic,
)
from monai_lung.io.atomic import atomic_path
from tests.conftest import make_image, rotation_direction


def _volume(rng, shape_zyx=(12, 20, 24)):
    return rng.integers(-1000, 400, size=shape_zyx).astype(np.int16)


@pytest.mark.parametrize("suffix", [".mhd", ".mha", ".nii.gz", ".nrrd"])
def test_reader_matches_sitk_layout_and_affine(tmp_path, rng, suffix):
    arr = _volume(rng)
    image = make_image(arr, direction=rotation_direction())
    path = tmp_path / f"scan{suffix}"
    write_image_atomic(path, image)
    loaded = LoadImage(reader=SimpleITKReader(), image_only=True)(path)
    # array is (x, y, z): the transpose of SimpleITK's (z, y, x)
    assert tuple(loaded.shape) == arr.shape[::-1]
    np.testing.assert_array_equal(loaded.numpy(), arr.transpose(2, 1, 0))
    # affine maps index (i, j, k) to RAS; SimpleITK gives LPS physical points for the same (x, y, z) index
    for idx in [(0, 0, 0), (3, 7, 5), (23, 19, 11)]:
        lps = np.array(image.TransformIndexToPhysicalPoint(idx))
        ras = loaded.affine.numpy() @ np.array([*idx, 1.0])
        np.testing.assert_allclose(ras[:3], lps_to_ras(lps), atol=1e-4)
    assert str(loaded.meta["space"]) == "RAS"


def test_world_voxel_round_trips(tmp_path, rng):
    image = make_image(_volume(rng), spacing_xyz=(0.63, 0.71, 2.0), origin_xyz=(-183.2, 95.7, -402.5), direction=rotation_direction(33))
    write_image_atomic(tmp_path / "s.mhd", image)
    loaded = LoadImage(reader=SimpleITKReader(), image_only=True)(tmp_path / "s.mhd")
    points = rng.uniform(-150, 150, size=(50, 3))
    # world LPS -> MONAI index -> world LPS
    idx = world_to_index(points, loaded.affine)
    np.testing.assert_allclose(index_to_world(idx, loaded.affine), points, atol=1e-6)
    # the MONAI index equals SimpleITK's (x, y, z) continuous index of the same point
    np.testing.assert_allclose(idx, world_to_sitk_index(image, points), atol=1e-6)
    np.testing.assert_allclose(sitk_index_to_world(image, world_to_sitk_index(image, points)), points, atol=1e-6)
    # a single point keeps its (3,) shape
    assert world_to_index(points[0], loaded.affine).shape == (3,)
    # an LPS affine (affine_lps_to_ras=False) gives the same index when told its space
    loaded_lps = LoadImage(reader=SimpleITKReader(affine_lps_to_ras=False), image_only=True)(tmp_path / "s.mhd")
    np.testing.assert_allclose(world_to_index(points, loaded_lps.affine, space="LPS"), idx, atol=1e-6)


def test_nifti_through_nibabel_agrees_with_our_reader(tmp_path, rng):
    """MONAI's default NIfTI reader (nibabel) and ours must put a world point on the same voxel."""
    arr = _volume(rng)
    image = make_image(arr, direction=rotation_direction(10, flip_y=False))
    write_image_atomic(tmp_path / "s.nii.gz", image)
    ours = LoadImage(reader=SimpleITKReader(), image_only=True)(tmp_path / "s.nii.gz")
    theirs = LoadImage(reader="NibabelReader", image_only=True)(tmp_path / "s.nii.gz")
    np.testing.assert_allclose(ours.affine.numpy(), theirs.affine.numpy(), atol=1e-4)
    np.testing.assert_array_equal(ours.numpy(), theirs.numpy())


def test_point_survives_orientation_and_spacing(tmp_path):
    """A bright voxel at a known world point is found again at that point after Orientationd + Spacingd."""
    arr = np.full((30, 40, 50), -1000, dtype=np.int16)
    zyx = (13, 22, 31)
    arr[zyx] = 1000
    image = make_image(arr, spacing_xyz=(0.7, 0.7, 2.5), origin_xyz=(-160.0, -180.0, -250.0), direction=np.diag([1.0, -1.0, 1.0]))
    write_image_atomic(tmp_path / "p.mhd", image)
    world_lps = np.array(image.TransformIndexToPhysicalPoint(zyx[::-1]))
    chain = Compose(
        [
            LoadImaged("image", reader=SimpleITKReader()),
            EnsureChannelFirstd("image"),
            Orientationd("image", axcodes="RAS"),
            Spacingd("image", pixdim=(0.7, 0.7, 1.25), mode="nearest"),
        ]
    )
    out = chain({"image": str(tmp_path / "p.mhd")})["image"]
    idx = np.rint(world_to_index(world_lps, out.affine)).astype(int)
    assert out[0][tuple(idx)] == 1000


def _write_dicom_series(folder, arr_zyx, spacing_xyz, origin_xyz):
    folder.mkdir()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    uid = "1.2.826.0.1.3680043.2.1125.1"
    for z in range(arr_zyx.shape[0]):
        sl = sitk.GetImageFromArray(arr_zyx[z])
        pos = (origin_xyz[0], origin_xyz[1], origin_xyz[2] + z * spacing_xyz[2])
        for tag, value in {
            "0008|0060": "CT",
            "0020|000d": uid + ".1",
            "0020|000e": uid + ".2",
            "0020|0013": str(z + 1),
            "0020|0032": "\\".join(f"{v:.4f}" for v in pos),
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0028|0030": f"{spacing_xyz[1]:.4f}\\{spacing_xyz[0]:.4f}",
            "0018|0050": f"{spacing_xyz[2]:.4f}",
            "0008|0018": f"{uid}.3.{z + 1}",
        }.items():
            sl.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice{z:03d}.dcm"))
        writer.Execute(sl)


def test_dicom_series_folder(tmp_path, rng):
    arr = _volume(rng, (6, 16, 20))
    _write_dicom_series(tmp_path / "dcm", arr, (0.75, 0.75, 2.0), (-120.0, -130.0, -50.0))
    loaded = LoadImage(reader=SimpleITKReader(), image_only=True)(tmp_path / "dcm")
    assert tuple(loaded.shape) == (20, 16, 6)
    np.testing.assert_array_equal(loaded.numpy(), arr.transpose(2, 1, 0))
    np.testing.assert_allclose(index_to_world([0, 0, 5], loaded.affine), [-120.0, -130.0, -40.0], atol=1e-3)


def test_reader_errors_name_file_and_problem(tmp_path, rng):
    image = make_image(_volume(rng))
    write_image_atomic(tmp_path / "ok.mhd", image)
    reader = SimpleITKReader()
    with pytest.raises(DataError, match=r"missing\.mhd: image file not found"):
        reader.read(tmp_path / "missing.mhd")
    # truncated data file
    raw = (tmp_path / "ok.raw").read_bytes()
    (tmp_path / "ok.raw").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match=r"ok\.raw: truncated data file"):
        reader.read(tmp_path / "ok.mhd")
    (tmp_path / "ok.raw").unlink()
    with pytest.raises(DataError, match=r"ok\.mhd: data file ok\.raw not found"):
        reader.read(tmp_path / "ok.mhd")
    (tmp_path / "bad.mhd").write_text("this is not a header\n")
    with pytest.raises(DataError, match=r"bad\.mhd: unreadable"):
        reader.read(tmp_path / "bad.mhd")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(DataError, match="no DICOM series"):
        reader.read(tmp_path / "empty_dir")
    for err in [DataError("a.csv", "line one\nline two")]:
        assert "\n" not in str(err)


def _csv(path, text):
    path.write_text(text)
    return path


def test_csv_schemas(tmp_path):
    ann = read_annotations(_csv(tmp_path / "a.csv", "seriesuid,coordX,coordY,coordZ,diameter_mm\n1.2.3,-10.5,20,30,5.5\n"))
    assert list(ann.columns) == ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"]
    assert ann["seriesuid"][0] == "1.2.3" and ann["coordX"][0] == -10.5
    # header only: a valid file with no rows
    assert len(read_annotations(_csv(tmp_path / "h.csv", "seriesuid,coordX,coordY,coordZ,diameter_mm\n"))) == 0
    exc = read_excluded(_csv(tmp_path / "e.csv", "seriesuid,coordX,coordY,coordZ,diameter_mm\nx,1,2,3,-1\n"))
    assert exc["diameter_mm"][0] == -1
    cand = read_candidates(_csv(tmp_path / "c.csv", "seriesuid,coordX,coordY,coordZ,class\nx,1,2,3,1\ny,1,2,3,0\n"))
    assert cand["class"].tolist() == [1, 0]
    pred = read_predictions(_csv(tmp_path / "p.csv", "seriesuid,coordX,coordY,coordZ,probability\nx,1,2,3,0.5\n"))
    assert pred["probability"][0] == 0.5


@pytest.mark.parametrize(
    "text, message",
    [
        ("", r"empty"),
        ("seriesuid,coordX,coordY,diameter_mm\nx,1,2,3\n", r"misses column\(s\) coordZ"),
        ("seriesuid,coordX,coordY,coordZ,diameter_mm\nx,1,two,3,4\n", r"column coordY has a non-numeric value 'two' on line 2"),
        ("seriesuid,coordX,coordY,coordZ,diameter_mm\nx,1,2,3,4\ny,1,2,nan,4\n", r"column coordZ .* on line 3"),
        ("seriesuid,coordX,coordY,coordZ,diameter_mm\nx,1,2,3,-4\n", r"diameter_mm must be positive"),
    ],
)
def test_csv_errors(tmp_path, text, message):
    path = _csv(tmp_path / "annotations.csv", text)
    with pytest.raises(DataError, match=message) as info:
        read_annotations(path)
    assert str(info.value).startswith(str(path))
    assert "\n" not in str(info.value)


def test_candidates_class_must_be_binary(tmp_path):
    with pytest.raises(DataError, match="class must be 0 or 1"):
        read_candidates(_csv(tmp_path / "c.csv", "seriesuid,coordX,coordY,coordZ,class\nx,1,2,3,2\n"))


def test_atomic_path_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "out.csv"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert target.read_text(encoding="utf-8") == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]  # no temporary left behind
    with atomic_path(target) as tmp:
        pd.DataFrame({"a": [1]}).to_csv(tmp, index=False)
    assert target.read_text(encoding="utf-8").startswith("a")


def test_write_image_atomic_metaimage_pair(tmp_path, rng):
    write_image_atomic(tmp_path / "sub" / "x.mhd", make_image(_volume(rng)))
    names = sorted(p.name for p in (tmp_path / "sub").iterdir())
    assert names == ["x.mhd", "x.raw"]
    assert "ElementDataFile = x.raw" in (tmp_path / "sub" / "x.mhd").read_text(encoding="utf-8")


def test_voxel_spacing_reads_an_oblique_anisotropic_affine_and_defaults_to_1mm():
    import torch
    from monai.data import MetaTensor

    affine = np.eye(4)
    affine[:3, :3] = rotation_direction(30) @ np.diag([0.7, 0.9, 2.5])
    image = MetaTensor(torch.zeros(1, 4, 4, 4), affine=torch.as_tensor(affine))
    np.testing.assert_allclose(voxel_spacing(image), [0.7, 0.9, 2.5])
    np.testing.assert_allclose(voxel_spacing(torch.zeros(1, 4, 4, 4)), [1.0, 1.0, 1.0])
