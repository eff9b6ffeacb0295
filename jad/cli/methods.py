"""``jad methods``: the registered methods, their presets and config fields."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from jad.cli.common import config_field_types, format_value, type_name
from jad.methods import get_method, list_methods


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``jad methods``."""
    parser.add_argument(
        "--method",
        default=None,
        choices=list_methods(),
        help="show only this method (default: every registered method)",
    )
    parser.add_argument(
        "--json",
        default=None,
        metavar="FILE",
        help="also write the listing to FILE as JSON",
    )


def describe_method(name: str) -> dict:
    """What ``jad fit`` accepts for one method, as JSON-ready data.

    Args:
      name: a registered method.

    Returns:
      Dict with ``inputs`` (``"features"`` or ``"images"``), ``config_type``,
      ``default_preset`` (the first preset; None without presets), ``presets``
      (name -> the fields whose values differ from the default config, as
      ``{field: value}``; empty for the default) and ``fields`` (name ->
      ``{"type": "tuple[int, ...]", "default": value}``; ``"required": true``
      instead of a default for a field without one). Tuples stay tuples (JSON
      arrays once written).
    """
    spec = get_method(name)
    hints = config_field_types(spec.config_type)
    fields, default = {}, None
    for field in dataclasses.fields(spec.config_type):
        if field.name not in hints:
            continue
        entry = {"type": type_name(hints[field.name])}
        if field.default is not dataclasses.MISSING:
            entry["default"] = field.default
        elif field.default_factory is not dataclasses.MISSING:
            entry["default"] = field.default_factory()
        else:
            entry["required"] = True
        fields[field.name] = entry
    if spec.presets:
        default = next(iter(spec.presets.values()))
    presets = {
        preset: {
            field: getattr(config, field)
            for field in hints
            if getattr(config, field) != getattr(default, field)
        }
        for preset, config in spec.presets.items()
    }
    return {
        "inputs": spec.inputs,
        "config_type": spec.config_type.__name__,
        "default_preset": next(iter(spec.presets), None),
        "presets": presets,
        "fields": fields,
    }


def run(args: argparse.Namespace) -> int:
    """``jad methods``."""
    names = list_methods() if args.method is None else (args.method,)
    if args.json and Path(args.json).is_dir():
        raise ValueError(f"--json must be a file path; {args.json} is a folder.")
    listing = {name: describe_method(name) for name in names}
    for i, (name, info) in enumerate(listing.items()):
        if i:
            print()
        _print_method(name, info)
    print(
        "\nChoose a preset with jad fit --method M --preset NAME and change any "
        "field with --set FIELD=VALUE (repeatable)."
    )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"methods": listing}, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def _print_method(name: str, info: dict) -> None:
    print(f"{name} (inputs: {info['inputs']}; config: {info['config_type']})")
    print()
    if info["presets"]:
        print("presets (--preset NAME; the first is the default):")
        for preset, changes in info["presets"].items():
            if preset == info["default_preset"]:
                print(f"  {preset}: the default config")
            else:
                shown = " ".join(
                    f"{field}={format_value(value)}" for field, value in changes.items()
                )
                print(f"  {preset}: {shown or 'the same as the default'}")
    else:
        print("presets: none")
    print()
    rows = [("field (--set FIELD=VALUE)", "type", "default")]
    for field, entry in info["fields"].items():
        value = entry.get("default")
        rows.append(
            (
                field,
                entry["type"],
                format_value(value) if "default" in entry else "(required)",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    for field, kind, value in rows:
        print(f"  {field:<{widths[0]}}  {kind:<{widths[1]}}  {value}")
