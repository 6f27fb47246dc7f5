"""Issue 21, item 1: a diverged (non-finite) model never gets a plausible AUC or accuracy.

Each test is named after the bad input it feeds; every one failed on the code before the fix.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdrift.train import evaluate, loop

_N = 12  # every example is padded to this length: one compile for all of them
_roc_auc = jax.jit(evaluate.roc_auc)


def padded_auc(scores, positive) -> float:
  """`roc_auc` of [n <= 12] scores, padded to a fixed shape (the padding is masked)."""
  n = len(scores)
  pad = _N - n
  return float(_roc_auc(np.pad(np.asarray(scores, np.float32), (0, pad)),
                        np.pad(np.asarray(positive, bool), (0, pad)),
                        np.arange(_N) < n))


def test_roc_auc_all_nan_scores_is_nan():
  assert math.isnan(padded_auc([np.nan] * 4, [1, 1, 0, 0]))


def test_roc_auc_nan_positives_against_zero_negatives_is_nan():
  assert math.isnan(padded_auc([np.nan, np.nan, 0.0, 0.0], [1, 1, 0, 0]))


def test_roc_auc_inf_score_is_nan():
  assert math.isnan(padded_auc([np.inf, 0.3, 0.1, 0.2], [1, 1, 0, 0]))


def test_roc_auc_ignores_non_finite_padding():
  scores = np.full(_N, np.nan, np.float32)
  scores[:4] = [0.9, 0.2, 0.4, 0.1]
  scores[4] = np.inf
  positive = np.arange(_N) % 2 == 0
  positive[:4] = [1, 1, 0, 0]
  # Positives 0.9 and 0.2 against negatives 0.4 and 0.1: 3 of 4 pairs ordered.
  assert float(_roc_auc(scores, positive, np.arange(_N) < 4)) == pytest.approx(0.75)


def test_classification_metrics_nan_logits_are_nan():
  logits = np.array([[2.0, 0.0], [np.nan, 1.0], [0.0, 3.0], [1.0, 0.0]], np.float32)
  labels = np.array([0, 0, 1, 1])
  m = evaluate.to_python(evaluate._metrics_jit(logits, labels, np.ones(4, bool)))
  for name in ("loss", "accuracy", "auc"):
    assert math.isnan(m[name]), name
  for name in ("auc_per_class", "sensitivity", "specificity"):
    assert all(math.isnan(v) for v in m[name]), name
  assert m["finite"] is False and evaluate.diverged(m)


def test_classification_metrics_nan_logits_in_padding_are_ignored():
  logits = np.array([[2.0, 0.0], [0.0, 1.0], [np.nan, np.inf], [np.nan, 0.0]], np.float32)
  labels = np.array([0, 1, 0, 1])
  m = evaluate.to_python(evaluate._metrics_jit(logits, labels, np.array([1, 1, 0, 0], bool)))
  # Mean cross-entropy of the two real rows: log(1 + e^-2) and log(1 + e^-1).
  assert m["loss"] == pytest.approx((np.log1p(np.exp(-2.0)) + np.log1p(np.exp(-1.0))) / 2,
                                    rel=1e-5)
  assert m["accuracy"] == 1.0 and m["auc"] == 1.0 and m["finite"] is True
  assert not evaluate.diverged(m)


def test_summary_of_nan_model_says_training_diverged():
  nan = float("nan")
  test = {"loss": nan, "accuracy": nan, "auc": nan, "finite": False}
  summary = {"model_arch": "resnetv2_tiny", "preset": "smoke", "data": "phantoms",
             "tl": {"epoch": 1, "val": {"accuracy": nan, "auc": nan}, "test": test,
                    "diverged": evaluate.diverged(test)},
             "ft": {"epoch": 1, "val": {"accuracy": 0.5, "auc": 0.6},
                    "test": {"loss": 0.7, "accuracy": 0.5, "auc": 0.6, "finite": True},
                    "diverged": False}}
  text = loop.summary_table(summary)
  assert "training diverged (tl:" in text
  assert "0.900" not in text and "nan" in text


# Item 7: a metric undefined for a pair is NaN and counted as undefined for that metric only.


@pytest.fixture(scope="module")
def four_pairs():
  """TL / FT maps [4, 4, 4]: finite maps whose sums overflow float32, a constant TL map, an
  ordinary pair and an all-zero (invalid) TL map; and their `drift`."""
  a = np.zeros((4, 4, 4), np.float32)
  b = np.zeros((4, 4, 4), np.float32)
  a[0, 0, 0] = a[0, 0, 1] = 3e38  # centre of mass (0, 0.5)
  b[0, 3, 3] = b[0, 3, 2] = 3e38  # with (0, 0): centre (18/7, 15/7)
  b[0, 0, 0] = 1e38
  a[1] = 1.0
  b[1, 1, 2] = 1.0
  a[2, 1, 1], b[2, 2, 1], b[2, 0, 0] = 2.0, 1.0, 0.5
  b[3, 2, 2] = 1.0
  import jaxdrift as jd
  return a, b, {k: np.asarray(v) for k, v in jd.metrics.drift(a, b).items()}


def test_maps_whose_sum_overflows_give_finite_metrics(four_pairs):
  _, _, out = four_pairs
  assert out["valid"][0]
  row, col = 18 / 7, 15 / 7 - 0.5
  assert out["displacement"][0] == pytest.approx(np.hypot(row, col) / np.sqrt(32), rel=1e-5)
  import jaxdrift as jd
  for name in jd.metrics.PAIR_METRICS:
    assert np.isfinite(out[name][0]), name


def test_constant_map_is_valid_but_undefined_for_correlations_only(four_pairs):
  _, _, out = four_pairs
  assert out["valid"][1]
  assert np.isnan(out["pearson"][1]) and np.isnan(out["spearman"][1])
  assert np.isfinite(out["displacement"][1]) and np.isfinite(out["iou"][1])


def test_one_by_one_maps_are_undefined_for_correlations_and_entropy():
  import jaxdrift as jd
  out = jd.metrics.drift(np.full((1, 1, 1), 2.0), np.full((1, 1, 1), 3.0))
  assert bool(out["valid"][0]) and float(out["displacement"][0]) == 0.0
  for name in ("pearson", "spearman", "entropy_change"):
    assert np.isnan(out[name][0]), name


def test_report_cell_n_is_the_number_of_pairs_it_averages(four_pairs):
  from jaxdrift.metrics import stats
  from jaxdrift.report import tables
  _, _, out = four_pairs
  labels = np.zeros(4, int)
  table = stats.make_table(out, arch="resnet50v2", method="layercam", label=labels,
                           tl_pred=labels, ft_pred=labels)
  metrics = ["displacement", "pearson"]
  summary = stats.summarize(table, metrics=metrics, selection="all", per_class=False)
  md, cells = tables.drift_table(summary, metrics)
  header, _, row = md.splitlines()
  assert header.split(" | ")[2:6] == ["selected", "invalid TL", "invalid FT", "n"]
  values = row.strip("| ").split(" | ")
  assert values[2:6] == ["4", "1", "0", "3"]  # pair 3's TL map is all zero
  assert "(n=" not in values[6] and values[7].endswith("(n=2)")  # the constant map
  for cell in cells:
    finite = table[cell["metric"]][np.isfinite(table[cell["metric"]])]
    assert cell["n"] == finite.size and cell["mean"] == pytest.approx(finite.mean())
    assert cell["n_valid"] - cell["n"] == cell["n_undefined"]


# Item 5: malformed result files end in one ResultFileError and nothing written.


def _good_workdir(root):
  """A workdir with a small, well-formed drift stage output (4 samples, 2 metrics)."""
  from jaxdrift.study import results
  workdir = root / "resnet50v2"
  n = 4
  table = {"arch": np.full(n, "resnet50v2", object), "method": np.full(n, "layercam", object),
           "layer": np.full(n, "post_relu", object),
           "layer_spec": np.full(n, "canonical", object), "image": np.arange(n),
           "id": np.array(["a", "b", "c", "d"], object), "label": np.array([0, 1, 0, 1]),
           "tl_pred": np.array([0, 1, 0, 1]), "ft_pred": np.array([0, 1, 0, 1]),
           "valid": np.ones(n, bool), "valid_a": np.ones(n, bool), "valid_b": np.ones(n, bool),
           "displacement": np.array([0.1, 0.2, 0.3, 0.25]),
           "pearson": np.array([0.5, np.nan, 0.7, 0.1])}
  results.write_table(table, workdir / "drift" / "samples.csv")
  results.write_json({"arch": "resnet50v2", "model_arch": "resnetv2_tiny",
                      "config": {"selection": "both", "seed": 0}, "class_names": ["a", "b"],
                      "layers": {"canonical": "post_relu"}, "classification": {}},
                     workdir / "drift" / "aggregates.json")
  return workdir


def _damage(path, how):
  data = path.read_bytes()
  if how == "truncated_mid_row":
    path.write_bytes(data[:-7])
  elif how == "empty":
    path.write_bytes(b"")
  elif how == "text_in_metric_column":
    path.write_bytes(data.replace(b"0.25", b"high"))
  elif how == "binary":
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe" + bytes(range(256)))
  elif how == "header_only":
    path.write_bytes(data.splitlines(keepends=True)[0])
  elif how == "broken_json":
    path.write_bytes(data[: len(data) // 2])


def test_well_formed_result_files_load(tmp_path):
  from jaxdrift import report
  run, = report.load_runs([_good_workdir(tmp_path)])
  assert run["table"]["pearson"].dtype == np.float64 and run["table"]["valid"].dtype == bool
  assert np.isnan(run["table"]["pearson"][1]) and run["config"]["selection"] == "both"


@pytest.mark.parametrize("file, how, found", [
    ("samples.csv", "truncated_mid_row", "cut off"),
    ("samples.csv", "empty", "an empty file"),
    ("samples.csv", "text_in_metric_column", "'high' in row 5"),
    ("samples.csv", "binary", "binary data"),
    ("samples.csv", "header_only", "a header and no rows"),
    ("aggregates.json", "broken_json", "invalid JSON"),
    ("aggregates.json", "empty", "an empty file"),
    ("aggregates.json", "binary", "binary data"),
])
def test_report_on_malformed_result_file_raises_one_clear_error(tmp_path, file, how, found):
  from jaxdrift import report
  from jaxdrift.study import results
  workdir = _good_workdir(tmp_path)
  path = workdir / "drift" / file
  _damage(path, how)
  out_dir = tmp_path / "report"
  with pytest.raises(results.ResultFileError) as info:
    report.build_report([workdir], out_dir)
  message = str(info.value)
  assert message.startswith(f"{path}: expected ") and found in message
  assert "Rerun the drift stage for this workdir" in message and str(workdir) in message
  assert not out_dir.exists()  # nothing written, not even an empty figures/


# Item 12: weight files and model inputs that used to fail late or not at all.


def _official_h5(path, kernel, layer="conv1_conv"):
  """A minimal file in the keras.applications layout: one layer with one weight."""
  import h5py
  with h5py.File(path, "w") as f:
    f.attrs["layer_names"] = np.array([layer.encode()])
    group = f.create_group(layer)
    group.create_dataset(f"{layer}/kernel:0", data=kernel)
    group.attrs["weight_names"] = np.array([f"{layer}/kernel:0".encode()])
  return path


def test_string_typed_tensor_names_dataset_and_type(tmp_path):
  import jaxdrift as jd
  path = _official_h5(tmp_path / "s.h5", np.array([b"not", b"weights"]))
  with pytest.raises(jd.models.WeightFileError, match=r"dataset /conv1_conv/conv1_conv/"
                     r"kernel:0 holds \|S7 \(strings\), expected float weights"):
    jd.models.read_keras_h5(path)


def test_nan_and_inf_weights_are_named(tmp_path):
  import jaxdrift as jd
  kernel = np.ones((3, 3, 3, 4), np.float32)
  kernel[0, 0, 0, :2] = np.nan
  kernel[1, 1, 1, 1] = np.inf
  path = _official_h5(tmp_path / "n.h5", kernel)
  with pytest.raises(jd.models.WeightFileError,
                     match=r"1 weight tensor\(s\) hold NaN or Inf values: "
                           r"conv1_conv/conv1_conv/kernel:0 \(3 of 108\)"):
    jd.models.read_keras_h5(path)


def test_keras3_weights_h5_file_names_the_format(tmp_path):
  import h5py
  import jaxdrift as jd
  path = tmp_path / "model.weights.h5"
  with h5py.File(path, "w") as f:  # Keras 3 save_weights: layers/<name>/vars/<i>
    f.create_dataset("layers/conv1_conv/vars/0", data=np.ones((7, 7, 3, 8), np.float32))
    f.create_dataset("layers/conv1_conv/vars/1", data=np.zeros((8,), np.float32))
    f.create_group("optimizer/vars")
  with pytest.raises(jd.models.WeightFileError,
                     match=r"Keras 3 weights file .*save_weights.*model\.save\('x\.h5'\)"):
    jd.models.read_keras_h5(path)


@pytest.mark.parametrize("arch, shape, message", [
    ("resnetv2_tiny", (1, 64, 64, 1), r"expects preprocessed RGB images \[B, H, W, 3\], got "
                                      r"shape \(1, 64, 64, 1\); convert grayscale"),
    ("resnetv2_tiny", (1, 16, 16, 3), r"at least 32x32 pixels \(as Keras\), got 16x16"),
    ("inceptionv3_tiny", (1, 64, 64, 3), r"at least 75x75 pixels \(as Keras\), got 64x64"),
    ("densenet_tiny", (64, 64, 3), r"got shape \(64, 64, 3\)"),
])
def test_bad_model_input_shape_is_a_clear_value_error(arch, shape, message):
  import jaxdrift as jd
  model = jd.models.create(arch, num_classes=3)
  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  with pytest.raises(ValueError, match=message):
    jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)


def test_damaged_drift_manifest_means_the_stage_is_redone(tmp_path):
  from jaxdrift.study import drift_stage
  (tmp_path / "drift").mkdir()
  (tmp_path / "drift" / "manifest.json").write_bytes(b"{\"methods\": [\x00")
  assert drift_stage.drift_done(tmp_path) is False
