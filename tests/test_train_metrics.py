"""Evaluation metrics against plain numpy/scipy references and hand-counted values."""

import jax
import numpy as np
import pytest
import scipy.stats

from jaxdrift.train import evaluate


def _pairwise_auc(scores, positive):
  """Plain reference: P(score_pos > score_neg) + P(tie) / 2 over all pairs."""
  pos, neg = scores[positive], scores[~positive]
  diff = pos[:, None] - neg[None, :]
  return ((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size


def test_roc_auc_matches_pairwise_reference_with_ties_and_padding():
  rng = np.random.default_rng(0)
  n = 400
  scores = np.round(rng.random(n), 2).astype(np.float32)  # many ties
  positive = rng.random(n) < 0.3
  valid = np.arange(n) < 350
  got = float(jax.jit(evaluate.roc_auc)(scores, positive, valid))
  expected = _pairwise_auc(scores[valid], positive[valid])
  assert got == pytest.approx(expected, abs=1e-6)
  u = scipy.stats.mannwhitneyu(scores[valid & positive], scores[valid & ~positive]).statistic
  assert got == pytest.approx(u / ((valid & positive).sum() * (valid & ~positive).sum()),
                              abs=1e-6)


def test_roc_auc_hand_values():
  auc = lambda s, p: float(evaluate.roc_auc(np.float32(s), np.array(p), np.ones(len(s), bool)))
  assert auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75   # the sklearn doc example
  assert auc([1, 2, 3], [0, 1, 1]) == 1.0
  assert auc([1, 1, 1], [0, 1, 1]) == 0.5
  assert np.isnan(auc([1, 2, 3], [1, 1, 1]))


def test_classification_metrics_by_hand():
  # 6 real examples + 2 padding rows (label 0, prediction 0) that must not count.
  logits = np.log(np.array([
      [0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1],   # true 0: pred 0, 1, 0
      [0.1, 0.8, 0.1], [0.1, 0.2, 0.7],                   # true 1: pred 1, 2
      [0.1, 0.1, 0.8],                                    # true 2: pred 2
      [0.9, 0.05, 0.05], [0.9, 0.05, 0.05]], np.float32))
  labels = np.array([0, 0, 0, 1, 1, 2, 0, 0], np.int32)
  mask = np.array([1, 1, 1, 1, 1, 1, 0, 0], bool)
  m = evaluate.to_python(jax.jit(evaluate.classification_metrics)(logits, labels, mask))
  assert m["count"] == 6
  assert m["confusion"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
  assert m["accuracy"] == pytest.approx(4 / 6)
  np.testing.assert_allclose(m["sensitivity"], [2 / 3, 1 / 2, 1 / 1], rtol=1e-6)
  # specificity_c = TN / (TN + FP): class 0: 3/3; class 1: (4-1)/4 = 3/4; class 2: 4/5.
  np.testing.assert_allclose(m["specificity"], [1.0, 3 / 4, 4 / 5], rtol=1e-6)
  probs = np.exp(logits[:6]) / np.exp(logits[:6]).sum(1, keepdims=True)
  per_class = [_pairwise_auc(probs[:, c], labels[:6] == c) for c in range(3)]
  np.testing.assert_allclose(m["auc_per_class"], per_class, atol=1e-6)
  assert m["auc"] == pytest.approx(np.mean(per_class), abs=1e-6)
  loss = -np.mean(np.log(probs[np.arange(6), labels[:6]]))
  assert m["loss"] == pytest.approx(loss, rel=1e-5)


def test_macro_auc_skips_a_class_without_examples():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(50, 4)).astype(np.float32)
  labels = rng.integers(0, 3, 50).astype(np.int32)  # class 3 never occurs
  m = evaluate.classification_metrics(logits, labels, np.ones(50, bool))
  per_class = np.asarray(m["auc_per_class"])
  assert np.isnan(per_class[3]) and np.all(np.isfinite(per_class[:3]))
  assert float(m["auc"]) == pytest.approx(per_class[:3].mean(), abs=1e-6)
