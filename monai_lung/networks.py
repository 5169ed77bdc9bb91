"""Networks from MONAI bundles: the config parser, trained weights, the device they run on and their inference copy.

The one place that turns a bundle folder into a network, used by detection, stage-2 training, checkpoint
handling and the command line, so that every tool loads weights the same way; and the one place that makes a
trained network fast for inference (:func:`inference_network`), used by both stages.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import torch

from monai_lung.io.errors import DataError


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else as ``torch.device`` reads it."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def bundle_parser(bundle_dir: str | os.PathLike, config: str = "inference.json", **overrides):
    """A ``monai.bundle.ConfigParser`` over ``bundle_dir/configs/<config>`` with ``bundle_root`` set."""
    from monai.bundle import ConfigParser  # MONAI's bundle machinery is heavy; `monai-lung --help` stays fast

    bundle_dir = Path(bundle_dir)
    path = bundle_dir / "configs" / config
    if not path.is_file():
        raise DataError(path, "bundle config not found")
    parser = ConfigParser()
    parser.read_config(str(path))
    parser["bundle_root"] = str(bundle_dir)
    for key, value in overrides.items():
        parser[key] = value
    return parser


def load_weights(network: torch.nn.Module, path: str | os.PathLike, map_location=None, strict: bool = True) -> torch.nn.Module:
    """Load ``path`` (a bundle's ``model.pt``) into ``network`` and return it.

    Accepts a plain state dict (what ``CheckpointSaver`` writes for a single object), a dict holding it
    under ``model`` / ``network`` / ``state_dict``, and DDP ``module.``-prefixed keys.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "weights file not found (train the bundle first)")
    state = torch.load(path, map_location=map_location, weights_only=True)
    for key in ("model", "network", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    target = network.module if hasattr(network, "module") and isinstance(network.module, torch.nn.Module) else network
    target.load_state_dict(state, strict=strict)
    return network


def stage_network(
    bundle_dir: str | os.PathLike,
    weights: str | os.PathLike | None = None,
    device: torch.device | str = "cpu",
    config: str = "inference.json",
) -> torch.nn.Module:
    """A bundle's ``network_def`` with its trained weights (``models/model.pt`` unless ``weights``), in eval
    mode on ``device``."""
    network = bundle_parser(bundle_dir, config).get_parsed_content("network_def")
    weights = Path(weights) if weights is not None else Path(bundle_dir) / "models" / "model.pt"
    device = resolve_device(device)
    return load_weights(network, weights, map_location=device).to(device).eval()


def _fold_batch_norm(conv: torch.nn.Module, norm: torch.nn.Module) -> bool:
    """Fold an eval-mode BatchNorm that directly follows ``conv`` into the conv's weight and bias (in place);
    False, and nothing changed, when the pair is not one this knows how to fold."""
    if not isinstance(norm, torch.nn.modules.batchnorm._BatchNorm) or norm.training or norm.running_mean is None:
        return False
    if not isinstance(conv, (torch.nn.Conv3d, torch.nn.ConvTranspose3d)) or conv.groups != 1:
        return False
    scale = torch.rsqrt(norm.running_var.double() + norm.eps)
    if norm.weight is not None:
        scale = scale * norm.weight.double()
    shift = -norm.running_mean.double() * scale
    if norm.bias is not None:
        shift = shift + norm.bias.double()
    out_axis = 1 if isinstance(conv, torch.nn.ConvTranspose3d) else 0  # ConvTranspose3d weights are (in, out, ...)
    shape = [1] * conv.weight.ndim
    shape[out_axis] = -1
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
    with torch.no_grad():
        conv.weight.copy_((conv.weight.double() * scale.view(shape)).to(conv.weight.dtype))
        conv.bias = torch.nn.Parameter((bias * scale + shift).to(conv.weight.dtype), requires_grad=False)
    return True


def inference_network(network: torch.nn.Module, device: torch.device | str = "cpu") -> torch.nn.Module:
    """A copy of ``network`` for inference on ``device``: eval mode, every BatchNorm that directly follows a
    convolution folded into it (the same function up to float rounding, one pass over the activations less), on a
    CPU in channels-last memory layout (oneDNN's fast 3D kernels). On this project's networks on 2 CPU cores: the
    stage-1 UNet ~2x, the stage-2 ResNet ~1.9x. The given network is not changed, so weights loaded into it later
    are never shadowed. Folded: MONAI ``Convolution`` blocks (conv, then ``adn`` starting with its norm), MONAI
    ResNet blocks (``convN`` then ``bnN``) and conv-norm pairs in a ``Sequential``."""
    from monai.networks.nets import resnet

    device = torch.device(device)
    net = copy.deepcopy(network).to(device).eval()
    resnet_types = tuple(getattr(resnet, n) for n in ("ResNet", "ResNetBlock", "ResNetBottleneck") if hasattr(resnet, n))
    for module in net.modules():
        conv, adn = getattr(module, "conv", None), getattr(module, "adn", None)
        if conv is not None and adn is not None and hasattr(adn, "N"):
            first = next(iter(adn.named_children()), (None, None))[0]
            if first == "N" and _fold_batch_norm(conv, adn.N):  # the norm must come right after the conv
                adn.N = torch.nn.Identity()
        if isinstance(module, resnet_types):  # their forward applies bnN right after convN
            for name, child in list(module.named_children()):
                norm = getattr(module, "bn" + name[4:], None) if name.startswith("conv") else None
                if norm is not None and _fold_batch_norm(child, norm):
                    setattr(module, "bn" + name[4:], torch.nn.Identity())
        if isinstance(module, torch.nn.Sequential):
            for i in range(len(module) - 1):
                if _fold_batch_norm(module[i], module[i + 1]):
                    module[i + 1] = torch.nn.Identity()
    if device.type == "cpu":
        net = net.to(memory_format=torch.channels_last_3d)
    return net
