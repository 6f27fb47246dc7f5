"""Quantities of ONE attribution map [H, W]: validity, centre of mass, peak, concentration,
entropy, gini (docs/metrics.md). Pure functions; batch them with `jax.vmap`.

A map is valid when all its values are finite and its sum is > 0. Every quantity of an
invalid map is NaN. Maps are expected to be non-negative (CAMs are ReLU'd); a map with
negative values but a positive sum counts as valid, and its distribution-based quantities
(entropy, concentration) are then not meaningful.

Every quantity here is scale-invariant, so each function first multiplies the map by the
power of two that brings its largest |value| into [0.5, 1) (`rescaled`). That is exact (no
rounding: results are bit-identical to the unscaled ones) and keeps finite maps whose sum
overflows float32 (values near 3e38) finite and meaningful instead of inf / inf = NaN.
"""

import math

import jax.numpy as jnp

from jaxdrift.metrics import order

def fsum(x):
  """Sums all elements of x in float32 with a two-level (blocked) reduction (accurate to
  ~1e-7 relative on 224x224 maps, where one long float32 reduction is not)."""
  return order.blocked_sum(jnp.ravel(x))


def top_k_count(q, n):
  """k = ceil(q * N), clamped to [1, N]; rounding guards against q * N = 10.000000000000002."""
  if not 0.0 < q <= 1.0:
    raise ValueError(f"the fraction q must be in (0, 1], got {q}")
  return min(max(int(math.ceil(round(q * n, 9))), 1), n)


def rescaled(m):
  """m [H, W] times 2^-e, e the exponent of max |m| (max |m| then lies in [0.5, 1)).

  Exact unless a value falls below float32's normal range after scaling; maps with a
  non-finite value or all zeros come back unchanged (so validity is preserved).
  """
  m = jnp.asarray(m, jnp.float32)
  top = jnp.max(jnp.abs(m))
  _, exponent = jnp.frexp(top)
  exponent = jnp.where(jnp.isfinite(top) & (top > 0), exponent, 0)
  # Two normal factors 2^-(e//2) and 2^-(e - e//2): one factor 2^-e can be subnormal (e up to
  # 128), which XLA's CPU backend flushes to zero.
  half = exponent // 2
  one = jnp.float32(1.0)
  return m * jnp.ldexp(one, -half) * jnp.ldexp(one, half - exponent)


def is_valid(m):
  """True when all values of m [H, W] are finite and its sum is > 0 (scalar bool)."""
  m = rescaled(m)
  return jnp.all(jnp.isfinite(m)) & (fsum(m) > 0)


def _nan_unless(valid, value):
  return jnp.where(valid, value, jnp.nan)


def _grid(shape):
  rows = jnp.arange(shape[0], dtype=jnp.float32)[:, None]
  cols = jnp.arange(shape[1], dtype=jnp.float32)[None, :]
  return rows, cols


def centroid(m):
  """Centre of mass of m [H, W] in (row, col) pixel indices: sum_p p m(p) / sum_p m(p).

  Returns:
    [2] float32 (row, col); NaN for an invalid map.
  """
  m = rescaled(m)
  total = fsum(m)
  rows, cols = _grid(m.shape)
  c = jnp.stack([fsum(m * rows), fsum(m * cols)]) / total
  return _nan_unless(is_valid(m), c)


def peak(m):
  """Position (row, col) [2] float32 of the maximum of m [H, W], the first in row-major order
  on ties; NaN for an invalid map."""
  m = jnp.asarray(m, jnp.float32)
  # max, then the first index holding it: two vectorised reductions; XLA's CPU argmax (a
  # variadic reduction) was 10x slower on 224x224 maps.
  values = m.ravel()
  flat = jnp.min(jnp.where(values == jnp.max(values), jnp.arange(values.size), values.size))
  p = jnp.stack([flat // m.shape[1], flat % m.shape[1]]).astype(jnp.float32)
  return _nan_unless(is_valid(m), p)


def _concentration_from_top(top, total, k):
  return jnp.sum(top[:k]) / total


def concentration(m, q=0.1, method="auto"):
  """Share of the mass in the k = ceil(q N) largest values of m [H, W]: sum top-k / sum m.

  Uniform maps give q (up to rounding of k), a single-pixel map gives 1. NaN if invalid.
  """
  m = rescaled(m)
  k = top_k_count(q, m.size)
  top = order.top_values(m.ravel(), k, method)
  return _nan_unless(is_valid(m), _concentration_from_top(top, fsum(m), k))


def entropy(m):
  """Normalised Shannon entropy of m [H, W]: -sum p log p / log N, p = m / sum m, 0 log 0 = 0.

  1 for a uniform map, 0 for a single-pixel map; NaN if invalid (or for N = 1).
  """
  m = rescaled(m)
  p = m / fsum(m)
  safe = jnp.where(p > 0, p, 1.0)
  h = -fsum(jnp.where(p > 0, p * jnp.log(safe), 0.0)) / jnp.float32(math.log(m.size))
  return _nan_unless(is_valid(m), h)


def _gini_weights(n):
  i = jnp.arange(1, n + 1, dtype=jnp.float32)
  return (2.0 * i - n - 1.0) / n


def _gini_from_sorted(values, total):
  return fsum(_gini_weights(values.shape[0]) * values) / total


def gini(m, method="auto"):
  """Gini coefficient of m [H, W]: sum_i (2i - N - 1) x_(i) / (N sum x), x ascending.

  0 for a uniform map, (N - 1) / N for a single-pixel map; NaN if invalid.
  """
  m = rescaled(m)
  values = order.sorted_values(m.ravel(), method)
  return _nan_unless(is_valid(m), _gini_from_sorted(values, fsum(m)))


def top_mask(m, threshold):
  """The top-q mask (m >= t) & (m > 0) of m [H, W] for its k-th largest value t."""
  return (m >= threshold) & (m > 0)


def threshold(m, q=0.2, method="auto"):
  """t(m): the k-th largest value of m [H, W] with k = ceil(q N) (scalar); NaN if invalid."""
  m = jnp.asarray(m, jnp.float32)
  k = top_k_count(q, m.size)
  return _nan_unless(is_valid(m), order.top_values(m.ravel(), k, method)[k - 1])
