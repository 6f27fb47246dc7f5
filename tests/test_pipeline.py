"""The study end to end on the smoke preset: train -> drift -> report, resumable."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import jaxdrift as jd
from jaxdrift.study import results
from tests import cli_install

ARCHS = ("densenet201", "resnet50v2", "inceptionv3")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """The smoke pipeline through the command line, run from a folder outside the checkout:
  the `jaxdrift` of a non-editable install (tests/cli_install.py) where this Python can
  build one, else `python -m jaxdrift`. Its stderr is kept in out["stderr"]."""
  root = tmp_path_factory.mktemp("smoke")
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  if cli_install.can_build_wheels() is None:
    command, env = [str(cli_install.installed_jaxdrift())], cli_install.outside_env()
  else:
    command, env = [sys.executable, "-m", "jaxdrift"], dict(os.environ,
                                                            PYTHONPATH=str(cli_install.ROOT))
  # Two worker processes (the default on a 2-core CPU), whatever this machine has.
  done = subprocess.run([*command, "pipeline", "--preset", "smoke", "--root", str(root),
                         "--data-dir", data_dir, "--workers", "2"],
                        cwd=tmp_path_factory.mktemp("elsewhere"), env=env,
                        capture_output=True, text=True)
  assert done.returncode == 0, done.stderr
  report = root / "report" / "report.md"
  out = {"report": report, "workdirs": [root / a for a in ARCHS],
         "timings": json.loads((root / "timings.json").read_text()),
         "figures": results.read_json(report.with_suffix(".json"))["figures"],
         "stdout": done.stdout, "stderr": done.stderr}
  return root, data_dir, out


def test_command_line_shows_no_library_chatter(run):
  out = run[2]
  for noise in ("WARNING:absl", "Using custom data configuration", "Shuffling",
                "OpenCV is not installed", "Generating splits", "Traceback"):
    assert noise not in out["stderr"], noise
  assert out["stdout"].splitlines()[-1] == f"report: {out['report']}"


def test_every_report_cell_equals_the_csv_aggregate(run):
  root, _, out = run
  table = results.concat([results.read_table(root / a / "drift" / "samples.csv")
                          for a in ARCHS])
  report = results.read_json(out["report"].with_suffix(".json"))
  assert report["selection"] == "all"
  markdown = out["report"].read_text()
  assert report["drift"], "no drift cells"
  for cell in report["drift"]:
    rows = (table["arch"] == cell["arch"]) & (table["method"] == cell["method"])
    values = table[cell["metric"]][rows]
    finite = values[np.isfinite(values)]
    assert cell["n_selected"] == rows.sum()
    assert cell["n_invalid_tl"] == (~table["valid_a"][rows]).sum()
    if finite.size:
      np.testing.assert_allclose(cell["mean"], finite.mean(), rtol=1e-9)
      np.testing.assert_allclose(cell["sd"], finite.std(ddof=1), rtol=1e-9, atol=1e-12)
      assert cell["ci_low"] <= cell["mean"] <= cell["ci_high"]
      assert f"{cell['mean']:.3f} ± {cell['sd']:.3f}" in markdown
    else:
      assert cell["mean"] is None  # NaN, written as null, shown as nan
  summary = json.loads((root / "resnet50v2" / "summary.json").read_text())
  assert f"{summary['ft']['test']['accuracy']:.3f}" in markdown


def test_figures_are_pngs_with_the_expected_panels(run):
  root, _, out = run
  figs = out["figures"]
  class_names = results.read_json(root / "resnet50v2" / "drift" / "aggregates.json")[
      "class_names"]
  expected = {"distributions": 4, "ranking_slopes": 4, "training_curves": len(ARCHS),
              "epoch_drift": 4, "localization": len(ARCHS) * 2}
  for name, panels in expected.items():
    assert figs[name]["panels"] == panels, name
  overlays = [n for n in figs if n.startswith("overlay_")]
  assert len(overlays) == len(ARCHS) * 2
  for name in overlays:
    assert figs[name]["panels"] % 4 == 0 and 4 <= figs[name]["panels"] <= 4 * len(class_names)
  for name, fig in figs.items():
    with open(fig["path"], "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n", name
    with Image.open(fig["path"]) as image:
      image.verify()
    with Image.open(fig["path"]) as image:
      assert min(image.size) > 200 and np.asarray(image.convert("L")).std() > 1, name
    assert f"figures/{name}.png" in out["report"].read_text()


def test_epoch_table_ends_at_the_tl_and_ft_checkpoints(run):
  """The last TL epoch IS the TL checkpoint (drift against it: none) and the last FT epoch
  the FT checkpoint (its drift against TL: the samples table's, image by image)."""
  root = run[0]
  for arch in ARCHS:
    summary = json.loads((root / arch / "summary.json").read_text())
    samples = results.read_table(root / arch / "drift" / "samples.csv")
    epochs = results.read_table(root / arch / "drift" / "epochs.csv")
    vs_tl = epochs["reference"] == "tl"
    at_tl = vs_tl & (epochs["epoch"] == summary["tl"]["global_epoch"]) & epochs["valid"]
    assert at_tl.any()
    np.testing.assert_allclose(epochs["displacement"][at_tl], 0.0, atol=1e-6)
    np.testing.assert_allclose(epochs["iou"][at_tl], 1.0, atol=1e-6)
    at_ft = vs_tl & (epochs["epoch"] == summary["ft"]["global_epoch"])
    for method in set(samples["method"]):
      a = samples["method"] == method
      b = at_ft & (epochs["method"] == method)
      np.testing.assert_array_equal(epochs["image"][b], samples["image"][a])
      for metric in ("displacement", "iou", "pearson", "concentration_change"):
        np.testing.assert_allclose(epochs[metric][b], samples[metric][a], rtol=1e-6,
                                   atol=1e-7, err_msg=f"{arch} {method} {metric}")


def test_rerun_does_no_repeated_work(run):
  root, data_dir, out = run
  watched = [root / a / f for a in ARCHS for f in ("summary.json", "drift/samples.csv",
                                                  "drift/epochs.csv")]
  before = {p: os.stat(p).st_mtime_ns for p in watched}
  report_before = out["report"].read_text()
  again = jd.study.run_pipeline("smoke", archs=ARCHS, root=root, data_dir=data_dir,
                                progress=False)
  assert {p: os.stat(p).st_mtime_ns for p in watched} == before
  assert again["report"].read_text() == report_before
  for arch in ARCHS:
    assert again["timings"][arch]["train"] < 1.0 and again["timings"][arch]["drift"] < 1.0


def test_clear_errors(run, tmp_path):
  root, data_dir, _ = run
  with pytest.raises(jd.train.CheckpointError):
    jd.study.run_drift(tmp_path / "nothing", progress=False)
  table = results.read_table(root / "resnet50v2" / "drift" / "samples.csv")
  first = table["method"] == table["method"][0]
  wrong = np.flatnonzero(first & ~table["selected_both"])[0]
  i = int(table["image"][first][wrong])
  config = jd.study.DriftConfig(split=f"test[{i}:{i + 1}]", selection="both",
                                methods=("layercam",))
  with pytest.raises(jd.study.DriftStageError, match="no test image is selected"):
    jd.study.run_drift(root / "resnet50v2", config, data_dir=data_dir, progress=False)
  with pytest.raises(jd.train.CheckpointError, match="densenet"):
    jd.train.load_checkpoint(root / "densenet201", "ft", arch="resnet50v2")
  (tmp_path / "resnet50v2").symlink_to(root / "densenet201")  # another arch's run
  with pytest.raises(jd.train.WorkdirError):
    jd.study.run_pipeline("smoke", archs=("resnet50v2",), root=tmp_path, data_dir=data_dir,
                          progress=False)
  # The same from worker processes: the worker's exception, with its message, reaches here.
  (tmp_path / "inceptionv3").symlink_to(root / "resnet50v2")
  with pytest.raises(jd.train.WorkdirError, match="holds a run of") as raised:
    jd.study.run_pipeline("smoke", archs=("resnet50v2", "inceptionv3"), root=tmp_path,
                          data_dir=data_dir, progress=False, workers=2)
  assert "worker process" in "".join(getattr(raised.value, "__notes__", []))


def test_worker_processes_train_as_this_process_does(run, tmp_path):
  """The fixture trained in two worker processes; DenseNet201's run again in this process
  gives the same metrics to the last digit (the drift stage: next test)."""
  root, data_dir, out = run
  assert out["timings"]["workers"] == 2
  config = jd.train.preset("smoke", arch="densenet201", data_dir=data_dir)
  jd.train.train(config, tmp_path / "densenet201", progress=False)
  here, there = (json.loads((d / "densenet201" / "summary.json").read_text())
                 for d in (tmp_path, root))
  assert here.pop("timings").keys() == there.pop("timings").keys()  # seconds differ
  assert json.dumps(here) == json.dumps(there)


def test_drift_stage_killed_half_way_is_redone(run, monkeypatch):
  root, data_dir, out = run
  report_before = out["report"].read_text()
  workdir = root / "resnet50v2"
  drift_files = ("samples.csv", "epochs.csv", "aggregates.json")
  worker_files = {n: (workdir / "drift" / n).read_text() for n in drift_files}

  def killed(*args, **kwargs):
    raise KeyboardInterrupt("killed after samples.csv was written")

  # Another configuration overwrites samples.csv, then the run dies before its manifest.
  monkeypatch.setattr(jd.study.epoch_drift, "table", killed)
  other = dataclasses.replace(jd.study.DRIFT_PRESETS["smoke"], methods=("layercam",))
  with pytest.raises(KeyboardInterrupt):
    jd.study.run_drift(workdir, other, data_dir=data_dir, progress=False)
  monkeypatch.undo()
  assert not (workdir / "drift" / "manifest.json").exists()
  again = jd.study.run_pipeline("smoke", archs=ARCHS, root=root, data_dir=data_dir,
                                progress=False)
  assert again["timings"]["workers"] == 1  # one arch to redo: in this process
  assert again["timings"]["resnet50v2"]["drift"] > 1.0  # redone, not skipped
  assert again["report"].read_text() == report_before
  # ... and this process's drift stage wrote what the fixture's worker process had written.
  for name in drift_files:
    assert (workdir / "drift" / name).read_text() == worker_files[name], name


def test_drift_stage_places_maps_on_the_networks_grid(run, tmp_path):
  root, data_dir, _ = run
  with pytest.raises(ValueError, match="grid"):
    jd.study.DriftConfig(grid="pixel")
  workdir = tmp_path / "resnet50v2"
  shutil.copytree(root / "resnet50v2", workdir)
  network = results.read_table(workdir / "drift" / "samples.csv")
  assert results.read_json(workdir / "drift" / "manifest.json")["grid"] == "network"
  config = dataclasses.replace(jd.study.DriftConfig(**{
      k: tuple(v) if isinstance(v, list) else v
      for k, v in results.read_json(workdir / "drift" / "manifest.json").items()}),
      grid="half_pixel")
  jd.study.run_drift(workdir, config, data_dir=data_dir, progress=False)
  half = results.read_table(workdir / "drift" / "samples.csv")
  np.testing.assert_array_equal(half["image"], network["image"])
  # ResNet50V2's cells sit half a cell off the half-pixel grid: the upsampled maps, and
  # so the drift metrics and the localisation, differ.
  assert not np.allclose(half["displacement"], network["displacement"], equal_nan=True)
  assert not np.allclose(half["ft_energy_inside"], network["ft_energy_inside"],
                         equal_nan=True)


def test_drift_stage_rerun_into_a_fresh_dir_writes_the_same_bytes(run, tmp_path,
                                                                 monkeypatch):
  """The drift stage again, in this process, on a copy of a run without its drift/ (a
  fresh output directory): the same bytes as the worker process wrote. Its seconds are
  split into compile, input, device, host and write, in ROOT/timings.json as well. The
  epochs saved with the TL and FT checkpoints are not restored (their maps are reused)."""
  root, data_dir, _ = run
  workdir = tmp_path / "resnet50v2"
  shutil.copytree(root / "resnet50v2", workdir, ignore=shutil.ignore_patterns("drift"))
  restored, load = [], jd.train.load_checkpoint
  monkeypatch.setattr(jd.train, "load_checkpoint",
                      lambda w, which="ft", **k: restored.append(which) or load(w, which, **k))
  out = jd.study.run_drift(workdir, jd.study.DRIFT_PRESETS["smoke"], data_dir=data_dir,
                           progress=False)
  summary = json.loads((workdir / "summary.json").read_text())
  epochs = set(results.read_table(workdir / "drift" / "epochs.csv")["epoch"].tolist())
  named = {summary[p]["global_epoch"] for p in ("tl", "ft")}
  assert named <= epochs  # the smoke run: one epoch per phase, nothing left to restore
  assert sorted(e for e in restored if isinstance(e, int)) == sorted(epochs - named)
  for name in ("samples.csv", "aggregates.json", "epochs.csv", "examples.npz"):
    assert (workdir / "drift" / name).read_bytes() == (
        root / "resnet50v2" / "drift" / name).read_bytes(), name
  parts = ("compile", "input", "device", "host", "write")
  assert set(out["timings"]) == {*parts, "total"}
  assert min(out["timings"].values()) >= 0 and out["timings"]["device"] > 0
  assert out["timings"]["total"] == pytest.approx(sum(out["timings"][p] for p in parts),
                                                  abs=0.01)
  assert results.read_json(workdir / "drift" / "timings.json") == out["timings"]
  split = json.loads((root / "timings.json").read_text())["resnet50v2"]["drift_split"]
  assert split["total"] <= json.loads((root / "timings.json").read_text())[
      "resnet50v2"]["drift"] + 0.01 and split["compile"] > 0
