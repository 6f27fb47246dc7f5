"""Sorted values and average ranks: both implementations against numpy / scipy."""

import jax
import numpy as np
import pytest
import scipy.stats

from jaxdrift.metrics import order


@pytest.fixture(scope="module")
def rows():
  rng = np.random.default_rng(0)
  x = rng.integers(-3, 4, (40, 37)).astype(np.float32)  # many ties, negatives
  x[0, 3] = -0.0
  x[1] = np.linspace(-2, 2, 37)  # no ties
  x[2] = 5.0  # one tie group
  x[3] = rng.standard_normal(37) * 1e-30  # subnormal-scale values
  return x


@pytest.mark.parametrize("method", ["packed", "numpy", "xla"])
def test_sort_and_rank_match_numpy_and_scipy(rows, method):
  values, ranks = jax.jit(jax.vmap(lambda v: order.sort_and_rank(v, method)))(rows)
  np.testing.assert_array_equal(values, np.sort(rows, axis=-1))
  np.testing.assert_array_equal(ranks, scipy.stats.rankdata(rows, axis=-1))


@pytest.mark.parametrize("method", ["packed", "numpy", "xla"])
def test_sorted_and_top_values(rows, method):
  np.testing.assert_array_equal(
      jax.vmap(lambda v: order.sorted_values(v, method))(rows), np.sort(rows, axis=-1))
  top = jax.vmap(lambda v: order.top_values(v, 5, method))(rows)
  np.testing.assert_array_equal(top, -np.sort(-rows, axis=-1)[:, :5])


@pytest.mark.parametrize("method", ["packed", "numpy", "xla"])
def test_pair_order_stats_match_numpy_and_scipy(rows, method):
  a, b = rows[::2], rows[1::2]
  out = jax.jit(jax.vmap(lambda x, y: order.pair_order_stats(x, y, (1, 4, 9), 5, method)))(
      a, b)
  n = rows.shape[1]
  for i in range(a.shape[0]):
    for j, m in enumerate((a[i], b[i])):
      s = np.sort(m.astype(np.float64))
      np.testing.assert_array_equal(out["thresholds"][i, j], s[[n - 1, n - 4, n - 9]])
      if s.sum() > 0:
        np.testing.assert_allclose(out["concentration"][i, j], s[-5:].sum() / s.sum(),
                                   rtol=1e-5)
        w = 2.0 * np.arange(1, n + 1) - n - 1
        np.testing.assert_allclose(out["gini"][i, j], (w * s).sum() / (n * s.sum()),
                                   rtol=1e-5, atol=1e-6)
    if a[i].max() > a[i].min() and b[i].max() > b[i].min():
      np.testing.assert_allclose(out["spearman"][i], scipy.stats.spearmanr(a[i], b[i])[0],
                                 atol=1e-6)


def test_numpy_kernel_large_batch_uses_threads_and_stays_exact():
  rng = np.random.default_rng(1)
  x = np.maximum(rng.standard_normal((12, 150 * 150)), 0).astype(np.float32)  # >= 2^18
  values, ranks = order._np_sort_and_rank(x)
  np.testing.assert_array_equal(values, np.sort(x, axis=-1))
  np.testing.assert_array_equal(ranks, scipy.stats.rankdata(x, axis=-1))


def test_rejects_unknown_method_and_batched_input():
  with pytest.raises(ValueError, match="sort method"):
    order.sort_and_rank(np.ones(4), "bogo")
  with pytest.raises(ValueError, match="vmap"):
    order.sort_and_rank(np.ones((2, 4)))
