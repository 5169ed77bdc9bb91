"""transforms: nodule sphere masks from world coordinates, balanced patch-sampling indices."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import SimpleITK as sitk
from monai.data import MetaTensor
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Orientationd, RandCropByPosNegLabeld, Spacingd

from monai_lung.io import DataError, SimpleITKReader, index_to_world, world_to_index, write_image_atomic
from monai_lung.transforms import NoduleMaskd, NoduleSamplingIndicesd, balanced_indices, sphere_mask
from tests.conftest import make_image, rotation_direction


def _affine(spacing, direction, origin):
    a = np.eye(4)
    a[:3, :3] = np.asarray(direction) @ np.diag(spacing)
    a[:3, 3] = origin
    return a


@pytest.mark.parametrize("spacing", [(0.7, 0.7, 2.5), (1.0, 1.0, 1.0), (0.6, 0.9, 1.8)])
def test_sphere_radius_in_mm_under_anisotropic_spacing(spacing):
    affine = _affine(spacing, rotation_direction(25), (-50.0, 20.0, -100.0))  # an RAS affine
    shape = (60, 60, 30)
    centre_idx = np.array([30.3, 28.6, 14.2])
    centre_lps = index_to_world(centre_idx, affine)  # points are LPS, the affine RAS
    diameter = 12.0
    mask = sphere_mask(shape, affine, centre_lps[None], np.array([diameter]))
    # distance of every voxel to the centre, in mm
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=-1).reshape(-1, 3)
    dist = np.linalg.norm((grid - centre_idx) @ affine[:3, :3].T, axis=1).reshape(shape)
    assert mask[dist <= diameter / 2 - 1e-6].all()
    assert not mask[dist > diameter / 2 + 1e-6].any()
    assert mask[tuple(np.rint(centre_idx).astype(int))] == 1


def test_tiny_nodule_still_marks_its_centre_voxel():
    affine = _affine((0.7, 0.7, 2.5), np.eye(3), (0, 0, 0))
    mask = sphere_mask((20, 20, 10), affine, np.array([[7.0, 7.0, 12.5]]), np.array([0.5]), space="LPS")
    assert mask.sum() == 1 and mask[10, 10, 5] == 1


def test_mask_after_loading_and_resampling_covers_every_centre(tmp_path, rng):
    arr = rng.integers(-900, -800, size=(30, 80, 90)).astype(np.int16)
    image = make_image(arr, spacing_xyz=(0.68, 0.68, 2.5), origin_xyz=(-171.3, -160.8, -300.0), direction=np.diag([1.0, 1.0, 1.0]))
    write_image_atomic(tmp_path / "s.mhd", image)
    # centres at arbitrary (non-voxel-centre) world points inside the scan
    idx = np.array([[20.3, 30.7, 10.4], [70.1, 55.5, 20.9], [5.5, 75.2, 3.3]])
    centres = np.array([image.TransformContinuousIndexToPhysicalPoint(tuple(i)) for i in idx])
    nodules = [{"center": c.tolist(), "diameter_mm": d} for c, d in zip(centres, [4.0, 10.0, 3.0])]
    chain = Compose(
        [
            LoadImaged("image", reader=SimpleITKReader(spacing=(1.0, 1.0, 1.0))),
            EnsureChannelFirstd("image"),
            Orientationd("image", axcodes="RAS", labels=None),
            Spacingd("image", pixdim=(1.0, 1.0, 1.0)),
            NoduleMaskd("label"),
        ]
    )
    out = chain({"image": str(tmp_path / "s.mhd"), "nodules": nodules})
    label = out["label"]
    assert isinstance(label, MetaTensor) and label.shape == out["image"].shape and label.dtype == torch.uint8
    np.testing.assert_allclose(label.affine.numpy(), out["image"].affine.numpy())
    for c in centres:
        i = np.rint(world_to_index(c, label.affine)).astype(int)
        assert label[0][tuple(i)] == 1
    # volume of the 10 mm ball at 1 mm: 4/3 pi 5^3 ~ 524 voxels
    from scipy import ndimage

    sizes = sorted(np.bincount(ndimage.label(label[0].numpy())[0].ravel())[1:])
    assert 430 < sizes[-1] < 620


def test_nodule_outside_the_image_is_a_clear_error(tmp_path, rng):
    write_image_atomic(tmp_path / "s.mhd", make_image(rng.integers(-900, -800, size=(10, 20, 20)).astype(np.int16)))
    data = LoadImaged("image", reader=SimpleITKReader(), ensure_channel_first=True)({"image": str(tmp_path / "s.mhd")})
    data["nodules"] = [{"center": [500.0, 0.0, 0.0], "diameter_mm": 5.0}]
    with pytest.raises(DataError, match=r"s\.mhd: nodule at world \(500\.0, 0\.0, 0\.0\) mm lies outside the image"):
        NoduleMaskd("label")(data)


def test_no_nodules_gives_an_empty_mask_and_background_only_indices(rng):
    image = MetaTensor(torch.from_numpy(rng.uniform(0, 1, (1, 30, 30, 30)).astype(np.float32)), affine=torch.eye(4))
    d = NoduleMaskd("label")({"image": image, "nodules": []})
    assert int(d["label"].sum()) == 0
    d = NoduleSamplingIndicesd("label", num_background=100)(d)
    assert d["label_fg_indices"].size == 0 and d["label_bg_indices"].size == 100
    crops = RandCropByPosNegLabeld(
        ["image", "label"], "label", (16, 16, 16), num_samples=3, fg_indices_key="label_fg_indices", bg_indices_key="label_bg_indices"
    )(d)
    assert len(crops) == 3 and all(c["image"].shape == (1, 16, 16, 16) for c in crops)


def test_balanced_indices_give_every_nodule_the_same_weight(rng):
    label = np.zeros((80, 80, 80), np.uint8)
    label[10:40, 10:40, 10:40] = 1  # a big nodule: 27,000 voxels
    label[60, 60, 60] = 1  # a one-voxel nodule
    image = np.where(label > 0, 0.7, 0.1).astype(np.float32)
    image[:, :, 75:] = 0.0  # "outside air"
    fg, bg = balanced_indices(label, image, per_nodule=50, num_background=400, seed=3)
    fg_xyz = np.stack(np.unravel_index(fg, label.shape), axis=1)
    assert len(fg) == 100
    assert (label.ravel()[fg] == 1).all()
    assert ((fg_xyz == 60).all(axis=1)).sum() == 50  # half of the draws on the tiny nodule
    assert len(bg) == 400 and (label.ravel()[bg] == 0).all()
    assert (image.ravel()[bg] > 0.02).all()  # never outside air
    fg2, bg2 = balanced_indices(label, image, per_nodule=50, num_background=400, seed=3)
    np.testing.assert_array_equal(fg, fg2)
    np.testing.assert_array_equal(bg, bg2)


def test_balanced_indices_offset_moves_crop_centres_around_the_nodule():
    label = np.zeros((80, 80, 80), np.uint8)
    label[40, 40, 40] = 1  # a one-voxel nodule: every offset is measured from it
    image = np.full(label.shape, 0.1, np.float32)
    fg, _ = balanced_indices(label, image, per_nodule=400, num_background=10, seed=5, max_offset=16)
    offsets = np.stack(np.unravel_index(fg, label.shape), axis=1) - 40
    assert np.abs(offsets).max() <= 16
    # spread over the whole range on every axis, not stuck at the nodule
    assert (np.abs(offsets) > 8).any(axis=0).all() and (offsets.min(axis=0) < 0).all() and (offsets.max(axis=0) > 0).all()
    assert (label.ravel()[fg] == 1).mean() < 0.05
    # clipped to the volume near a corner
    label[:] = 0
    label[2, 2, 2] = 1
    fg, _ = balanced_indices(label, image, per_nodule=200, num_background=10, seed=5, max_offset=16)
    xyz = np.stack(np.unravel_index(fg, label.shape), axis=1)
    assert xyz.min() >= 0 and xyz.max() <= 18


def test_balanced_indices_draw_hard_negatives_around_known_false_positives():
    label = np.zeros((80, 80, 80), np.uint8)
    label[40, 40, 40] = 1
    image = np.full(label.shape, 0.1, np.float32)
    hard = np.array([[10.0, 10.0, 10.0], [70.0, 60.0, 20.0], [200.0, 0.0, 0.0]])  # the last one is outside: ignored
    _, bg = balanced_indices(label, image, num_background=400, seed=5, max_offset=4, hard_points=hard, hard_fraction=0.5)
    assert len(bg) == 400
    xyz = np.stack(np.unravel_index(bg, label.shape), axis=1)
    near = [np.abs(xyz - p).max(axis=1) <= 4 for p in hard[:2]]
    assert (near[0] | near[1]).sum() >= 200  # half of them (a few random ones may land there too)
    assert near[0].sum() > 60 and near[1].sum() > 60  # both false positives are used
    _, plain = balanced_indices(label, image, num_background=400, seed=5, max_offset=4)
    plain_xyz = np.stack(np.unravel_index(plain, label.shape), axis=1)
    assert (np.abs(plain_xyz - hard[0]).max(axis=1) <= 4).sum() < 20


def test_thick_structure_mask_keeps_thick_vessel_cores_in_mm_and_sampling_draws_from_them():
    """A 7 mm and a 3 mm vessel along k on a 0.7/0.7/2.5 mm grid: only the thick one has a core 2 mm from
    its edge, measured in mm (in voxels the thin one, 4 voxels across, would have one too), and
    ``thick_fraction`` of the background centres are drawn from that core, never from the label."""
    from monai_lung.transforms.sampling import thick_structure_mask

    spacing = (0.7, 0.7, 2.5)
    shape = (60, 80, 24)
    i, j = np.meshgrid(np.arange(shape[0]) * spacing[0], np.arange(shape[1]) * spacing[1], indexing="ij")
    image = np.full(shape, 0.05, np.float32)
    thick_vessel = (i - 20.0) ** 2 + (j - 20.0) ** 2 <= 3.5**2
    thin_vessel = (i - 20.0) ** 2 + (j - 40.0) ** 2 <= 1.5**2
    image[thick_vessel | thin_vessel] = 0.6
    region = np.zeros(shape, bool)
    region[..., 3:21] = True  # the "lungs": the vessels' ends outside them do not count
    core = thick_structure_mask(image, spacing, region, tissue_threshold=0.3, min_radius_mm=2.0)
    assert core[..., 3:21].any() and not core[..., :3].any() and not core[..., 21:].any()
    assert core[thick_vessel].any() and not core[thin_vessel].any() and not core[~thick_vessel].any()
    # a transform in voxel units would call the thin vessel thick
    assert thick_structure_mask(image, (1.0, 1.0, 1.0), region, 0.3, 2.0)[thin_vessel].any()

    label = np.zeros(shape, np.uint8)
    label[27:31, 27:31, 10:13] = 1  # a "nodule" on the thick vessel: its voxels are never background
    _, bg = balanced_indices(label, image, num_background=400, seed=1, thick_mask=core, thick_fraction=0.5)
    assert len(bg) == 400 and (label.ravel()[bg] == 0).all()
    assert core.ravel()[bg].sum() >= 200  # half drawn there (the vessel is also in the dense half)
    _, plain = balanced_indices(label, image, num_background=400, seed=1)
    assert core.ravel()[plain].sum() < core.ravel()[bg].sum() - 150


def test_sampling_indices_put_world_hard_negatives_on_their_voxel():
    """World LPS mm in the data list -> (i, j, k) of an anisotropic RAS grid with a non-zero origin."""
    affine = _affine((0.7, 0.8, 2.5), np.diag([1.0, 1.0, 1.0]), (-120.0, 35.5, -300.0))
    image = MetaTensor(torch.full((1, 40, 50, 30), 0.1), affine=torch.as_tensor(affine))
    target = np.array([12, 33, 7])
    world_lps = index_to_world(target.astype(float), affine, space="RAS", points_space="LPS")
    d = {"image": image, "label": MetaTensor(torch.zeros(1, 40, 50, 30), affine=torch.as_tensor(affine)),
         "hard_negatives": [{"center": list(map(float, world_lps))}]}
    out = NoduleSamplingIndicesd("label", num_background=100, max_offset=0, use_lung_mask=False, hard_fraction=0.5)(d)
    xyz = np.stack(np.unravel_index(out["label_bg_indices"], (40, 50, 30)), axis=1)
    assert (xyz == target).all(axis=1).sum() == 50
    np.testing.assert_allclose(world_to_index(world_lps, affine, space="RAS", points_space="LPS"), target, atol=1e-6)


def test_random_part_runs_without_meta_and_matches_compose(rng):
    """``ComposeRandomWithoutMeta`` in a ``CacheDataset``: the cached part keeps its MetaTensor, the random
    part gives plain tensors equal to a ``Compose``'s under the same seed, and the global switch is restored."""
    from monai.data import CacheDataset, get_track_meta
    from monai.transforms import EnsureTyped, Lambdad, RandFlipd, RandRotate90d, RandScaleIntensityd

    from monai_lung.transforms import ComposeRandomWithoutMeta

    affine = torch.as_tensor(_affine((0.7, 0.7, 2.5), np.eye(3), (-10.0, 20.0, -30.0)))
    data = [{"image": MetaTensor(torch.from_numpy(rng.uniform(0, 1, (1, 20, 24, 16)).astype(np.float32)), affine=affine)}]

    def chain(cls, fail=False):
        random_part = [RandFlipd("image", prob=0.5, spatial_axis=0), RandRotate90d("image", prob=0.5, spatial_axes=(0, 1)),
                       RandScaleIntensityd("image", factors=0.2, prob=1.0)]
        if fail:
            random_part.append(Lambdad("image", lambda x: 1 / 0))
        return cls([EnsureTyped("image")] + random_part)

    outs = {}
    for cls in (Compose, ComposeRandomWithoutMeta):
        ds = CacheDataset(data, chain(cls), progress=False)
        assert isinstance(ds._cache[0]["image"], MetaTensor)  # the deterministic part kept its affine
        ds.transform.set_random_state(seed=2)
        outs[cls] = [ds[0]["image"] for _ in range(4)]
        assert get_track_meta()
    assert all(isinstance(x, MetaTensor) for x in outs[Compose])
    assert not any(isinstance(x, MetaTensor) for x in outs[ComposeRandomWithoutMeta])
    assert all(torch.equal(a.as_tensor(), b) for a, b in zip(outs[Compose], outs[ComposeRandomWithoutMeta]))
    assert len({round(float(x.sum()), 3) for x in outs[Compose]}) > 1  # the draws do differ
    with pytest.raises(Exception):
        chain(ComposeRandomWithoutMeta, fail=True)(data[0])
    assert get_track_meta()  # restored after a failing transform too


def test_nodule_mask_falls_back_to_a_label_file_as_monai_label_hands_it(tmp_path):
    """MONAI Label trains on {"image": path, "label": path}: the mask comes from the file, on the 1 mm grid."""
    img = np.full((30, 60, 50), -800, np.int16)  # (z, y, x)
    lab = np.zeros(img.shape, np.uint8)
    lab[10:16, 20:30, 15:25] = 1  # a box: z 10..15, y 20..29, x 15..24
    spacing, origin = (0.7, 0.8, 2.5), (-170.5, -200.25, -310.0)
    sitk.WriteImage(make_image(img, spacing, origin, rotation_direction()), str(tmp_path / "ct.mha"))
    sitk.WriteImage(make_image(lab, spacing, origin, rotation_direction()), str(tmp_path / "ct_label.nii.gz"))
    chain = Compose([
        LoadImaged("image", reader=SimpleITKReader(), image_only=True), EnsureChannelFirstd("image"),
        Orientationd("image", "RAS"), Spacingd("image", (1.0, 1.0, 1.0)), NoduleMaskd("label"),
    ])
    out = chain({"image": str(tmp_path / "ct.mha"), "label": str(tmp_path / "ct_label.nii.gz")})
    mask = out["label"]
    assert mask.shape == out["image"].shape and mask.dtype == torch.uint8
    # the box holds 6*2.5 x 10*0.8 x 10*0.7 = 840 mm^3: ~840 voxels of 1 mm^3
    assert 600 < int(mask.sum()) < 1100
    # every mask voxel lies inside the box in world space (back through SimpleITK's own index mapping)
    ref = make_image(lab, spacing, origin, rotation_direction())
    world_lps = index_to_world(np.argwhere(mask[0].numpy() > 0), out["image"].affine.numpy(), space="RAS", points_space="LPS")
    for x, y, z in world_lps[::25]:
        i, j, k = ref.TransformPhysicalPointToContinuousIndex((float(x), float(y), float(z)))
        assert 14 - 0.8 <= i <= 24 + 0.8 and 19 - 0.8 <= j <= 29 + 0.8 and 9 - 0.8 <= k <= 15 + 0.8
    # with nodules in the entry, they win over a label path
    out2 = chain({"image": str(tmp_path / "ct.mha"), "label": str(tmp_path / "ct_label.nii.gz"), "nodules": []})
    assert int(out2["label"].sum()) == 0
