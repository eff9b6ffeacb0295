"""``jad fit``, ``jad evaluate`` and ``jad predict``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path

import jax
import numpy as np

from jad import backbones as bb
from jad import data, evaluation, pipeline
from jad.methods import get_method, list_methods

DEFAULT_BACKBONE = "efficientnet_lite0"


def add_data_arguments(parser: argparse.ArgumentParser, *, required: bool) -> None:
    """Options that locate a dataset split (optional ones default to the fit's)."""
    parser.add_argument(
        "--data", required=required,
        help="dataset root folder" + ("" if required else " (default: the fit's)"),
    )
    parser.add_argument(
        "--category", default=None,
        help="category (sub-folder) of the dataset; not needed for mtd"
        + ("" if required else " (default: the fit's)"),
    )
    parser.add_argument(
        "--kind", default="mvtec" if required else None, choices=data.KINDS,
        help="folder layout of --data" + ("" if required else " (default: the fit's)"),
    )
    parser.add_argument("--batch-size", type=int, default=8, help="images per batch")
    parser.add_argument("--workers", type=int, default=2,
                        help="threads decoding images")


def parse_levels(text: str) -> tuple[int, ...]:
    """``"2,3"`` -> (2, 3): the value of ``--levels``."""
    try:
        levels = tuple(int(x) for x in text.split(","))
    except ValueError:
        levels = ()
    if not levels:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated level numbers such as 2,3; got {text!r}"
        )
    valid = bb.registry.LEVELS  # the same for every backbone
    if not set(levels) <= set(valid):
        raise argparse.ArgumentTypeError(
            f"backbone levels are {', '.join(map(str, valid))} (0 the stem, 4 the "
            f"deepest); got {text!r}"
        )
    return levels


def add_fit_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``jad fit``."""
    parser.add_argument("--method", required=True, choices=list_methods(),
                        help="the detection method")
    add_data_arguments(parser, required=True)
    parser.add_argument("--backbone", default=DEFAULT_BACKBONE,
                        choices=bb.list_backbones(), help="ImageNet backbone")
    parser.add_argument(
        "--weights", default=None,
        help="local backbone weights (.pth/.safetensors/.npz); default: the official "
        "pretrained weights",
    )
    parser.add_argument("--out", required=True, help="folder for the fitted detector")
    parser.add_argument("--size", type=int, default=256,
                        help="images are resized to SIZE x SIZE")
    parser.add_argument("--crop", type=int, default=None,
                        help="then centre-cropped to CROP x CROP (e.g. 224)")
    parser.add_argument("--levels", default=None, type=parse_levels,
                        help="backbone levels, e.g. 2,3 (default: the method's)")
    parser.add_argument("--preset", default=None,
                        choices=("official", "anomalib"),
                        help="PatchCore only: which reference implementation to "
                        "follow (default: official)")
    parser.add_argument("--coreset-ratio", type=float, default=None,
                        help="PatchCore only: fraction of training patches kept "
                        "(default: 0.1)")
    parser.add_argument("--num-train", type=int, default=None,
                        help="use only the first N training images")
    parser.add_argument("--seed", type=int, default=0, help="random seed")


def make_config(method: str, *, preset=None, coreset_ratio=None, levels=None):
    """The method's config with the command-line overrides applied.

    ``preset`` and ``coreset_ratio`` are PatchCore's (None: its defaults, official
    and 0.1); given for another method they are an error, not silently ignored.
    ``levels``: a tuple of ints or a string such as "2,3".
    """
    spec = get_method(method)
    overrides = {}
    if levels:
        overrides["levels"] = (
            parse_levels(levels) if isinstance(levels, str) else tuple(levels)
        )
    if method != "patchcore":
        for flag, value in (("--preset", preset), ("--coreset-ratio", coreset_ratio)):
            if value is not None:
                raise ValueError(f"{flag} applies to patchcore only, not {method}.")
        return spec.config_type(**overrides)
    overrides["coreset_ratio"] = 0.1 if coreset_ratio is None else coreset_ratio
    if preset == "anomalib":
        return spec.config_type.anomalib(**overrides)
    return spec.config_type(**overrides)


def open_split(args, split: str, transform: data.Transform, num_train=None):
    """The dataset split named by the data options."""
    options = {}
    if num_train is not None and split == "train":
        options["num_train"] = num_train
    return data.load_dataset(args.kind, args.data, args.category, split,
                             transform=transform, **options)


def _transform_to_json(transform: data.Transform) -> dict:
    return dataclasses.asdict(transform)


def _transform_from_json(values: dict) -> data.Transform:
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return data.Transform(**values)


def run_fit(args: argparse.Namespace) -> int:
    """``jad fit``."""
    # Every option is checked before minutes of fitting.
    pipeline.check_output_folder("jad fit", args.out)
    config = make_config(args.method, preset=args.preset,
                         coreset_ratio=args.coreset_ratio, levels=args.levels)
    transform = data.Transform(size=args.size, crop=args.crop)
    train = open_split(args, "train", transform, args.num_train)
    variables = bb.load_pretrained(args.backbone, weights=args.weights)
    detector = pipeline.fit_detector(
        args.method,
        train.batches(args.batch_size, num_workers=args.workers),
        backbone=args.backbone,
        variables=variables,
        config=config,
        key=jax.random.key(args.seed),
        # A file is recorded by absolute path; a tag ("IMAGENET1K_V2") as given.
        weights=(os.path.abspath(args.weights)
                 if args.weights is not None and os.path.exists(args.weights)
                 else args.weights),
    )
    out = pipeline.save_detector(
        detector, args.out,
        metadata={"transform": _transform_to_json(transform),
                  "num_train": len(train), "data": os.path.abspath(args.data),
                  "kind": args.kind, "category": args.category},
    )
    print(f"saved the fitted {args.method} detector to {out}")
    return 0


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``jad evaluate``."""
    parser.add_argument("--state", required=True,
                        help="folder written by jad fit")
    add_data_arguments(parser, required=False)
    parser.add_argument("--json", default=None, help="write the metrics here")
    parser.add_argument("--overlays", default=None,
                        help="write PNG overlays into this folder")


def print_table(rows: list[dict]) -> None:
    """Prints one row per result: method and metrics."""
    header = ("method", "image_auroc", "pixel_auroc", "pro", "pixel_ap",
              "ms/img", "fit s")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))

    def fmt(value, digits=3):
        return "-" if value is None else f"{value:.{digits}f}"

    for row in rows:
        print(
            f"| {row['method']} | {fmt(row['image_auroc'])} | "
            f"{fmt(row['pixel_auroc'])} | {fmt(row['pro'])} | "
            f"{fmt(row['pixel_ap'])} | {fmt(row['seconds_per_image'] * 1e3, 1)} | "
            f"{fmt(row.get('fit_seconds'), 1)} |"
        )


def run_evaluate(args: argparse.Namespace) -> int:
    """``jad evaluate``."""
    meta = pipeline.read_metadata(args.state)
    transform = _transform_from_json(meta.get("transform", {}))
    for name in ("data", "kind", "category"):  # default to what the fit used
        if getattr(args, name) is None:
            setattr(args, name, meta.get(name))
    if args.data is None:
        raise ValueError("--data is required (the detector does not record it).")
    args.kind = args.kind or "mvtec"
    if args.json and Path(args.json).is_dir():
        raise ValueError(f"--json must be a file path; {args.json} is a folder.")
    detector = pipeline.load_detector(args.state)
    test = open_split(args, "test", transform)
    result = evaluation.evaluate(detector, test, batch_size=args.batch_size,
                                 num_workers=args.workers)
    row = {"method": detector.method, "backbone": detector.backbone,
           **result.metrics}
    print_table([row])
    if result.metrics["empty_masks"]:
        print(f"note: {len(result.metrics['empty_masks'])} defective image(s) have "
              "an empty mask after the > 127 threshold (listed in the JSON as "
              "empty_masks); their pixels count as normal in the pixel metrics.")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(row, indent=2))
        print(f"wrote {args.json}")
    if args.overlays:
        written = evaluation.save_overlays(result, test, args.overlays)
        print(f"wrote {len(written)} overlays to {args.overlays}")
    return 0


def add_predict_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``jad predict``."""
    parser.add_argument("--state", required=True, help="folder written by jad fit")
    parser.add_argument("images", nargs="+", help="image files")
    parser.add_argument("--out", default=os.path.join("results", "predict"),
                        help="folder for the maps (PNG, .npy) and scores.json")


def run_predict(args: argparse.Namespace) -> int:
    """``jad predict``."""
    from jad import viz

    missing = [p for p in args.images if not os.path.isfile(p)]
    if missing:  # before any output is written
        raise ValueError(f"image files not found: {', '.join(missing)}.")
    meta = pipeline.read_metadata(args.state)
    transform = _transform_from_json(meta.get("transform", {}))
    raw_transform = dataclasses.replace(transform, normalize=False)
    detector = pipeline.load_detector(args.state)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    stems = [Path(p).stem for p in args.images]
    for index, path in enumerate(args.images):
        raw = data.load_image(path, transform=raw_transform)  # decoded once
        image = data.normalize_imagenet(raw) if transform.normalize else raw
        maps, scores = pipeline.anomaly_maps(detector, image[None])
        amap = np.asarray(maps[0])
        if not (np.isfinite(amap).all() and np.isfinite(float(scores[0]))):
            raise ValueError(
                f"{path}: the anomaly map is not finite (the backbone's features "
                "overflowed); nothing is reported for it."
            )
        stem = stems[index]
        if stems.count(stem) > 1:  # same name in different folders: keep both
            stem = f"{index:03d}_{stem}"
        np.save(out / f"{stem}_map.npy", amap)
        viz.save_overlay(out / f"{stem}_overlay.png", raw, amap)
        results[str(path)] = float(scores[0])
        print(f"{path}: score {float(scores[0]):.4f}")
    (out / "scores.json").write_text(json.dumps(results, indent=2))
    print(f"wrote maps, overlays and scores.json to {out}")
    return 0
