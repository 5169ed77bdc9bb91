"""Stage 2 (false-positive reduction): crop bank, balanced sampling, hard-negative mining, scoring."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import torch
from monai.networks.nets import ResNet
from torch.utils.data import DataLoader

from monai_lung.stage2 import (
    BalancedSampler,
    CropBank,
    CropBankDataset,
    CropBankSettings,
    HardNegativeMiner,
    build_crop_bank,
    build_scan_crops,
    label_candidates,
    mine_hard_negatives,
)
from monai_lung.stage2.scoring import score_points
from monai_lung.io import DataError, world_to_index
from monai_lung.transforms import ct_preprocessing
from tests.conftest import make_image, rotation_direction

BACKGROUND_HU = -500.0  # not air: padding (0 after scaling) must be told apart from the scan


def _scan_with_blobs(tmp_path: Path, centres_xyz_idx, radius_mm=4.0, direction=None, name="scan"):
    """A .mhd scan (anisotropic spacing, non-zero origin) with bright balls at SimpleITK (x, y, z) indices.

    Returns the path and the balls' world LPS centres (N, 3) mm.
    """
    array = np.full((30, 64, 56), BACKGROUND_HU, dtype=np.float32)  # (z, y, x)
    image = make_image(array, direction=direction)
    world = np.array([image.TransformContinuousIndexToPhysicalPoint([float(v) for v in c]) for c in centres_xyz_idx])
    zz, yy, xx = np.meshgrid(*[np.arange(n) for n in array.shape], indexing="ij")
    idx = np.stack([xx.ravel(), yy.ravel(), zz.ravel()], axis=1).astype(np.float64)
    pts = idx @ (np.asarray(image.GetDirection()).reshape(3, 3) @ np.diag(image.GetSpacing())).T + np.asarray(image.GetOrigin())
    for centre in world:
        inside = np.linalg.norm(pts - centre, axis=1) <= radius_mm
        array.reshape(-1)[inside] = 200.0
    out = make_image(array.astype(np.int16), direction=direction)
    path = tmp_path / f"{name}.mhd"
    sitk.WriteImage(out, str(path))
    return path, world


def _bright_centroid(crop: np.ndarray, threshold: float = 0.7) -> np.ndarray:
    """Centre of mass (i, j, k) voxels of the voxels of a (S, S, S) scaled crop above ``threshold``."""
    where = np.argwhere(crop > threshold)
    assert len(where), "no bright voxel in the crop"
    return where.mean(axis=0)


@pytest.mark.parametrize("direction", [None, rotation_direction(20.0, flip_y=True)])
def test_crops_are_centred_on_world_points_and_padded_at_the_border(tmp_path, direction):
    # one ball inside, one 2 voxels (1.4 mm) from the x border of the scan, 23 mm apart
    path, world = _scan_with_blobs(tmp_path, [(35, 32, 15), (2, 30, 14)], radius_mm=3.0, direction=direction)
    image = ct_preprocessing("image")({"image": str(path)})["image"]
    entry = {
        "image": str(path), "seriesuid": "s1", "excluded": [],
        "nodules": [{"center": w.tolist(), "diameter_mm": 8.0} for w in world],
    }
    settings = CropBankSettings(crop_size=24, positives_per_nodule=1, random_per_scan=0)
    crops, meta = build_scan_crops(image, entry, settings)
    assert crops.shape == (2, 24, 24, 24) and crops.dtype == np.float16
    assert list(meta["source"]) == ["nodule", "nodule"] and list(meta["label"]) == [1, 1]
    np.testing.assert_allclose(meta[["coordX", "coordY", "coordZ"]].to_numpy(), world, atol=1e-6)
    for n in range(2):
        # the ball's centre is within a voxel of the crop centre (voxel 12), border or not
        np.testing.assert_allclose(_bright_centroid(crops[n].astype(np.float32)), [12, 12, 12], atol=1.0)
    inner, border = crops[0].astype(np.float32), crops[1].astype(np.float32)
    # background is -500 HU (~0.36), so exact zeros are padding outside the scan
    assert (inner == 0).mean() < 0.5
    assert 0.2 < (border == 0).mean() < 0.8, "the border crop is padded on one side, not dropped or shifted"
    # same point, same voxels as the shared crop helper used by stage-2 scoring
    idx = world_to_index(world[1], image.affine, space=image.meta.get("space", "RAS"), points_space="LPS")
    assert np.allclose(idx, meta[["index_i", "index_j", "index_k"]].to_numpy()[1])


def test_positives_are_jittered_inside_the_nodule_and_negatives_stay_away(tmp_path):
    path, world = _scan_with_blobs(tmp_path, [(28, 32, 15)], radius_mm=5.0)
    image = ct_preprocessing("image")({"image": str(path)})["image"]
    lung = np.ones(image.shape[1:], dtype=bool)
    excluded_centre = (world[0] + np.array([0.0, 0.0, 20.0])).tolist()
    entry = {
        "image": str(path), "seriesuid": "s2",
        "nodules": [{"center": world[0].tolist(), "diameter_mm": 10.0}],
        "excluded": [{"center": excluded_centre, "diameter_mm": -1.0}],  # unknown size: 10 mm assumed
    }
    candidates = pd.DataFrame(
        {
            "seriesuid": "s2",
            "coordX": [world[0][0], world[0][0] + 2.0, world[0][0] + 12.0, excluded_centre[0] + 1.0],
            "coordY": [world[0][1], world[0][1], world[0][1], excluded_centre[1]],
            "coordZ": [world[0][2], world[0][2], world[0][2], excluded_centre[2]],
            "class": [1, 0, 0, 0],  # class-0 point 2 mm from the nodule centre: inside it, never a negative
        }
    )
    settings = CropBankSettings(crop_size=32, positives_per_nodule=6, positive_jitter=0.5, random_per_scan=40, seed=3)
    crops, meta = build_scan_crops(image, entry, settings, lung=lung, candidates=candidates)
    pos = meta[meta["label"] == 1]
    assert len(pos) == 6 and (pos["source"] == "nodule").all()
    assert pos["nodule_distance_mm"].iloc[0] == pytest.approx(0.0, abs=1e-9)
    assert (pos["nodule_distance_mm"] <= 2.5 + 1e-6).all() and (pos["nodule_distance_mm"].iloc[1:] > 0).any()
    neg = meta[meta["label"] == 0]
    assert set(neg["source"]) == {"candidates_csv", "random_lung"}
    assert len(neg[neg["source"] == "candidates_csv"]) == 1  # only the point 12 mm away survives
    assert len(neg[neg["source"] == "random_lung"]) == 40
    assert (neg["nodule_distance_mm"] > 5.0).all()
    pts = neg[["coordX", "coordY", "coordZ"]].to_numpy()
    assert (np.linalg.norm(pts - np.asarray(excluded_centre), axis=1) > 5.0).all()
    # reruns cut the same crops (per-scan seeds), so a resumed bank is reproducible
    crops2, meta2 = build_scan_crops(image, entry, settings, lung=lung, candidates=candidates)
    pd.testing.assert_frame_equal(meta, meta2)
    assert np.array_equal(crops, crops2)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    from monai_lung.datalist import build_datalist, write_datalist
    from monai_lung.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("fpr_synth")
    generate_dataset(root, num_scans=6, seed=11, size=64, num_subsets=3)
    dl = build_datalist(root, root / "annotations.csv", root / "annotations_excluded.csv", fold=0)
    write_datalist(root / "dl.json", dl)
    return root


def _entries(root: Path, key: str) -> list[dict]:
    from monai_lung.datalist import load_datalist_entries

    return load_datalist_entries(root / "dl.json", key, root)


def test_crop_bank_is_resumable_and_atomic(synthetic, tmp_path):
    entries = _entries(synthetic, "training") + _entries(synthetic, "test")
    assert len(entries) == 4
    bank_dir = tmp_path / "bank"
    settings = CropBankSettings(crop_size=32, positives_per_nodule=2, random_per_scan=4, candidates_per_scan=3)
    # a scan whose file is gone stops the run after the scans before it are finished
    broken = dict(entries[2], image=str(tmp_path / "missing.mhd"))
    with pytest.raises(Exception):
        build_crop_bank(entries[:2] + [broken] + entries[3:], bank_dir, settings, candidates=synthetic / "candidates.csv")
    bank = CropBank(bank_dir)
    done = bank.finished_uids()
    assert sorted(done) == sorted(e["seriesuid"] for e in entries[:2])
    leftovers = [p.name for p in bank_dir.rglob("*") if ".tmp" in p.name]
    assert leftovers == [], f"temporary files left behind: {leftovers}"
    first = bank.crops_file(done[0])
    stamp = first.stat().st_mtime_ns
    # a crash between the crops and their metadata leaves an unfinished scan: it is redone
    bank.meta_file(done[1]).unlink()
    summary = build_crop_bank(entries, bank_dir, settings, candidates=synthetic / "candidates.csv")
    assert summary["skipped"] == 1 and summary["scans"] == 3
    assert first.stat().st_mtime_ns == stamp, "a finished scan was rewritten"
    index = bank.read_index()
    assert set(index["seriesuid"]) <= {e["seriesuid"] for e in entries}
    for uid, rows in index.groupby("seriesuid"):
        crops = bank.load_crops(uid)
        assert crops.shape == (len(rows), 32, 32, 32) and crops.dtype == np.float16
        assert list(rows["row"]) == list(range(len(rows)))
    n_nodules = sum(len(e["nodules"]) for e in entries)
    assert (index["label"] == 1).sum() == 2 * n_nodules
    assert set(index["source"]) == {"nodule", "candidates_csv", "random_lung"}
    # other settings in the same folder are refused instead of mixed
    with pytest.raises(DataError, match="other settings"):
        build_crop_bank(entries, bank_dir, CropBankSettings(crop_size=48))
    json.loads((bank_dir / "bank.json").read_text(encoding="utf-8"))  # still the original, intact


def _labels_with_sources(n_pos=10, sources=(("candidates_csv", 300), ("random_lung", 200))):
    labels = [1] * n_pos
    srcs = ["nodule"] * n_pos
    for name, count in sources:
        labels += [0] * count
        srcs += [name] * count
    return np.array(labels), np.array(srcs)


def test_balanced_sampler_holds_the_ratio_every_epoch_and_on_every_rank():
    labels, sources = _labels_with_sources()
    single = BalancedSampler(labels, num_samples=300, neg_pos_ratio=2.0, seed=5)
    orders = []
    for epoch in range(3):
        single.set_epoch(epoch)
        picks = np.array(list(single))
        orders.append(picks)
        assert len(picks) == len(single) == 300
        assert (labels[picks] == 1).sum() == 100
        # positives are walked without replacement: 10 positives, 100 draws, each exactly 10 times
        assert np.all(np.bincount(picks[labels[picks] == 1], minlength=10)[:10] == 10)
    assert not np.array_equal(orders[0], orders[1])
    # DDP: two ranks see disjoint halves of the same epoch, equally long, each with the same share
    ranks = [BalancedSampler(labels, num_samples=300, neg_pos_ratio=2.0, seed=5, num_replicas=2, rank=r) for r in (0, 1)]
    for s in ranks:
        s.set_epoch(1)
    halves = [np.array(list(s)) for s in ranks]
    assert len(halves[0]) == len(halves[1]) == 150
    for half in halves:
        assert (labels[half] == 1).sum() == 50
    assert sorted(np.concatenate(halves).tolist()) == sorted(orders[1].tolist())
    # negative sources weighted 3:1 against their sizes 300:200
    weighted = BalancedSampler(
        labels, num_samples=4000, neg_pos_ratio=1.0, sources=sources, source_weights={"candidates_csv": 3, "random_lung": 1}
    )
    picks = np.array(list(weighted))
    neg_sources = sources[picks][labels[picks] == 0]
    assert (neg_sources == "candidates_csv").mean() == pytest.approx(0.75, abs=0.04)
    # without set_epoch (plain DataLoader use) every iteration is a new epoch
    auto = BalancedSampler(labels, num_samples=60, seed=1)
    assert list(auto) != list(auto)


def test_crop_bank_dataset_batches_are_balanced(synthetic, tmp_path):
    entries = _entries(synthetic, "training")
    bank_dir = tmp_path / "bank"
    build_crop_bank(entries, bank_dir, CropBankSettings(crop_size=32, positives_per_nodule=3, random_per_scan=20))
    ds = CropBankDataset(bank_dir, data=entries)
    assert len(ds) == len(CropBank(bank_dir).read_index())
    item = ds[0]
    assert item["image"].shape == (1, 32, 32, 32) and item["image"].dtype == torch.float32
    assert item["label"].dtype == torch.long and item["label"].ndim == 0
    sampler = BalancedSampler(ds.labels, num_samples=64, neg_pos_ratio=3.0, seed=0)
    loader = DataLoader(ds, batch_size=16, sampler=sampler, num_workers=0)
    labels = torch.cat([batch["label"] for batch in loader])
    assert len(labels) == 64 and int(labels.sum()) == 16
    with pytest.raises(DataError, match="not in the crop bank"):
        CropBankDataset(bank_dir, data=_entries(synthetic, "test"))


def test_crop_bank_dataset_skips_meta_tracking_without_changing_the_crops(synthetic, tmp_path):
    """The classification bundle's own training chain, with and without MONAI's meta tracking: same tensors."""
    from monai.bundle import ConfigParser
    from monai.data import get_track_meta
    from monai.data.meta_tensor import MetaTensor

    from tests.bundle_utils import REPO

    entries = _entries(synthetic, "training")
    bank_dir = tmp_path / "bank"
    build_crop_bank(entries, bank_dir, CropBankSettings(crop_size=64, positives_per_nodule=2, random_per_scan=4))
    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles" / "lung_nodule_ct_classification" / "configs" / "train.json"))
    parser.update({"crop_bank_dir": str(bank_dir), "dataset_dir": str(synthetic), "data_list_file_path": str(synthetic / "dl.json")})
    chain = parser.get_parsed_content("train#preprocessing")
    items = {}
    for track in (True, False):
        ds = CropBankDataset(bank_dir, data=entries, transform=chain, track_meta=track)
        chain.set_random_state(seed=11)
        items[track] = [ds[i] for i in range(6)]
        assert get_track_meta()  # MONAI's process-wide default is back after every item
    for with_meta, plain in zip(items[True], items[False]):
        assert not isinstance(plain["image"], MetaTensor)
        assert plain["image"].shape == (1, *parser.get_parsed_content("patch_size"))
        assert torch.equal(torch.as_tensor(with_meta["image"]), plain["image"])
        assert int(with_meta["label"]) == int(plain["label"])


def test_bank_view_changes_the_cost_not_the_training_crops(synthetic, tmp_path):
    """The bundle's chain on the central bank_view_size^3 of each stored crop gives the very crops it gives on the
    whole stored crop (zoom and synthetic nodules off, as they resample and estimate noise over the volume); the
    view keeps the candidate at its centre voxel, also for an odd size."""
    from monai.bundle import ConfigParser

    from monai_lung.stage2 import centre_view
    from tests.bundle_utils import REPO

    entries = _entries(synthetic, "training")
    bank_dir = tmp_path / "bank"
    build_crop_bank(entries, bank_dir, CropBankSettings(crop_size=64, positives_per_nodule=2, random_per_scan=4))
    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles" / "lung_nodule_ct_classification" / "configs" / "train.json"))
    parser.update({"crop_bank_dir": str(bank_dir), "dataset_dir": str(synthetic), "data_list_file_path": str(synthetic / "dl.json"),
                   "synthetic_nodule_prob": 0.0})
    assert parser.get_parsed_content("bank_view_size") == 44  # 32 + 2 * 2 jitter, / 0.85 zoom-out, rounded up to even
    chain = parser.get_parsed_content("train#preprocessing")
    zoom = [t for t in chain.transforms if type(t).__name__ == "RandZoomd"]
    assert len(zoom) == 1
    zoom[0].prob = 0.0
    crops = {}
    for view in (None, 44):
        ds = CropBankDataset(bank_dir, data=entries, transform=chain, view_size=view)
        chain.set_random_state(seed=5)
        crops[view] = [ds[i]["image"] for i in range(8)]
    for whole, viewed in zip(crops[None], crops[44]):
        assert torch.equal(whole, viewed)
    stored = CropBankDataset(bank_dir, data=entries)[0]["image"]
    for size in (44, 31):
        block = centre_view(stored, size)
        assert block.shape == (1, size, size, size)
        assert torch.equal(block[0, size // 2, size // 2, size // 2], stored[0, 32, 32, 32])
        assert torch.equal(CropBankDataset(bank_dir, data=entries, view_size=size)[0]["image"], block)
    assert centre_view(stored, 80) is stored


class IntensityStage1(torch.nn.Module):
    """A stage-1 stand-in with fixed weights: 'nodule' wherever the scaled CT is dense tissue.

    A real torch network (a 1x1x1 convolution), so the sliding window, components and labelling run for
    real; it finds the nodules and also every vessel and the chest wall, i.e. plenty of false positives.
    """

    def __init__(self, threshold: float = 0.62):
        super().__init__()
        self.conv = torch.nn.Conv3d(1, 2, kernel_size=1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([-40.0, 40.0]).view(2, 1, 1, 1, 1))
            self.conv.bias.copy_(torch.tensor([40.0 * threshold, -40.0 * threshold]))

    def forward(self, x):
        return self.conv(x)


def test_hard_negatives_lie_away_from_nodules_and_excluded_findings(synthetic, tmp_path):
    entries = [e for e in _entries(synthetic, "training") + _entries(synthetic, "test") if e["nodules"]]
    assert entries
    miner = HardNegativeMiner(IntensityStage1(), {"roi_size": (48, 48, 48), "seg_spacing": None, "seg_threshold": 0.5, "min_voxels": 3, "max_candidates": 10**6})
    preprocess = ct_preprocessing("image")
    hits = fps = 0
    for entry in entries:
        image = preprocess({"image": entry["image"]})["image"]
        mined = miner(image, entry)
        assert set(mined["seriesuid"]) <= {entry["seriesuid"]}
        centres = np.array([n["center"] for n in entry["nodules"]])
        radii = np.array([n["diameter_mm"] for n in entry["nodules"]]) / 2
        pts = mined[["coordX", "coordY", "coordZ"]].to_numpy()
        dist = np.linalg.norm(pts[:, None] - centres[None], axis=2)
        neg = mined["label"].to_numpy() == 0
        assert np.all(dist[neg] > radii[None]), "a hard negative lies inside an annotated nodule"
        assert np.all(np.any(dist[mined["label"].to_numpy() == 1] <= radii[None], axis=1))
        for exc in entry["excluded"]:
            r = exc["diameter_mm"] / 2 if exc["diameter_mm"] > 0 else 5.0
            assert np.all(np.linalg.norm(pts[neg] - np.asarray(exc["center"]), axis=1) > r)
        hits += int((~neg & (mined["label"].to_numpy() == 1)).sum())
        fps += int(neg.sum())
    assert hits > 0 and fps > 0, "the stand-in should find nodules and false positives"


def test_the_miner_mines_the_candidates_the_detector_scores(synthetic):
    """One stage-1 candidate generator: with the same settings, the hard-negative miner labels exactly the stage-1
    candidates that the deployed detector passes to stage 2 (same grid, threshold, masks, merging and cap)."""
    from monai_lung.detection import DetectorConfig, TwoStageDetector, TwoStageNetwork

    entry = next(e for e in _entries(synthetic, "training") if e["nodules"])
    image = ct_preprocessing("image")({"image": entry["image"]})["image"]
    config = {"roi_size": (48, 48, 48), "seg_spacing": (0.8, 0.8, 0.8), "stage2_spacing": None, "seg_threshold": 0.5, "max_candidates": 40,
              "crop_size": (16, 16, 16), "tta": False, "device": "cpu"}
    classifier = torch.nn.Sequential(torch.nn.Conv3d(1, 2, 1), torch.nn.AdaptiveAvgPool3d(1), torch.nn.Flatten())
    found = TwoStageDetector(TwoStageNetwork(IntensityStage1(), classifier), config).detect(image).frame()
    mined = HardNegativeMiner(IntensityStage1(), DetectorConfig.from_dict(config))(image, entry)  # the detector's is a stage-1 config
    assert 0 < len(mined) == len(found) <= 40
    key = ["coordX", "coordY", "coordZ"]
    np.testing.assert_allclose(mined.sort_values(key)[key].to_numpy(), found.sort_values(key)[key].to_numpy())
    np.testing.assert_allclose(np.sort(mined["peak_prob"].to_numpy()), np.sort(found["stage1_peak"].to_numpy()))


def test_label_candidates_uses_the_luna16_hit_rule():
    entry = {
        "nodules": [{"center": [0.0, 0.0, 0.0], "diameter_mm": 10.0}],
        "excluded": [{"center": [30.0, 0.0, 0.0], "diameter_mm": -1.0}],
    }
    cands = pd.DataFrame({"coordX": [4.9, 5.1, 26.0, 40.0], "coordY": 0.0, "coordZ": 0.0})
    out = label_candidates(cands, entry)
    assert list(out["label"]) == [1, 0, -1, 0]
    np.testing.assert_allclose(out["nodule_distance_mm"], [4.9, 5.1, 26.0, 40.0])


def test_mined_hard_negatives_are_cached_per_scan(synthetic, tmp_path):
    entries = _entries(synthetic, "training")[:1]
    miner = HardNegativeMiner(IntensityStage1(), {"roi_size": (48, 48, 48), "seg_spacing": None, "seg_threshold": 0.5, "max_candidates": 50})
    out_csv = tmp_path / "mined.csv"
    first = mine_hard_negatives(entries, miner, out_csv)
    cache = tmp_path / "mined_cache" / f"{entries[0]['seriesuid']}.csv"
    assert cache.is_file() and out_csv.is_file()
    stamp = cache.stat().st_mtime_ns
    second = mine_hard_negatives(entries, miner, out_csv)
    assert cache.stat().st_mtime_ns == stamp
    pd.testing.assert_frame_equal(first.reset_index(drop=True), second.reset_index(drop=True), check_dtype=False)
    # the mined CSV feeds the bank's hard negatives
    bank = tmp_path / "bank"
    build_crop_bank(entries, bank, CropBankSettings(crop_size=32, random_per_scan=0), hard_negatives=out_csv)
    index = CropBank(bank).read_index()
    hard = index[index["source"] == "hard_negative"]
    assert len(hard) == min(int((first["label"] == 0).sum()), 64) > 0
    assert (hard["score"] > 0.5).all()
    # a mined table without the component sizes the bank needs is refused up front, naming file and column
    broken = tmp_path / "no_sizes.csv"
    first.drop(columns=["diameter_mm"]).to_csv(broken, index=False)
    with pytest.raises(DataError, match=r"no_sizes\.csv.*misses column\(s\) diameter_mm"):
        build_crop_bank(entries, tmp_path / "bank2", CropBankSettings(crop_size=32, random_per_scan=0), hard_negatives=broken)


def _network():
    torch.manual_seed(0)
    return ResNet(
        block="basic", layers=[1, 1, 1, 1], block_inplanes=[16, 32, 64, 128], spatial_dims=3, n_input_channels=1,
        conv1_t_size=5, conv1_t_stride=2, no_max_pool=True, num_classes=2,
    ).eval()


def test_score_points_sees_what_validation_sees(tmp_path):
    """Scoring crops straight from the scan gives what the network gives on the bank's centred crops, at
    the default crop size (32^3) and at 48^3."""
    path, world = _scan_with_blobs(tmp_path, [(28, 32, 15), (1, 60, 2)], direction=rotation_direction(15.0))
    image = ct_preprocessing("image")({"image": str(path)})["image"]
    entry = {"image": str(path), "seriesuid": "s3", "excluded": [], "nodules": [{"center": w.tolist(), "diameter_mm": 8.0} for w in world]}
    crops, _ = build_scan_crops(image, entry, CropBankSettings(crop_size=64, positives_per_nodule=1, random_per_scan=0))
    net = _network()
    for size in (48, 32):  # 32 last: the TTA check below uses it through the default
        lo, hi = 32 - size // 2, 32 + size // 2  # the bank's 64^3 crops hold the point at voxel 32
        probs = score_points(net, image, world, batch_size=1, crop_size=(size,) * 3)
        with torch.no_grad():
            centre = torch.from_numpy(crops[:, None, lo:hi, lo:hi, lo:hi].astype(np.float32))
            expected = torch.softmax(net(centre), dim=1)[:, 1].numpy()
        np.testing.assert_allclose(probs, expected, atol=2e-3)  # float16 storage of the bank
    tta = score_points(net, image, world, tta=True)
    with torch.no_grad():
        flips = [centre] + [torch.flip(centre, (d,)) for d in (2, 3, 4)]
        manual = np.mean([torch.softmax(net(x), dim=1)[:, 1].numpy() for x in flips], axis=0)
    np.testing.assert_allclose(tta, manual, atol=2e-3)
    assert score_points(net, image, np.zeros((0, 3))).shape == (0,)


def test_crops_cli_mines_with_a_stage1_bundle(synthetic, tmp_path):
    """``crops --seg-bundle``: loads the stage-1 bundle's network and weights, mines, caches, cuts crops."""
    import shutil

    from monai.bundle import ConfigParser

    from monai_lung.stage2.cli import add_crops_arguments, crops_main

    seg = tmp_path / "seg"
    shutil.copytree(Path(__file__).resolve().parents[1] / "bundles" / "lung_nodule_ct_segmentation", seg, ignore=shutil.ignore_patterns("*.pt"))
    parser = ConfigParser()
    parser.read_config(str(seg / "configs" / "inference.json"))
    torch.manual_seed(0)
    unet = parser.get_parsed_content("network_def")
    (seg / "models").mkdir(exist_ok=True)
    torch.save(unet.state_dict(), seg / "models" / "model.pt")  # untrained weights: random but real components
    p = argparse.ArgumentParser()
    add_crops_arguments(p)
    args = p.parse_args(
        [
            "--datalist", str(synthetic / "dl.json"), "--data-dir", str(synthetic), "--key", "training",
            "--output-dir", str(tmp_path / "bank"), "--seg-bundle", str(seg), "--set", "seg_threshold=0.45",
            "--crop-size", "32", "--random-per-scan", "2", "--device", "cpu",
        ]
    )
    assert crops_main(args) == 0
    bank = CropBank(tmp_path / "bank")
    uids = [e["seriesuid"] for e in _entries(synthetic, "training")]
    assert all(bank.hard_negative_file(u).is_file() for u in uids)
    index = bank.read_index()
    hard = index[index["source"] == "hard_negative"]
    assert len(hard) > 0
    entries = {e["seriesuid"]: e for e in _entries(synthetic, "training")}
    for row in hard.itertuples():
        for nod in entries[row.seriesuid]["nodules"]:
            assert np.linalg.norm(np.array([row.coordX, row.coordY, row.coordZ]) - nod["center"]) > nod["diameter_mm"] / 2
    assert json.loads((tmp_path / "bank" / "bank.json").read_text(encoding="utf-8"))["inputs"]["stage1"].startswith("model.pt:")
    # the same folder with another stage-1 model is refused (its hard negatives would be stale)
    torch.save({k: v + 1 if v.is_floating_point() else v for k, v in unet.state_dict().items()}, seg / "models" / "model.pt")
    with pytest.raises(DataError, match="other settings"):
        crops_main(args)


def test_context_swap_keeps_the_candidate_and_replaces_its_surroundings(synthetic, tmp_path):
    from monai_lung.stage2 import ContextSwapd

    entries = _entries(synthetic, "training")
    bank_dir = tmp_path / "bank"
    build_crop_bank(entries, bank_dir, CropBankSettings(crop_size=40, positives_per_nodule=1, random_per_scan=6))
    ds = CropBankDataset(bank_dir, data=entries)
    swap = ContextSwapd("image", bank_dir, data=entries, prob=1.0, radius_mm=(8.0, 8.0), margin_mm=4.0)
    swap.set_random_state(3)
    axes = np.meshgrid(*[np.arange(40) - 20] * 3, indexing="ij")
    dist = np.sqrt(sum(a**2 for a in axes))
    pos = int(np.flatnonzero(ds.labels == 1)[0])
    for i in (pos, int(np.flatnonzero(ds.labels == 0)[0])):
        item = ds[i]
        out = swap(item)
        assert out["label"] == item["label"] and out["image"].shape == item["image"].shape
        core = 8.0 if item["label"] == 0 else max(8.0, item["diameter_mm"] / 2 + 4.0)
        before, after = item["image"][0].numpy(), np.asarray(out["image"][0])
        # the core (the whole nodule for a positive) is the crop's own, the far surroundings are not
        inner, outer = dist <= core - 2.0, dist >= core + 2.0
        np.testing.assert_allclose(after[inner], before[inner], atol=3e-3)
        donor = swap._donor_crop()
        np.testing.assert_allclose(after[outer], donor[outer], atol=3e-3)
        assert not np.allclose(after[outer], before[outer], atol=1e-2)
    # on a central view (the classification bundle's bank_view_size) the donors are cut to the same view
    view = CropBankDataset(bank_dir, data=entries, view_size=30)
    item = view[pos]
    out = swap(item)
    assert out["image"].shape == (1, 30, 30, 30)
    axes = np.meshgrid(*[np.arange(30) - 15] * 3, indexing="ij")
    outer = np.sqrt(sum(a**2 for a in axes)) >= max(8.0, item["diameter_mm"] / 2 + 4.0) + 2.0
    np.testing.assert_allclose(np.asarray(out["image"][0])[outer], swap._donor_crop()[5:35, 5:35, 5:35][outer], atol=3e-3)
    # donors are negatives only
    assert set(ds.index.set_index(["seriesuid", "row"]).loc[list(zip(swap.donor_uid, swap.donor_row)), "label"]) == {0}
