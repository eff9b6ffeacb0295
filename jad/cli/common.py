"""Options and helpers shared by the ``jad`` subcommands."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import types
import typing
from typing import Any

import numpy as np

from jad import data
from jad.methods.base import get_method, make_config

DEFAULT_BACKBONE = "efficientnet_lite0"


def add_data_arguments(parser: argparse.ArgumentParser, *, required: bool) -> None:
    """Options that locate a dataset split (optional ones default to the fit's)."""
    parser.add_argument(
        "--data",
        required=required,
        help="dataset root folder" + ("" if required else " (default: the fit's)"),
    )
    parser.add_argument(
        "--category",
        default=None,
        help="category (sub-folder) of the dataset; not needed for mtd"
        + ("" if required else " (default: the fit's)"),
    )
    parser.add_argument(
        "--kind",
        default="mvtec" if required else None,
        choices=data.KINDS,
        help="folder layout of --data" + ("" if required else " (default: the fit's)"),
    )
    parser.add_argument(
        "--batch-size", type=positive_int, default=8, help="images per batch"
    )
    parser.add_argument(
        "--workers",
        type=non_negative_int,
        default=2,
        help="threads decoding images (0: decode in the main thread)",
    )


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


def field_assignment(text: str) -> str:
    """An argparse type: ``FIELD=VALUE`` (the value is parsed once the method is known).

    Args:
      text: the command-line word, such as ``coreset_ratio=0.01``.

    Returns:
      ``text`` unchanged.
    """
    name, sep, _ = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(
            f"expected NAME=VALUE (--set levels=2,3, --input textures=DIR); got "
            f"{text!r}"
        )
    return text


def config_field_types(config_type: type) -> dict[str, Any]:
    """The fields of a method's config dataclass and their resolved annotations.

    Args:
      config_type: a dataclass (``get_method(name).config_type``); string
        annotations (``from __future__ import annotations``) are resolved with
        ``typing.get_type_hints``.

    Returns:
      Dict field name -> type (``int``, ``tuple[int, ...]``, ``int | None``, ...), in
      the dataclass's order; fields that ``__init__`` does not take are left out.

    Raises:
      TypeError: ``config_type`` not a dataclass, or an annotation that does not
        resolve.
    """
    if not dataclasses.is_dataclass(config_type):
        raise TypeError(
            f"config_field_types: config_type must be a dataclass; got {config_type!r}."
        )
    try:
        hints = typing.get_type_hints(config_type)
    except (NameError, TypeError) as err:
        raise TypeError(
            f"config_field_types: the annotations of {config_type.__name__} do not "
            f"resolve: {err}"
        ) from err
    return {
        f.name: hints.get(f.name, Any)
        for f in dataclasses.fields(config_type)
        if f.init
    }


def type_name(hint) -> str:
    """A type annotation as written in Python: ``tuple[int, ...]``, ``int | None``."""
    if hint is type(None) or hint is None:
        return "None"
    if hint is Ellipsis:
        return "..."
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(arg) for arg in args)
    if origin is typing.Literal:
        return f"Literal[{', '.join(map(repr, args))}]"
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join(type_name(arg) for arg in args)}]" if args else name
    return getattr(hint, "__name__", str(hint))


_TRUE = ("true", "1", "yes")
_FALSE = ("false", "0", "no")
_NONE = ("none", "null")
_SCALARS = (bool, int, float, str)


def parse_value(hint, text: str):
    """A config field's value from its command-line text, by the field's type.

    Supported: ``int``, ``float``, ``bool`` (true/false, yes/no, 1/0), ``str``,
    ``Literal[...]``, ``X | None`` (``none`` or ``null`` gives None) and tuples:
    ``tuple[int, ...]`` (or of floats, bools, strings; fixed lengths such as
    ``tuple[int, int]`` too) as ``2,3`` or as JSON ``[2, 3]``, and nested ones such as
    ``tuple[tuple[int, ...], ...]`` as JSON (``[[1, 2], [3]]``). JSON arrays become
    tuples, so the config stays hashable.

    Args:
      hint: the field's resolved type (see :func:`config_field_types`).
      text: the value as typed.

    Returns:
      The Python value.

    Raises:
      ValueError: ``text`` is not a value of that type (the message says what is
        expected). TypeError: a type this parser does not know.

    Example:
      >>> parse_value(tuple[tuple[int, ...], ...], "[[1, 2], [3]]")
      ((1, 2), (3,))
    """
    _check_supported(hint)
    try:
        return _parse_text(hint, text)
    except ValueError as err:
        detail = f" ({err})" if str(err) else ""
        raise ValueError(
            f"expected {type_name(hint)} ({_how(hint)}); got {text!r}{detail}"
        ) from None


def format_value(value) -> str:
    """The ``--set`` text of a config value, which :func:`parse_value` reads back.

    Tuples of numbers as ``2,3``, other tuples as JSON, None as ``none``, bools as
    ``true``/``false``, strings as they are.
    """
    if value is None:
        return "none"
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, tuple):
        if value and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
        ):
            return ",".join(map(format_value, value))
        return json.dumps(value)
    return str(value)


def parse_overrides(config_type: type, items) -> dict[str, Any]:
    """``--set FIELD=VALUE`` words -> dict of typed config fields.

    Args:
      config_type: the method's config dataclass.
      items: iterable of ``"FIELD=VALUE"`` strings; each VALUE is parsed by the
        field's type (see :func:`parse_value`).

    Returns:
      Dict field -> value, for ``make_config(method, preset, **overrides)``.

    Raises:
      ValueError: a word without ``=``, an unknown field (the message lists the
        valid ones), a field given twice, or a value that is not of the field's
        type (the message names the field and the type expected).

    Example:
      >>> from jad.methods import get_method
      >>> parse_overrides(get_method("patchcore").config_type,
      ...                 ["levels=2,3", "projection_dim=none"])
      {'levels': (2, 3), 'projection_dim': None}
    """
    fields = config_field_types(config_type)
    overrides: dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ValueError(f"--set {item}: expected NAME=VALUE such as levels=2,3.")
        if name not in fields:
            raise ValueError(
                f"--set {item}: {config_type.__name__} has no field {name!r}; its "
                f"fields are {', '.join(fields)}."
            )
        if name in overrides:
            raise ValueError(f"--set {item}: {name} is set twice.")
        hint = fields[name]
        try:
            overrides[name] = parse_value(hint, text)
        except (ValueError, TypeError) as err:
            message = str(err).removeprefix("expected ")
            raise type(err)(f"--set {item}: {name} expects {message}.") from None
    return overrides


def build_config(method: str, *, preset: str | None = None, overrides=()):
    """The config of ``jad fit --method M [--preset NAME] [--set FIELD=VALUE ...]``.

    Args:
      method: a registered method.
      preset: one of ``get_method(method).presets`` (None: the default config).
      overrides: ``"FIELD=VALUE"`` strings (see :func:`parse_overrides`).

    Returns:
      ``jad.methods.base.make_config(method, preset, **parsed overrides)``.

    Raises:
      ValueError: unknown method or preset (the message lists the method's
        presets), a bad ``--set`` (see :func:`parse_overrides`), or a value the
        config refuses.
    """
    spec = get_method(method)
    if preset is not None and preset not in spec.presets:
        valid = (
            f"its presets are {', '.join(spec.presets)}"
            if spec.presets
            else "it has none"
        )
        raise ValueError(
            f"--preset {preset}: unknown preset for method {method}; {valid} "
            "(see jad methods)."
        )
    values = parse_overrides(spec.config_type, overrides)
    return make_config(method, preset, **values)


def _check_supported(hint) -> None:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint in _SCALARS or hint is type(None) or origin is typing.Literal:
        return
    if origin in (typing.Union, types.UnionType, tuple) and args:
        for arg in args:
            if arg is not Ellipsis:
                _check_supported(arg)
        return
    raise TypeError(
        f"expected a value of type {type_name(hint)}, which --set cannot parse "
        "(supported: int, float, bool, str, Literal, X | None and tuples of them)"
    )


def _is_tuple(hint) -> bool:
    return typing.get_origin(hint) is tuple


def _element_types(hint, count: int) -> tuple:
    """The element types of a tuple hint for ``count`` elements (ValueError if not)."""
    args = typing.get_args(hint)
    if len(args) == 2 and args[1] is Ellipsis:
        return (args[0],) * count
    if count != len(args):
        raise ValueError(f"{len(args)} elements expected, {count} given")
    return args


def _how(hint) -> str:
    """How a value of type ``hint`` is written on the command line."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        ways = [_how(arg) for arg in args if arg is not type(None)]
        return " or ".join(ways) + (", or none" if type(None) in args else "")
    if origin is typing.Literal:
        return "one of " + ", ".join(map(str, args))
    if origin is tuple:
        if any(_is_tuple(arg) for arg in args):
            return "JSON such as [[1, 2], [3]]"
        return "comma-separated such as 2,3, or JSON such as [2, 3]"
    return {
        bool: "true or false, yes or no, 1 or 0",
        int: "an integer",
        float: "a number",
        str: "any text",
    }.get(hint, type_name(hint))


def _parse_text(hint, text: str):
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    word = text.strip()
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and word.lower() in _NONE:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _parse_text(arg, text)
            except ValueError:
                pass
        raise ValueError("")
    if origin is tuple:
        if word.startswith("["):
            try:
                loaded = json.loads(word)
            except json.JSONDecodeError as err:
                raise ValueError(f"invalid JSON: {err.msg}") from None
            return _from_json(hint, loaded)
        if any(_is_tuple(arg) for arg in args):
            raise ValueError("nested tuples are written as JSON")
        parts = word.split(",")
        return tuple(
            _parse_text(element, part)
            for element, part in zip(
                _element_types(hint, len(parts)), parts, strict=True
            )
        )
    if origin is typing.Literal:
        for choice in args:
            if str(choice) == word:
                return choice
        raise ValueError("")
    if hint is bool:
        if word.lower() in _TRUE:
            return True
        if word.lower() in _FALSE:
            return False
        raise ValueError("")
    if hint is str:
        return text
    try:
        return {int: int, float: float}[hint](word)
    except ValueError:
        raise ValueError("") from None


def _from_json(hint, value):
    """A value decoded from JSON, checked against ``hint`` (arrays -> tuples)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _from_json(arg, value)
            except ValueError:
                pass
        raise ValueError(f"{json.dumps(value)} is not of type {type_name(hint)}")
    if origin is tuple and isinstance(value, list):
        return tuple(
            _from_json(element, v)
            for element, v in zip(_element_types(hint, len(value)), value, strict=True)
        )
    if origin is typing.Literal and value in args:
        return value
    if hint is bool and isinstance(value, bool):
        return value
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if (
        hint is float
        and isinstance(value, (int, float))
        and not isinstance(value, bool)
    ):
        return float(value)
    if hint is str and isinstance(value, str):
        return value
    raise ValueError(f"{json.dumps(value)} is not of type {type_name(hint)}")


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
        f"{', '.join(_categories(others[0], root))})"
        if others
        else ""
    )
    raise ValueError(f"{root} holds no {kind} category{hint}.")


def open_split(args, split: str, transform: data.Transform, num_train=None):
    """The dataset split named by the data options."""
    check_data_options(args.kind, args.data, args.category)
    options = {}
    if num_train is not None and split == "train":
        options["num_train"] = num_train
    return data.load_dataset(
        args.kind, args.data, args.category, split, transform=transform, **options
    )


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
        columns.append(
            ("fit s (incl. features)", lambda row: fmt(row.get("fit_seconds"), 1))
        )
    print("| " + " | ".join(title for title, _ in columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(cell(row) for _, cell in columns) + " |")
