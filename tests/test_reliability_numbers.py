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
  scores = np.array([0.9, 0.2, 0.4, 0.1, np.nan, np.nan], np.float32)
  positive = np.array([1, 1, 0, 0, 1, 0], bool)
  valid = np.array([1, 1, 1, 1, 0, 0], bool)
  # Positives 0.9 and 0.2 against negatives 0.4 and 0.1: 3 of 4 pairs ordered.
  assert float(evaluate.roc_auc(scores, positive, valid)) == pytest.approx(0.75)


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
