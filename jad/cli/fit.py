"""``jad fit``: fit a detector on a dataset's training images and save it."""

from __future__ import annotations

import argparse
import dataclasses
import os

import jax
import numpy as np

from jad import backbones as bb
from jad import data, pipeline
from jad.cli.common import (
    DEFAULT_BACKBONE,
    add_data_arguments,
    build_config,
    field_assignment,
    float_type,
    open_split,
    positive_int,
)
from jad.methods import get_method, list_methods


def add_fit_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``jad fit``."""
    parser.add_argument(
        "--method", required=True, choices=list_methods(), help="the detection method"
    )
    add_data_arguments(parser, required=True)
    parser.add_argument(
        "--backbone",
        default=None,
        choices=bb.list_backbones(),
        help=f"ImageNet backbone (default: {DEFAULT_BACKBONE}; none for a method "
        "that reads images)",
    )
    parser.add_argument(
        "--weights",
        default=None,
        help="local backbone weights (.pth/.safetensors/.npz); default: the official "
        "pretrained weights",
    )
    parser.add_argument("--out", required=True, help="folder for the fitted detector")
    parser.add_argument(
        "--input",
        dest="inputs",
        action="append",
        default=None,
        type=field_assignment,
        metavar="NAME=DIR",
        help="an extra input of the method's fit (jad methods lists them, e.g. "
        "PAE's textures=DIR): the images of DIR, sorted by name, resized as "
        "--size/--crop say (repeat for several)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a detector already saved in --out",
    )
    parser.add_argument(
        "--size",
        type=positive_int,
        default=256,
        help="images are resized to SIZE x SIZE",
    )
    parser.add_argument(
        "--crop",
        type=positive_int,
        default=None,
        help="then centre-cropped to CROP x CROP (e.g. 224)",
    )
    presets = "; ".join(
        f"{name}: {', '.join(get_method(name).presets)}"
        for name in list_methods()
        if get_method(name).presets
    )
    parser.add_argument(
        "--preset",
        default=None,
        metavar="NAME",
        help="a named config of the method, the starting point of --set "
        f"(default: the method's first; {presets or 'none registered'}; "
        "see jad methods)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=None,
        type=field_assignment,
        metavar="FIELD=VALUE",
        help="change a field of the method's config, parsed by its type (repeat "
        "for several): --set coreset_ratio=0.01 --set levels=2,3; tuples as 2,3 "
        "or JSON [2, 3], nested ones as JSON [[1, 2], [3]], none for None; jad "
        "methods lists the fields",
    )
    parser.add_argument(
        "--num-train",
        type=positive_int,
        default=None,
        help="use only the first N training images",
    )
    parser.add_argument(
        "--holdout",
        type=_holdout_fraction,
        default=0.1,
        help="fraction of the training images (evenly spaced, at most 64) kept out "
        "of the fit and scored to set the detector's threshold for jad predict; 0 "
        "fits on every image as the papers do, and the threshold then comes from "
        "training images, which score lower than new ones (too low a threshold)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="PRNG seed of the method's fit (PatchCore: the coreset's "
        "projection and start; PaDiM is deterministic). Data splits "
        "do not depend on it: MTD's split is fixed at seed 0",
    )


def run_fit(args: argparse.Namespace) -> int:
    """``jad fit``."""
    # Every option is checked before minutes of fitting.
    pipeline.check_output_folder("--out", args.out, overwrite=args.overwrite)
    config = build_config(
        args.method, preset=args.preset, overrides=args.overrides or ()
    )
    _check_levels(args.method, config)
    transform = data.Transform(size=args.size, crop=args.crop)
    train = open_split(args, "train", transform, args.num_train)
    train, held_out = _split_holdout(train, args.holdout)
    spec = get_method(args.method)
    inputs = _read_inputs(spec, args.inputs or (), transform)
    if spec.inputs == "images":  # no backbone (e.g. PAE)
        for flag, value in (("--backbone", args.backbone), ("--weights", args.weights)):
            if value is not None:
                raise ValueError(
                    f"{flag}: method {args.method} reads images, not backbone "
                    "features; it has no backbone."
                )
        backbone = {"backbone": None, "variables": None, "weights": None}
    else:
        name = args.backbone or DEFAULT_BACKBONE
        if spec.min_images is not None:  # before any feature is extracted
            need = spec.min_images(config, bb.backbone_info(name).channels)
            if len(train) < need:
                raise ValueError(
                    f"--method {args.method}: this config needs at least {need} "
                    f"training images with backbone {name}; got {len(train)}"
                    + (f" (after --holdout {args.holdout:g})"
                       if held_out is not None else "")
                    + ". Choose a preset or --set fields with fewer channels.")
        backbone = {
            "backbone": name,
            "variables": bb.load_pretrained(name, weights=args.weights),
            # A file is recorded by absolute path; a tag ("IMAGENET1K_V2") as given.
            "weights": (
                os.path.abspath(args.weights)
                if args.weights is not None and os.path.exists(args.weights)
                else args.weights
            ),
        }
    detector = pipeline.fit_detector(
        args.method,
        train.batches(args.batch_size, num_workers=args.workers),
        config=config,
        key=jax.random.key(args.seed),
        transform=transform,
        inputs=inputs,
        # a method that trains checkpoints beside --out, and resumes from there
        checkpoint_dir=checkpoint_folder(args.out) if spec.trains else None,
        **backbone,
    )
    if held_out is None:
        calibration_images = _evenly_spaced(train, _MAX_HOLDOUT)
        why = (
            "--holdout 0"
            if args.holdout == 0
            else f"--holdout {args.holdout:g} of {len(train)} training images leaves "
            "none to hold out or none to fit"
        )
        print(
            f"note: {why}: the threshold comes from {len(calibration_images)} "
            "training images, which the fit has seen; new normal images score "
            "higher, so expect false alarms from jad predict."
        )
    else:
        calibration_images = held_out
    calibration = pipeline.calibrate(
        detector, calibration_images.batches(args.batch_size), progress=True
    )
    print(
        f"threshold {calibration.threshold:.4f}: the largest image score of "
        f"{calibration.num_images} "
        + ("held-out" if held_out is not None else "training")
        + " images (jad predict reports images above it as anomalous)"
    )
    out = pipeline.save_detector(
        detector,
        args.out,
        overwrite=args.overwrite,
        metadata={
            "num_train": len(train),
            "data": os.path.abspath(args.data),
            "kind": args.kind,
            "category": args.category,
            "holdout": 0 if held_out is None else len(held_out),
            "calibration": calibration._asdict(),
        },
    )
    print(f"saved the fitted {args.method} detector to {out}")
    return 0


def _check_levels(method: str, config) -> None:
    """Refuses backbone levels that do not exist, before any data is read."""
    if get_method(method).inputs != "features":
        return
    levels = getattr(config, "levels", ())
    flat = []
    stack = [levels]
    while stack:
        item = stack.pop()
        if isinstance(item, (tuple, list)):
            stack.extend(item)
        else:
            flat.append(item)
    valid = bb.registry.LEVELS  # the same for every backbone
    if not set(flat) <= set(valid):
        raise ValueError(
            f"config.levels {levels}: backbone levels are {', '.join(map(str, valid))} "
            "(0 the stem, 4 the deepest)."
        )


_MAX_HOLDOUT = 64
_holdout_fraction = float_type(
    "a number in [0, 0.5]", lambda value: 0.0 <= value <= 0.5
)


def _evenly_spaced_indices(n: int, count: int) -> list[int]:
    if count >= n:
        return list(range(n))
    return sorted({round(i * (n - 1) / max(1, count - 1)) for i in range(count)})


def _evenly_spaced(dataset, count: int):
    picks = _evenly_spaced_indices(len(dataset), count)
    return dataclasses.replace(
        dataset, samples=tuple(dataset.samples[i] for i in picks)
    )


def _split_holdout(train, fraction: float):
    """(images to fit, held-out images or None).

    ``fraction`` of the images, at most 64, evenly spaced: no randomness, the same
    split for every seed.
    """
    count = min(_MAX_HOLDOUT, round(fraction * len(train)))
    if count == 0 or count >= len(train) - 1:
        return train, None
    picks = set(_evenly_spaced_indices(len(train), count))
    keep = tuple(s for i, s in enumerate(train.samples) if i not in picks)
    held = tuple(s for i, s in enumerate(train.samples) if i in picks)
    return (
        dataclasses.replace(train, samples=keep),
        dataclasses.replace(train, samples=held),
    )


def checkpoint_folder(out) -> str:
    """Where ``jad fit --out OUT`` keeps a training method's checkpoints.

    ``OUT.train`` beside the detector's folder: a fit that is interrupted and run
    again with the same ``--out`` resumes from it.

    Args:
      out: the ``--out`` folder.

    Returns:
      The checkpoint folder's absolute path.
    """
    return os.path.abspath(str(out).rstrip("/\\") + ".train")


def _read_inputs(spec, items, transform) -> dict:
    """``--input NAME=DIR`` as arrays: the images of each DIR, checked first."""
    inputs = {}
    for item in items:
        name, folder = item.split("=", 1)
        if name not in spec.fit_inputs:
            raise ValueError(
                f"--input {item}: method {spec.name} takes "
                f"{', '.join(spec.fit_inputs) or 'no extra input'}."
            )
        if name in inputs:
            raise ValueError(f"--input {name} is given twice.")
        if not os.path.isdir(folder):
            raise ValueError(f"--input {item}: {folder} is not a folder.")
        files = sorted(
            p for p in os.listdir(folder)
            if os.path.splitext(p)[1].lower() in data.IMAGE_EXTENSIONS
        )
        if not files:
            raise ValueError(f"--input {item}: {folder} holds no image.")
        inputs[name] = np.stack([
            data.load_image(os.path.join(folder, f), transform=transform)
            for f in files
        ])
    return inputs
