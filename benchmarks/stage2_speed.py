"""Stage-2 network speed on this machine: inference and training crops/s of 3D ResNets on cubic crops.

    .venv/bin/python benchmarks/stage2_speed.py [--threads 1] [--repeats 5] [--batch 16] [--crop 48] [--configs bundle resnet18 ...]
    .venv/bin/python benchmarks/stage2_speed.py --chain demo_output/crop_bank/bank --datalist demo_output/datalist/datalist.json

With ``--chain BANK`` it times the bundle's training transform chain instead (``train#dataset`` as the bundle
builds it: crops read from the bank, augmented, on plain tensors) over the same items, once on the whole stored
crop and once on the bundle's ``bank_view_size`` view, in crops per second on this process's threads.

The crop edge defaults to the bundle's ``patch_size`` (32 since classification bundle 0.4.0).

Each figure is the median (and best) of ``--repeats`` timed runs after a warm-up, in crops per second of
wall time and per second of CPU time of this process. The CPU may be shared with other work: wall
figures then drop, CPU-time figures much less (with ``--threads 1``; with more threads OpenMP's
spin-waiting under contention inflates CPU time too).
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


def bundle_patch_edge() -> int:
    return int(json.loads(BUNDLE.read_text())["patch_size"][0])


def bundle_network_kwargs() -> dict:
    cfg = json.loads(BUNDLE.read_text())["network_def"]
    return {k: v for k, v in cfg.items() if k not in ("_target_", "spatial_dims", "n_input_channels", "num_classes")}


def variants() -> dict[str, tuple[dict, bool]]:
    """name -> (ResNet keyword arguments, channels_last_3d). ``bundle`` is the bundle's own network."""
    b = bundle_network_kwargs()
    return {
        "bundle": (b, True),
        "bundle_contiguous": (b, False),
        "no_max_pool": ({**b, "no_max_pool": True}, True),  # layer1 at crop/2 (16^3 for 32^3 crops)
        "layers_2222": ({**b, "layers": [2, 2, 2, 2]}, True),
        "widths_x2": ({**b, "block_inplanes": [2 * c for c in b["block_inplanes"]]}, True),
        "resnet18": ({"block": "basic", "layers": [2, 2, 2, 2], "block_inplanes": [64, 128, 256, 512]}, True),
    }


def measure_network(
    kwargs: dict, channels_last: bool = True, batch: int = 16, repeats: int = 5, steps: int = 2, crop: int | None = None
) -> dict:
    """Crops/s of one network: ``infer`` (eval, no grad) and ``train`` (forward, backward, AdamW step).

    Input (batch, 1, crop, crop, crop) float32 uniform noise (speed does not depend on the values); ``crop``
    is the bundle's patch edge unless given. Returns, per mode, the median and best over ``repeats`` runs of
    ``steps`` batches, in crops per wall second and per CPU second, plus the parameter count in millions.
    """
    crop = bundle_patch_edge() if crop is None else crop
    torch.manual_seed(0)
    fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
    net = ResNet(spatial_dims=3, n_input_channels=1, num_classes=2, **kwargs).to(memory_format=fmt)
    x = torch.rand(batch, 1, crop, crop, crop).contiguous(memory_format=fmt)
    y = torch.randint(0, 2, (batch,))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)

    def train_step():
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()

    def infer_step():
        with torch.no_grad():
            net(x)

    out = {"params_M": sum(p.numel() for p in net.parameters()) / 1e6}
    for mode, fn in (("infer", infer_step), ("train", train_step)):
        net.train(mode == "train")
        fn()  # warm-up: allocator, oneDNN primitives
        wall, cpu = [], []
        for _ in range(repeats):
            t, c = time.perf_counter(), time.process_time()
            for _ in range(steps):
                fn()
            wall.append(steps * batch / (time.perf_counter() - t))
            cpu.append(steps * batch / max(time.process_time() - c, 1e-9))
        out.update({f"{mode}_wall_median": statistics.median(wall), f"{mode}_wall_best": max(wall),
                    f"{mode}_cpu_median": statistics.median(cpu)})
    return out


def measure_chain(bank_dir: Path, datalist: Path, items: int = 400, repeats: int = 3) -> dict:
    """Crops/s of the bundle's training chain (``train#dataset``) on ``items`` random training items of a crop bank,
    with ``view_size`` None (the whole stored crop) and the bundle's ``bank_view_size``: median and best of
    ``repeats`` passes after a warm-up pass (which also loads the crops into memory, as training does)."""
    import numpy as np
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(BUNDLE))
    parser.update({"bundle_root": str(BUNDLE.parents[1]), "crop_bank_dir": str(bank_dir), "data_list_file_path": str(datalist),
                   "dataset_dir": str(datalist.parent)})
    dataset = parser.get_parsed_content("train#dataset")
    view = dataset.view_size
    picks = np.random.default_rng(0).choice(len(dataset), min(items, len(dataset)), replace=False)
    out = {"view_size": view}
    for name, size in (("whole", None), ("view", view)):
        dataset.view_size = size
        [dataset[int(i)] for i in picks]
        rates = []
        for _ in range(repeats):
            t = time.perf_counter()
            for i in picks:
                dataset[int(i)]
            rates.append(len(picks) / (time.perf_counter() - t))
        out[name] = (statistics.median(rates), max(rates))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--crop", type=int, default=bundle_patch_edge(), help="crop edge in voxels (default: the bundle's patch_size)")
    parser.add_argument("--configs", nargs="*", default=list(variants()))
    parser.add_argument("--chain", type=Path, metavar="BANK", help="time the training transform chain on this crop bank instead")
    parser.add_argument("--datalist", type=Path, help="with --chain: the data list whose training scans the bank holds")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.chain is not None:
        if args.datalist is None:
            parser.error("--chain needs --datalist")
        r = measure_chain(args.chain, args.datalist, repeats=args.repeats)
        print(f"training chain, {args.threads} thread(s), crops/s (median, best of {args.repeats}):")
        print(f"  whole stored crop      {r['whole'][0]:7.1f} {r['whole'][1]:7.1f}")
        print(f"  central {r['view_size']}^3 view      {r['view'][0]:7.1f} {r['view'][1]:7.1f}")
        return
    table = variants()
    print(f"torch {torch.__version__}, {args.threads} thread(s), batch {args.batch} of {args.crop}^3 crops, {args.repeats} repeats (CPU may be shared)")
    print(f"{'network':<19}{'params':>8} | {'infer crops/s':>14}{'best':>7}{'per CPU-s':>11} | {'train crops/s':>14}{'best':>7}{'per CPU-s':>11}")
    for name in args.configs:
        kwargs, cl = table[name]
        r = measure_network(kwargs, cl, args.batch, 2 if name == "resnet18" else args.repeats, steps=1 if name == "resnet18" else 2, crop=args.crop)
        print(
            f"{name:<19}{r['params_M']:>7.2f}M | {r['infer_wall_median']:>14.1f}{r['infer_wall_best']:>7.1f}{r['infer_cpu_median']:>11.1f}"
            f" | {r['train_wall_median']:>14.1f}{r['train_wall_best']:>7.1f}{r['train_cpu_median']:>11.1f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
