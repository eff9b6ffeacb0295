"""The README's examples run as written, from another working directory."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import pytest

README = pathlib.Path(__file__).parents[1] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def _cli(args, cwd, env):
    return subprocess.run(
        [sys.executable, "-m", "jad.cli", *args], cwd=cwd, env=env,
        capture_output=True, text=True, timeout=300, check=False,
    )


@pytest.mark.slow
def test_readme_pipeline_example_runs_with_relative_paths(tmp_path):
    (block,) = [b for b in _python_blocks() if "pipeline.fit_detector(" in b]
    script = tmp_path / "example.py"
    script.write_text(
        block + "\nprint('ok', result.metrics['image_auroc'], maps.shape)\n"
        "again = pipeline.load_detector('brick_patchcore')\n"
        "print('loaded', again.method)\n"
    )
    work = tmp_path / "work"  # relative paths resolve here
    work.mkdir()
    env = dict(os.environ, JAD_CACHE=str(tmp_path / "cache"))
    done = subprocess.run(
        [sys.executable, str(script)], cwd=work, env=env, capture_output=True,
        text=True, timeout=900, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ok" in done.stdout and "loaded patchcore" in done.stdout
    assert (work / "brick_patchcore" / "detector.json").is_file()


def test_cli_user_errors_exit_2_with_one_line(tmp_path):
    # Through a real process: status 2, one line on stderr, no traceback.
    env = dict(os.environ, JAD_CACHE=str(tmp_path / "cache"))
    saved = tmp_path / "runs" / "bottle"
    saved.mkdir(parents=True)
    (saved / "detector.json").write_text("{}")
    base = ["fit", "--method", "padim", "--data", "nowhere"]
    for args, message in (
        ([*base, "--out", "runs/bottle"], "already holds a saved detector"),
        ([*base, "--out", "new", "--batch-size", "0"],
         "argument --batch-size: expected an integer >= 1"),
        (["evaluate", "--state", "runs/bottle"], "detector.json"),
    ):
        done = _cli(args, tmp_path, env)
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert done.returncode == 2, done.stderr
        assert message in lines[-1] and "Traceback" not in done.stderr, done.stderr
        if args[0] != "fit" or "--batch-size" not in args:  # argparse adds usage
            assert len(lines) == 1, done.stderr
