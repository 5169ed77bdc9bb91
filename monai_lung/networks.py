"""Networks from MONAI bundles: the config parser, trained weights and the device they run on.

The one place that turns a bundle folder into a network, used by detection, stage-2 training, checkpoint
handling and the command line, so that every tool loads weights the same way.
"""

from __future__ import annotations

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
