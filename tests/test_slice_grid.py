"""transforms.slice_grid and sliced drawing: synthetic nodules drawn as a thick-slice source would record them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Orientationd, Spacingd

from monai_lung.io import SimpleITKReader, world_to_index, write_image_atomic
from monai_lung.transforms import (
    RandCropByPosNegLabelWithStartd,
    RandNoduleInsertiond,
    SourceSliceGridd,
    paint_nodule,
    patch_slice_grid,
    source_slice_grid,
)
from tests.conftest import make_image

LUNG = 0.1


@pytest.mark.parametrize("direction", [np.eye(3), np.diag([1.0, -1.0, -1.0])])
def test_source_slice_grid_finds_the_files_slices_on_the_resampled_ras_grid(tmp_path, rng, direction):
    # 2.5 mm slices, 0.7 mm pixels, odd origin; with the flipped direction Orientationd reverses k as well
    arr = rng.integers(-900, -800, size=(12, 40, 40)).astype(np.int16)
    image = make_image(arr, spacing_xyz=(0.7, 0.7, 2.5), origin_xyz=(-20.3, 11.9, -301.37), direction=direction)
    write_image_atomic(tmp_path / "s.mhd", image)
    chain = Compose([
        LoadImaged("image", reader=SimpleITKReader(spacing=(1.0, 1.0, 1.0))),
        EnsureChannelFirstd("image"),
        Orientationd("image", axcodes="RAS", labels=None),
        Spacingd("image", pixdim=(1.0, 1.0, 1.0)),
        SourceSliceGridd("image"),
    ])
    out = chain({"image": str(tmp_path / "s.mhd")})
    grid = out["slice_grid"]
    assert grid.shape == (3, 2) and grid.dtype == np.float32
    np.testing.assert_array_equal(grid[:2], 0.0)  # 0.7 mm pixels are finer than the 1 mm grid: not imitated
    step, phase = grid[2]
    assert step == pytest.approx(2.5, abs=1e-4) and 0.0 <= phase < step
    # every slice centre of the file, as a world point, lands on phase + n * step along k
    for n in range(arr.shape[0]):
        centre = np.asarray(image.TransformContinuousIndexToPhysicalPoint((20.0, 20.0, float(n))))
        k = world_to_index(centre, out["image"].affine.numpy(), space="RAS", points_space="LPS")[2]
        assert (k - phase) / step == pytest.approx(round((k - phase) / step), abs=1e-3)


def test_oblique_or_fine_sources_are_not_imitated():
    grid_affine = np.eye(4)
    fine = np.diag([0.7, 0.7, 1.1, 1.0])  # 1.1 mm slices on a 1 mm grid: nothing worth imitating
    np.testing.assert_array_equal(source_slice_grid(grid_affine, fine), 0.0)
    t = np.deg2rad(20.0)  # slices tilted by 20 degrees about i: no grid axis runs along them
    tilt = np.array([[1, 0, 0], [0, np.cos(t), -np.sin(t)], [0, np.sin(t), np.cos(t)]])
    oblique = np.eye(4)
    oblique[:3, :3] = tilt @ np.diag([0.7, 0.7, 2.5])
    np.testing.assert_array_equal(source_slice_grid(grid_affine, oblique), 0.0)
    # the same slices on a 0.5 mm grid are 5 voxels apart; a source shifted by 1.3 mm has phase 2.6 voxels
    thick = np.diag([0.7, 0.7, 2.5, 1.0])
    thick[2, 3] = 1.3
    np.testing.assert_allclose(source_slice_grid(np.diag([0.5, 0.5, 0.5, 1.0]), thick)[2], (5.0, 2.6), atol=1e-5)


def test_crop_with_start_records_where_each_patch_came_from(rng):
    volume = torch.from_numpy(rng.uniform(0, 1, (1, 40, 36, 30)).astype(np.float32))
    label = torch.zeros_like(volume)
    label[0, 1, 1, 1] = 1  # near a corner: MONAI moves the centre inwards
    label[0, 38, 20, 28] = 1
    crop = RandCropByPosNegLabelWithStartd(["image", "label"], "label", (16, 12, 10), pos=1.0, neg=1.0, num_samples=6)
    crop.set_random_state(4)
    samples = crop({"image": volume, "label": label, "slice_grid": np.array([[0, 0], [0, 0], [2.5, 1.0]], np.float32)})
    for s in samples:
        i, j, k = (int(v) for v in s["patch_start"])
        assert torch.equal(s["image"], volume[:, i:i + 16, j:j + 12, k:k + 10])
        # the slice at volume k = 1 + 2.5 n is at patch k = phase + 2.5 m
        assert patch_slice_grid(s["slice_grid"], s["patch_start"])[2, 1] == pytest.approx((1.0 - k) % 2.5, abs=1e-5)


def _second_difference_along_k(vol: torch.Tensor) -> torch.Tensor:
    return vol[:, :, :-2] - 2 * vol[:, :, 1:-1] + vol[:, :, 2:]


@pytest.mark.parametrize("noise", [0.0, 0.02])
def test_paint_nodule_along_a_sliced_axis_is_linear_between_the_source_samples(noise):
    # samples every 2 voxels along k, at the odd voxels: a voxel between two samples is their mean
    grid = np.array([[0.0, 0.0], [0.0, 0.0], [2.0, 1.0]], np.float32)
    sliced = torch.full((30, 30, 30), LUNG)
    box, inside = paint_nodule(sliced, (15, 15, 15.4), (3, 3, 3), np.eye(3), 0.7, 1.0, noise, (1, 1, 1), np.random.RandomState(0), slice_grid=grid)
    smooth = torch.full((30, 30, 30), LUNG)
    box2, inside2 = paint_nodule(smooth, (15, 15, 15.4), (3, 3, 3), np.eye(3), 0.7, 1.0, noise, (1, 1, 1), np.random.RandomState(0))
    assert box == box2 and torch.equal(inside, inside2)  # the label stays the ellipsoid on the grid
    between = _second_difference_along_k(sliced)[:, :, 1::2]  # centred on even k: between two samples
    assert between.abs().max() < 1e-5
    assert _second_difference_along_k(smooth)[:, :, 1::2].abs().max() > 0.05  # a smooth drawing is not linear there
    # in-plane the drawing is the same ellipsoid; along k the slabs spread it by up to a step
    assert sliced[15, 15, 15].item() > 0.5 and (sliced[15, 15] > LUNG + 0.01).sum() > (smooth[15, 15] > LUNG + 0.01).sum()


def test_paint_nodule_slices_need_not_fall_on_voxels():
    grid = np.array([[0.0, 0.0], [0.0, 0.0], [2.5, 0.7]], np.float32)  # samples at k = 0.7, 3.2, 5.7, ...
    vol = torch.full((24, 24, 24), LUNG)
    paint_nodule(vol, (12, 12, 12), (2.5, 2.5, 2.5), np.eye(3), 0.7, 1.0, 0.0, (1, 1, 1), np.random.RandomState(0), slice_grid=grid)
    profile = vol[12, 12].numpy().astype(np.float64)
    samples = 0.7 + 2.5 * np.arange(10)
    for k in range(1, 23):  # linear wherever k - 1, k, k + 1 lie between the same two samples
        n = np.searchsorted(samples, k - 1, side="right") - 1
        if n >= 0 and n + 1 < len(samples) and samples[n] <= k - 1 and k + 1 <= samples[n + 1]:
            assert profile[k - 1] - 2 * profile[k] + profile[k + 1] == pytest.approx(0.0, abs=1e-5)
    assert profile.max() > 0.45


def test_insertion_draws_as_the_slices_of_the_patch_recorded_it():
    # the volume's slices at even k; the patch starts at k = 3, so in the patch they are at odd k
    image = torch.full((1, 40, 40, 40), LUNG)
    data = {"image": image, "label": torch.zeros_like(image), "slice_grid": np.array([[0, 0], [0, 0], [2.0, 0.0]], np.float32),
            "patch_start": np.array([50, 7, 3])}
    t = RandNoduleInsertiond(prob=1.0, max_nodules=3, appearance={"diameter_mm": (6.0, 10.0)}, spacing=(1.0, 1.0, 1.0))
    t.set_random_state(2)
    out = t(dict(data))
    drawn = out["image"][0]
    assert (out["label"][0] > 0).sum() > 100
    # linear at even k, between two samples; not at odd k, where the samples are (and where they would be if
    # the patch's start were ignored)
    assert _second_difference_along_k(drawn)[:, :, 1::2].abs().max() < 1e-5
    assert _second_difference_along_k(drawn)[:, :, 0::2].abs().max() > 0.01
    # without the grid the same draws are smooth ellipsoids
    off = RandNoduleInsertiond(prob=1.0, max_nodules=3, appearance={"diameter_mm": (6.0, 10.0)}, spacing=(1.0, 1.0, 1.0), slice_grid_key=None)
    off.set_random_state(2)
    plain = off(dict(data))["image"][0]
    assert _second_difference_along_k(plain)[:, :, 1::2].abs().max() > 0.01


def test_paint_nodule_grazing_the_patch_face_along_a_sliced_axis():
    grid = np.array([[0.0, 0.0], [0.0, 0.0], [2.5, 0.4]], np.float32)
    vol = torch.full((20, 20, 20), LUNG)
    # centre beyond the last k voxel: the box (ellipsoid + edges) is one voxel thick along k
    box, inside = paint_nodule(vol, (10, 10, 25.2), (3, 3, 3), np.eye(3), 0.7, 1.0, 0.01, (1, 1, 1), np.random.RandomState(0), slice_grid=grid)
    assert box[2] == slice(19, 20) and inside.shape == (box[0].stop - box[0].start, box[1].stop - box[1].start, 1)
    assert not inside.any() and vol[10, 10, 19].item() >= LUNG
