"""What a `monai-lung train` profile costs: measured here on the CPU, and a GPU estimate derived from it.

    .venv/bin/python benchmarks/train_estimate.py [--profile luna16] [--threads 2] [--repeats 3] [--gpu-tflops 25]

For each training network of the profile (stage 1: the segmentation bundle's UNet with the profile's channels on
``batch_size x num_samples`` patches; stage 2: the classification bundle's ResNet on ``batch_size`` crops) it
measures, for one training step (forward, backward, AdamW) of float32 on this CPU:

- seconds per step and patches (crops) per second (median of ``--repeats`` after a warm-up);
- the floating-point operations of the step (``torch.utils.flop_counter``: convolutions and matrix products);
- the bytes of the tensors autograd keeps for the backward pass (activation memory, the bulk of a GPU's
  training memory), and parameters + gradients + AdamW state.

The GPU figures are an ESTIMATE, not a measurement: step FLOPs / ``--gpu-tflops`` (the effective rate assumed for
small 3D convolutions with AMP on an A100/H100-class card, well below their peak), activation memory halved for
float16 under AMP, plus 1.5 GB for the CUDA context and allocator slack. The data pipeline is timed separately
in the bundles' guides; the profile's worker counts are set so it keeps up. Epoch and run totals use the
profile's epochs and LUNA16 counts (710 training scans per fold, 888 scans).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from monai.bundle import ConfigParser
from torch.utils.flop_counter import FlopCounterMode

from monai_lung.training.profiles import PROFILES

REPO = Path(__file__).resolve().parents[1]
TRAIN_SCANS = 710  # one LUNA16 fold: 8 of the 10 subsets train (888 scans in all)


def build(name: str, edits: dict):
    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles" / name / "configs" / "train.json"))
    for key, value in edits.items():
        parser[key] = value
    return parser.get_parsed_content("network_def")


def patch_pipeline_seconds(settings: dict, repeats: int) -> float:
    """CPU seconds per training patch of the segmentation bundle's random transforms (crop, synthetic nodule,
    zoom, flips, rotations, intensity) after its cached deterministic part, on a synthetic scan: what one data
    loader worker spends per patch (its cost depends on the 48^3 patch, not on the scan's size)."""
    import tempfile

    from monai_lung.datalist import build_datalist
    from monai_lung.synthetic import generate_dataset

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        generate_dataset(data, num_scans=4, seed=1, size=160, num_subsets=4)
        entries = build_datalist(data, data / "annotations.csv", fold=0)["training"]
        parser = ConfigParser()
        parser.read_config(str(REPO / "bundles/lung_nodule_ct_segmentation/configs/train.json"))
        parser["bundle_root"] = tmp
        if settings["stage1_synthetic_nodule_prob"] is not None:
            parser["synthetic_nodule_prob"] = settings["stage1_synthetic_nodule_prob"]
        deterministic = parser.get_parsed_content("train#deterministic_transforms")
        random_part = parser.get_parsed_content("train#random_transforms")
        samples = int(parser.get_parsed_content("num_samples"))
        from monai.transforms import Compose

        item = Compose(deterministic)({**entries[0], "image": str(data / entries[0]["image"])})
        chain = Compose(random_part)
        chain.set_random_state(seed=0)
        cpu = []
        for _ in range(repeats + 1):
            t = time.process_time()
            for _ in range(4):
                chain(dict(item))
            cpu.append((time.process_time() - t) / (4 * samples))
        return statistics.median(cpu[1:])


def measure(network: torch.nn.Module, batch: torch.Tensor, target: torch.Tensor, loss_fn, repeats: int) -> dict:
    opt = torch.optim.AdamW(network.parameters(), lr=1e-3)
    network.train()

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(network(batch), target)
        loss.backward()
        opt.step()

    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()  # warm-up, and the saved-tensor bytes of one step
    with FlopCounterMode(display=False) as counter:
        step()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    params = sum(p.numel() for p in network.parameters())
    return {"seconds": statistics.median(times), "flops": counter.get_total_flops(), "activation_bytes": sum(saved),
            "state_bytes": params * 4 * 4}  # weights, gradients, AdamW's two moments, float32


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="luna16", choices=sorted(PROFILES))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--gpu-tflops", type=float, default=25.0, help="assumed effective GPU rate for the estimate")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    s = PROFILES[args.profile]
    seg_train = json.loads((REPO / "bundles/lung_nodule_ct_segmentation/configs/train.json").read_text())
    cls_train = json.loads((REPO / "bundles/lung_nodule_ct_classification/configs/train.json").read_text())

    patches = (s["stage1_batch_size"] or seg_train["batch_size"]) * (s["stage1_num_samples"] or seg_train["num_samples"])
    edge = seg_train["patch_size"]
    seg_edits = {"network_def#channels": s["stage1_channels"]} if s["stage1_channels"] else {}
    unet = build("lung_nodule_ct_segmentation", seg_edits)
    x = torch.rand(patches, 1, *edge)
    y = (torch.rand(patches, *edge) > 0.99).long()
    stage1 = measure(unet, x, y, torch.nn.CrossEntropyLoss(), args.repeats)

    crops = cls_train["batch_size"]
    resnet = build("lung_nodule_ct_classification", {})
    xc = torch.rand(crops, 1, *cls_train["patch_size"])
    yc = torch.randint(0, 2, (crops,))
    stage2 = measure(resnet, xc, yc, torch.nn.CrossEntropyLoss(), args.repeats)

    torch.set_num_threads(1)
    per_patch = patch_pipeline_seconds(s, args.repeats)
    torch.set_num_threads(args.threads)
    samples = s["stage1_num_samples"] or seg_train["num_samples"]
    stage1_patches = TRAIN_SCANS * samples * (s["stage1_epochs"] + s["stage1_finetune_epochs"])
    stage2_crops = s["stage2_epoch_length"] * s["stage2_epochs"]
    print(f"profile {args.profile}; CPU: {args.threads} threads, float32; GPU: ESTIMATE at {args.gpu_tflops:g} effective TFLOP/s, AMP")
    for name, m, n, per_step, total in (
        (f"stage 1 UNet {s['stage1_channels'] or seg_train['network_def']['channels']}, {patches} x {edge[0]}^3", stage1, "patches", patches, stage1_patches),
        (f"stage 2 ResNet, {crops} x {cls_train['patch_size'][0]}^3", stage2, "crops", crops, stage2_crops),
    ):
        cpu_rate = per_step / m["seconds"]
        gpu_rate = per_step / (m["flops"] / (args.gpu_tflops * 1e12))
        gpu_mem = (m["activation_bytes"] / 2 + m["state_bytes"]) / 2**30 + 1.5
        print(f"{name}: {m['flops'] / 1e9:.1f} GFLOP per step; CPU {m['seconds']:.2f} s per step = {cpu_rate:.1f} {n}/s "
              f"({m['flops'] / m['seconds'] / 1e9:.0f} GFLOP/s); activations {m['activation_bytes'] / 2**30:.2f} GiB float32, "
              f"weights+optimizer {m['state_bytes'] / 2**20:.0f} MiB")
        print(f"  per fold: {total:,} {n}; CPU {total / cpu_rate / 3600:.1f} h; GPU estimate {gpu_rate:,.0f} {n}/s, "
              f"{total / gpu_rate / 3600:.2f} h, ~{gpu_mem:.1f} GiB memory")
    workers = s["num_workers"]
    print(f"stage-1 patch pipeline: {per_patch * 1e3:.0f} ms CPU per patch (one thread); {workers} loader workers feed "
          f"{workers / per_patch:.0f} patches/s: the {stage1_patches:,} patches of a fold take ~{stage1_patches * per_patch / workers / 3600:.1f} h "
          f"when the GPU is faster than that")


if __name__ == "__main__":
    main()
