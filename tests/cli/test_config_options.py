"""``jad fit --preset NAME --set FIELD=VALUE`` and ``jad methods``."""

from __future__ import annotations

import dataclasses
import json
from typing import Literal

import pytest

from jad.cli.common import (
    build_config,
    config_field_types,
    format_value,
    parse_overrides,
    parse_value,
    type_name,
)
from jad.cli.main import build_parser, main
from jad.methods import get_method, list_methods
from jad.methods.base import Method, make_config, register, unregister


@dataclasses.dataclass(frozen=True)
class ToyConfig:
    """Every kind of field the coming methods use (SGFR, PSDL, PAE)."""

    count: int = 1
    ratio: float = 0.5
    flag: bool = False
    name: str = "a"
    limit: int | None = None
    scale: float | None = 1.0
    levels: tuple[int, ...] = (2, 3)
    weights: tuple[float, ...] = (1.0, 0.5)
    groups: tuple[tuple[int, ...], ...] = ((1, 2), (3,))
    size: tuple[int, int] = (3, 3)
    mode: Literal["x", "y"] = "x"
    maybe_levels: tuple[int, ...] | None = None


TOY_PRESETS = {
    "plain": ToyConfig(),
    "wide": ToyConfig(levels=(1, 2, 3), groups=((1,), (2, 3)), limit=4),
}


@pytest.fixture
def toy_method():
    def no_op(*args, **kwargs):
        raise NotImplementedError

    register(
        Method(
            name="toy",
            config_type=ToyConfig,
            state_type=object,
            fit=no_op,
            score=no_op,
            init=no_op,
            inputs="images",  # a features method would need embed and levels
            presets=TOY_PRESETS,
        )
    )
    yield "toy"
    unregister("toy")


def test_field_types_resolve_string_annotations():
    hints = config_field_types(ToyConfig)
    assert list(hints) == [f.name for f in dataclasses.fields(ToyConfig)]
    assert hints["groups"] == tuple[tuple[int, ...], ...]
    assert type_name(hints["limit"]) == "int | None"
    assert type_name(hints["groups"]) == "tuple[tuple[int, ...], ...]"
    assert type_name(hints["levels"]) == "tuple[int, ...]"


@pytest.mark.parametrize(
    "field, text, expected",
    [
        ("count", "7", 7),
        ("count", " -2 ", -2),
        ("ratio", "0.05", 0.05),
        ("ratio", "1", 1.0),
        ("ratio", "1e-3", 1e-3),
        ("flag", "true", True),
        ("flag", "True", True),
        ("flag", "yes", True),
        ("flag", "1", True),
        ("flag", "false", False),
        ("flag", "no", False),
        ("flag", "0", False),
        ("name", "b c", "b c"),
        ("name", "none", "none"),
        ("limit", "none", None),
        ("limit", "null", None),
        ("limit", "None", None),
        ("limit", "12", 12),
        ("scale", "none", None),
        ("scale", "2", 2.0),
        ("levels", "2,3", (2, 3)),
        ("levels", "4", (4,)),
        ("levels", "[2, 3]", (2, 3)),
        ("levels", "[]", ()),
        ("weights", "0.5,1", (0.5, 1.0)),
        ("weights", "[0.5, 1]", (0.5, 1.0)),
        ("groups", "[[1, 2], [3]]", ((1, 2), (3,))),
        ("groups", "[[1,2],[3]]", ((1, 2), (3,))),
        ("groups", "[]", ()),
        ("size", "5,7", (5, 7)),
        ("size", "[5, 7]", (5, 7)),
        ("mode", "y", "y"),
        ("maybe_levels", "none", None),
        ("maybe_levels", "1,2", (1, 2)),
        ("maybe_levels", "[1, 2]", (1, 2)),
    ],
)
def test_values_are_parsed_by_the_field_type(field, text, expected):
    value = parse_value(config_field_types(ToyConfig)[field], text)
    assert value == expected
    assert type(value) is type(expected)
    if isinstance(expected, tuple):
        assert all(type(v) is type(e) for v, e in zip(value, expected, strict=True))
    assert parse_overrides(ToyConfig, [f"{field}={text}"]) == {field: expected}


def test_nested_tuples_round_trip_and_stay_hashable():
    groups = ((1, 2), (3,), ())
    text = format_value(groups)
    assert json.loads(text) == [[1, 2], [3], []]
    parsed = parse_overrides(ToyConfig, [f"groups={text}"])["groups"]
    assert parsed == groups and isinstance(parsed[0], tuple)
    config = dataclasses.replace(
        ToyConfig(),
        **parse_overrides(
            ToyConfig, [f"groups={text}", "levels=[1, 2]", "weights=0.25,0.75"]
        ),
    )
    assert hash(config) == hash(
        ToyConfig(groups=groups, levels=(1, 2), weights=(0.25, 0.75))
    )


@pytest.mark.parametrize("method", list_methods())
def test_every_default_round_trips_through_its_text(method):
    spec = get_method(method)
    hints = config_field_types(spec.config_type)
    for preset in dict(spec.presets) or {"default": spec.config_type()}:
        config = spec.presets.get(preset, spec.config_type())
        for field, hint in hints.items():
            value = getattr(config, field)
            assert parse_value(hint, format_value(value)) == value, (preset, field)


def test_toy_defaults_round_trip():
    config = TOY_PRESETS["wide"]
    hints = config_field_types(ToyConfig)
    for field in hints:
        value = getattr(config, field)
        assert parse_value(hints[field], format_value(value)) == value, field


@pytest.mark.parametrize(
    "item, message",
    [
        ("count=1.5", "--set count=1.5: count expects int (an integer); got '1.5'."),
        ("ratio=x", "--set ratio=x: ratio expects float (a number)"),
        (
            "flag=maybe",
            "--set flag=maybe: flag expects bool (true or false, yes or no, 1 or 0)",
        ),
        ("limit=many", "limit expects int | None (an integer, or none)"),
        (
            "levels=a",
            "--set levels=a: levels expects tuple[int, ...] "
            "(comma-separated such as 2,3, or JSON such as [2, 3]); got 'a'",
        ),
        ("levels=2,,3", "levels expects tuple[int, ...]"),
        ("levels=[2, 3", "levels expects tuple[int, ...]"),
        ("levels=[2, 3.5]", "3.5 is not of type int"),
        ("levels=[true]", "true is not of type int"),
        (
            "groups=1,2",
            "groups expects tuple[tuple[int, ...], ...] (JSON such as "
            "[[1, 2], [3]]); got '1,2' (nested tuples are written as JSON)",
        ),
        ("groups=[1, 2]", "groups expects tuple[tuple[int, ...], ...]"),
        ("size=1,2,3", "size expects tuple[int, int]"),
        ("mode=z", "mode expects Literal['x', 'y'] (one of x, y)"),
    ],
)
def test_bad_values_name_the_flag_field_and_type(item, message):
    with pytest.raises(ValueError) as err:
        parse_overrides(ToyConfig, [item])
    assert message in str(err.value)


def test_unknown_repeated_and_malformed_fields():
    with pytest.raises(
        ValueError,
        match="ToyConfig has no field 'colour'; its "
        "fields are count, ratio, flag, name, limit",
    ):
        parse_overrides(ToyConfig, ["colour=red"])
    with pytest.raises(ValueError, match="--set count=2: count is set twice"):
        parse_overrides(ToyConfig, ["count=1", "count=2"])
    with pytest.raises(ValueError, match="expected NAME=VALUE"):
        parse_overrides(ToyConfig, ["count"])
    assert parse_overrides(ToyConfig, []) == {}
    assert parse_overrides(ToyConfig, ["name=a=b"]) == {"name": "a=b"}


def test_fit_parser_refuses_malformed_set_words(capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(
            ["fit", "--method", "padim", "--data", "d", "--out", "o", "--set", "levels"]
        )
    assert exc.value.code == 2
    assert "argument --set: expected NAME=VALUE" in capsys.readouterr().err


def test_unknown_preset_lists_the_chosen_methods_presets():
    for method in list_methods():
        presets = get_method(method).presets
        valid = f"its presets are {', '.join(presets)}" if presets else "it has none"
        with pytest.raises(ValueError) as err:
            build_config(method, preset="no-such-preset")
        assert (
            f"--preset no-such-preset: unknown preset for method {method}; "
            f"{valid}" in str(err.value)
        )


def test_patchcore_preset_is_not_padims(tmp_path, capsys):
    assert "anomalib" not in get_method("padim").presets
    status = main(
        [
            "fit",
            "--method",
            "padim",
            "--data",
            str(tmp_path),
            "--out",
            str(tmp_path / "out"),
            "--preset",
            "anomalib",
        ]
    )
    assert status == 2
    err = capsys.readouterr().err
    assert (
        err.startswith(
            "jad fit: error: --preset anomalib: unknown preset for method padim"
        )
        and "Traceback" not in err
    )


def test_fit_preset_and_set_build_the_make_config_config():
    args = build_parser().parse_args(
        [
            "fit",
            "--method",
            "patchcore",
            "--data",
            "d",
            "--out",
            "o",
            "--preset",
            "anomalib",
            "--set",
            "coreset_ratio=0.05",
        ]
    )
    config = build_config(args.method, preset=args.preset, overrides=args.overrides)
    assert config == make_config("patchcore", "anomalib", coreset_ratio=0.05)
    assert config.coreset_ratio == 0.05


def test_fit_without_options_builds_the_default_config():
    args = build_parser().parse_args(
        ["fit", "--method", "patchcore", "--data", "d", "--out", "o"]
    )
    assert args.preset is None and args.overrides is None
    config = build_config(args.method, preset=args.preset, overrides=())
    assert config == get_method("patchcore").config_type()
    assert config.coreset_ratio == 0.1


def test_fit_set_levels_and_several_fields():
    config = build_config(
        "padim", overrides=["levels=2,3", "n_features=none", "regularization=0.1"]
    )
    assert config == make_config(
        "padim", levels=(2, 3), n_features=None, regularization=0.1
    )


def test_config_refusals_reach_the_user(tmp_path, capsys):
    # A value of the right type that the config refuses: exit 2, one message.
    status = main(
        [
            "fit",
            "--method",
            "patchcore",
            "--data",
            str(tmp_path),
            "--out",
            str(tmp_path / "out"),
            "--set",
            "coreset_ratio=2",
        ]
    )
    assert status == 2
    err = capsys.readouterr().err
    assert "coreset_ratio must be in (0, 1]" in err and "Traceback" not in err


def test_toy_method_presets_and_nested_fields(toy_method):
    config = build_config(
        toy_method, preset="wide", overrides=["groups=[[4], [5, 6]]", "mode=y"]
    )
    assert config == ToyConfig(
        levels=(1, 2, 3), groups=((4,), (5, 6)), limit=4, mode="y"
    )
    hash(config)


def test_methods_lists_every_method_and_preset(tmp_path, capsys, toy_method):
    out = tmp_path / "listing" / "methods.json"
    assert main(["methods", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    listing = json.loads(out.read_text())["methods"]
    assert set(listing) == set(list_methods())
    for method in list_methods():
        spec = get_method(method)
        assert f"{method} (inputs: {spec.inputs}" in text
        assert listing[method]["inputs"] == spec.inputs
        for preset in spec.presets:
            assert f"  {preset}: " in text
        assert list(listing[method]["presets"]) == list(spec.presets)
        assert list(listing[method]["fields"]) == list(
            config_field_types(spec.config_type)
        )
    toy = listing["toy"]
    assert toy["default_preset"] == "plain"
    assert toy["presets"] == {
        "plain": {},
        "wide": {"limit": 4, "levels": [1, 2, 3], "groups": [[1], [2, 3]]},
    }
    assert toy["fields"]["groups"] == {
        "type": "tuple[tuple[int, ...], ...]",
        "default": [[1, 2], [3]],
    }
    assert toy["fields"]["limit"] == {"type": "int | None", "default": None}
    assert "wide: limit=4 levels=1,2,3 groups=[[1], [2, 3]]" in text
    assert "groups" in text and "tuple[tuple[int, ...], ...]" in text


def test_methods_one_method(capsys):
    assert main(["methods", "--method", "padim"]) == 0
    text = capsys.readouterr().out
    assert "padim (inputs: features" in text and "patchcore" not in text
    for preset in get_method("padim").presets:
        assert f"  {preset}: " in text
    for field in config_field_types(get_method("padim").config_type):
        assert f"  {field} " in text


def test_methods_json_refuses_a_folder(tmp_path, capsys):
    assert main(["methods", "--json", str(tmp_path)]) == 2
    assert "--json must be a file path" in capsys.readouterr().err
