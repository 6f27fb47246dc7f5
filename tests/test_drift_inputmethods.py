"""The drift stage with input-resolution methods: occlusion and RISE beside LayerCAM.

Their maps sit at the input's resolution under the layer "input" (one cell per pixel), RISE's
masks come from the run's seed and each image's index in the split, the stage prints every
method's cost per image before its long part, and a rerun writes the same bytes.

The workdir is a cheap stand-in for a smoke training run, as in test_faithfulness_study.py:
phantoms/small and two checkpoints of the tiny ResNet50V2 at 64 px written straight from two
initialisations.
"""

import contextlib
import functools
import io
import pathlib
import shutil

import jax
import numpy as np
import pytest

import jaxdrift as jd
from jaxdrift import cli
from jaxdrift.study import drift_methods, results
from tests.workdir_fakes import two_checkpoint_workdir

SIZE = 64
METHODS = ("layercam", "occlusion", "rise")
OPTIONS = {"occlusion": {"size": 16, "stride": 16}, "rise": {"n_masks": 8, "s": 4}}


@pytest.fixture(scope="module")
def stage(tmp_path_factory):
  """The drift stage on 8 test images (its stdout kept), and a second run of the same
  configuration on a copy of the workdir."""
  data_dir = tmp_path_factory.mktemp("tfds")
  jd.data.build("phantoms/small", data_dir=data_dir)
  workdir = two_checkpoint_workdir(tmp_path_factory.mktemp("runs"), data_dir)
  copy = tmp_path_factory.mktemp("again") / "resnet50v2"
  shutil.copytree(workdir, copy)
  config = jd.study.DriftConfig(methods=METHODS, split="test[:8]", batch_size=8,
                                null_samples=4, selection="all", examples_per_class=1,
                                method_options=OPTIONS)
  stdout = io.StringIO()
  with contextlib.redirect_stdout(stdout):
    paths = jd.study.run_drift(workdir, config, progress=True)
  again = jd.study.run_drift(copy, config, progress=False)
  return workdir, config, paths, again, stdout.getvalue()


def _split(run):
  """The 8 test images (preprocessed), their labels and indices, as the stage reads them."""
  source = jd.data.load("phantoms/small", "test[:8]", data_dir=run["data_dir"])
  batch = next(iter(jd.data.host_batches(
      source, preprocess=functools.partial(jd.models.preprocess, run["model_arch"]),
      batch_size=8, train=False, image_size=SIZE)))
  return np.asarray(batch["image"]), np.asarray(batch["label"]), np.asarray(batch["index"])


def test_input_methods_have_one_row_per_image_at_the_input(stage):
  _, _, paths, _, _ = stage
  table = results.read_table(paths["samples"])
  layers = {m: set(table["layer"][table["method"] == m]) for m in METHODS}
  assert layers == {"layercam": {"post_relu"}, "occlusion": {"input"}, "rise": {"input"}}
  for method in METHODS:
    rows = table["method"] == method
    assert rows.sum() == 8
    assert set(table["layer_spec"][rows]) == {"input" if method != "layercam" else "canonical"}
  aggregates = results.read_json(paths["aggregates"])
  assert aggregates["layers"] == {"canonical": "post_relu", "input": "input"}
  assert aggregates["config"]["method_options"] == OPTIONS
  assert {n["method"] for n in aggregates["nulls"]} == set(METHODS)
  with np.load(paths["examples"]) as examples:
    assert examples["rise|input|tl"].shape[1:] == (SIZE, SIZE)


def test_rows_equal_compute_pair_with_the_documented_keys(stage):
  """samples.csv's drift of occlusion and RISE == jd.metrics.drift of jd.cam.compute_pair's
  maps at the input, RISE keyed by fold_in(fold_in(key(seed), 23), image index)."""
  workdir, config, paths, _, _ = stage
  table = results.read_table(paths["samples"])
  model, tl, run = jd.train.load_checkpoint(workdir, "tl")
  _, ft, _ = jd.train.load_checkpoint(workdir, "ft")
  images, labels, index = _split(run)
  keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(
      jax.random.fold_in(jax.random.key(config.seed), 23), index)
  want = {"occlusion": jd.cam.compute_pair(model, tl, ft, images, labels,
                                           methods=("occlusion",), **OPTIONS["occlusion"]),
          "rise": jd.cam.compute_pair(model, tl, ft, images, labels, methods=("rise",),
                                      key=keys, **OPTIONS["rise"])}
  for method, out in want.items():
    tl_maps, ft_maps = out[method].maps
    assert tl_maps.shape == (8, SIZE, SIZE)
    drift = jd.metrics.drift(tl_maps, ft_maps, resolution=(SIZE, SIZE), grid=(1.0, 0.0))
    rows = table["method"] == method
    np.testing.assert_array_equal(table["image"][rows], index)
    np.testing.assert_array_equal(table["tl_all_zero"][rows], np.asarray(out[method].all_zero[0]))
    for metric in ("iou", "displacement", "pearson", "spearman"):
      np.testing.assert_allclose(table[metric][rows], drift[metric], rtol=1e-5, atol=1e-6,
                                 err_msg=f"{method} {metric}")
  assert np.isfinite(table["iou"][table["method"] == "occlusion"]).any()


def test_rerun_writes_the_same_bytes(stage):
  _, _, paths, again, _ = stage
  for name in ("samples", "aggregates"):
    assert pathlib.Path(paths[name]).read_bytes() == pathlib.Path(again[name]).read_bytes()


def test_the_cost_of_each_method_is_printed_first_and_stored(stage):
  _, _, paths, _, stdout = stage
  lines = stdout.splitlines()
  # occlusion: (64 - 16) // 16 + 1 = 4 rows x 4 columns of windows, + the clean pass.
  assert lines[:3] == ["layercam: 1.00 forward passes per image x 2 checkpoints x 8 images",
                       "occlusion: 17 forward passes per image x 2 checkpoints x 8 images",
                       "rise: 9 forward passes per image x 2 checkpoints x 8 images"]
  cost = results.read_json(paths["aggregates"])["cost"]
  assert cost["rise"]["input"]["full_passes"] == 9
  assert cost["rise"]["input"]["options"] == {"n_masks": 8, "s": 4}
  assert cost["occlusion"]["input"]["options"] == {"size": 16, "stride": 16}
  assert 1.0 < cost["layercam"]["post_relu"]["forward_equivalents"] < 3.0


def test_report_keeps_the_method_names(stage):
  workdir = stage[0]
  table = jd.report.combined_table(jd.report.load_runs([workdir]))
  assert set(table["method"]) == set(METHODS)


def test_command_line_accepts_input_methods_and_refuses_unknown_ones(capsys, tmp_path):
  args = cli.command_parser("drift").parse_args(
      ["--workdir", "w", "--methods", "layercam,occlusion", "--method-options",
       "occlusion.size=16,occlusion.baseline=blur"])
  config = cli.drift.config(args)
  assert config.methods == ("layercam", "occlusion")
  assert config.method_options == {"occlusion": {"size": 16, "baseline": "blur"}}
  assert cli.drift.method_options("occlusion.size=16,occlusion.baseline=blur,rise.p=0.25") == {
      "occlusion": {"size": 16, "baseline": "blur"}, "rise": {"p": 0.25}}
  workdir = tmp_path / "w"
  workdir.mkdir()
  for flags, needle in ((["--methods", "layercam,bogus"], "unknown methods ['bogus']"),
                        (["--methods", "rise", "--method-options", "rise.n_masks"],
                         "METHOD.OPTION=VALUE"),
                        (["--methods", "rise", "--method-options", "occlusion.size=8"],
                         "not one of the methods"),
                        (["--methods", "rise", "--method-options", "rise.bogus=1"], "bogus")):
    assert cli.main(["drift", "--workdir", str(workdir), *flags]) == 2
    err = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
    assert len(err) == 1 and err[0].startswith("jaxdrift drift: error: "), err
    assert needle in err[0], err
  assert not (workdir / "drift").exists()


def test_config_checks_method_options():
  for methods, options, match in (
      (("expected_gradients",), {}, "does not run expected_gradients"),
      (("rise",), {"rise": {"key": 0}}, "key cannot be set"),
      (("occlusion",), {"occlusion": {"baseline": np.zeros(3)}}, "baseline cannot be set"),
      (("rise",), {"rise": {"p": 2.0}}, "p must be in"),
      (("rise",), ["n_masks"], "must be a dict")):
    with pytest.raises(ValueError, match=match):
      jd.study.DriftConfig(methods=methods, method_options=options)
  assert drift_methods.options("occlusion", 224, {}) == {"size": 32, "stride": 16}
  assert drift_methods.options("occlusion", 160, {"occlusion": {"stride": 4}}) == {
      "size": 23, "stride": 4}
  assert drift_methods.layers_of("rise", ["post_relu"]) == ("input",)
  assert drift_methods.layers_of("scorecam", ["post_relu"]) == ("post_relu",)
