"""The `jaxdrift` command: every input mistake ends in one line and exit 2 with nothing
written, internal errors keep their traceback, Ctrl-C exits 130, aliases and help work."""

import os
import signal
import subprocess
import sys

import h5py
import numpy as np
import pytest

import jaxdrift as jd
from jaxdrift import cli
from tests import data_fakes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = ["--arch", "resnet50v2", "--preset", "smoke", "--no-progress"]


def _fails(capsys, argv, *needles):
  """Runs the command in-process; asserts exit 2 and ONE stderr line naming `needles`."""
  code = cli.main(argv)
  captured = capsys.readouterr()
  lines = [l for l in captured.err.splitlines() if l.strip()]
  assert code == 2, captured
  assert len(lines) == 1, lines
  assert lines[0].startswith(f"jaxdrift {argv[0]}: error: "), lines[0]
  assert "Traceback" not in captured.err
  for needle in needles:
    assert needle in lines[0], (needle, lines[0])
  return lines[0]


def _folder(root, per_class, empty_class=False):
  for cls in ("a", "b"):
    (root / cls).mkdir(parents=True)
    for i in range(per_class):
      (root / cls / f"{i}.png").write_bytes(
          data_fakes.png_bytes(np.full((8, 9), 10 * i, np.uint8)))
  if empty_class:
    (root / "c").mkdir()
  return root


# --- train --------------------------------------------------------------------------------

def test_train_nan_learning_rate_is_refused_by_the_api_and_the_command(capsys, tmp_path):
  with pytest.raises(ValueError, match="lr_tl must be a finite learning rate"):
    jd.train.preset("smoke", arch="resnet50v2", lr_tl=float("nan"))
  with pytest.raises(ValueError, match="lr_ft"):
    jd.train.TrainConfig(lr_ft=float("inf")).validate()
  _fails(capsys, ["train", *SMOKE, "--lr-tl", "nan", "--workdir", str(tmp_path / "w")],
         "lr_tl", "nan")
  assert not (tmp_path / "w").exists()


def test_train_negative_step_cap_is_refused(capsys, tmp_path):
  _fails(capsys, ["train", *SMOKE, "--max-steps-per-epoch", "-1",
                  "--workdir", str(tmp_path / "w")], "max_steps_per_epoch", "-1")
  assert not (tmp_path / "w").exists()


def test_train_truncated_weight_file_writes_nothing(capsys, tmp_path):
  path = tmp_path / "weights.h5"
  with h5py.File(path, "w") as f:
    f.attrs["layer_names"] = [b"conv1_conv"]
    f.create_dataset("conv1_conv/kernel", data=np.zeros((64, 64), np.float32))
  path.write_bytes(path.read_bytes()[:1000])
  _fails(capsys, ["train", *SMOKE, "--weights", str(path), "--workdir", str(tmp_path / "w")],
         str(path))
  assert not (tmp_path / "w").exists()  # a corrected rerun starts clean


def test_train_unknown_dataset(capsys, tmp_path):
  _fails(capsys, ["train", *SMOKE, "--data", "nosuchdata", "--data-dir", str(tmp_path / "d"),
                  "--workdir", str(tmp_path / "w")], "unknown dataset 'nosuchdata'")
  assert not (tmp_path / "w").exists()


def test_train_folder_with_an_empty_class_folder(capsys, tmp_path):
  root = _folder(tmp_path / "images", 10, empty_class=True)
  _fails(capsys, ["train", *SMOKE, "--data", f"folder:{root}", "--data-dir",
                  str(tmp_path / "d"), "--workdir", str(tmp_path / "w")],
         "class folder", "contains no image files")
  assert not (tmp_path / "w").exists()


def test_train_folder_too_small_for_the_split_says_how_many_images_it_needs(capsys, tmp_path):
  root = _folder(tmp_path / "images", 3)
  line = _fails(capsys, ["train", *SMOKE, "--data", f"folder:{root}", "--data-dir",
                         str(tmp_path / "d"), "--workdir", str(tmp_path / "w")],
                "a: 3, b: 3", "at least 8 images")
  assert "No examples were yielded" not in line
  assert not (tmp_path / "w").exists()


def test_train_usage_mistake_is_one_line(capsys):
  _fails(capsys, ["train", "--arch", "resnet50v2", "--batch-size", "many"], "--batch-size",
         "jaxdrift train --help")


# --- drift --------------------------------------------------------------------------------

@pytest.mark.parametrize("flags,needle", [
    (["--null-samples", "-1"], "null_samples"),
    (["--methods", "bogus"], "bogus"),
    (["--methods", "layercam,layercam"], "each entry once"),
    (["--split", "nosuch"], "'nosuch'"),
    (["--batch-size", "0"], "batch_size"),
    (["--pointing-tolerance", "-5"], "pointing_tolerance"),
    (["--pointing-tolerance", "nan"], "pointing_tolerance"),
])
def test_drift_bad_option_is_refused_before_anything_is_read(capsys, tmp_path, flags, needle):
  workdir = tmp_path / "run"
  workdir.mkdir()
  _fails(capsys, ["drift", "--workdir", str(workdir), *flags], needle)
  assert list(workdir.iterdir()) == []


def test_drift_defaults_are_drift_configs():
  args = cli.build_parser().parse_args(["drift", "--workdir", "x"])
  assert cli.drift.config(args) == jd.study.DriftConfig()


def test_drift_on_a_folder_that_is_no_run(capsys, tmp_path):
  _fails(capsys, ["drift", "--workdir", str(tmp_path)], "no config.json")
  assert not (tmp_path / "drift").exists()


# --- report and pipeline ------------------------------------------------------------------

def test_report_refuses_a_workdir_given_twice_under_any_spelling(capsys, tmp_path):
  run = tmp_path / "run"
  run.mkdir()
  (tmp_path / "link").symlink_to(run)
  for second in (str(run), f"{run}/", str(tmp_path / "link"), str(tmp_path / "." / "run")):
    _fails(capsys, ["report", "--workdir", str(run), second], "same directory")
  assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "run"]


def test_pipeline_refuses_an_architecture_named_twice(capsys, tmp_path):
  with pytest.raises(ValueError, match="each architecture once"):
    jd.study.run_pipeline("smoke", archs=("resnet50v2", "resnet50v2"), root=tmp_path / "r")
  _fails(capsys, ["pipeline", "--preset", "smoke", "--archs", "resnet50v2,resnet50v2",
                  "--root", str(tmp_path / "r")], "resnet50v2", "once")
  assert not (tmp_path / "r").exists()


def test_pipeline_refuses_zero_workers(capsys, tmp_path):
  _fails(capsys, ["pipeline", "--preset", "smoke", "--workers", "0", "--root",
                  str(tmp_path / "r")], "workers must be an integer >= 1")
  assert not (tmp_path / "r").exists()


# --- errors that are not the user's, --debug, aliases, version ------------------------------

def test_internal_error_keeps_its_traceback(monkeypatch, tmp_path):
  def broken(*args, **kwargs):
    return np.zeros(2) + np.zeros(3)  # a ValueError, but not one jaxdrift raised on purpose

  monkeypatch.setattr(jd.train, "train", broken)
  with pytest.raises(ValueError, match="broadcast"):
    cli.main(["train", *SMOKE, "--workdir", str(tmp_path / "w")])


def test_debug_shows_the_traceback_of_a_user_error(capsys, tmp_path):
  code = cli.main(["--debug", "train", *SMOKE, "--lr-tl", "nan",
                   "--workdir", str(tmp_path / "w")])
  err = capsys.readouterr().err
  assert code == 2 and "Traceback" in err
  assert err.splitlines()[-1].startswith("jaxdrift train: error: lr_tl")


def test_experiments_aliases_and_python_m_jaxdrift(tmp_path):
  env = dict(os.environ, PYTHONPATH=ROOT)
  version = subprocess.run([sys.executable, "-m", "jaxdrift", "--version"], cwd=tmp_path,
                           env=env, capture_output=True, text=True)
  assert version.returncode == 0 and version.stdout.strip() == f"jaxdrift {jd.__version__}"
  alias = subprocess.run([sys.executable, "-m", "experiments.report", "--workdir", ".", "./"],
                         cwd=ROOT, env=env, capture_output=True, text=True)
  assert alias.returncode == 2, alias
  assert alias.stderr.strip().splitlines() == [
      f"jaxdrift report: error: --workdir takes each run once, found '.' and './', which are "
      f"the same directory ({ROOT}); drop one"]


def test_every_command_has_help_for_every_flag():
  for name in cli.COMMANDS:
    parser = cli.command_parser(name)
    for action in parser._actions:
      assert action.help, (name, action.dest)
  assert cli.train.ARCHS == cli.pipeline.ARCHS == jd.models.ARCHS
  assert cli.train.PRESETS == jd.train.PRESETS


# --- Ctrl-C --------------------------------------------------------------------------------

def test_ctrl_c_during_an_xla_compile_exits_130_in_one_line(tmp_path):
  """SIGINT while the model's initialiser compiles (about 10 s on a 2-core CPU): the
  process ends at once with 130 and one line, no traceback and no segfault (was 139)."""
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_LOG_COMPILES="1")
  env.pop("JAX_COMPILATION_CACHE_DIR", None)  # a cached program would not compile
  process = subprocess.Popen(
      [sys.executable, "-m", "jaxdrift", "--verbose", "train", *SMOKE, "--data-dir",
       str(tmp_path / "d"), "--workdir", str(tmp_path / "w")],
      cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  seen = []
  for line in process.stderr:
    seen.append(line)
    if "Compiling jit(<lambda>)" in line:  # the initialiser (models.pretrained, "none")
      break
  else:
    pytest.fail("no initialiser compile seen:\n" + "".join(seen[-20:]))
  process.send_signal(signal.SIGINT)
  rest = process.stderr.read()
  assert process.wait(timeout=60) == 130
  assert "Traceback" not in rest and "Segmentation" not in rest
  assert rest.strip().splitlines()[-1] == ("jaxdrift train: interrupted; rerun the same "
                                           "command to resume")
