"""`pip install .` (not editable) of this checkout into a fresh venv, once per session.

The venv sees the test environment's packages (jax, flax, tensorflow_datasets, ...) through
a .pth file, so the install is offline and quick: `pip install --no-deps
--no-build-isolation` of a copy of the sources (pip builds in the source tree, which must not
be the checkout). Building a wheel takes setuptools with `bdist_wheel`: the `wheel` package,
or setuptools >= 70.1.
"""

import atexit
import functools
import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent


def can_build_wheels() -> str | None:
  """None when this Python can build a wheel without downloads, else what is missing."""
  try:
    import setuptools
  except ImportError:
    return "setuptools is not installed"
  try:
    import wheel  # noqa: F401
    return None
  except ImportError:
    pass
  version = tuple(int(p) for p in setuptools.__version__.split(".")[:2] if p.isdigit())
  if version >= (70, 1):
    return None
  return (f"setuptools {setuptools.__version__} builds wheels only with the `wheel` package, "
          "which is not installed (install `wheel` or setuptools >= 70.1)")


@functools.cache
def installed_jaxdrift() -> pathlib.Path:
  """The `jaxdrift` script of a fresh venv holding a non-editable install of the checkout.

  Raises:
    RuntimeError: the venv or the install failed (with pip's output).
  """
  base = pathlib.Path(tempfile.mkdtemp(prefix="jaxdrift-install-"))
  atexit.register(shutil.rmtree, base, ignore_errors=True)
  source = base / "src"
  source.mkdir()
  for name in ("pyproject.toml", "README.md"):
    shutil.copy(ROOT / name, source / name)
  shutil.copytree(ROOT / "jaxdrift", source / "jaxdrift",
                  ignore=shutil.ignore_patterns("__pycache__"))
  venv = base / "venv"
  subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
  python = venv / "bin" / "python"
  purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()"
                            "['purelib'])"], check=True, capture_output=True, text=True)
  pathlib.Path(purelib.stdout.strip(), "test_environment.pth").write_text(
      sysconfig.get_paths()["purelib"] + "\n")
  done = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install",
                         "--no-deps", "--no-build-isolation", "--no-index", "-q", str(source)],
                        cwd=base, env=outside_env(), capture_output=True, text=True)
  if done.returncode:
    raise RuntimeError(f"pip install failed:\n{done.stdout}\n{done.stderr}")
  return venv / "bin" / "jaxdrift"


def outside_env() -> dict:
  """This environment without the checkout on PYTHONPATH (so the installed copy runs)."""
  env = dict(os.environ)
  kept = [p for p in env.pop("PYTHONPATH", "").split(os.pathsep)
          if p and pathlib.Path(p).resolve() != ROOT]
  if kept:
    env["PYTHONPATH"] = os.pathsep.join(kept)
  return env
