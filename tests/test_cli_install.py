"""`pip install .` (not editable) into a fresh venv gives a working `jaxdrift` command, run
from a folder outside the checkout (the smoke pipeline through it: tests/test_pipeline.py)."""

import subprocess

import pytest

import jaxdrift as jd
from tests import cli_install

pytestmark = pytest.mark.skipif(cli_install.can_build_wheels() is not None,
                                reason=str(cli_install.can_build_wheels()))


@pytest.fixture(scope="module")
def jaxdrift_script():
  return cli_install.installed_jaxdrift()


def _run(script, *args, cwd):
  return subprocess.run([str(script), *args], cwd=cwd, env=cli_install.outside_env(),
                        capture_output=True, text=True)


def test_installed_command_runs_the_installed_package_outside_the_checkout(jaxdrift_script,
                                                                            tmp_path):
  version = _run(jaxdrift_script, "--version", cwd=tmp_path)
  assert version.returncode == 0 and version.stdout.strip() == f"jaxdrift {jd.__version__}"
  where = subprocess.run([str(jaxdrift_script.parent / "python"), "-c",
                          "import jaxdrift; print(jaxdrift.__file__)"], cwd=tmp_path,
                         env=cli_install.outside_env(), capture_output=True, text=True)
  assert str(jaxdrift_script.parent.parent) in where.stdout, where  # not the checkout's
  for command in ([], ["train"], ["pipeline"]):
    shown = _run(jaxdrift_script, *command, "--help", cwd=tmp_path)
    assert shown.returncode == 0 and shown.stdout.startswith(
        "usage: " + " ".join(["jaxdrift", *command])), shown
  assert "--lr-tl" in _run(jaxdrift_script, "train", "--help", cwd=tmp_path).stdout


def test_installed_command_checks_its_input(jaxdrift_script, tmp_path):
  run = tmp_path / "run"
  run.mkdir()
  refused = _run(jaxdrift_script, "report", "--workdir", "run", "./run/", cwd=tmp_path)
  assert refused.returncode == 2
  assert refused.stderr.startswith("jaxdrift report: error: --workdir takes each run once")
