"""End to end on phantoms: the CLI smoke run, resume after a kill, clear errors, loading."""

import dataclasses
import json
import shutil

import jax
import numpy as np
import pytest

import jaxdrift as jd
from experiments import train as cli
from jaxdrift.train import state as state_lib


class Killed(Exception):
  pass


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp("tfds")
  jd.data.build("phantoms/small", data_dir=path)
  return path


def _config(data_dir):
  return jd.train.preset("smoke", arch="resnet50v2", data_dir=str(data_dir), epochs_tl=1,
                         epochs_ft=2)


@pytest.fixture(scope="module")
def cli_run(data_dir, tmp_path_factory):
  """The uninterrupted reference run, through the command line."""
  workdir = tmp_path_factory.mktemp("runs") / "resnet"
  cli.main(["--arch", "resnet50v2", "--preset", "smoke", "--data-dir", str(data_dir),
            "--workdir", str(workdir), "--epochs-tl", "1", "--epochs-ft", "2",
            "--no-progress"])
  return workdir


def _variables(workdir, which):
  return state_lib.flatten(jax.device_get(jd.train.load_checkpoint(workdir, which)[1]))


def test_cli_smoke_run_writes_checkpoints_and_logs(cli_run):
  files = {p.relative_to(cli_run).as_posix() for p in cli_run.rglob("*")}
  assert {"config.json", "metrics.jsonl", "summary.json", "checkpoints/tl", "checkpoints/ft",
          "checkpoints/epochs/1", "checkpoints/epochs/2", "checkpoints/epochs/3"} <= files
  config = json.loads((cli_run / "config.json").read_text())
  assert config["arch"] == "resnet50v2" and config["model_arch"] == "resnetv2_tiny"
  assert config["num_classes"] == 5 and len(config["class_names"]) == 5
  records = [json.loads(line) for line in (cli_run / "metrics.jsonl").read_text().splitlines()]
  epochs = [(r["phase"], r["epoch"]) for r in records if r["kind"] == "epoch"]
  assert epochs == [("tl", 1), ("ft", 1), ("ft", 2)]
  assert all(r["step"] == 3 * (1 + (r["phase"] == "ft") * (r["epoch"] - 1))
             for r in records if r["kind"] == "epoch")
  assert all(0.0 <= r["val_auc"] <= 1.0 and len(r["val_confusion"]) == 5
             for r in records if r["kind"] == "epoch")
  assert [r["checkpoint"] for r in records if r["kind"] == "test"] == ["tl", "ft"]
  summary = json.loads((cli_run / "summary.json").read_text())
  assert summary["tl"]["test"]["count"] == 100 and summary["ft"]["global_epoch"] == 3
  tl, ft = _variables(cli_run, "tl"), _variables(cli_run, "ft")
  assert all(np.array_equal(tl[p], ft[p]) is False for p in tl if p[0] == "params")
  # The per-epoch checkpoint of the end of phase 1 is the tl checkpoint.
  epoch1 = _variables(cli_run, 1)
  assert all(np.array_equal(epoch1[p], tl[p]) for p in tl)


def test_resume_after_kill_gives_identical_parameters(cli_run, data_dir, tmp_path):
  workdir = tmp_path / "killed"
  config = _config(data_dir)

  def kill(info):  # dies in the middle of phase 2's second epoch
    if info["phase"] == "ft" and info["epoch"] == 2 and info["step_in_epoch"] == 2:
      raise Killed

  with pytest.raises(Killed):
    jd.train.train(config, workdir, progress=False, hooks=[kill])
  assert not (workdir / "checkpoints" / "epochs" / "3").exists()
  shutil.copytree(workdir, tmp_path / "corrupt")  # for the next check
  jd.train.train(config, workdir, progress=False)
  for which in ("tl", "ft"):
    expected, got = _variables(cli_run, which), _variables(workdir, which)
    assert expected.keys() == got.keys()
    for path in expected:
      assert np.array_equal(expected[path], got[path]), (which, path)
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["global_epoch"] for r in records if r["kind"] == "epoch"] == [1, 2, 3]

  # A damaged latest checkpoint stops the run before any training, with a clear message.
  latest = tmp_path / "corrupt" / "checkpoints" / "epochs" / "2" / "params"
  for f in latest.rglob("*"):
    if f.is_file():
      f.write_bytes(b"garbage")
  with pytest.raises(jd.train.CheckpointError, match="could not read the checkpoint"):
    jd.train.train(config, tmp_path / "corrupt", progress=False)


def test_kill_in_the_first_epoch_of_phase_2_resumes_from_the_tl_checkpoint(
    cli_run, data_dir, tmp_path):
  workdir = tmp_path / "killed_early"

  def kill(info):  # the latest epoch checkpoint is then phase 1's last
    if info["phase"] == "ft" and info["epoch"] == 1 and info["step_in_epoch"] == 2:
      raise Killed

  with pytest.raises(Killed):
    jd.train.train(_config(data_dir), workdir, progress=False, hooks=[kill])
  jd.train.train(_config(data_dir), workdir, progress=False)
  expected, got = _variables(cli_run, "ft"), _variables(workdir, "ft")
  assert all(np.array_equal(expected[p], got[p]) for p in expected)


def test_workdir_of_another_architecture_is_refused(cli_run, data_dir, capsys):
  with pytest.raises(SystemExit) as e:
    cli.main(["--arch", "densenet201", "--preset", "smoke", "--data-dir", str(data_dir),
              "--workdir", str(cli_run), "--no-progress"])
  assert e.value.code == 2  # a user's mistake: one line, exit 2
  err = capsys.readouterr().err
  assert "resnetv2_tiny" in err and "densenet_tiny" in err and "--workdir" in err
  with pytest.raises(jd.train.WorkdirError, match="other settings.*seed"):
    jd.train.train(dataclasses.replace(_config(data_dir), seed=1), cli_run, progress=False)


def test_load_checkpoint_for_later_stages(cli_run):
  model, variables, config = jd.train.load_checkpoint(cli_run, "ft", arch="resnet50v2")
  size = config["input_size"]
  x = np.zeros((2, size, size, 3), np.float32)
  assert model.apply(variables, x, train=False).shape == (2, 5)
  with pytest.raises(jd.train.CheckpointError, match="not 'inceptionv3'"):
    jd.train.load_checkpoint(cli_run, "tl", arch="inceptionv3")
  with pytest.raises(jd.train.CheckpointError, match="saved epochs: \\[1, 2, 3\\]"):
    jd.train.load_checkpoint(cli_run, 7)
  with pytest.raises(jd.train.CheckpointError, match="no config.json"):
    jd.train.load_checkpoint(cli_run / "checkpoints", "ft")


def test_cli_help_documents_every_flag_and_archs_match():
  text = cli.parser().format_help()
  for action in cli.parser()._actions:
    assert action.help, action.dest
  for flag in ("--arch", "--data", "--weights", "--preset", "--workdir", "--image-size",
               "--epochs-tl", "--epochs-ft", "--batch-size", "--lr-tl", "--lr-ft", "--seed"):
    assert flag in text
  assert cli.ARCHS == jd.models.ARCHS


def test_proxy_pretraining_at_its_own_size_feeds_phase_1(data_dir, tmp_path):
  """The demo's pretraining, drawn and trained at another size than the input: its backbone
  differs from the initialisation and is the frozen backbone of the TL checkpoint."""
  config = dataclasses.replace(_config(data_dir), epochs_ft=0, pretrain_epochs=1,
                               pretrain_examples=32, pretrain_image_size=48).validate()
  workdir = tmp_path / "pretrained"
  jd.train.train(config, workdir, progress=False)
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["epoch"] for r in records if r["kind"] == "pretrain"] == [1]
  pretrained = _variables(workdir, "pretrain")
  tl = _variables(workdir, "tl")
  init_key = jax.random.split(jax.random.key(config.seed), 4)[0]
  initial = state_lib.flatten(jd.models.pretrained(config.model_arch, 5, "none", key=init_key,
                                                   input_size=config.input_size))
  backbone = [p for p in pretrained if "predictions" not in p]
  assert backbone and all(np.array_equal(pretrained[p], tl[p]) for p in backbone)
  assert any(not np.array_equal(pretrained[p], initial[p]) for p in backbone
             if p[0] == "params")
  with pytest.raises(ValueError, match="pretrain_image_size 16 is below the minimum"):
    dataclasses.replace(config, pretrain_image_size=16).validate()


def test_diverged_run_with_early_stopping_finishes_and_says_so(data_dir, tmp_path):
  """A learning rate that blows the weights up: no validation AUC is finite, yet each phase
  has a best epoch (its named checkpoint exists) and the summary reports NaN, never a
  plausible AUC."""
  config = dataclasses.replace(_config(data_dir), lr_tl=3e38, lr_ft=3e38, early_stopping=1)
  summary = jd.train.train(config, tmp_path / "run", progress=False)
  for name in ("tl", "ft"):
    assert summary[name]["diverged"] is True
    assert np.isnan(summary[name]["test"]["auc"]) and np.isnan(summary[name]["test"]["accuracy"])
