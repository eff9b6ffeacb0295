"""``jad demo``: the main job, anomaly detection end to end on built-in data.

Builds the embedded default dataset (real photographs from scikit-image with cut-paste
defects and exact masks; no download), loads the real ImageNet EfficientNet-Lite0
backbone shipped as a dependency, fits and evaluates every registered method (with its
``demo`` preset where it has one), prints
one table (method x metrics x time) and writes ``summary.json`` plus overlay PNGs.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import jax

from jad import backbones as bb
from jad import data, evaluation, pipeline
from jad.cli.common import print_table
from jad.methods import get_method, list_methods
from jad.methods.base import make_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Registers the demo's options."""
    parser.add_argument("--category", default="brick",
                        choices=data.BUILTIN_CATEGORIES,
                        help="built-in category")
    parser.add_argument("--methods", default=",".join(list_methods()),
                        help="comma-separated methods to run")
    parser.add_argument("--size", type=int, default=224,
                        help="images are SIZE x SIZE")
    parser.add_argument("--data-root", default=None,
                        help="where the built-in data is written (default: the "
                        "jad cache, $JAD_CACHE or ~/.cache/jad)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per batch")
    parser.add_argument("--seed", type=int, default=0,
                        help="random seed of the fits")
    parser.add_argument("--out", default=os.path.join("results", "demo"),
                        help="output folder (summary.json, overlays/)")


def _demo_config(method: str):
    """The method's ``demo`` preset where it has one, else its default config.

    PSDL's default needs 169 training images; its ``demo`` preset fits 40.
    """
    return make_config(method, "demo" if "demo" in get_method(method).presets else None)


def run(args: argparse.Namespace) -> int:
    """Runs the demo; returns the exit status."""
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in methods:
        if m not in list_methods():
            raise ValueError(
                f"unknown method {m!r}; valid methods are {', '.join(list_methods())}."
            )
    root = data.builtin_dataset(root=args.data_root, category=args.category)
    print(f"jad demo: built-in data '{args.category}' in {root} "
          f"(device: {jax.devices()[0]})")
    transform = data.Transform(size=args.size)
    train = data.load_dataset("mvtec", root, args.category, "train",
                              transform=transform)
    test = data.load_dataset("mvtec", root, args.category, "test",
                             transform=transform)
    backbone = "efficientnet_lite0"
    # loaded only when a method reads backbone features
    needs_backbone = any(get_method(m).inputs == "features" for m in methods)
    variables = bb.load_pretrained(backbone) if needs_backbone else None
    out = Path(args.out)
    rows = []
    for method in methods:
        start = time.perf_counter()
        # a method that reads images (e.g. PAE) has no backbone
        features = get_method(method).inputs == "features"
        detector = pipeline.fit_detector(
            method, train.batches(args.batch_size),
            backbone=backbone if features else None,
            variables=variables if features else None, config=_demo_config(method),
            key=jax.random.key(args.seed), transform=transform,
        )
        fit_seconds = time.perf_counter() - start
        result = evaluation.evaluate(detector, test, batch_size=args.batch_size)
        evaluation.save_overlays(result, test, out / "overlays" / method, limit=8)
        rows.append({"method": method, "backbone": backbone if features else None,
                     "fit_seconds": fit_seconds, **result.metrics})
    print()
    print(f"{len(train)} training and {len(test)} test images at "
          f"{args.size}x{args.size}, backbone {backbone}:")
    print_table(rows)
    out.mkdir(parents=True, exist_ok=True)
    summary = out / "summary.json"
    summary.write_text(json.dumps({"category": args.category, "size": args.size,
                                   "results": rows}, indent=2))
    print(f"\nwrote {summary} and overlays in {out / 'overlays'}")
    return 0
