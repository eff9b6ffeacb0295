"""Benchmark: feature-extraction throughput of jad's backbones against PyTorch.

For each backbone, images/s of the trunk up to level 4 (all four stages) at
``--size`` x ``--size``, batch ``--batch``, float32, in the same run:

- jad: ``jad.backbones.extract_features`` (jitted; compile time reported apart);
- peer: the PyTorch reference of the same architecture with the same weights layout
  (torchvision's ``resnet18`` / ``wide_resnet50_2``, geffnet's
  ``tf_efficientnet_lite0``), ``torch.inference_mode``, channels-first as torch wants
  it, the trunk only (no head), ``torch.set_num_threads(os.cpu_count())``.

Timing: the best of ``--repeat`` rounds, each round calling jad and then the peer
once (interleaved, so that the drift of a shared machine hits both alike).
Weights are random (throughput does not depend on them). On a GPU both sides also run
in bfloat16 (jad: ``dtype="bfloat16"``; torch: ``torch.autocast``).

Run:  python experiments/bench_backbones.py          (a few minutes on 2 CPU cores)
      JAD_XLA_CPU_KERNELS=default python experiments/bench_backbones.py
                                                (XLA's default CPU kernels for jad)
      python experiments/bench_backbones.py --quick  (smoke run)
Needs torch and torchvision (``pip install ".[torch]"``) and geffnet
(``pip install --no-deps geffnet==1.0.2``) for the peers. Writes JSON (``--json``).
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import jax
import numpy as np
from _report import write_json

from jad import backbones as bb

TORCH_NAMES = {
    "resnet18": "resnet18",
    "wide_resnet50_2": "wide_resnet50_2",
    "efficientnet_lite0": "tf_efficientnet_lite0",
}


def best_of_interleaved(fns, repeat):
    """Best wall time of each function over ``repeat`` rounds (after one warm-up).

    Each round calls every function once, in turn, so that the speed drift of a
    shared machine hits jad and its peer alike.
    """
    for fn in fns:
        fn()
    best = [float("inf")] * len(fns)
    for _ in range(repeat):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - start)
    return best


def jad_runner(name, images, dtype):
    """(call running the trunk once, compile seconds)."""
    variables = bb.init_variables(name, jax.random.key(0))
    images = jax.device_put(images)
    start = time.perf_counter()
    jax.block_until_ready(bb.extract_features(name, variables, images, 4, dtype=dtype))
    compile_s = time.perf_counter() - start

    def run():
        jax.block_until_ready(
            bb.extract_features(name, variables, images, 4, dtype=dtype)
        )

    return run, compile_s


def torch_trunk(name):
    import torch

    if name == "efficientnet_lite0":
        import geffnet

        model = geffnet.tf_efficientnet_lite0()
        trunk = torch.nn.Sequential(model.conv_stem, model.bn1, model.act1,
                                    *model.blocks)
    else:
        import torchvision

        model = getattr(torchvision.models, name)()
        trunk = torch.nn.Sequential(model.conv1, model.bn1, model.relu,
                                    model.maxpool, model.layer1, model.layer2,
                                    model.layer3, model.layer4)
    return trunk.eval()


def torch_runner(name, images, device, bf16):
    """A call running the PyTorch trunk once on ``images`` (NCHW copy)."""
    import torch

    trunk = torch_trunk(name).to(device)
    x = torch.from_numpy(images.transpose(0, 3, 1, 2).copy()).to(device)

    def run():
        with torch.inference_mode(), torch.autocast(
            device_type=device, dtype=torch.bfloat16, enabled=bf16
        ):
            trunk(x)
        if device == "cuda":
            torch.cuda.synchronize()

    return run


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbones", nargs="+", default=list(TORCH_NAMES))
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="batch 2, size 128")
    parser.add_argument("--no-peer", action="store_true", help="skip PyTorch")
    parser.add_argument("--json", default="experiments/results/bench_backbones.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.batch, args.repeat = 128, 2, 2

    backend = jax.default_backend()
    torch_device = None
    if not args.no_peer:
        try:
            import torch

            torch.set_num_threads(os.cpu_count() or 1)
            torch_device = "cuda" if torch.cuda.is_available() else "cpu"
        except ImportError:
            print("torch is not installed: jad only.")
    dtypes = ["float32"] + (["bfloat16"] if backend == "gpu" else [])
    images = np.random.default_rng(0).standard_normal(
        (args.batch, args.size, args.size, 3)
    ).astype(np.float32)

    rows = []
    for name in args.backbones:
        for dtype in dtypes:
            jad_run, compile_s = jad_runner(name, images, dtype)
            runs = [jad_run]
            if torch_device is not None:
                runs.append(
                    torch_runner(name, images, torch_device, dtype == "bfloat16")
                )
            seconds = best_of_interleaved(runs, args.repeat)
            jad_ips = args.batch / seconds[0]
            peer_ips = args.batch / seconds[1] if len(seconds) > 1 else None
            rows.append({
                "backbone": name,
                "dtype": dtype,
                "jad_images_per_s": jad_ips,
                "jad_compile_s": compile_s,
                "torch_images_per_s": peer_ips,
                "speedup": None if peer_ips is None else jad_ips / peer_ips,
            })
            r = rows[-1]
            peer = "-" if peer_ips is None else f"{peer_ips:8.2f}"
            ratio = "-" if peer_ips is None else f"{r['speedup']:.2f}x"
            print(f"{name:20s} {dtype:9s} jad {jad_ips:8.2f} img/s "
                  f"(compile {compile_s:.1f} s)  torch {peer} img/s  {ratio}",
                  flush=True)

    print()
    print("| backbone | dtype | jad img/s | torch img/s | jad / torch |")
    print("|---|---|---|---|---|")
    for r in rows:
        peer = "-" if r["torch_images_per_s"] is None else (
            f"{r['torch_images_per_s']:.2f}")
        ratio = "-" if r["speedup"] is None else f"{r['speedup']:.2f}x"
        print(f"| {r['backbone']} | {r['dtype']} | {r['jad_images_per_s']:.2f} | "
              f"{peer} | {ratio} |")
    report = {
        "benchmark": "bench_backbones",
        "size": args.size,
        "batch": args.batch,
        "jax_backend": backend,
        "jax_devices": [str(d) for d in jax.devices()],
        "torch_device": torch_device,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "rows": rows,
    }
    if args.json:
        write_json(args.json, report)


if __name__ == "__main__":
    main()
