"""Lung masses: opt-in in the generator, kept inside the lung mask, and sized from their own segmentation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from monai_lung.detection.masses import MASS_MIN_DIAMETER_MM, measure_lesion
from monai_lung.io import world_to_index, write_image_atomic
from monai_lung.synthetic import generate_dataset, generate_scan
from monai_lung.synthetic.size_phantom import mass_phantom, size_phantom
from monai_lung.transforms import ct_preprocessing, lung_masks


def _ball_seed(phantom: dict, radius_mm: float = 8.0) -> np.ndarray:
    """A nodule-sized stage-1 component inside a phantom's lesion: its voxels within ``radius_mm`` of the centre."""
    truth = phantom["truth"] >= 0.5
    spacing = np.linalg.norm(phantom["affine"][:3, :3], axis=0)
    ii = np.indices(truth.shape, sparse=True)
    d2 = sum(((ii[a] - phantom["centre_ijk"][a]) * spacing[a]) ** 2 for a in range(3))
    return (d2 <= radius_mm**2) & truth


@pytest.mark.parametrize("kind", ["peripheral", "central"])
@pytest.mark.parametrize("diameter", [32.0, 60.0])
def test_a_mass_is_sized_from_its_own_segmentation(kind, diameter):
    ph = mass_phantom(kind, diameter, rng=np.random.default_rng(int(diameter)))
    seed = _ball_seed(ph)  # what stage 1 marks: a 16 mm component, as the 7 cm tumour reported as a 17 mm nodule
    aerated = (ph["hu"] < -400) & ph["lung"]
    for region in (ph["lung"], aerated):  # a lung mask with the mass in it, and one that lost it as chest wall
        out = measure_lesion(ph["hu"], region, seed, ph["affine"])
        assert out is not None, "the lesion is not found as a mass"
        assert out["volume_mm3"] == pytest.approx(ph["volume_mm3"], rel=0.15)
        assert out["longest_axial_mm"] == pytest.approx(diameter, abs=0.1 * diameter)
        mask = np.zeros_like(seed)
        mask[out["box"]] = out["mask"]
        truth = ph["truth"] >= 0.5
        assert 2 * (mask & truth).sum() / (mask.sum() + truth.sum()) > 0.85  # the wall and mediastinum stay out


def test_nodules_are_not_masses():
    for d in (12.0, 25.0):
        ph = size_phantom("solid", d, rng=np.random.default_rng(3))
        seed = ph["truth"] >= 0.5
        assert measure_lesion(ph["hu"], np.ones_like(seed), seed, ph["affine"]) is None
    # a 20 mm nodule on the vessels of a mass phantom's lung: the vessels do not make it a mass
    ph = mass_phantom("peripheral", 20.0, rng=np.random.default_rng(5))
    assert measure_lesion(ph["hu"], ph["lung"], _ball_seed(ph, 5.0), ph["affine"]) is None
    assert MASS_MIN_DIAMETER_MM == 30.0


def test_masses_are_opt_in_and_leave_the_rest_of_the_scan_alone():
    plain = generate_scan(np.random.default_rng(4), size=256)
    with_masses = generate_scan(np.random.default_rng(4), size=256, masses=("central", "peripheral"), mass_rng=np.random.default_rng(9))
    assert plain.masses == [] and [m["location"] for m in with_masses.masses] == ["central", "peripheral"]
    a, b = sitk.GetArrayFromImage(plain.image), sitk.GetArrayFromImage(with_masses.image)
    changed = a != b
    drawn = np.zeros_like(changed)
    for m in with_masses.masses:
        drawn[m["box"]] |= True
        assert 30.0 <= m["drawn_diameter_mm"] <= 80.0 and m["volume_mm3"] > 0.5 * np.pi / 6 * 30.0**3 * 0.3
        assert m["mask"].sum() * np.prod(plain.image.GetSpacing()) == pytest.approx(m["volume_mm3"], rel=0.05)
    assert changed.any() and not (changed & ~drawn).any()  # the same chest, with masses in it
    assert plain.nodules == with_masses.nodules and plain.candidates == with_masses.candidates


def test_generate_dataset_writes_masses_and_thick_slices(tmp_path):
    thin = generate_dataset(tmp_path / "thin", num_scans=1, seed=3, size=256, num_subsets=1, masses=("central",), slice_spacing_mm=1.0)
    thick = generate_dataset(tmp_path / "thick", num_scans=1, seed=3, size=256, num_subsets=1, masses=("central",), slice_spacing_mm=1.0,
                             slice_thickness_mm=5.0)
    masses = pd.read_csv(tmp_path / "thin" / "masses.csv")
    assert list(masses["location"]) == ["central"] and (masses["diameter_mm"] > 20).all()
    ann = pd.read_csv(tmp_path / "thin" / "annotations.csv")
    assert np.isclose(ann["diameter_mm"], masses["diameter_mm"][0]).any()  # a mass is a lesion to find
    uid = masses["seriesuid"][0]
    labels = sitk.ReadImage(str(tmp_path / "thin" / "masses" / f"{uid}.mha"))
    voxels = np.count_nonzero(sitk.GetArrayViewFromImage(labels) == 1) * np.prod(labels.GetSpacing())
    assert voxels == pytest.approx(masses["volume_mm3"][0], rel=0.05)
    a = sitk.ReadImage(thin["scans"][0]["path"])
    b = sitk.ReadImage(thick["scans"][0]["path"])
    assert a.GetSpacing()[2] == 1.0 and b.GetSpacing()[2] == 5.0 and b.GetSize()[2] == a.GetSize()[2] // 5
    assert pd.read_csv(tmp_path / "thick" / "masses.csv").equals(masses)  # the same chests, thick slices


def test_the_lung_mask_keeps_a_mass_lying_in_the_lung(tmp_path):
    scan = generate_scan(np.random.default_rng(1), size=384, masses=("central", "peripheral"), mass_rng=np.random.default_rng(101))
    write_image_atomic(tmp_path / "s.mhd", scan.image)
    image = ct_preprocessing()({"image": str(tmp_path / "s.mhd")})["image"]
    kept = lung_masks(image, (1.0, 1.0, 1.0), (0.0,))[0]
    cut = lung_masks(image, (1.0, 1.0, 1.0), (0.0,), keep_lesions=False)[0]
    for m in scan.masses:
        # the mass's drawn voxels (z, y, x of the drawing grid) as world points, then voxels of the 1 mm RAS grid
        zyx = np.argwhere(m["mask"]) + np.array([sl.start for sl in m["box"]])
        world = np.asarray(scan.image.GetOrigin()) + zyx[:, ::-1] * np.asarray(scan.image.GetSpacing())
        ijk = world_to_index(world, image.affine, space="RAS", points_space="LPS")
        ijk = np.clip(np.rint(ijk).astype(int), 0, np.asarray(kept.shape) - 1)
        share_kept = kept[tuple(ijk.T)].mean()
        share_cut = cut[tuple(ijk.T)].mean()
        assert share_kept > 0.5 and share_kept > 3 * share_cut, (m["location"], share_kept, share_cut)


def test_the_detector_types_a_mass_and_folds_its_pieces_into_it():
    from monai_lung.detection.masses import type_masses
    from monai_lung.findings import Finding, FindingMask

    ph = mass_phantom("peripheral", 50.0, rng=np.random.default_rng(2))
    affine, truth = ph["affine"], ph["truth"] >= 0.5

    def finding(seed: np.ndarray, probability: float) -> Finding:
        where = np.argwhere(seed)
        lo, hi = where.min(axis=0), where.max(axis=0) + 1
        shift = np.eye(4)
        shift[:3, 3] = lo
        centre = affine[:3, :3] @ where.mean(axis=0) + affine[:3, 3]
        crop = seed[tuple(slice(a, b) for a, b in zip(lo, hi))]
        return Finding(coord=tuple(centre), probability=probability, diameter_mm=16.0, mask=FindingMask(crop, affine @ shift, "LPS"))

    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    piece = _ball_seed(ph, 8.0)
    other = _ball_seed({**ph, "centre_ijk": ph["centre_ijk"] + np.array([-12.0, 0.0, 0.0]) / spacing}, 4.0)
    away = np.zeros_like(truth)
    away[2:6, 2:6, 2:6] = True  # a vessel piece in a corner of the lung
    findings = [finding(other, 0.95), finding(away, 0.9), finding(piece, 0.8)]
    typed = type_masses(findings, ph["hu"], ph["lung"], affine, "LPS", top_k=20)
    assert [f.kind for f in typed] == ["mass", "nodule"]  # the two pieces are one mass, in the first piece's place
    mass = typed[0]
    assert mass.probability == 0.95 and mass.volume_mm3 == pytest.approx(ph["volume_mm3"], rel=0.15)
    assert mass.longest_axial_mm > 45 and mass.mask.array.sum() * np.prod(spacing) == pytest.approx(mass.volume_mm3)
    centroid = affine[:3, :3] @ np.argwhere(truth).mean(axis=0) + affine[:3, 3]
    assert np.linalg.norm(np.array(mass.coord) - centroid) < 3.0  # reported at the lesion's centroid, world mm
    assert typed[1] is findings[1]
