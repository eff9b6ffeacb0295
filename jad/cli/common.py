"""Options and helpers shared by the ``jad`` subcommands."""

from __future__ import annotations

import argparse
import dataclasses

from jad import backbones as bb
from jad import data
from jad.methods import get_method

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


def transform_to_json(transform: data.Transform) -> dict:
    """The preprocessing as stored in a detector's metadata."""
    return dataclasses.asdict(transform)


def transform_from_json(values: dict) -> data.Transform:
    """The preprocessing recorded by ``jad fit`` (the default when absent)."""
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return data.Transform(**values)


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
