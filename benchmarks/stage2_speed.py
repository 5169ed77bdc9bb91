"""Stage-2 network speed on this machine: inference and training crops/s of 3D ResNets on 48^3 crops.

    .venv/bin/python benchmarks/stage2_speed.py [--threads 2] [--repeats 5] [--batch 32] [--configs bundle tiny_pool ...]

Each figure is the median (and best) of ``--repeats`` timed runs after a warm-up, because the CPU may be
shared: the best run is closest to what the network costs, the median to what one gets.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from monai.networks.nets import ResNet

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "lung_nodule_ct_classification" / "configs" / "train.json"

# candidates compared in the bundle's README; "bundle" is read from train.json
CONFIGS = {
    "resnet18": dict(block="basic", layers=[2, 2, 2, 2], block_inplanes=[64, 128, 256, 512]),
    "tiny_c7_pool": dict(block="basic", layers=[1, 1, 1, 1], block_inplanes=[16, 32, 64, 128]),
    "tiny_c3_pool": dict(block="basic", layers=[1, 1, 1, 1], block_inplanes=[16, 32, 64, 128], conv1_t_size=3),
    "tiny_c3_full_res": dict(block="basic", layers=[1, 1, 1, 1], block_inplanes=[16, 32, 64, 128], conv1_t_size=3, no_max_pool=True),
    "tiny_c5s2": dict(block="basic", layers=[1, 1, 1, 1], block_inplanes=[16, 32, 64, 128], conv1_t_size=5, conv1_t_stride=2, no_max_pool=True),
    "wide_c5s2": dict(block="basic", layers=[1, 1, 1, 1], block_inplanes=[32, 64, 128, 256], conv1_t_size=5, conv1_t_stride=2, no_max_pool=True),
    "deep_c5s2": dict(block="basic", layers=[2, 2, 2, 2], block_inplanes=[16, 32, 64, 128], conv1_t_size=5, conv1_t_stride=2, no_max_pool=True),
}


def bundle_network_kwargs() -> dict:
    cfg = json.loads(BUNDLE.read_text())["network_def"]
    return {k: v for k, v in cfg.items() if k not in ("_target_", "spatial_dims", "n_input_channels", "num_classes")}


def build(kwargs: dict) -> torch.nn.Module:
    return ResNet(spatial_dims=3, n_input_channels=1, num_classes=2, **kwargs)


def measure_network(kwargs: dict, batch: int = 32, repeats: int = 5, steps: int = 2) -> dict:
    """Crops/s of one network: ``infer`` (eval, no grad) and ``train`` (forward, backward, AdamW step).

    Input (batch, 1, 48, 48, 48) float32 uniform noise (speed does not depend on the values).
    Returns medians and bests over ``repeats`` runs of ``steps`` batches, plus the parameter count.
    """
    torch.manual_seed(0)
    net = build(kwargs)
    x = torch.rand(batch, 1, 48, 48, 48)
    y = torch.randint(0, 2, (batch,))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    infer, train = [], []
    net.eval()
    with torch.no_grad():
        net(x)  # warm-up (allocator, oneDNN primitives)
        for _ in range(repeats):
            t = time.perf_counter()
            for _ in range(steps):
                net(x)
            infer.append(steps * batch / (time.perf_counter() - t))
    net.train()

    def step():
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()

    step()
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(steps):
            step()
        train.append(steps * batch / (time.perf_counter() - t))
    return {
        "params_M": sum(p.numel() for p in net.parameters()) / 1e6,
        "infer_median": statistics.median(infer), "infer_best": max(infer),
        "train_median": statistics.median(train), "train_best": max(train),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--configs", nargs="*", default=["bundle", *CONFIGS])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}, {args.repeats} repeats (CPU may be shared)")
    print(f"{'network':<18}{'params':>9}{'infer c/s med':>15}{'best':>8}{'train c/s med':>15}{'best':>8}")
    for name in args.configs:
        kwargs = bundle_network_kwargs() if name == "bundle" else CONFIGS[name]
        r = measure_network(kwargs, args.batch, args.repeats, steps=1 if name == "resnet18" else 2)
        print(
            f"{name:<18}{r['params_M']:>8.2f}M{r['infer_median']:>15.1f}{r['infer_best']:>8.1f}"
            f"{r['train_median']:>15.1f}{r['train_best']:>8.1f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
