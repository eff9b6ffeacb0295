"""The Colab notebooks run top to bottom (their code cells, in a subprocess)."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

NOTEBOOKS = sorted((pathlib.Path(__file__).parents[1] / "colab").glob("*.ipynb"))


def test_there_are_notebooks():
    assert NOTEBOOKS, "colab/ holds no notebook"


@pytest.mark.slow
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(notebook, tmp_path):
    pytest.importorskip("matplotlib")
    cells = json.loads(notebook.read_text())["cells"]
    code = "\n\n".join(
        "".join(cell["source"]) for cell in cells if cell["cell_type"] == "code"
    )
    script = tmp_path / "notebook.py"
    script.write_text(code)
    env = dict(os.environ, JAD_CACHE=str(tmp_path / "cache"), MPLBACKEND="Agg")
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "image AUROC" in done.stdout
