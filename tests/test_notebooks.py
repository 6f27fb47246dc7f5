"""The Colab notebooks, executed headless on the CPU with smoke parameters.

Each notebook's parameters cell (tagged "parameters") is replaced by smoke values; any cell
error fails the test. The install cell installs jaxdrift from this checkout.
"""

import pathlib
import shutil
import subprocess
import sys

import nbformat
import pytest

from tests import data_fakes

nbclient = pytest.importorskip("nbclient")

COLAB = pathlib.Path(__file__).resolve().parent.parent / "colab"


def run_notebook(name, parameters: str, tmp_path):
  nb = nbformat.read(COLAB / f"{name}.ipynb", as_version=4)
  cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
  assert len(cells) == 1, "exactly one parameters cell"
  cells[0].source = parameters
  client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                   resources={"metadata": {"path": str(COLAB)}})
  client.execute()
  nbformat.write(nb, tmp_path / f"{name}.executed.ipynb")
  return nb


def outputs(nb) -> str:
  text = []
  for cell in nb.cells:
    for out in cell.get("outputs", []):
      text.append(out.get("text", "") or str(out.get("data", {}).get("text/plain", "")))
  return "\n".join(text)


def test_notebooks_have_no_stored_outputs():
  for path in COLAB.glob("*.ipynb"):
    nb = nbformat.read(path, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), path


def test_quickstart(tmp_path):
  nb = run_notebook("quickstart", f'''
REPO_URL = "unused: the checkout is found"
PRESET = "smoke"
ARCHS = ("resnet50v2",)
ROOT = "{tmp_path / 'runs'}"
DATA_DIR = "{tmp_path / 'tfds'}"
''', tmp_path)
  text = outputs(nb)
  assert "jaxdrift installed from" in text and "device(s)" in text
  assert (tmp_path / "runs" / "report" / "report.md").exists()
  images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
  assert images, "the report's figures are shown inline"


def test_metrics_api(tmp_path):
  nb = run_notebook("metrics_api", f'''
REPO_URL = "unused: the checkout is found"
N_PAIRS = 40
WORKDIR = "{tmp_path / 'run'}"
DATA_DIR = "{tmp_path / 'tfds'}"
''', tmp_path)
  text = outputs(nb)
  assert "invalid pairs: [0]" in text
  assert "vs tl" in text and "vs previous" in text


def test_reproduce_paper_on_a_fake_archive(tmp_path):
  archive = tmp_path / "lungs.zip"
  data_fakes.write_kaggle_zip(archive, per_class=4, extras=False)
  nb = run_notebook("reproduce_paper", f'''
REPO_URL = "unused: the checkout is found"
PRESET = "smoke"
ARCHS = ("resnet50v2",)
USE_DRIVE = False
ROOT = "{tmp_path / 'runs'}"
DATA_DIR = "{tmp_path / 'tfds'}"
KAGGLE_ZIP = "{archive}"
''', tmp_path)
  assert "lungs.zip" in outputs(nb)
  assert (tmp_path / "runs" / "report" / "report.md").exists()


def _code_cells(name):
  nb = nbformat.read(COLAB / f"{name}.ipynb", as_version=4)
  return [c for c in nb.cells if c.cell_type == "code"]


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git (pip installs git+URL)")
def test_install_cells_work_in_a_fresh_venv_outside_any_checkout(tmp_path):
  """A fresh Colab runtime: no checkout around the notebook, so the install cell pip-installs
  git+REPO_URL into an environment without jaxdrift. Here REPO_URL is a clone of this
  repository's HEAD and the environment a new virtual environment (its dependencies come
  from the package index, as on Colab)."""
  repo = tmp_path / "jaxdrift.git"
  subprocess.run(["git", "clone", "-q", "--bare", str(COLAB.parent), str(repo)], check=True)
  venv = tmp_path / "venv"
  subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
  python = venv / "bin" / "python"
  outside = tmp_path / "content"  # Colab's working directory, not inside a checkout
  outside.mkdir()
  for name in ("quickstart", "reproduce_paper", "metrics_api"):
    cells = _code_cells(name)
    assert "parameters" in cells[0].metadata.get("tags", [])
    install, devices = cells[1].source, cells[2].source
    assert "pip" in install and "jax.devices()" in devices, name
    script = f"REPO_URL = 'file://{repo}'\n{install}\n{devices}\n"
    done = subprocess.run([str(python), "-c", script], cwd=outside, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, (name, done.stdout[-2000:], done.stderr[-4000:])
    assert f"jaxdrift installed from file://{repo}" in done.stdout, name
    assert "device(s)" in done.stdout and "running on the CPU" in done.stdout, name
  where = subprocess.run([str(python), "-c", "import jaxdrift; print(jaxdrift.__file__)"],
                         cwd=outside, capture_output=True, text=True, check=True).stdout
  assert str(venv) in where  # the installed copy, not this checkout
