"""transforms.thick_slices: thick-slice reconstructions as slab averages, for real images and training chains."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor

from monai_lung.transforms import RandThickSlicesd, slab_weights, thick_slice_image, thick_slice_operator
from tests.conftest import make_image

ROOT = Path(__file__).resolve().parents[1]


def test_a_thick_slice_is_the_mean_of_the_thin_slices_in_its_slab():
    w = slab_weights([0.5, 2.5], 6, 2.0)  # 5 mm slabs over 2.5 mm slices: the plain mean of each pair
    np.testing.assert_allclose(w, [[0.5, 0.5, 0, 0, 0, 0], [0, 0, 0.5, 0.5, 0, 0]])
    w = slab_weights([1.0, 0.0, 4.7], 6, 3.0)  # partial overlaps, and the edge slice continuing beyond the ends
    np.testing.assert_allclose(w.sum(axis=1), 1.0)
    np.testing.assert_allclose(w[0, :3], 1 / 3)
    np.testing.assert_allclose(w[1, :2], [2 / 3, 1 / 3])
    np.testing.assert_allclose(w[2, 3:], [0.3 / 3, 1 / 3, 1.7 / 3])  # slab 3.2-6.2, slice 5 also covers 5.5-6.2


@pytest.mark.parametrize("direction", [None, np.diag([1.0, -1.0, -1.0])])
def test_thick_slice_image_averages_slabs_and_keeps_the_world_frame(rng, direction):
    arr = rng.integers(-1000, 400, size=(23, 6, 5)).astype(np.int16)
    thin = make_image(arr, spacing_xyz=(0.7, 0.7, 1.0), origin_xyz=(-20.0, 10.0, -300.0), direction=direction)
    thick = thick_slice_image(thin, 5.0)
    assert thick.GetSize() == (5, 6, 4) and thick.GetSpacing() == pytest.approx((0.7, 0.7, 5.0))
    assert thick.GetPixelID() == thin.GetPixelID() and thick.GetDirection() == thin.GetDirection()
    out = sitk.GetArrayFromImage(thick)
    for n in range(4):  # thick slice n averages thin slices 5n..5n+4 and sits at their middle
        np.testing.assert_allclose(out[n], np.rint(arr[5 * n:5 * n + 5].astype(np.float64).mean(axis=0)), atol=0.51)
        centre = thin.TransformContinuousIndexToPhysicalPoint((2.0, 3.0, 5.0 * n + 2.0))
        assert np.allclose(thick.TransformContinuousIndexToPhysicalPoint((2.0, 3.0, float(n))), centre)
    overlapping = thick_slice_image(thin, 5.0, step_mm=2.5)  # 5 mm slices every 2.5 mm
    assert overlapping.GetSize()[2] == 8 and overlapping.GetSpacing()[2] == pytest.approx(2.5)
    with pytest.raises(ValueError, match="thinner"):
        thick_slice_image(thin, 0.5)


def test_the_operator_averages_slabs_not_resamples():
    n = 40
    op = thick_slice_operator(n, 1.0, 5.0, phase_mm=0.3)
    np.testing.assert_allclose(op.sum(axis=1), 1.0)
    ramp = np.arange(n, dtype=np.float64)
    np.testing.assert_allclose((op @ ramp)[6:-6], ramp[6:-6], atol=1e-9)  # a linear profile is kept inside
    sheet = np.zeros(n)
    sheet[20] = 1.0  # a 1 mm thin structure: in 5 mm slices a fifth of its contrast, spread over ~10 mm
    out = op @ sheet
    assert out.max() == pytest.approx(0.2, abs=0.03) and np.count_nonzero(out > 0.01) >= 6
    assert out.sum() == pytest.approx(1.0, abs=0.05)  # what it holds is spread, not lost
    # plain resampling at the thick slice centres would keep a full-contrast sample or miss it altogether
    assert op.shape == (n, n) and (op[5:-5] > 0).sum(axis=1).min() >= 5


def _ball(shape=(24, 24, 40), centre=(12, 12, 20.0), radius=2.0) -> torch.Tensor:
    i, j, k = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    d = np.sqrt((i - centre[0]) ** 2 + (j - centre[1]) ** 2 + (k - centre[2]) ** 2)
    return torch.from_numpy((d <= radius).astype(np.float32))[None]


def test_rand_thick_slices_blurs_along_k_only_and_keeps_the_label():
    image = 0.1 + 0.8 * _ball()
    label = _ball()
    t = RandThickSlicesd(["image"], prob=1.0, thickness_range=(5.0, 5.0), spacing=(1.0, 1.0, 1.0))
    t.set_random_state(3)
    out = t({"image": image, "label": label})
    assert torch.equal(out["label"], label)
    img = out["image"]
    assert img.shape == image.shape and img.dtype == image.dtype
    assert img.max() < 0.8 and img.max() > 0.3  # a 4 mm nodule in 5 mm slices: fainter
    np.testing.assert_allclose(img.sum().item(), image.sum().item(), rtol=0.02)  # spread along k, not lost
    assert (img[0, :, :, 20] > 0.12).sum() <= (image[0, :, :, 20] > 0.12).sum()  # in-plane extent unchanged
    assert (img[0, 12, 12] > 0.12).sum() > (image[0, 12, 12] > 0.12).sum()  # along k it spreads
    # the same random state gives the same slices; prob 0 leaves the data alone
    t.set_random_state(3)
    assert torch.equal(t({"image": image})["image"], img)
    assert RandThickSlicesd("image", prob=0.0)({"image": image})["image"] is image


def test_rand_thick_slices_reads_the_grid_and_skips_sources_already_thick():
    image = MetaTensor(0.1 + 0.8 * _ball(), affine=torch.diag(torch.tensor([1.0, 1.0, 0.5, 1.0])))
    t = RandThickSlicesd("image", prob=1.0, thickness_range=(4.0, 4.0), slice_grid_key="slice_grid")
    t.set_random_state(0)
    thin = t({"image": image, "slice_grid": np.array([[0, 0], [0, 0], [2.5, 0.0]], np.float32)})["image"]
    # on a 0.5 mm grid a 4 mm slab is 8 voxels: the ball's 5 voxels along k are spread over more than 8
    assert (thin[0, 12, 12] > 0.12).sum() > 8
    thick_source = {"image": image, "slice_grid": np.array([[0, 0], [0, 0], [10.0, 0.0]], np.float32)}  # 5 mm slices
    assert torch.equal(t(thick_source)["image"], image)


@pytest.mark.parametrize("bundle, chain", [
    ("lung_nodule_ct_segmentation", "train#random_transforms"),
    ("lung_nodule_ct_classification", "train#preprocessing#transforms"),
])
def test_both_training_chains_can_simulate_thick_slices_before_zoom_and_rotations(bundle, chain):
    parser = ConfigParser()
    parser.read_config(ROOT / "bundles" / bundle / "configs" / "train.json")
    targets = [t.get("_target_", "") for t in parser[chain]]
    thick = targets.index("monai_lung.transforms.RandThickSlicesd")
    assert thick < targets.index("RandZoomd") and thick < targets.index("RandRotate90d")
    # off by default (it costs thin-slice CPM); switched on by the one id
    assert parser["thick_slice_prob"] == 0.0 and parser["thick_slice_range"] == [3.0, 5.0]


def test_prob_zero_leaves_every_patch_as_it_was():
    t = RandThickSlicesd(keys="image", prob=0.0, spacing=1.0)
    image = torch.rand(1, 8, 8, 24)
    for seed in range(20):
        t.set_random_state(seed=seed)
        assert torch.equal(t({"image": image})["image"], image)
