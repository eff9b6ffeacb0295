"""The Colab notebooks: their install cell, and their code cells top to bottom.

The install cell runs as it is (only its REPO_URL form field is edited, as Colab's form
does) in a bare virtual environment where jad is not installed; `pip` there is either a
stub that records its command line and installs a stub jad, or the real pip. Every
notebook's install cell is quickstart.ipynb's, character for character (tested), so
those runs use quickstart's cell only.

The code cells run with JAD_NOTEBOOK_TINY=1, which a notebook may read to shrink its
data (sgfr.ipynb: 64-pixel images, 6 training images), and with one jad cache for all
notebooks, so the built-in data set and the converted weights are made once.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import venv

import pip
import pytest

import jad

COLAB = pathlib.Path(__file__).parents[1] / "colab"
NOTEBOOKS = sorted(COLAB.glob("*.ipynb"))
QUICKSTART = COLAB / "quickstart.ipynb"
# The install cell's runs: quickstart's cell, which every notebook's equals.
INSTALL = [QUICKSTART]
FORM_FIELD = re.compile(r'(?m)^REPO_URL = "(.*)"  # @param \{type:"string"\}$')
# What the bare environment pretends Colab ships; the cell must pin exactly these.
SHIPPED = {
    "jax": "0.4.35",
    "jaxlib": "0.4.35",
    "jax-cuda12-plugin": "0.4.35",
    "numpy": "2.0.2",
    "flax": "0.10.2",
}
PINS = {"jax==0.4.35", "jaxlib==0.4.35", "jax-cuda12-plugin==0.4.35", "numpy==2.0.2"}
# The stub pip: records its arguments and the constraints it was given, then
# "installs" jad (a package and its metadata) into the environment's site-packages.
STUB_PIP = """
import json, os, pathlib, sys
args = sys.argv[1:]
constraints = pathlib.Path(args[args.index("-c") + 1]).read_text().split()
pathlib.Path(os.environ["STUB_PIP_LOG"]).write_text(json.dumps([args, constraints]))
site = pathlib.Path(__file__).parents[1]
(site / "jad").mkdir()
(site / "jad" / "__init__.py").write_text("")
(site / "jad-9.9.dist-info").mkdir()
(site / "jad-9.9.dist-info" / "METADATA").write_text("Name: jad\\nVersion: 9.9\\n")
"""


def _install_cell(notebook, repo_url=None):
    """The notebook's install cell, with its REPO_URL field set to repo_url."""
    cells = json.loads(notebook.read_text())["cells"]
    found = [
        "".join(cell["source"])
        for cell in cells
        if cell["cell_type"] == "code" and FORM_FIELD.search("".join(cell["source"]))
    ]
    assert len(found) == 1, f"{notebook.name}: no single REPO_URL form cell"
    if repo_url is None:
        return found[0]
    return FORM_FIELD.sub(
        lambda _: f'REPO_URL = "{repo_url}"  # @param {{type:"string"}}', found[0]
    )


def _bare_python(root, real_pip):
    """A venv without jad: metadata of Colab's jax, numpy, flax; stub or real pip."""
    venv.EnvBuilder(with_pip=False, symlinks=True).create(root)
    python = root / "bin" / "python"
    site = pathlib.Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    for name, version in SHIPPED.items():
        info = site / f"{name.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Name: {name}\nVersion: {version}\n")
    if real_pip:
        (site / "pip").symlink_to(pathlib.Path(pip.__file__).parent)
    else:
        (site / "pip").mkdir()
        (site / "pip" / "__init__.py").write_text("")
        (site / "pip" / "__main__.py").write_text(STUB_PIP)
    return python


def _run_cell(python, code, cwd, tmp_path):
    script = tmp_path / "install_cell.py"
    script.write_text(code)
    env = dict(os.environ, STUB_PIP_LOG=str(tmp_path / "pip.json"))
    env.pop("PYTHONPATH", None)
    return subprocess.run(
        [python, str(script)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _one_sentence(stderr):
    """The cell's failure: one line, no traceback."""
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].endswith("."), stderr
    return lines[0]


def _checkout(folder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pyproject.toml").write_text('[project]\nname = "jad"\n')
    return folder


def test_there_are_notebooks():
    assert NOTEBOOKS, "colab/ holds no notebook"
    assert QUICKSTART in NOTEBOOKS


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_every_notebook_starts_with_quickstarts_install_cell(notebook):
    # What makes testing quickstart's install cell alone enough.
    assert _install_cell(notebook) == _install_cell(QUICKSTART)
    cells = json.loads(notebook.read_text())["cells"]
    first = next(cell for cell in cells if cell["cell_type"] == "code")
    assert "".join(first["source"]) == _install_cell(QUICKSTART)


@pytest.mark.parametrize("notebook", INSTALL, ids=lambda p: p.name)
def test_install_cell_does_nothing_when_jad_is_installed(notebook, tmp_path):
    done = _run_cell(sys.executable, _install_cell(notebook), tmp_path, tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"jad {jad.__version__} (" in done.stdout
    assert "already installed" in done.stdout and "Installing" not in done.stdout


# Colab after `!git clone URL jad`; Jupyter in the repository's root or its colab/.
@pytest.mark.parametrize("layout", ["clone", "root", "colab"])
@pytest.mark.parametrize("notebook", INSTALL, ids=lambda p: p.name)
def test_install_cell_installs_a_local_checkout_keeping_jax(notebook, layout, tmp_path):
    python = _bare_python(tmp_path / "venv", real_pip=False)
    work = tmp_path / "work"
    checkout = _checkout(work / "jad" if layout == "clone" else work)
    cwd = work / "colab" if layout == "colab" else work
    cwd.mkdir(exist_ok=True)
    # The placeholder URL is left as it is: a checkout needs none.
    done = _run_cell(python, _install_cell(notebook), cwd, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    args, constraints = json.loads((tmp_path / "pip.json").read_text())
    assert args[0] == "install" and args[-1] == str(checkout)
    assert not {"-U", "--upgrade", "--force-reinstall"} & set(args)
    assert set(constraints) == PINS  # Colab's jax, its CUDA plugin and numpy; not flax
    assert "Installed jad 9.9 (" in done.stdout


@pytest.mark.parametrize("notebook", INSTALL, ids=lambda p: p.name)
def test_install_cell_installs_repo_url_with_git_keeping_jax(notebook, tmp_path):
    python = _bare_python(tmp_path / "venv", real_pip=False)
    url = "https://example.org/someone/jad@v1"
    done = _run_cell(python, _install_cell(notebook, url), tmp_path, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    args, constraints = json.loads((tmp_path / "pip.json").read_text())
    assert args[0] == "install" and args[-1] == f"git+{url}"
    assert not {"-U", "--upgrade", "--force-reinstall"} & set(args)
    assert set(constraints) == PINS


@pytest.mark.parametrize(
    "repo_url", [None, "", " "], ids=["placeholder", "empty", "blank"]
)
@pytest.mark.parametrize("notebook", INSTALL, ids=lambda p: p.name)
def test_install_cell_without_source_says_to_set_repo_url(notebook, repo_url, tmp_path):
    python = _bare_python(tmp_path / "venv", real_pip=False)
    (tmp_path / "work").mkdir()
    code = _install_cell(notebook, repo_url)
    done = _run_cell(python, code, tmp_path / "work", tmp_path)
    assert done.returncode != 0
    assert "set REPO_URL" in _one_sentence(done.stderr)
    assert not (tmp_path / "pip.json").exists()  # pip never ran


@pytest.mark.parametrize("notebook", INSTALL, ids=lambda p: p.name)
def test_install_cell_unreachable_url_fails_with_pips_reason(notebook, tmp_path):
    if shutil.which("git") is None:
        pytest.skip("pip needs git to clone a git+ URL")
    # The real pip: the git clone is refused at once (nothing listens on port 9).
    python = _bare_python(tmp_path / "venv", real_pip=True)
    url = "https://127.0.0.1:9/nothing.git"
    done = _run_cell(python, _install_cell(notebook, url), tmp_path, tmp_path)
    assert done.returncode != 0
    sentence = _one_sentence(done.stderr)
    assert sentence.startswith(f"pip could not install jad from git+{url} (")
    assert "127.0.0.1" in sentence.split("(", 1)[1]  # pip's (git's) reason
    assert "REPO_URL" in sentence


@pytest.fixture(scope="module")
def notebook_cache(tmp_path_factory):
    """One JAD_CACHE for every notebook run (built-in data, converted weights)."""
    return tmp_path_factory.mktemp("jad_cache")


@pytest.mark.slow
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(notebook, tmp_path, notebook_cache):
    pytest.importorskip("matplotlib")
    cells = json.loads(notebook.read_text())["cells"]
    code = "\n\n".join(
        "".join(cell["source"]) for cell in cells if cell["cell_type"] == "code"
    )
    script = tmp_path / "notebook.py"
    script.write_text(code)
    env = dict(
        os.environ,
        JAD_CACHE=str(notebook_cache),
        JAD_NOTEBOOK_TINY="1",
        MPLBACKEND="Agg",
    )
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "already installed; nothing to do" in done.stdout  # jad is installed here
    assert "image AUROC" in done.stdout
