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


class SubPixelConvTranspose3d(torch.nn.Module):
    """A ``ConvTranspose3d`` of stride 2, kernel 3, padding 1 and output padding 1 computed as a kernel-2 convolution
    with 8x its output channels, one group per output phase (even or odd voxel along each axis), then a
    depth-to-space shuffle: the same sums over the same taps, so the same function up to float rounding.

    Per axis, output ``2m`` is ``x[m] w[1]`` and output ``2m + 1`` is ``x[m] w[2] + x[m + 1] w[0]`` (``x[n] = 0``),
    so each phase is a 2-tap convolution of the input padded by one voxel at the end of each axis. Made from a trained
    layer by :meth:`from_transposed`; takes and gives (B, C, i, j, k) tensors like the layer it replaces.
    """

    #: (kernel index for input offset 0, for offset +1) of the even and the odd output phase; None: no tap
    PHASE_TAPS = ((1, None), (2, 0))

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, out_channels: int):
        super().__init__()
        self.out_channels = int(out_channels)
        self.weight = torch.nn.Parameter(weight, requires_grad=False)
        self.bias = None if bias is None else torch.nn.Parameter(bias, requires_grad=False)

    @classmethod
    def fits(cls, layer: torch.nn.Module) -> bool:
        """Whether ``layer`` is a transposed convolution this class computes."""
        return (
            type(layer) is torch.nn.ConvTranspose3d and layer.groups == 1 and tuple(layer.stride) == (2, 2, 2)
            and tuple(layer.kernel_size) == (3, 3, 3) and tuple(layer.padding) == (1, 1, 1)
            and tuple(layer.output_padding) == (1, 1, 1) and tuple(layer.dilation) == (1, 1, 1)
            and layer.padding_mode == "zeros"
        )

    @classmethod
    def from_transposed(cls, layer: torch.nn.ConvTranspose3d) -> "SubPixelConvTranspose3d":
        w = layer.weight.detach()  # (in, out, 3, 3, 3)
        cin, cout = w.shape[:2]
        phased = w.new_zeros((cout, 2, 2, 2, cin, 2, 2, 2))  # (out, phase i, j, k, in, tap i, j, k)
        for pi, taps_i in enumerate(cls.PHASE_TAPS):
            for pj, taps_j in enumerate(cls.PHASE_TAPS):
                for pk, taps_k in enumerate(cls.PHASE_TAPS):
                    for ti, ki in enumerate(taps_i):
                        for tj, kj in enumerate(taps_j):
                            for tk, kk in enumerate(taps_k):
                                if None not in (ki, kj, kk):
                                    phased[:, pi, pj, pk, :, ti, tj, tk] = w[:, :, ki, kj, kk].T
        bias = None if layer.bias is None else layer.bias.detach().repeat_interleave(8)
        return cls(phased.reshape(cout * 8, cin, 2, 2, 2), bias, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.nn.functional.conv3d(torch.nn.functional.pad(x, (0, 1, 0, 1, 0, 1)), self.weight, self.bias)
        b, _, i, j, k = y.shape
        y = y.view(b, self.out_channels, 2, 2, 2, i, j, k).permute(0, 1, 5, 2, 6, 3, 7, 4)
        return y.reshape(b, self.out_channels, 2 * i, 2 * j, 2 * k)


def keep_freed_memory(block_bytes: int = 64 << 20, keep_bytes: int = 256 << 20) -> bool:
    """Let glibc's malloc serve blocks up to ``block_bytes`` from its heap and keep up to ``keep_bytes`` of freed heap
    for reuse, instead of mapping each block anew and unmapping it when freed (Linux with glibc only; elsewhere
    nothing happens and False is returned).

    A network's activations are tens of MB each and freed after every window or batch; mapped anew, each costs the
    kernel's zeroing of its pages on first touch, a large share of the stage-1 UNet's CPU time. Larger blocks (whole
    scans) are still mapped and returned when freed. Process-wide; the first call decides."""
    global _MEMORY_KEPT
    if _MEMORY_KEPT is None:
        _MEMORY_KEPT = False
        try:
            import ctypes

            mallopt = ctypes.CDLL(None).mallopt
        except (OSError, AttributeError, TypeError):  # not glibc (Windows has no process handle here)
            return False
        m_trim_threshold, m_mmap_threshold = -1, -3
        limit = 2**31 - 1  # mallopt takes a C int
        _MEMORY_KEPT = bool(mallopt(m_mmap_threshold, ctypes.c_int(min(int(block_bytes), limit)))) and bool(
            mallopt(m_trim_threshold, ctypes.c_int(min(int(keep_bytes), limit)))
        )
    return _MEMORY_KEPT


_MEMORY_KEPT: bool | None = None


def inference_network(network: torch.nn.Module, device: torch.device | str = "cpu") -> torch.nn.Module:
    """A copy of ``network`` for inference on ``device``: eval mode, every BatchNorm that directly follows a
    convolution folded into it (the same function up to float rounding, one pass over the activations less), on a
    CPU in channels-last memory layout (oneDNN's fast 3D kernels), with each stride-2 transposed convolution of fewer
    than 8 outputs computed as a :class:`SubPixelConvTranspose3d`, and freed memory kept for reuse
    (:func:`keep_freed_memory`). The given network is not changed, so weights loaded into it later
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
        # oneDNN vectorises a channels-last transposed convolution over its output channels: with fewer than 8 (a
        # segmentation network's last layer) most vector lanes idle, and the sub-pixel form with 8x the outputs is faster
        for module in list(net.modules()):
            for name, child in list(module.named_children()):
                if SubPixelConvTranspose3d.fits(child) and child.out_channels < 8:
                    setattr(module, name, SubPixelConvTranspose3d.from_transposed(child))
        net = net.to(memory_format=torch.channels_last_3d)
        keep_freed_memory()
    return net
