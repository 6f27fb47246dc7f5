"""Faithfulness in the study: the drift stage's AUC columns, its sanity checks, the report.

The workdir is a cheap stand-in for a smoke training run: phantoms/small and two
checkpoints of the tiny ResNet50V2 written straight from two initialisations (training
would add ~25 s; the stage does not care how the checkpoints were made).
"""

import functools
import pathlib

import numpy as np
import pytest

import jaxdrift as jd
from jaxdrift.study import results
from tests.workdir_fakes import two_checkpoint_workdir

STEPS = 4
METHODS = ("layercam",)  # one: a second method adds ~10 s of compiles


@pytest.fixture(scope="module")
def stage(tmp_path_factory):
  """The drift stage with faithfulness on 16 test images, then the report."""
  data_dir = tmp_path_factory.mktemp("tfds")
  jd.data.build("phantoms/small", data_dir=data_dir)
  workdir = two_checkpoint_workdir(tmp_path_factory.mktemp("runs"), data_dir)
  config = jd.study.DriftConfig(methods=METHODS, split="test[:16]", batch_size=8,
                                null_samples=4, selection="all", examples_per_class=0,
                                faithfulness=True, faithfulness_steps=STEPS)
  paths = jd.study.run_drift(workdir, config, progress=False)
  report = jd.report.build_report([workdir], tmp_path_factory.mktemp("report"))
  return workdir, config, paths, report


def test_columns_equal_the_library_on_the_same_maps(stage):
  """samples.csv's AUCs == jd.faithfulness.deletion / insertion on the stage's own maps
  (recomputed with jd.cam.compute_pair), each checkpoint on its own model, network grid."""
  workdir, config, paths, _ = stage
  table = results.read_table(paths["samples"])
  model, tl, run = jd.train.load_checkpoint(workdir, "tl")
  _, ft, _ = jd.train.load_checkpoint(workdir, "ft")
  source = jd.data.load("phantoms/small", "test[:16]", data_dir=run["data_dir"])
  batch = next(iter(jd.data.host_batches(
      source, preprocess=functools.partial(jd.models.preprocess, run["model_arch"]), batch_size=8,
                                         train=False, image_size=64)))
  images, labels = np.asarray(batch["image"])[:3], np.asarray(batch["label"])[:3]
  grid = jd.models.cam_grid(run["model_arch"], 64)
  pair = jd.cam.compute_pair(model, tl, ft, images, labels, methods=METHODS)
  checked = 0
  for method in METHODS:
    rows = np.flatnonzero(table["method"] == method)[:3]
    np.testing.assert_array_equal(table["image"][rows], batch["index"][:3])
    for i, (name, variables) in enumerate((("tl", tl), ("ft", ft))):
      fn = functools.partial(model.apply, variables, train=False)
      for kind, score in (("deletion", jd.faithfulness.deletion),
                          ("insertion", jd.faithfulness.insertion)):
        want = score(fn, images, pair[method].maps[i], labels, steps=STEPS, grid=grid)["auc"]
        np.testing.assert_allclose(table[f"{name}_{kind}_auc"][rows], want, rtol=1e-5,
                                   atol=1e-6)
        checked += 1
  assert checked == 4 * len(METHODS)
  for column in jd.study.faithfulness_stage.COLUMNS:
    assert np.all((table[column] >= 0) & (table[column] <= 1)), column
  manifest = results.read_json(workdir / "drift" / "manifest.json")
  assert manifest["faithfulness"] is True and manifest["faithfulness_steps"] == STEPS


def test_sanity_checks_of_the_ft_checkpoint_are_in_aggregates(stage):
  workdir, config, paths, _ = stage
  sanity = results.read_json(paths["aggregates"])["sanity"]
  assert sanity["images"] == config.null_samples
  assert [(r["method"], r["layer"]) for r in sanity["parameter_randomization"]] == [
      (m, "post_relu") for m in METHODS]
  model, ft, _ = jd.train.load_checkpoint(workdir, "ft")
  order = jd.faithfulness.layer_order(model, ft, (64, 64, 3))
  for row in sanity["parameter_randomization"]:
    assert row["randomised"] == ["(none)"] + order[::-1]  # head first
    assert len(row["spearman"]) == len(row["ssim"]) == len(order) + 1
    assert row["spearman"][0] == pytest.approx(1.0, abs=1e-5)  # nothing randomised yet
    assert row["ssim"][0] == pytest.approx(1.0, abs=1e-5)
    assert row["spearman"][-1] < 0.9  # every layer random: the maps have moved
  for row in sanity["random_logit"]:
    assert -1.0 <= row["spearman"] <= 1.0 and row["n_finite"] <= config.null_samples


def test_report_holds_the_paired_table_and_both_figures(stage):
  workdir, config, paths, report = stage
  md = report["report"].read_text()
  table = results.read_table(paths["samples"])
  rows = jd.report.faithfulness.paired_rows(table, "all", seed=config.seed)
  assert jd.report.faithfulness.paired_markdown(rows) in md
  assert len(rows) == 2 * len(METHODS)  # one arch x methods x (deletion, insertion)
  for row in rows:  # the table's TL and FT means are the CSV's
    tl = table[f"tl_{row['score']}_auc"][table["method"] == row["method"]]
    assert row["tl_mean"] == pytest.approx(float(np.mean(tl)))
    assert row["n"] == len(tl)
  assert "## Faithfulness of the maps: TL vs FT" in md and "random logit: Spearman" in md
  figs = report["figures"]
  assert figs["faithfulness_drift"]["panels"] == len(METHODS)
  assert figs["faithfulness_sanity"]["panels"] == 2
  for name in ("faithfulness_drift", "faithfulness_sanity"):
    assert pathlib.Path(figs[name]["path"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"![{name}](figures/{name}.png)" in md
  data = results.read_json(report["json"])
  assert [r["method"] for r in data["faithfulness"]] == [r["method"] for r in rows]
  assert set(data["sanity"]) == {"resnet50v2"}


def test_command_line_flags_and_config_checks():
  from jaxdrift import cli
  args = cli.command_parser("drift").parse_args(
      ["--workdir", "w", "--faithfulness", "--faithfulness-steps", "7"])
  assert cli.drift.config(args) == jd.study.DriftConfig(faithfulness=True,
                                                        faithfulness_steps=7)
  args = cli.command_parser("pipeline").parse_args(["--faithfulness"])
  assert args.faithfulness and args.faithfulness_steps == 50
  for bad, match in (({"faithfulness": 1}, "faithfulness must be True or False"),
                     ({"faithfulness_steps": 0}, "faithfulness_steps must be an integer >= 1")):
    with pytest.raises(ValueError, match=match):
      jd.study.DriftConfig(**bad)
  # Without faithfulness the manifest is that of a stage run before the option existed.
  manifest = jd.study.drift_stage._outputs(pathlib.Path("w"), jd.study.DriftConfig())[1]
  assert "faithfulness" not in manifest and "faithfulness_steps" not in manifest
