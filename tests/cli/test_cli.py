"""The ``jad`` command line."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from jad.cli.main import main


def test_sparse_demo_runs_and_writes_summary(tmp_path, capsys):
    status = main(
        [
            "sparse-demo",
            "--channels",
            "8",
            "--locations",
            "3",
            "--signals",
            "40",
            "--iterations",
            "3",
            "--out",
            str(tmp_path),
        ]
    )
    assert status == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    errors = summary["errors"]
    assert len(errors) == 3 and errors[-1] <= errors[0]
    assert 0 <= summary["relative_residual"] < 1
    assert "summary.json" in capsys.readouterr().out


def test_demo_bad_option_exits_2_without_traceback(tmp_path, capsys):
    assert main(["sparse-demo", "--channels", "0", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "error" in err and "Traceback" not in err


def _help(module: str, command: str) -> str:
    return subprocess.run(
        [sys.executable, "-m", module, command, "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def test_console_script_help():
    out = _help("jad.cli.main", "sparse-demo")
    assert "--channels" in out and "default" in out


def test_unknown_subcommand_fails():
    with pytest.raises(SystemExit) as exc:
        main(["nonsense"])
    assert exc.value.code == 2


def test_fit_checks_its_options_before_reading_data(tmp_path, capsys):
    nowhere = str(tmp_path / "nowhere")
    base = ["fit", "--data", nowhere, "--category", "brick"]
    with pytest.raises(SystemExit) as exc:  # argparse names the flag
        main([*base, "--method", "padim", "--out", nowhere, "--set", "levels"])
    assert exc.value.code == 2
    assert "--set: expected NAME=VALUE" in capsys.readouterr().err
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep")
    for extra, message in (
        (["--out", str(precious)], "is not a saved detector"),
        (["--out", nowhere, "--set", "levels=a"], "levels expects tuple[int, ...]"),
        (
            ["--out", nowhere, "--set", "levels=2,9"],
            "backbone levels are 0, 1, 2, 3, 4",
        ),
        (["--out", nowhere, "--preset", "anomalib"], "unknown preset for method padim"),
        (
            ["--out", nowhere, "--set", "coreset_ratio=0.5"],
            "PaDiMConfig has no field 'coreset_ratio'",
        ),
        (["--out", nowhere], "nowhere"),  # only then the data
    ):
        assert main([*base, "--method", "padim", *extra]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
    assert (precious / "notes.txt").read_text() == "keep"


def test_predict_refuses_missing_images_before_writing(tmp_path, capsys):
    out = tmp_path / "out"
    status = main(
        ["predict", "--state", str(tmp_path), "a.png", "b.png", "--out", str(out)]
    )
    assert status == 2 and not out.exists()
    assert "a.png, b.png" in capsys.readouterr().err


def test_module_entry_point_and_help_without_none_defaults():
    out = _help("jad.cli", "fit")
    assert "--method" in out and "(default: efficientnet_lite0" in out
    assert "(default: None)" not in out


def test_fit_data_options_name_what_is_missing(tmp_path, capsys):
    mvtec = tmp_path / "mvtec"
    for category in ("bottle", "cable"):
        for split in ("train", "test"):
            (mvtec / category / split / "good").mkdir(parents=True)
    mtd = tmp_path / "mtd"
    (mtd / "MT_Free" / "Imgs").mkdir(parents=True)
    out = str(tmp_path / "out")
    for argv, message in (
        (
            ["--data", str(mvtec)],
            "--category is required for --kind mvtec; categories under "
            f"{mvtec}: bottle, cable.",
        ),
        (
            ["--data", str(mtd)],
            f"{mtd} holds no mvtec category; it has the layout of --kind mtd",
        ),
        (["--data", str(mtd), "--category", "bottle"], "layout of --kind mtd"),
    ):
        assert main(["fit", "--method", "padim", "--out", out, *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("jad fit: error: ") and message in err, err


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--batch-size", "0", "expected an integer >= 1"),
        ("--workers", "-1", "expected an integer >= 0"),
        ("--num-train", "0", "expected an integer >= 1"),
        ("--size", "x", "expected an integer >= 1"),
        ("--set", "=2", "expected NAME=VALUE"),
    ],
)
def test_fit_bad_numbers_name_the_flag(tmp_path, capsys, flag, value, message):
    base = [
        "fit",
        "--method",
        "patchcore",
        "--data",
        str(tmp_path),
        "--out",
        str(tmp_path / "o"),
    ]
    with pytest.raises(SystemExit) as exc:
        main([*base, flag, value])
    assert exc.value.code == 2
    assert re.search(f"argument {flag}: {message}", capsys.readouterr().err)


def test_fit_out_errors_have_one_prefix_and_detectors_need_overwrite(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    base = ["fit", "--method", "padim", "--data", str(tmp_path / "nowhere")]
    assert main([*base, "--out", str(afile)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"jad fit: error: --out: {afile} exists and is not a")
    assert err.count("jad fit") == 1
    detector = tmp_path / "det"
    detector.mkdir()
    (detector / "detector.json").write_text("{}")
    assert main([*base, "--out", str(detector)]) == 2
    err = capsys.readouterr().err
    assert "already holds a saved detector" in err and "--overwrite" in err
    # with --overwrite the options pass and the (missing) data is the error
    assert main([*base, "--out", str(detector), "--overwrite"]) == 2
    assert "nowhere" in capsys.readouterr().err
