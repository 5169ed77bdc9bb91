"""Detection building blocks: candidates from probability maps, duplicate merging, the lung mask and the
lung-gated sliding window."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from monai.networks.nets import UNet

from monai_lung.io import DataError, index_to_world
from monai_lung.detection.detector import FINAL_SCORES, DetectorConfig, final_score
from monai_lung.stage1 import BACKGROUND_LOGIT, LungSlidingWindowInferer, Stage1Config, extract_candidates, merge_close_candidates, stage1_candidates
from monai_lung.transforms import balanced_indices, lung_mask, lung_masks


def test_candidates_centre_size_and_peak_in_world_mm():
    prob = np.zeros((60, 60, 60), np.float32)
    prob[10:15, 10:15, 10:15] = 0.9
    prob[12, 12, 12] = 0.95
    prob[40, 41, 42] = 0.7
    prob[50:52, 5:7, 5] = 0.6
    affine = np.diag([2.0, 1.0, 1.5, 1.0])
    affine[:3, 3] = [-100.0, 20.0, 5.0]  # an RAS affine
    c = extract_candidates(prob, affine, threshold=0.5, min_voxels=2)
    assert len(c) == 2  # the single voxel at (40, 41, 42) is below min_voxels
    top = c.iloc[0]
    assert top.peak_prob == pytest.approx(0.95) and top.num_voxels == 125
    np.testing.assert_allclose([top.index_i, top.index_j, top.index_k], [12, 12, 12], atol=1e-6)
    np.testing.assert_allclose([top.coordX, top.coordY, top.coordZ], index_to_world([12, 12, 12], affine), atol=1e-6)
    # LPS output: x and y change sign against the RAS affine
    assert top.coordX == pytest.approx(-(-100.0 + 24.0)) and top.coordZ == pytest.approx(5.0 + 18.0)
    assert top.volume_mm3 == pytest.approx(125 * 3.0)
    assert top.diameter_mm == pytest.approx((6 * 375 / np.pi) ** (1 / 3))
    assert len(extract_candidates(np.zeros((5, 5, 5), np.float32), np.eye(4))) == 0


def test_merge_keeps_the_strongest_of_close_candidates():
    frame = pd.DataFrame({"coordX": [0.0, 3.0, 20.0, 21.0], "coordY": [0.0] * 4, "coordZ": [0.0] * 4, "peak_prob": [0.6, 0.9, 0.5, 0.4]})
    merged = merge_close_candidates(frame, 5.0)
    assert merged["peak_prob"].tolist() == [0.9, 0.5]
    assert len(merge_close_candidates(frame, 0.0)) == 4


def test_lung_mask_finds_two_lungs_and_not_outside_air():
    vol = np.full((120, 100, 80), -1000.0, np.float32)  # outside air
    vol[10:110, 10:90, :] = 40.0  # body
    vol[20:55, 25:75, 10:70] = -850.0  # right lung
    vol[65:100, 25:75, 10:70] = -850.0  # left lung
    vol[35, 50, 40] = 60.0  # a vessel inside a lung
    mask = lung_mask(vol, (1.0, 1.0, 1.0), hu_window=None, margin_mm=4.0)
    assert mask[30, 50, 40] and mask[80, 50, 40] and mask[35, 50, 40]
    assert not mask[2, 2, 2]  # outside air touches the border: not lung
    assert mask.mean() < 0.5


def test_lung_masks_nest_and_keep_wall_candidates_out():
    vol = np.full((120, 100, 80), -1000.0, np.float32)
    vol[10:110, 10:90, :] = 40.0
    vol[20:55, 25:75, 10:70] = -850.0
    vol[65:100, 25:75, 10:70] = -850.0
    wide, tight = lung_masks(vol, (1.0, 1.0, 1.0), (8.0, 4.0), hu_window=None)
    np.testing.assert_array_equal(wide, lung_mask(vol, (1.0, 1.0, 1.0), hu_window=None, margin_mm=8.0))
    assert (wide >= tight).all() and wide.sum() > tight.sum()
    assert tight[30, 50, 40] and not tight[30, 50, 0]  # lung yes; body 10 mm below the lung's end (beyond 4 mm) no
    # a probability map with a blob in the lung and one deep in the wall: only the lung one is a candidate
    prob = np.zeros(vol.shape, np.float32)
    prob[28:33, 48:53, 38:43] = 0.9  # in the right lung
    prob[12:15, 12:15, 38:41] = 0.95  # body wall, far from both lungs
    affine = np.eye(4)
    cfg = DetectorConfig(seg_threshold=0.5, min_voxels=3)
    everywhere = stage1_candidates(prob, affine, cfg)
    in_lung = stage1_candidates(prob, affine, cfg, tight)
    assert len(everywhere) == 2 and len(in_lung) == 1
    assert in_lung.iloc[0].index_i == pytest.approx(30.0)


def test_a_large_pleural_nodule_whose_centre_is_outside_the_lung_mask_stays_a_candidate():
    # a 24 mm nodule bulging from the chest wall (x < 20) into the lung: the mask's closing does not fill a
    # bite that wide, so its centre (x = 22, 12 mm into the nodule) is outside the tight mask; it reaches in
    vol = np.full((120, 100, 80), -1000.0, np.float32)
    vol[5:115, 5:95, :] = 40.0
    vol[20:100, 20:80, 5:75] = -850.0
    ii, jj, kk = np.ogrid[:120, :100, :80]
    ball = (ii - 22) ** 2 + (jj - 50) ** 2 + (kk - 40) ** 2 <= 12**2
    vol[ball] = 40.0
    _, tight = lung_masks(vol, (1.0, 1.0, 1.0), (8.0, 4.0), hu_window=None, keep_lesions=False)
    assert not tight[22, 50, 40] and tight[ball].any()
    # the mask that keeps lesions lying in the lung (the detector's) has the bite's lung side in it
    _, kept = lung_masks(vol, (1.0, 1.0, 1.0), (8.0, 4.0), hu_window=None)
    assert kept[ball & (ii >= 20)].all() and not kept[8:11, 50:53, 38:41].any()
    prob = np.where(ball, 0.99, 0.0).astype(np.float32)
    prob[8:11, 50:53, 38:41] = 0.95  # a blob in the wall at the same height, clear of the lung: still dropped
    cands = stage1_candidates(prob, np.eye(4), DetectorConfig(seg_threshold=0.5, min_voxels=3), tight)
    assert len(cands) == 1
    assert cands.iloc[0].index_i == pytest.approx(22.0, abs=0.5) and cands.iloc[0].diameter_mm > 20
    with pytest.raises(ValueError, match="region shape"):
        extract_candidates(prob, np.eye(4), region=tight[:-1])


class _Counting(torch.nn.Module):
    """Records the batch size of every call of ``inner``."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner, self.calls = inner, []

    def forward(self, x):
        self.calls.append(x.shape[0])
        return self.inner(x)


def _probability(net, image, lung=None, **settings):
    """The stage-1 map of the detector's path, on a 32^3 window (the network run as it is, unfolded, unless asked)."""
    settings = {"roi_size": (32, 32, 32), "fold_batch_norm": False, **settings}
    return LungSlidingWindowInferer(**settings).probability_map(net, image, lung)


def test_the_inferer_maps_with_and_without_a_lung_mask():
    torch.manual_seed(0)
    net = UNet(3, 1, 2, (4, 8, 16), (2, 2), num_res_units=0).eval()
    image = torch.rand((1, 40, 36, 32))
    lung = np.zeros((40, 36, 32), bool)
    lung[10:30, 10:25, 8:24] = True
    full = _probability(net, image)
    gated = _probability(net, image, lung)
    assert full.shape == gated.shape == (40, 36, 32)
    assert 0 <= full.min() and full.max() <= 1
    assert gated[0, 0, 0] < 1e-6  # far from the lungs: not computed, background


def _unet_with_batch_norm_statistics(seed: int = 0) -> torch.nn.Module:
    """A small stage-1-like UNet whose BatchNorms hold non-trivial running statistics (as trained ones do)."""
    torch.manual_seed(seed)
    net = UNet(3, 1, 2, (4, 8, 16), (2, 2), num_res_units=0, norm="batch").eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm3d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return net


def test_windows_without_lung_are_not_run_and_the_map_is_monais_sliding_window():
    """Only windows holding lung run; everywhere the map is MONAI's own sliding window (``sliding_window_inference``)
    of a network that answers background logits for the windows without lung, and inside the lungs it is the plain
    sliding window's."""
    from monai.inferers import sliding_window_inference

    from monai_lung.stage1.inferer import window_slices

    net = _unet_with_batch_norm_statistics()
    image = torch.rand((1, 90, 60, 50))
    lung = np.zeros((90, 60, 50), bool)
    lung[5:20, 5:20, 5:20] = True  # two opposite corners: the box between them holds windows without lung
    lung[70:85, 40:55, 30:45] = True

    def gated(x):  # channel 1 of x: the window's lung mask
        out = torch.zeros((x.shape[0], 2, *x.shape[2:]))
        out[:, 0] = BACKGROUND_LOGIT
        has_lung = x[:, 1:].flatten(1).amax(dim=1) > 0
        if has_lung.any():
            out[has_lung] = net(x[has_lung, :1])
        return out

    counting = _Counting(net)
    with torch.no_grad():
        prob = _probability(counting, image, lung, sw_batch_size=2)
        both = torch.cat([image, torch.as_tensor(lung, dtype=torch.float32)[None]])[None]
        monai_gated = torch.softmax(sliding_window_inference(both, (32, 32, 32), 2, gated, overlap=0.25, mode="gaussian")[0], 0)[1]
        monai_full = torch.softmax(sliding_window_inference(image[None], (32, 32, 32), 4, net, overlap=0.25, mode="gaussian")[0], 0)[1]
    windows = window_slices((90, 60, 50), (32, 32, 32), 0.25)  # MONAI's grid: starts 0, 24, 48, 58 / 0, 24, 28 / 0, 18
    with_lung = [w for w in windows if lung[w].any()]
    assert len(windows) == 24 and sum(counting.calls) == len(with_lung) == 10 and max(counting.calls) == 2
    np.testing.assert_allclose(prob, monai_gated.numpy(), atol=1e-6)
    np.testing.assert_allclose(prob[lung], monai_full.numpy()[lung], atol=1e-6)
    assert np.abs(prob - monai_full.numpy())[~lung].max() > 0.1  # outside, the skipped windows count as background

    thin = torch.rand((1, 20, 40, 50))  # thinner than a window along i: padded like MONAI pads it, then cropped back
    with torch.no_grad():
        prob = _probability(net, thin)
        monai_map = torch.softmax(sliding_window_inference(thin[None], (32, 32, 32), 4, net, overlap=0.25, mode="gaussian")[0], 0)[1]
    assert prob.shape == (20, 40, 50)
    np.testing.assert_allclose(prob, monai_map.numpy(), atol=1e-6)


def test_the_bundle_interface_and_the_detector_interface_are_one_computation():
    """``inferer(inputs, network)`` (bundles, MONAI Label) gives logits whose softmax is ``probability_map`` (the
    detector, the miner), with its own lung mask from the scan, BatchNorm folding and flip TTA alike; settings come
    as a dict or keywords, ``mode`` being MONAI's name of ``blend_mode``."""
    from monai.data import MetaTensor

    from monai_lung.stage1 import stage1_lung_masks

    net = _unet_with_batch_norm_statistics()
    vol = np.full((64, 56, 48), 0.0, np.float32)  # a scaled chest: body 0.74 (40 HU), two lungs 0.11 (-850 HU)
    vol[4:60, 4:52, :] = 0.74
    vol[10:30, 12:44, 8:40] = 0.11
    vol[36:56, 12:44, 8:40] = 0.11
    image = MetaTensor(torch.as_tensor(vol[None]), affine=torch.diag(torch.tensor([1.5, 1.5, 1.5, 1.0])))
    for settings in ({"fold_batch_norm": True}, {"fold_batch_norm": False, "seg_flip_axes": (0, 2)}):
        inferer = LungSlidingWindowInferer({"roi_size": [32, 32, 32], **settings}, mode="gaussian")
        assert inferer.config.blend_mode == "gaussian" and inferer.config.roi_size == (32, 32, 32)
        with torch.no_grad():
            logits = inferer(image[None], net)
        assert logits.shape == (1, 2, 64, 56, 48) and isinstance(logits, MetaTensor)
        lung = stage1_lung_masks(image, (1.5, 1.5, 1.5), inferer.config)[0]
        assert lung.any() and not lung.all()
        np.testing.assert_array_equal(inferer.lung(image), lung)
        prob = inferer.probability_map(net, image, lung)
        np.testing.assert_allclose(torch.softmax(logits[0], 0)[1].numpy(), prob, atol=2e-6)
    assert LungSlidingWindowInferer(Stage1Config(roi_size=(48, 48, 48)), overlap=0.5).config.roi_size == (48, 48, 48)
    with pytest.raises(ValueError, match="unknown detector parameter"):
        LungSlidingWindowInferer(roi=(32, 32, 32))


def test_inference_network_folds_batch_norm_without_touching_the_original():
    from monai_lung.networks import inference_network

    net = _unet_with_batch_norm_statistics()
    norms = sum(isinstance(m, torch.nn.BatchNorm3d) for m in net.modules())
    fast = inference_network(net)
    assert not any(isinstance(m, torch.nn.BatchNorm3d) for m in fast.modules())
    assert norms == 4 and sum(isinstance(m, torch.nn.BatchNorm3d) for m in net.modules()) == norms  # the original keeps them
    x = torch.rand((2, 1, 32, 32, 32))
    with torch.no_grad():
        np.testing.assert_allclose(fast(x.contiguous(memory_format=torch.channels_last_3d)).numpy(), net(x).numpy(), atol=1e-5)
    assert fast.model[0].conv.weight.is_contiguous(memory_format=torch.channels_last_3d)
    image = torch.rand((1, 40, 36, 32))  # the inferer folds by default: the same map up to float rounding
    np.testing.assert_allclose(_probability(net, image, fold_batch_norm=True), _probability(net, image), atol=1e-5)

    from monai.networks.nets import ResNet  # stage 2's network: convN/bnN pairs and a conv-norm downsample

    torch.manual_seed(0)
    cls = ResNet("basic", [1, 1, 1, 1], [8, 16, 32, 64], spatial_dims=3, n_input_channels=1, num_classes=2).eval()
    with torch.no_grad():
        for m in cls.modules():
            if isinstance(m, torch.nn.BatchNorm3d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
        crops = torch.rand((3, 1, 16, 16, 16))
        fast_cls = inference_network(cls)
        assert not any(isinstance(m, torch.nn.BatchNorm3d) for m in fast_cls.modules())
        np.testing.assert_allclose(fast_cls(crops).numpy(), cls(crops).numpy(), atol=1e-5)


def test_a_transposed_convolution_with_few_outputs_runs_as_a_sub_pixel_convolution():
    """On a CPU, ``inference_network`` computes each stride-2 ConvTranspose3d with fewer than 8 outputs (a UNet's
    last layers) as a kernel-2 convolution and a depth-to-space shuffle: the same output, odd and even sizes, with
    and without bias, channels-last or not."""
    from monai_lung.networks import SubPixelConvTranspose3d, inference_network

    torch.manual_seed(0)
    for bias, shape in ((True, (5, 7, 6)), (False, (4, 4, 9))):
        layer = torch.nn.ConvTranspose3d(6, 3, 3, stride=2, padding=1, output_padding=1, bias=bias).eval()
        assert SubPixelConvTranspose3d.fits(layer)
        sub = SubPixelConvTranspose3d.from_transposed(layer)
        x = torch.randn(2, 6, *shape)
        with torch.no_grad():
            expected = layer(x).numpy()
            assert sub(x).shape == layer(x).shape == (2, 3, *(2 * n for n in shape))
            np.testing.assert_allclose(sub(x).numpy(), expected, atol=1e-5)
            np.testing.assert_allclose(sub(x.contiguous(memory_format=torch.channels_last_3d)).numpy(), expected, atol=1e-5)
    assert not SubPixelConvTranspose3d.fits(torch.nn.ConvTranspose3d(6, 3, 2, stride=2))
    assert not SubPixelConvTranspose3d.fits(torch.nn.ConvTranspose3d(6, 3, 3, stride=2, padding=1))

    net = _unet_with_batch_norm_statistics()
    fast = inference_network(net)
    assert sum(isinstance(m, SubPixelConvTranspose3d) for m in fast.modules()) == 2  # 4 and 2 outputs
    assert not any(isinstance(m, torch.nn.ConvTranspose3d) and m.out_channels < 8 for m in fast.modules())
    assert sum(isinstance(m, torch.nn.ConvTranspose3d) for m in net.modules()) == 2  # the original keeps its layers
    x = torch.rand((2, 1, 32, 32, 32))
    with torch.no_grad():
        np.testing.assert_allclose(fast(x.contiguous(memory_format=torch.channels_last_3d)).numpy(), net(x).numpy(), atol=1e-5)


def test_freed_memory_is_kept_for_reuse_where_glibc_allows():
    import platform

    from monai_lung.networks import keep_freed_memory

    kept = keep_freed_memory()
    assert keep_freed_memory() is kept  # once per process
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert kept


def test_flip_tta_maps_each_pass_back_onto_the_scan():
    """Each flipped pass is flipped back before averaging: a per-voxel network (flip-equivariant) gives the
    plain map, and for the UNet, flipping the scan flips the averaged map."""
    torch.manual_seed(0)
    image = torch.rand((1, 48, 48, 48))
    lung = np.zeros((48, 48, 48), bool)
    # every window of the grid touches lung; the grid's box (lung + 8 voxels) is off-centre along axis 0, so a
    # gate left unflipped would leave voxels 0-9 as background in the flipped pass
    lung[4:30, 8:40, 8:40] = True
    pointwise = torch.nn.Conv3d(1, 2, kernel_size=1).eval()
    plain = _probability(pointwise, image, lung)
    both = _probability(pointwise, image, lung, seg_flip_axes=(0, 1))
    np.testing.assert_allclose(both, plain, atol=1e-6)

    image = image[:, :32, :32, :32]

    net = UNet(3, 1, 2, (4, 8, 16), (2, 2), num_res_units=0).eval()
    tta = _probability(net, image, seg_flip_axes=(0,))
    assert np.abs(tta - _probability(net, image)).max() > 1e-4  # it averages something
    flipped = _probability(net, torch.flip(image, dims=(1,)), seg_flip_axes=(0,))
    np.testing.assert_allclose(flipped, np.flip(tta, axis=0), atol=1e-5)
    with pytest.raises(ValueError, match="seg_flip_axes: distinct spatial axes"):
        _probability(net, image, seg_flip_axes=(3,))
    assert DetectorConfig.from_dict({"seg_flip_axes": [2]}).seg_flip_axes == (2,)
    for bad in ([3], [0, 0]):
        with pytest.raises(ValueError, match="seg_flip_axes"):
            DetectorConfig.from_dict({"seg_flip_axes": bad})


def test_background_indices_stay_in_the_region():
    label = np.zeros((40, 40, 40), np.uint8)
    label[20, 20, 20] = 1
    image = np.full((40, 40, 40), 0.5, np.float32)
    region = np.zeros((40, 40, 40), bool)
    region[5:15, 5:15, 5:15] = True
    _, bg = balanced_indices(label, image, num_background=200, region=region, seed=1)
    assert len(bg) == 200 and region.ravel()[bg].all()


def test_final_scores_combine_the_stages_as_documented():
    s1 = np.array([0.5, 0.9, 0.2, 1.0, 0.0])
    s2 = np.array([0.7, 0.9, 0.2, 0.3, 0.8])
    np.testing.assert_allclose(final_score(s1, s2, "product"), s1 * s2)
    np.testing.assert_allclose(final_score(s1, s2, "stage1"), s1)
    np.testing.assert_allclose(final_score(s1, s2, "stage2"), s2)
    odds = final_score(s1, s2, "odds_product")
    assert odds[0] == pytest.approx(0.7)  # an undecided stage leaves the other's probability as it is
    assert odds[1] == pytest.approx(0.81 / (0.81 + 0.01))  # two 0.9s: odds 9 x 9 = 81
    assert odds[2] == pytest.approx(0.04 / (0.04 + 0.64))
    assert 0.0 < odds[4] < odds[3] < 1.0  # saturated stage-1 peaks are clipped, so stage 2 still orders them
    # a stage-1 peak of 0.9999999 with a hesitant stage 2 outranks 0.999 with a confident one; the product says otherwise
    a, b = final_score(np.array([0.9999999, 0.999]), np.array([0.476, 0.9]), "odds_product")
    assert a > b and 0.9999999 * 0.476 < 0.999 * 0.9
    with pytest.raises(ValueError, match="score must be one of"):
        final_score(s1, s2, "mean")
    with pytest.raises(ValueError, match="score must be one of"):
        DetectorConfig(score="mean")
    # a lighter stage-1 vote: half its log-odds; none leaves stage 2 alone; other rules ignore the weight
    half = final_score(s1[:3], s2[:3], "odds_product", stage1_weight=0.5)
    np.testing.assert_allclose(half, 1 / (1 + np.exp(-(0.5 * np.log(s1[:3] / (1 - s1[:3])) + np.log(s2[:3] / (1 - s2[:3]))))))
    assert half[1] == pytest.approx(0.9 * 3 / (0.9 * 3 + 0.1))  # odds 3 x 9 = 27
    np.testing.assert_allclose(final_score(s1, s2, "odds_product", stage1_weight=0.0), s2)
    np.testing.assert_allclose(final_score(s1, s2, "product", stage1_weight=0.5), s1 * s2)
    for bad in (-0.5, float("nan")):
        with pytest.raises(ValueError, match="stage1_weight"):
            final_score(s1, s2, "odds_product", stage1_weight=bad)
        with pytest.raises(ValueError, match="stage1_weight"):
            DetectorConfig(stage1_weight=bad)
    assert DetectorConfig.from_dict({"stage1_weight": 0.25}).stage1_weight == 0.25
    assert set(FINAL_SCORES) == {"odds_product", "product", "stage1", "stage2"}
    assert DetectorConfig().score == "odds_product"


@pytest.mark.parametrize("prefetch", [0, 2])
def test_batch_prefetch_gives_each_scan_its_own_volume_and_records_bad_ones(tmp_path, prefetch):
    """Scans prepared ahead in a background thread reach the detection step in data-list order, each with its own
    resampled volume; a scan whose preparation fails is recorded and the run goes on."""
    import SimpleITK as sitk

    from monai_lung.detection.batch import items_from_paths, run_batch
    from monai_lung.synthetic import generate_dataset
    from monai_lung.transforms import ct_preprocessing

    data = tmp_path / "data"
    generate_dataset(data, num_scans=3, seed=5, size=64, num_subsets=1)
    scans = sorted(data.glob("subset0/*.mhd"))
    bad = tmp_path / "broken.mhd"
    bad.write_text("not a header")
    items = items_from_paths([scans[0], bad, scans[1], scans[2]])
    preprocess = ct_preprocessing("image")

    def prepare(item):
        return preprocess({"image": item.image})["image"]

    seen = []

    def detect(item, image):
        seen.append(item.seriesuid)
        return {"findings": [], "grid_shape": list(image.shape[1:]), "mean": float(image.mean())}

    out = tmp_path / "preds.csv"
    stats = run_batch(detect, items, out, progress=False, prepare=prepare, prefetch=prefetch)
    assert stats["processed"] == 3 and stats["failed"] == 1
    assert seen == [s.stem for s in scans]
    failures = pd.read_csv(out.with_name(out.stem + "_failures.csv"), dtype=str, keep_default_na=False)
    assert failures["seriesuid"].tolist() == ["broken"] and "broken.mhd" in failures["error"].iloc[0]
    for scan in scans:  # the grid each scan was detected on is its own, resampled to 1 mm
        result = pd.read_json(out.with_name("preds_scans") / f"{scan.stem}.json", typ="series")
        header = sitk.ReadImage(str(scan))
        extent = np.array(header.GetSize()) * np.array(header.GetSpacing())
        assert np.all(np.abs(np.array(result["grid_shape"]) - extent) <= 2), (result["grid_shape"], extent)
        assert 0.0 < result["mean"] < 1.0


def test_the_detection_bundle_takes_the_detector_defaults_from_one_place():
    """DetectorConfig states every detector default once: the detection bundle's detector_config only links bundle-level
    ids (``@hu_window``, ``@amp``), so `detect --models` and `detect --seg-bundle --stage2-bundle` score alike, and an
    override such as ``--detector_config#seg_threshold 0.5`` still reaches the detector."""
    import json

    from tests.bundle_utils import REPO

    from monai_lung.networks import bundle_parser

    bundle = REPO / "bundles/lung_nodule_ct_two_stage_detection"
    config = json.loads((bundle / "configs/inference.json").read_text(encoding="utf-8"))["detector_config"]
    assert all(isinstance(v, str) and v.startswith("@") for v in config.values()), config
    parser = bundle_parser(bundle)
    loaded = DetectorConfig.from_dict(dict(parser.get_parsed_content("detector_config")))
    assert loaded == DetectorConfig(hu_window=loaded.hu_window, amp=loaded.amp)
    parser = bundle_parser(bundle, **{"detector_config#seg_threshold": 0.5})
    assert DetectorConfig.from_dict(dict(parser.get_parsed_content("detector_config"))).seg_threshold == 0.5


def test_zoom_to_spacing_keeps_world_positions():
    """The finer stage-1 grid: about the asked voxel size, first voxel centre in place, a blob where it was in world mm."""
    from monai.data import MetaTensor

    from monai_lung.transforms.zoom import zoom_to_spacing
    from monai_lung.io.coords import voxel_spacing

    affine = np.array([[0.0, -1.0, 0.0, 40.0], [1.0, 0.0, 0.0, -25.0], [0.0, 0.0, 1.25, -80.0], [0.0, 0.0, 0.0, 1.0]])  # i, j swapped
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in (70, 60, 50)], indexing="ij"), -1).astype(np.float64)
    centre = np.array([31.3, 22.6, 17.2])
    blob = np.exp(-(((ijk - centre) * [1.0, 1.0, 1.25]) ** 2).sum(-1) / (2 * 2.0**2))
    image = MetaTensor(torch.as_tensor(blob[None], dtype=torch.float32), affine=torch.as_tensor(affine), meta={"space": "RAS"})
    fine = zoom_to_spacing(image, (0.75, 0.75, 0.75))
    np.testing.assert_allclose(voxel_spacing(fine), 0.75, rtol=0.02)
    assert fine.shape[1:] == (93, 79, 82)  # floor((n - 1) * s / 0.75) + 1 and fine.meta["space"] == "RAS"
    np.testing.assert_allclose(fine.affine.numpy()[:3, 3], affine[:3, 3])  # voxel 0 stays where it was
    last = np.asarray(fine.shape[1:]) - 1.0
    np.testing.assert_allclose(index_to_world(last, fine.affine.numpy()), index_to_world(np.array([69.0, 59.0, 49.0]), affine), atol=1e-6)

    def world_centroid(img):
        arr = img[0].numpy().astype(np.float64)
        idx = np.stack(np.meshgrid(*[np.arange(n) for n in arr.shape], indexing="ij"), -1)
        return index_to_world((idx * arr[..., None]).sum((0, 1, 2)) / arr.sum(), img.affine.numpy())

    np.testing.assert_allclose(world_centroid(fine), world_centroid(image), atol=0.05)
    np.testing.assert_allclose(world_centroid(image), index_to_world(centre, affine), atol=0.05)
    assert zoom_to_spacing(image, (1.0, 1.0, 1.25)) is image  # already on that grid
    with pytest.raises(ValueError, match="spacing_mm"):
        zoom_to_spacing(image, (0.75, 0.0, 0.75))


def _threshold_segmenter() -> torch.nn.Module:
    """Stage-1 stand-in: nodule logit 40 (x - 0.5), an intensity threshold the detector cannot tell from a UNet."""
    segmenter = torch.nn.Conv3d(1, 2, kernel_size=1)
    with torch.no_grad():
        segmenter.weight.zero_()
        segmenter.bias.zero_()
        segmenter.weight[1] = 40.0
        segmenter.bias[1] = -20.0
    return segmenter


def _ball_scan(size: int, centre_ijk: np.ndarray, radius_vox: float):
    """A (1, size, size, size) 0/1 ball MetaTensor on a 1 mm RAS grid offset from the origin, and its 4x4 affine."""
    from monai.data import MetaTensor

    ijk = np.stack(np.meshgrid(*[np.arange(size)] * 3, indexing="ij"), -1)
    ball = (np.linalg.norm(ijk - centre_ijk, axis=-1) <= radius_vox).astype(np.float32)
    affine = np.eye(4)
    affine[:3, 3] = [-30.0, 12.0, -100.0]
    return MetaTensor(torch.as_tensor(ball[None]), affine=torch.as_tensor(affine), meta={"space": "RAS"}), affine


def test_detector_finds_the_same_world_point_on_its_own_stage1_grid():
    """seg_spacing moves stage 1 to a finer grid; candidates come back in world LPS mm for stage 2 to crop its own grid."""
    from monai_lung.detection.detector import TwoStageDetector, TwoStageNetwork

    segmenter = _threshold_segmenter()
    classifier = torch.nn.Sequential(torch.nn.AdaptiveAvgPool3d(1), torch.nn.Flatten(), torch.nn.Linear(1, 2))
    centre = np.array([20.4, 27.0, 23.6])
    image, affine = _ball_scan(48, centre, 3.5)
    expected_lps = index_to_world(centre, affine, space="RAS", points_space="LPS")
    found = {}
    for spacing in (None, [0.75, 0.75, 0.75]):
        # a fixed threshold, not the default (which may move): trilinear zooming rounds the ball's edge, and 0.3
        # (intensity > 0.48) keeps its volume within the tolerance below
        config = {"use_lung_mask": False, "roi_size": [32, 32, 32], "crop_size": [16, 16, 16], "seg_spacing": spacing,
                  "seg_threshold": 0.3, "tta": False, "device": "cpu", "merge_distance_mm": 0.0}
        result = TwoStageDetector(TwoStageNetwork(segmenter, classifier), config).detect(image)
        assert result.num_candidates == 1 and len(result.findings) == 1
        np.testing.assert_allclose(result.findings[0].coord, expected_lps, atol=0.35)
        found[str(spacing)] = result.findings[0]
    # the same ball, measured in finer voxels: more of them, the same volume in mm^3
    assert found[str([0.75] * 3)].mask.num_voxels() > 1.5 * found["None"].mask.num_voxels()  # its mask is on the finer grid
    assert found[str([0.75] * 3)].volume_mm3 == pytest.approx(found["None"].volume_mm3, rel=0.15)
    assert DetectorConfig.from_dict({"seg_spacing": [0.8, 0.8, 0.8]}).seg_spacing == (0.8, 0.8, 0.8)
    for bad in ([0.75, 0.75], [0.75, -1.0, 0.75], [float("nan")] * 3):
        with pytest.raises(ValueError, match="seg_spacing"):
            DetectorConfig.from_dict({"seg_spacing": bad})


class _CentreVoxel(torch.nn.Module):
    """Stage-2 stand-in: nodule logit 20 (x - 0.5) at the crop's centre voxel (crop_size // 2)."""

    def forward(self, x):
        c = [s // 2 for s in x.shape[2:]]
        v = x[:, 0, c[0], c[1], c[2]]
        return torch.stack([torch.zeros_like(v), 20.0 * (v - 0.5)], dim=1)


class _BrightVoxels(torch.nn.Module):
    """Stage-2 stand-in: nodule logit (number of voxels above 0.5 in the crop - threshold) / 4."""

    def __init__(self, threshold: float):
        super().__init__()
        self.threshold = threshold

    def forward(self, x):
        n = (x[:, 0] > 0.5).flatten(1).sum(1).float()
        return torch.stack([torch.zeros_like(n), (n - self.threshold) / 4.0], dim=1)


def test_stage2_crops_its_own_grid_around_the_candidates_world_point():
    """stage2_spacing: stage 2 cuts its crops from the scan zoomed to that grid, centred on the same world point."""
    from monai_lung.detection.detector import TwoStageDetector, TwoStageNetwork

    segmenter = _threshold_segmenter()
    # far from voxel 0: a 1 mm index read on a 0.8 mm grid misses by 7-10 voxels; 113 voxels of 1 mm^3
    image, _ = _ball_scan(56, np.array([36.4, 41.0, 33.6]), 3.0)
    base = {"use_lung_mask": False, "roi_size": [32, 32, 32], "crop_size": [16, 16, 16], "seg_spacing": None,
            "seg_threshold": 0.3, "tta": False, "device": "cpu", "merge_distance_mm": 0.0}
    for spacing in (None, [0.8, 0.8, 0.8], [0.6, 0.7, 0.9]):
        result = TwoStageDetector(TwoStageNetwork(segmenter, _CentreVoxel()), {**base, "stage2_spacing": spacing}).detect(image)
        assert result.num_candidates == 1
        assert result.findings[0].stage2_prob > 0.99, spacing  # the crop's centre is the ball's
        assert "stage2_grid" in result.timings_s
    # counted in 0.8 mm voxels the ball has ~1/0.512 times as many: the crops come from the finer grid
    probs = {}
    for spacing in (None, [0.8, 0.8, 0.8]):
        net = TwoStageNetwork(segmenter, _BrightVoxels(threshold=160.0))
        probs[str(spacing)] = TwoStageDetector(net, {**base, "stage2_spacing": spacing}).detect(image).findings[0].stage2_prob
    assert probs["None"] < 0.01 and probs[str([0.8] * 3)] > 0.99, probs
    # stage 1 and stage 2 on one grid share it (no second zoom): centred, and counted in 0.8 mm voxels as above
    shared = {**base, "seg_spacing": [0.8] * 3, "stage2_spacing": [0.8] * 3}
    for classifier in (_CentreVoxel(), _BrightVoxels(threshold=160.0)):
        result = TwoStageDetector(TwoStageNetwork(segmenter, classifier), shared).detect(image)
        assert result.findings[0].stage2_prob > 0.99, type(classifier).__name__
    assert DetectorConfig.from_dict({"stage2_spacing": [0.8, 0.8, 0.8]}).stage2_spacing == (0.8, 0.8, 0.8)
    for bad in ([0.8, 0.8], [0.8, 0.0, 0.8], [float("inf")] * 3):
        with pytest.raises(ValueError, match="stage2_spacing"):
            DetectorConfig.from_dict({"stage2_spacing": bad})
    # the old names are read for one release
    old = DetectorConfig.from_dict({"cls_spacing": [0.7, 0.7, 0.7], "cls_batch_size": 8})
    assert old.stage2_spacing == (0.7, 0.7, 0.7) and old.stage2_batch_size == 8


def test_two_batch_runs_into_one_folder_keep_their_own_failure_records(tmp_path):
    """The failures file is named after the output (``<stem>_failures.csv``), like the per-scan folder: a second run
    into the same folder (another data-list key) no longer erases the first run's records."""
    from monai_lung.detection.batch import ScanItem, failures_path_for, run_batch

    def detect(item):
        raise DataError(item.image, f"unreadable ({item.seriesuid})")

    runs = {"test": [ScanItem("a", "a.mhd")], "validation": [ScanItem("b", "b.mhd"), ScanItem("c", "c.mhd")]}
    for key, items in runs.items():
        assert run_batch(detect, items, tmp_path / f"preds_{key}.csv", progress=False)["failed"] == len(items)
    for key, items in runs.items():
        path = failures_path_for(tmp_path / f"preds_{key}.csv")
        assert path == tmp_path / f"preds_{key}_failures.csv"
        assert pd.read_csv(path, dtype=str)["seriesuid"].tolist() == [i.seriesuid for i in items]
    assert not (tmp_path / "failures.csv").exists()
