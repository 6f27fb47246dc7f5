"""A training run resumes from every state: kills between two saves, lost named checkpoints,
failed starts (issue 21, items 2 and 3), and the workdir module's files."""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import textwrap

import h5py
import jax
import numpy as np
import pytest

import jaxdrift as jd
from experiments import train as cli
from jaxdrift import workdir as workdir_lib
from jaxdrift.train import state as state_lib

REPO = str(pathlib.Path(__file__).resolve().parents[1])

# Kills its own process (SIGKILL: no cleanup, no finally) right before the named checkpoint
# argv[1] is saved, i.e. between the epoch checkpoint and the named one; then runs the CLI.
KILLER = textwrap.dedent(f"""
    import os, signal, sys
    sys.path.insert(0, {REPO!r})
    from jaxdrift.train import checkpoint
    save_named = checkpoint.save_named

    def kill_before(workdir, name, *args, **kwargs):
      if name == sys.argv[1]:
        os.kill(os.getpid(), signal.SIGKILL)
      return save_named(workdir, name, *args, **kwargs)

    checkpoint.save_named = kill_before
    from experiments import train
    train.main(sys.argv[2:])
""")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp("tfds")
  jd.data.build("phantoms/small", data_dir=path)
  return path


def _argv(data_dir, workdir):
  return ["--arch", "resnet50v2", "--preset", "smoke", "--data-dir", str(data_dir),
          "--workdir", str(workdir), "--epochs-tl", "1", "--epochs-ft", "1",
          "--max-steps-per-epoch", "1", "--no-progress"]


def _truncated_h5(path):
  with h5py.File(path, "w") as f:
    f.attrs["layer_names"] = [b"conv1_conv"]
    f.create_dataset("conv1_conv/conv1_conv/kernel:0", data=np.ones((64, 64), np.float32))
  data = path.read_bytes()
  path.write_bytes(data[:len(data) // 2])
  return path


@pytest.fixture(scope="module")
def reference(data_dir, tmp_path_factory):
  """The uninterrupted run, through the CLI, in a workdir where two starts failed first:
  a truncated --weights file, then --max-steps-per-epoch -1.

  Returns:
    (workdir, the two starts' exceptions, whether the first start wrote the workdir).
  """
  tmp = tmp_path_factory.mktemp("reference")
  workdir = tmp / "run"
  errors = []
  bad = _truncated_h5(tmp / "truncated.h5")
  with pytest.raises((jd.models.WeightFileError, SystemExit)) as e:
    cli.main(_argv(data_dir, workdir) + ["--weights", str(bad)])
  errors.append(e.value)
  written = workdir.exists()  # the weights are checked before anything is written
  with pytest.raises((ZeroDivisionError, ValueError, SystemExit)) as e:
    cli.main(_argv(data_dir, workdir) + ["--max-steps-per-epoch", "-1"])
  errors.append(e.value)
  cli.main(_argv(data_dir, workdir))  # the corrected command
  return workdir, errors, written


def _variables(workdir, which):
  return state_lib.flatten(jax.device_get(jd.train.load_checkpoint(workdir, which)[1]))


def _assert_same_run(expected_dir, got_dir):
  for which in ("tl", "ft"):
    expected, got = _variables(expected_dir, which), _variables(got_dir, which)
    assert expected.keys() == got.keys()
    for path in expected:
      assert np.array_equal(expected[path], got[path]), (which, path)
  summary = workdir_lib.read_json(workdir_lib.Workdir(got_dir).summary)
  assert summary["tl"]["global_epoch"] == 1 and summary["ft"]["global_epoch"] == 2
  expected = workdir_lib.read_json(workdir_lib.Workdir(expected_dir).summary)
  # Everything but the seconds each run took (`timings`).
  assert {k: v for k, v in summary.items() if k != "timings"} == {
      k: v for k, v in expected.items() if k != "timings"}


def test_failed_starts_leave_nothing_that_blocks_the_corrected_command(reference):
  workdir, (weights_error, _), written = reference
  if not isinstance(weights_error, SystemExit):
    assert "truncated.h5" in str(weights_error)
  assert not written
  config = workdir_lib.read_config(workdir)
  assert config["weights"] == "none" and config["max_steps_per_epoch"] == 1
  assert workdir_lib.Workdir(workdir).summary.exists()
  records = workdir_lib.read_jsonl(workdir_lib.Workdir(workdir).metrics)
  assert [r["global_epoch"] for r in records if r["kind"] == "epoch"] == [1, 2]


def test_kills_between_the_epoch_save_and_the_named_save_resume(reference, data_dir, tmp_path):
  """Through the command line: SIGKILL right before the tl save, the same command again
  (with a SIGKILL before the ft save), then once more: it finishes, bit-identical."""
  workdir = tmp_path / "killed"
  script = tmp_path / "killer.py"
  script.write_text(KILLER)
  argv = _argv(data_dir, workdir)

  def run(*command):
    return subprocess.run([sys.executable, *command, *argv], cwd=REPO, capture_output=True,
                          text=True, timeout=300)

  files = workdir_lib.Workdir(workdir)
  out = run(str(script), "tl")
  assert out.returncode == -signal.SIGKILL, out.stderr[-3000:]
  assert (files.epochs / "1").is_dir() and not files.named("tl").exists()
  out = run(str(script), "ft")  # resumes: re-derives tl, trains phase 2, killed again
  assert out.returncode == -signal.SIGKILL, out.stderr[-3000:]
  assert files.named("tl").is_dir() and (files.epochs / "2").is_dir()
  assert not files.named("ft").exists() and not files.summary.exists()
  out = run("-m", "experiments.train")
  assert out.returncode == 0, out.stderr[-3000:]
  _assert_same_run(reference[0], workdir)
  records = workdir_lib.read_jsonl(files.metrics)
  assert [r["global_epoch"] for r in records if r["kind"] == "epoch"] == [1, 2]


@pytest.mark.parametrize("damage", ["delete", "truncate", "stale"])
def test_lost_named_checkpoints_are_re_derived(reference, data_dir, tmp_path, damage):
  """A deleted or truncated checkpoints/ft (as the error for a damaged one advises), or a
  tl checkpoint of another epoch, comes back from the epoch checkpoint on a rerun."""
  workdir = tmp_path / "run"
  shutil.copytree(reference[0], workdir)
  files = workdir_lib.Workdir(workdir)
  if damage == "delete":
    shutil.rmtree(files.named("ft"))
  elif damage == "truncate":
    for f in files.named("ft").rglob("*"):
      if f.is_file():
        f.write_bytes(f.read_bytes()[:3])
  else:  # the tl checkpoint replaced by phase 2's epoch: a kill in an early-stopping run
    variables, meta = jd.train.checkpoint.restore_epoch_variables(workdir, 2)
    jd.train.checkpoint.save_named(workdir, "tl", variables["params"],
                                   variables["batch_stats"], meta)
  config = jd.train.preset("smoke", arch="resnet50v2", data_dir=str(data_dir), epochs_tl=1,
                           epochs_ft=1, max_steps_per_epoch=1)
  jd.train.train(config, workdir, progress=False)
  _assert_same_run(reference[0], workdir)


def test_config_binds_a_workdir_only_once_a_checkpoint_exists(reference, tmp_path):
  config = jd.train.preset("smoke", arch="resnet50v2", max_steps_per_epoch=1)
  other = jd.train.preset("smoke", arch="resnet50v2", seed=5)
  stale = tmp_path / "stale"
  workdir_lib.write_config(stale, other.to_json())
  assert jd.train.loop.check_workdir(stale, config) is None
  with pytest.raises(jd.train.WorkdirError, match="other settings.*seed"):
    jd.train.loop.check_workdir(reference[0], other)
  (stale / "config.json").write_text("{torn")
  assert jd.train.loop.check_workdir(stale, config) is None
  shutil.copytree(reference[0] / "checkpoints", stale / "checkpoints")
  with pytest.raises(jd.train.WorkdirError, match="config.json is not valid JSON"):
    jd.train.loop.check_workdir(stale, config)


def test_workdir_files(tmp_path):
  files = workdir_lib.Workdir(tmp_path / "run")
  assert files.config == tmp_path / "run" / "config.json"
  assert files.named("ft") == tmp_path / "run" / "checkpoints" / "ft"
  assert files.drift_file("aggregates.json") == tmp_path / "run" / "drift" / "aggregates.json"
  assert workdir_lib.timings_path(tmp_path) == tmp_path / "timings.json"
  workdir_lib.write_json(files.summary, {"auc": float("nan"), "n": 3})
  back = workdir_lib.read_json(files.summary)
  assert back["n"] == 3 and np.isnan(back["auc"])
  assert sorted(os.listdir(files.root)) == ["summary.json"]  # no temporary file left
  with pytest.raises(workdir_lib.WorkdirError, match="no such run summary"):
    workdir_lib.read_json(files.root / "nothing.json", what="run summary")
  files.summary.write_bytes(b"\xff\xfe")
  with pytest.raises(workdir_lib.WorkdirError, match="cannot read"):
    workdir_lib.read_json(files.summary)
  files.summary.write_text('{"a": 1')
  with pytest.raises(workdir_lib.WorkdirError, match="summary.json is not valid JSON"):
    workdir_lib.read_json(files.summary)
  assert workdir_lib.config_diff({"seed": 0, "data_dir": "a", "old": 1},
                                 {"seed": 1, "data_dir": "b", "new": 2}) == {"seed": (0, 1)}
  # A torn last line (a kill while appending) is dropped; a torn line before it is an error.
  files.metrics.write_text(json.dumps({"kind": "epoch"}) + '\n{"kind": "ep')
  assert workdir_lib.read_jsonl(files.metrics) == [{"kind": "epoch"}]
  files.metrics.write_text('{"kind": "ep\n' + json.dumps({"kind": "epoch"}) + "\n")
  with pytest.raises(workdir_lib.WorkdirError, match="line 1"):
    workdir_lib.read_jsonl(files.metrics)
