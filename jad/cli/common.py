"""Options and helpers shared by the ``jad`` subcommands."""

from __future__ import annotations

import argparse
import dataclasses
import math
import os

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
    parser.add_argument("--batch-size", type=positive_int, default=8,
                        help="images per batch")
    parser.add_argument("--workers", type=non_negative_int, default=2,
                        help="threads decoding images (0: decode in the main thread)")


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1 (argparse names the flag on error)."""
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """An argparse type: an integer >= 0."""
    return _int_at_least(text, 0)


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < low:
        raise argparse.ArgumentTypeError(f"expected an integer >= {low}; got {text!r}")
    return value


def float_type(description: str, accept):
    """An argparse type for floats that ``accept(value)`` admits (NaN never does).

    Args:
      description: what is expected, for the message ("a number in (0, 1]").
      accept: the predicate on the parsed float.

    Returns:
      The parser, for ``add_argument(type=...)``.
    """

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if math.isnan(value) or not accept(value):
            raise argparse.ArgumentTypeError(f"expected {description}; got {text!r}")
        return value

    return parse


finite_float = float_type("a finite number", math.isfinite)
fraction = float_type("a number in (0, 1]", lambda value: 0.0 < value <= 1.0)


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


def _categories(kind: str, root) -> tuple[str, ...]:
    try:
        return data.list_categories(kind, root)
    except (ValueError, OSError):
        return ()


def check_data_options(kind: str, root, category) -> None:
    """Refuses a missing ``--category`` or a ``--kind`` that does not fit ``--data``.

    The message lists the categories found, or the kind whose layout the folder has.
    """
    if not os.path.isdir(root):
        return  # the loader names the missing folder
    found = _categories(kind, root)
    if found and (kind == "mtd" or category is not None):
        return  # the loader names an unknown category and lists these
    if found:
        raise ValueError(
            f"--category is required for --kind {kind}; categories under {root}: "
            f"{', '.join(found)}."
        )
    others = [k for k in data.KINDS if k != kind and _categories(k, root)]
    hint = (
        f"; it has the layout of --kind {others[0]} (categories: "
        f"{', '.join(_categories(others[0], root))})" if others else ""
    )
    raise ValueError(f"{root} holds no {kind} category{hint}.")


def open_split(args, split: str, transform: data.Transform, num_train=None):
    """The dataset split named by the data options."""
    check_data_options(args.kind, args.data, args.category)
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
    if not isinstance(values, dict):
        raise ValueError(
            f"the detector's recorded transform must be an object; got {values!r}."
        )
    try:
        values = {k: tuple(v) if isinstance(v, list) else v
                  for k, v in values.items()}
        return data.Transform(**values)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"the detector's recorded transform is invalid: {err}"
        ) from err


def print_table(
    rows: list[dict], *, label: str = "method", counts: bool = False
) -> None:
    """Prints a Markdown table, one row per result: its label, metrics and times.

    Columns: ``label`` (each row's value under that key), ``images``
    (``num_images``; only with ``counts``), image AUROC, pixel AUROC, PRO, pixel
    AP, then ``ms/img`` (``seconds_per_image``) when a row has it and ``fit s (incl.
    features)`` (``fit_seconds``: ``jad demo``'s wall time of ``fit_detector``,
    backbone feature extraction included) when a row has it. A missing or ``None``
    value prints as ``-``.
    """

    def fmt(value, digits=3, scale=1.0):
        return "-" if value is None else f"{value * scale:.{digits}f}"

    columns = [(label, lambda row: str(row[label]))]
    if counts:
        columns.append(("images", lambda row: str(row["num_images"])))
    for name in ("image_auroc", "pixel_auroc", "pro", "pixel_ap"):
        columns.append((name, lambda row, name=name: fmt(row.get(name))))
    if any(row.get("seconds_per_image") is not None for row in rows):
        columns.append(
            ("ms/img", lambda row: fmt(row.get("seconds_per_image"), 1, 1e3))
        )
    if any(row.get("fit_seconds") is not None for row in rows):
        columns.append(("fit s (incl. features)",
                        lambda row: fmt(row.get("fit_seconds"), 1)))
    print("| " + " | ".join(title for title, _ in columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(cell(row) for _, cell in columns) + " |")
