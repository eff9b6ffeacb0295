"""The ``jad`` command line."""

from __future__ import annotations

import json
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


def test_console_script_help():
    out = subprocess.run(
        [sys.executable, "-m", "jad.cli.main", "sparse-demo", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "--channels" in out and "default" in out


def test_unknown_subcommand_fails():
    with pytest.raises(SystemExit) as exc:
        main(["nonsense"])
    assert exc.value.code == 2
