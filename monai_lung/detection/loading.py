"""Building the detector from bundles: the two-stage bundle, or the two stage bundles directly."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from monai_lung.deprecation import renamed
from monai_lung.detection.detector import DetectorConfig, TwoStageDetector, TwoStageNetwork
from monai_lung.io.atomic import atomic_path
from monai_lung.io.errors import DataError
from monai_lung.networks import bundle_parser, load_weights, resolve_device, stage_network


def stage2_crop_size(stage2_bundle: str | os.PathLike) -> tuple[int, int, int]:
    """The stage-2 bundle's crop edge (i, j, k) in voxels of the resampled grid: its ``patch_size``."""
    parser = bundle_parser(stage2_bundle)
    if "patch_size" not in parser.config:
        raise DataError(Path(stage2_bundle) / "configs" / "inference.json", "no patch_size (the classifier's crop size)")
    return tuple(int(v) for v in parser.get_parsed_content("patch_size"))


def _settings_of(module: torch.nn.Module) -> dict:
    """Plain settings (ints, floats, bools, strings and tuples of them) of a module and its submodules,
    by submodule name: what a state dict does not show, e.g. ResNet's ``no_max_pool`` or a conv's stride."""
    plain = (bool, int, float, str, tuple, list, type(None))
    return {
        name: {k: v for k, v in vars(sub).items() if not k.startswith("_") and k != "training" and isinstance(v, plain)}
        for name, sub in module.named_modules()
    }


def _preprocessing_of(parser) -> dict:
    return {key: [float(v) for v in parser.get_parsed_content(key)] for key in ("spacing", "hu_window")}


def preprocessing_settings(bundle_dir: str | os.PathLike) -> dict:
    """A bundle's ``{"spacing": (3,) mm, "hu_window": (2,) HU}`` from its ``configs/inference.json``."""
    return _preprocessing_of(bundle_parser(bundle_dir))


def check_same_preprocessing(reference: str | os.PathLike, *others: str | os.PathLike) -> dict:
    """Refuse bundles whose ``spacing`` or ``hu_window`` differ from ``reference``'s; return the reference's.

    The detector resamples and windows a scan once, with the stage-1 bundle's settings, and cuts the
    stage-2 crops from that volume: a classifier trained at another voxel size or window would score
    nodules drawn at the wrong size or contrast without any error.
    """
    ref = preprocessing_settings(reference)
    for other in others:
        theirs = preprocessing_settings(other)
        for key in ("spacing", "hu_window"):
            if not np.allclose(theirs[key], ref[key]):
                raise DataError(
                    Path(other) / "configs" / "inference.json",
                    f"{key} {theirs[key]} differs from {ref[key]} of {reference}: the two stages must share the "
                    "scan preprocessing (the detector cuts stage-2 crops from the stage-1 volume)",
                )
    return ref


def assemble_two_stage(seg_bundle: str | os.PathLike, stage2_bundle: str | os.PathLike, detection_bundle: str | os.PathLike) -> Path:
    """Write ``detection_bundle/models/model.pt``: the two trained stage networks as one state dict.

    The three bundles must share ``spacing`` and ``hu_window`` (:func:`check_same_preprocessing`), and the
    detection bundle's own ``network_def`` must describe the same architectures (the weights load strictly
    and every module setting, such as ResNet's ``no_max_pool``, agrees) and its ``detector_config#crop_size``
    must be the classifier's ``patch_size``; all is checked before anything is written.
    """
    check_same_preprocessing(seg_bundle, stage2_bundle, detection_bundle)
    config_path = Path(detection_bundle) / "configs" / "inference.json"
    combined = TwoStageNetwork(stage_network(seg_bundle), stage_network(stage2_bundle))
    parser = bundle_parser(detection_bundle)
    target_net = parser.get_parsed_content("network_def")
    try:
        target_net.load_state_dict(combined.state_dict())
    except RuntimeError as err:
        raise DataError(config_path, f"network_def does not match the stage bundles' networks ({str(err).splitlines()[0]})") from None
    # the weights alone can fit a different network (max pooling on or off) or crop size: both change what stage 2 sees
    theirs, ours = _settings_of(combined), _settings_of(target_net)
    if ours != theirs:
        diff = sorted(name for name, values in ours.items() if theirs.get(name) != values)
        raise DataError(config_path, f"network_def differs from the stage bundles' networks in settings of {', '.join(diff) or 'the root'}")
    crop = DetectorConfig.from_dict(dict(parser.get_parsed_content("detector_config"))).crop_size
    patch = stage2_crop_size(stage2_bundle)
    if crop != patch:
        raise DataError(config_path, f"detector_config#crop_size {list(crop)} differs from the classifier's patch_size {list(patch)} in {stage2_bundle}")
    out = Path(detection_bundle) / "models" / "model.pt"
    with atomic_path(out) as tmp:
        torch.save(combined.state_dict(), tmp)
    return out


def load_detector(
    det_bundle: str | os.PathLike | None = None,
    seg_bundle: str | os.PathLike | None = None,
    stage2_bundle: str | os.PathLike | None = None,
    device: str = "auto",
    config_overrides: dict | None = None,
) -> tuple[TwoStageDetector, dict]:
    """The detector and its preprocessing: ``{"spacing", "hu_window", "transform"}``, ``transform`` being the
    bundle's own ``preprocessing`` chain (``{"image": path} -> {"image": (1, i, j, k) MetaTensor}``), so that an
    override in the bundle changes the command line's detection too.

    Either ``det_bundle`` (the two-stage detection bundle: its ``detector_config``, ``spacing``,
    ``hu_window``, ``preprocessing`` and ``models/model.pt``) or ``seg_bundle`` + ``stage2_bundle`` (default detector
    settings, spacing, window and preprocessing from the segmentation bundle, crop size from the classification
    bundle's ``patch_size``).
    """
    if det_bundle is not None:
        parser = bundle_parser(det_bundle)
        network = load_weights(parser.get_parsed_content("network_def"), Path(det_bundle) / "models" / "model.pt")
        config = dict(parser.get_parsed_content("detector_config"))
        prep = {**_preprocessing_of(parser), "transform": parser.get_parsed_content("preprocessing")}
    elif seg_bundle is not None and stage2_bundle is not None:
        prep = check_same_preprocessing(seg_bundle, stage2_bundle)
        prep["transform"] = bundle_parser(seg_bundle).get_parsed_content("preprocessing")
        network = TwoStageNetwork(stage_network(seg_bundle), stage_network(stage2_bundle))
        config = {"hu_window": prep["hu_window"], "crop_size": stage2_crop_size(stage2_bundle)}
    else:
        raise ValueError("give the detection bundle (det_bundle) or both stage bundles (seg_bundle and stage2_bundle)")
    config.update(renamed(dict(config_overrides or {}), "detector parameter"))
    config["device"] = str(resolve_device(device))
    return TwoStageDetector(network, config), prep
