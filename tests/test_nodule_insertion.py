"""transforms.nodule_insertion: synthetic nodules drawn into training patches (stage 1) and crops (stage 2)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from monai_lung.transforms import NoduleAppearance, RandCentreNoduled, RandNoduleInsertiond, paint_nodule

LUNG = 0.1  # scaled lung parenchyma (-860 HU in the default window)


def _patch(shape=(48, 48, 48), spacing=(1.0, 1.0, 1.0), value=LUNG):
    affine = torch.diag(torch.tensor([*spacing, 1.0], dtype=torch.float64))
    image = MetaTensor(torch.full((1, *shape), value, dtype=torch.float32), affine=affine)
    label = MetaTensor(torch.zeros((1, *shape), dtype=torch.float32), affine=affine)
    return image, label


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.7, 0.7, 2.0)])
def test_paint_nodule_volume_value_and_extent_in_mm(spacing):
    vol = torch.full((60, 60, 30), LUNG)
    centre = np.array([30.0, 30.0, 15.0])
    box, inside = paint_nodule(vol, centre, (6.0, 6.0, 6.0), np.eye(3), 0.7, 1.0, 0.0, spacing, np.random.RandomState(0))
    voxel = float(np.prod(spacing))
    assert inside.sum().item() * voxel == pytest.approx(4 / 3 * np.pi * 6.0**3, rel=0.08)
    assert vol[30, 30, 15].item() == pytest.approx(0.7, abs=0.01)
    # 6 mm radius along each axis, in mm not voxels: 5 mm from the centre inside, 8 mm outside
    for axis in range(3):
        step = np.zeros(3, int)
        step[axis] = 1
        inner = tuple((centre + step * round(5.0 / spacing[axis])).astype(int))
        outer = tuple((centre + step * round(8.0 / spacing[axis])).astype(int))
        assert vol[inner].item() > 0.6 and vol[outer].item() < LUNG + 0.02
    assert vol[0, 0, 0].item() == pytest.approx(LUNG)  # far away: untouched


def test_paint_nodule_keeps_denser_tissue_on_top():
    vol = torch.full((30, 30, 30), LUNG)
    vol[:, 14:17, 14:17] = 0.9  # a vessel denser than the nodule
    paint_nodule(vol, (15, 15, 15), (4.0, 4.0, 4.0), np.eye(3), 0.6, 1.0, 0.0, (1, 1, 1), np.random.RandomState(0))
    assert vol[15, 15, 15].item() == pytest.approx(0.9)
    assert vol[15, 12, 15].item() == pytest.approx(0.6, abs=0.02)


def test_insertion_labels_what_it_draws_and_keeps_off_real_nodules():
    image, label = _patch()
    label[0, 20:28, 20:28, 20:28] = 1  # a real nodule
    image[0, 20:28, 20:28, 20:28] = 0.7
    t = RandNoduleInsertiond(prob=1.0, max_nodules=3, appearance={"diameter_mm": (4.0, 8.0)})
    t.set_random_state(3)
    out = t({"image": image, "label": label})
    new = (out["label"][0] > 0) & (label[0] == 0)
    assert new.sum() > 0
    assert out["image"][0][new].mean() > 0.4  # drawn voxels are dense
    assert torch.equal(out["image"][0][label[0] > 0], image[0][label[0] > 0])  # the real nodule is untouched
    assert isinstance(out["image"], MetaTensor) and torch.equal(out["image"].affine, image.affine)
    assert torch.equal(image[0, 0, 0], torch.tensor([LUNG] * 48))  # input not modified in place


def test_insertion_labels_only_nodules_that_show_against_the_chest_wall():
    """A nodule reaching into denser tissue (chest wall, aorta) is invisible there: most of each labelled one must show."""
    image, label = _patch()
    image[0, :, :, 30:] = 0.85  # a wall denser than any solid nodule: k >= 30
    t = RandNoduleInsertiond(prob=1.0, max_nodules=2, appearance={"diameter_mm": (10.0, 25.0)})
    drawn = 0
    for seed in range(12):
        t.set_random_state(seed)
        out = t({"image": image, "label": label})
        lab = out["label"][0] > 0
        if lab.any():
            drawn += 1
            shows = (out["image"][0] - image[0])[lab] >= 0.04
            assert shows.float().mean() >= 0.5
        near_label = torch.nn.functional.max_pool3d(lab[None].float(), 7, stride=1, padding=3)[0] > 0
        shown = (out["image"][0] - image[0]) >= 0.04
        assert not (shown & ~near_label).any()  # an undone drawing leaves nothing behind, labelled or not
    assert drawn >= 6  # nodules near the parenchyma's middle are still drawn


def test_insertion_draws_nothing_that_would_mostly_hide_in_dense_tissue():
    """A 12 mm pocket of lung in soft tissue holds at most 41% of a 20-25 mm ellipsoid: no drawing may be labelled."""
    image, label = _patch(value=0.85)
    image[0, 18:30, 18:30, 18:30] = LUNG
    t = RandNoduleInsertiond(prob=1.0, max_nodules=2, appearance={"diameter_mm": (20.0, 25.0), "elongation": 0.0})
    for seed in range(5):
        t.set_random_state(seed)
        out = t({"image": image, "label": label})
        assert out["label"].sum() == 0 and torch.equal(out["image"], image)  # tried, undone, nothing left behind


def _vessel_patch(radius=1.5):
    """Lung with one vessel along k through (i, j) = (24, 24), and a chest wall at i >= 40."""
    image, label = _patch()
    ii, jj = np.meshgrid(np.arange(48), np.arange(48), indexing="ij")
    tube = torch.as_tensor((ii - 24.0) ** 2 + (jj - 24.0) ** 2 <= radius**2)
    image[0][tube] = 0.75
    image[0, 40:] = 0.8
    return image, label


def _touches_vessel(lab: torch.Tensor, radius=1.5) -> bool:
    """Does the labelled ellipsoid reach to within 1 voxel of the vessel's surface (the tube of ``_vessel_patch``)?"""
    idx = torch.nonzero(lab).double()
    return bool(idx.numel()) and float(torch.sqrt((idx[:, 0] - 24) ** 2 + (idx[:, 1] - 24) ** 2).min()) <= radius + 1.0


@pytest.mark.parametrize("vessel_prob", [0.0, 1.0])
def test_insertion_places_nodules_against_vessels_on_request(vessel_prob):
    """``vessel_prob`` 1: every drawing overlaps the vessel's side (juxta-vascular), never the chest wall; most
    of each still shows. 0: random parenchyma voxels, which touch a thin vessel only now and then."""
    image, label = _vessel_patch()
    t = RandNoduleInsertiond(prob=1.0, max_nodules=1, vessel_prob=vessel_prob, appearance={"diameter_mm": (3.0, 6.0)})
    touching, drawn = 0, 0
    for seed in range(20):
        t.set_random_state(seed)
        out = t({"image": image, "label": label})
        lab = out["label"][0] > 0
        if not lab.any():
            continue
        drawn += 1
        touching += _touches_vessel(lab)
        assert not lab[40:].any() or vessel_prob == 0.0  # the wall's face is not a vessel
        assert ((out["image"][0] - image[0])[lab] >= 0.04).float().mean() >= 0.5
    assert drawn >= 18
    if vessel_prob == 1.0:
        assert touching == drawn
    else:
        assert touching <= drawn // 2


def test_insertion_without_vessels_falls_back_to_parenchyma():
    image, label = _patch()
    t = RandNoduleInsertiond(prob=1.0, max_nodules=1, vessel_prob=1.0, appearance={"diameter_mm": (4.0, 6.0)})
    t.set_random_state(0)
    assert t({"image": image, "label": label})["label"].sum() > 0
    with pytest.raises(ValueError, match="vessel_prob"):
        RandNoduleInsertiond(vessel_prob=1.5)


def test_nodule_diameters_skew_small_with_diameter_power():
    """Power 1 is log-uniform over 3-25 mm (median sqrt(3 * 25) = 8.7 mm); 1.6 has median 3 * (25 / 3) ** (0.5 ** 1.6) = 6.0 mm."""
    rng = np.random.RandomState(0)
    for power, median in ((1.0, 8.66), (1.6, 6.02)):
        appearance = NoduleAppearance(diameter_mm=(3.0, 25.0), diameter_power=power)
        d = np.array([appearance.draw(rng)["diameter_mm"] for _ in range(3000)])
        assert d.min() >= 3.0 and d.max() <= 25.0
        assert np.median(d) == pytest.approx(median, rel=0.05)


def test_insertion_on_plain_tensors_takes_the_voxel_size_as_spacing():
    """Without meta tracking there is no affine: ``spacing`` must give the same drawing as the affine did."""
    image, label = _patch(shape=(48, 48, 24), spacing=(0.7, 0.7, 2.0))
    results = []
    for plain in (False, True):
        t = RandNoduleInsertiond(prob=1.0, max_nodules=1, appearance={"diameter_mm": (8.0, 10.0)}, spacing=(0.7, 0.7, 2.0))
        t.set_random_state(4)
        data = {"image": image.as_tensor(), "label": label.as_tensor()} if plain else {"image": image, "label": label}
        results.append(t({**data}))
    assert not isinstance(results[1]["image"], MetaTensor)
    assert torch.equal(torch.as_tensor(results[0]["image"]), results[1]["image"])
    assert torch.equal(torch.as_tensor(results[0]["label"]), results[1]["label"])
    extent = torch.nonzero(results[1]["label"][0]).float()
    span = (extent.max(0).values - extent.min(0).values + 1) * torch.tensor([0.7, 0.7, 2.0])
    assert (span > 5.0).all() and (span < 16.0).all()  # an 8-10 mm nodule in mm on every axis, not in voxels


def test_insertion_with_no_border_still_draws():
    image, label = _patch(shape=(24, 24, 24))
    out = RandNoduleInsertiond(prob=1.0, border=0, appearance={"diameter_mm": (4.0, 6.0)})({"image": image, "label": label})
    assert out["label"].sum() > 0 and (out["image"] > LUNG + 0.1).any()


def test_insertion_leaves_patches_without_lung_alone():
    image, label = _patch(value=0.7)  # soft tissue only: nowhere to put a nodule
    t = RandNoduleInsertiond(prob=1.0)
    out = t({"image": image, "label": label})
    assert torch.equal(out["image"], image) and out["label"].sum() == 0


def test_insertion_probability_zero_is_identity():
    image, label = _patch()
    out = RandNoduleInsertiond(prob=0.0)({"image": image, "label": label})
    assert torch.equal(out["image"], image) and out["label"].sum() == 0


def test_centre_nodule_turns_negative_crops_into_positives_at_the_centre():
    image, _ = _patch(shape=(56, 56, 56))
    t = RandCentreNoduled(prob=1.0, appearance={"diameter_mm": (6.0, 10.0)}, jitter_fraction=0.5)
    t.set_random_state(5)
    out = t({"image": image, "label": torch.tensor(0), "diameter_mm": float("nan")})
    assert int(out["label"]) == 1 and 6.0 <= out["diameter_mm"] <= 10.0
    assert out["image"][0, 28, 28, 28].item() > 0.4  # the candidate point lies inside the drawn nodule
    positive = {"image": image, "label": torch.tensor(1), "diameter_mm": 5.0}
    assert t(positive) is not positive and torch.equal(t(positive)["image"], image)  # positives pass unchanged


def test_centre_nodule_inside_dense_tissue_leaves_the_crop_negative():
    """Painting is max-blended: a nodule drawn inside a denser vessel does not show, so the label must stay 0."""
    image, _ = _patch(shape=(48, 48, 48))
    image[0, :, 16:33, 16:33] = 0.85  # a 17 mm thick vessel along i through the centre, denser than any solid nodule
    t = RandCentreNoduled(prob=1.0, appearance={"diameter_mm": (3.0, 6.0), "solid_hu": (-100.0, 150.0)})
    for seed in range(5):
        t.set_random_state(seed)
        out = t({"image": image, "label": torch.tensor(0), "diameter_mm": float("nan")})
        assert int(out["label"]) == 0 and torch.equal(out["image"], image) and np.isnan(out["diameter_mm"])


def test_centre_nodule_touching_a_vessel_still_counts_when_most_of_it_shows():
    image, _ = _patch(shape=(48, 48, 48))
    image[0, :, 22:26, 22:26] = 0.85  # a 4 mm vessel along i, passing the centre
    t = RandCentreNoduled(prob=1.0, appearance={"diameter_mm": (10.0, 12.0)})
    t.set_random_state(0)
    out = t({"image": image, "label": torch.tensor(0), "diameter_mm": float("nan")})
    assert int(out["label"]) == 1 and 10.0 <= out["diameter_mm"] <= 12.0
    rise = out["image"][0] - image[0]
    assert (rise > 0.3).sum() > 200  # the part in the parenchyma was drawn


def test_centre_nodule_takes_one_crop_key():
    with pytest.raises(ValueError, match="one crop"):
        RandCentreNoduled(keys=["image", "other"])
