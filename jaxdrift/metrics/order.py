"""Order statistics of one flattened map: sorted values, top-k values and average ranks.

Every rank-based drift metric (spearman, gini, the IoU thresholds, concentration) reads from
these three primitives, and `drift` calls `sort_and_rank` once per map and shares the result.

Two exact implementations sit behind each primitive:

- "numpy": a `jax.pure_callback` into numpy. XLA's CPU sort is 10-60x slower than numpy's
  (AVX-512 / AVX2 x86-simd-sort), so on the CPU the fastest exact sort available inside a
  jitted function is numpy's. `sort_and_rank` sorts packed 64-bit keys (order-preserving float
  bits << 32 | index), which gives the sorted values and the stable permutation in one
  `np.sort`, about 5x faster than `np.argsort`. Rows are split over a small thread pool
  (numpy releases the GIL while sorting). Under `vmap` the callback receives the whole batch.
- "xla": `lax.sort` / `lax.top_k`, for GPU and TPU.

`method="auto"` (the default everywhere) lowers to "numpy" on the CPU and "xla" elsewhere,
chosen per platform at lowering time with `lax.platform_dependent`. Both give identical
values. (Measured on the 2-core development CPU per map: 7x7 0.6 us numpy vs 3.8 us XLA;
224x224 ~0.4 ms vs ~7 ms.)
"""

import concurrent.futures
import os
import threading

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

METHODS = ("auto", "numpy", "xla")

_POOL = None
_POOL_LOCK = threading.Lock()
# Below this many elements per callback, threads cost more than they save.
_MIN_PARALLEL_ELEMENTS = 1 << 18


def _pool():
  """The shared thread pool, created on first use (importing has no side effects)."""
  global _POOL
  with _POOL_LOCK:
    if _POOL is None:
      _POOL = concurrent.futures.ThreadPoolExecutor(
          max_workers=min(os.cpu_count() or 1, 8), thread_name_prefix="jaxdrift-sort")
    return _POOL


def _rowwise(fn, x, *outs):
  """Applies `fn(rows_in, *rows_out)` to row blocks of x [R, N], in parallel when large."""
  rows = x.shape[0]
  workers = min(os.cpu_count() or 1, 8, rows)
  if workers <= 1 or x.size < _MIN_PARALLEL_ELEMENTS:
    fn(x, *outs)
    return
  bounds = np.linspace(0, rows, workers + 1).astype(int)
  futures = [_pool().submit(fn, x[lo:hi], *(o[lo:hi] for o in outs))
             for lo, hi in zip(bounds[:-1], bounds[1:]) if hi > lo]
  for future in futures:
    future.result()


_SIGN = np.uint32(0x80000000)


_BLOCK_ELEMENTS = 1 << 16  # rows per numpy step: about 64k values (cache-resident)


def _average_ranks(values, base):
  """Average 1-based ranks [r, N] float32 of rows of ascending values [r, N].

  base: [r, N] float32, each row 1..N (the ranks without ties).
  """
  r, n = values.shape
  # next_equal[i, j]: values[i, j] == values[i, j + 1] (never across rows).
  next_equal = np.zeros((r, n), bool)
  np.equal(values[:, 1:], values[:, :-1], out=next_equal[:, :-1])
  if not next_equal.any():
    return base
  # Runs of equal neighbours: +1 where a tie group starts, -1 at its (inclusive) end.
  edges = np.diff(np.concatenate([[0], next_equal.ravel().view(np.int8), [0]]))
  starts = np.flatnonzero(edges == 1)
  ends = np.flatnonzero(edges == -1)
  lengths = ends - starts + 1
  positions = np.repeat(starts - np.cumsum(lengths) + lengths, lengths)
  positions += np.arange(positions.size)
  ranks = base.copy()
  mean_rank = (starts % n + ends % n) * 0.5 + 1.0
  ranks.reshape(-1)[positions] = np.repeat(mean_rank.astype(np.float32), lengths)
  return ranks


def _np_sort_and_rank_rows(x, sorted_out, ranks_out):
  """numpy kernel: x [R, N] float32 -> ascending values and average ranks (1-based).

  In blocks of rows (cache-resident): 64-bit keys = order-preserving float bits (high word)
  | index (low word), written through a uint32 view; one np.sort gives values and the
  permutation.
  """
  rows, n = x.shape
  block = max(1, min(rows, _BLOCK_ELEMENTS // n))
  keys = np.empty((block, n), np.uint64)
  words = keys.view(np.uint32).reshape(block, n, 2)  # little-endian: [..., 0] low word
  index = np.arange(n, dtype=np.uint32)
  base = np.broadcast_to(np.arange(1, n + 1, dtype=np.float32), (block, n))
  flip = np.empty((block, n), np.uint32)
  offsets = (np.arange(block) * n)[:, None]
  for lo in range(0, rows, block):
    r = min(block, rows - lo)
    k, w, f = keys[:r], words[:r], flip[:r]
    bits = (x[lo:lo + r] + np.float32(0)).view(np.uint32)  # + 0 turns -0.0 into +0.0
    # Negative floats: flip all bits; non-negative: set the sign bit. Order-preserving.
    np.right_shift(bits.view(np.int32), 31, out=f.view(np.int32))
    np.bitwise_or(f, _SIGN, out=f)
    w[..., 0] = index
    np.bitwise_xor(f, bits, out=w[..., 1])
    k.sort(axis=-1)
    high = w[..., 1]
    np.right_shift(high.view(np.int32), 31, out=f.view(np.int32))
    np.invert(f, out=f)
    np.bitwise_or(f, _SIGN, out=f)
    values = sorted_out[lo:lo + r]
    np.bitwise_xor(f, high, out=values.view(np.uint32))
    perm = w[..., 0].astype(np.intp) + offsets[:r]
    ranks_out[lo:lo + r].reshape(-1)[perm.ravel()] = _average_ranks(values, base[:r]).ravel()


def _np_sort_and_rank(x):
  x = np.asarray(x, np.float32)
  flat = np.ascontiguousarray(x.reshape(-1, x.shape[-1]))
  sorted_out = np.empty_like(flat)
  ranks_out = np.empty_like(flat)
  _rowwise(_np_sort_and_rank_rows, flat, sorted_out, ranks_out)
  return sorted_out.reshape(x.shape), ranks_out.reshape(x.shape)


def _np_sort_rows(x, out):
  out[...] = np.sort(x + np.float32(0), axis=-1)


def _np_sort(x):
  x = np.asarray(x, np.float32)
  flat = np.ascontiguousarray(x.reshape(-1, x.shape[-1]))
  out = np.empty_like(flat)
  _rowwise(_np_sort_rows, flat, out)
  return out.reshape(x.shape)


def _callback_sort_and_rank(x):
  shape = jax.ShapeDtypeStruct(x.shape, jnp.float32)
  return jax.pure_callback(_np_sort_and_rank, (shape, shape), x, vmap_method="broadcast_all")


def _callback_sort(x):
  shape = jax.ShapeDtypeStruct(x.shape, jnp.float32)
  return jax.pure_callback(_np_sort, shape, x, vmap_method="broadcast_all")


def _xla_sort_and_rank(x):
  n = x.shape[-1]
  index = jnp.arange(n, dtype=jnp.int32)
  values, perm = lax.sort((x + 0.0, index), num_keys=1, is_stable=True)
  changes = values[1:] != values[:-1]
  starts = jnp.concatenate([jnp.ones((1,), bool), changes])
  ends = jnp.concatenate([changes, jnp.ones((1,), bool)])
  first = lax.cummax(jnp.where(starts, index, 0))
  last = lax.cummin(jnp.where(ends, index, n - 1), reverse=True)
  avg = (first + last).astype(jnp.float32) / 2.0 + 1.0
  ranks = jnp.zeros((n,), jnp.float32).at[perm].set(avg, unique_indices=True)
  return values, ranks


def _xla_sort(x):
  return jnp.sort(x + 0.0)


def _check(x, method):
  if method not in METHODS:
    raise ValueError(f"unknown sort method {method!r}; expected one of {METHODS}")
  if x.ndim != 1:
    raise ValueError(f"expected one flattened map of shape [N], got shape {x.shape}; "
                     "batch with jax.vmap")


def _dispatch(x, method, numpy_fn, xla_fn):
  if method == "numpy":
    return numpy_fn(x)
  if method == "xla":
    return xla_fn(x)
  return lax.platform_dependent(x, cpu=numpy_fn, default=xla_fn)


def sort_and_rank(x, method="auto"):
  """Sorts one flattened map and ranks it, sharing one sort.

  Args:
    x: [N] float32 map values.
    method: "auto" (numpy callback on the CPU, XLA elsewhere), "numpy" or "xla".

  Returns:
    (values, ranks): values [N] ascending; ranks [N] float32 in the original order, 1-based,
    ties sharing their mean rank (scipy.stats.rankdata's "average"). -0.0 counts as 0.0.
  """
  x = jnp.asarray(x, jnp.float32)
  _check(x, method)
  return _dispatch(x, method, _callback_sort_and_rank, _xla_sort_and_rank)


def sorted_values(x, method="auto"):
  """Returns [N] the values of one flattened map [N] in ascending order."""
  x = jnp.asarray(x, jnp.float32)
  _check(x, method)
  return _dispatch(x, method, _callback_sort, _xla_sort)


def top_values(x, k, method="auto"):
  """Returns [k] the k largest values of one flattened map [N], in descending order.

  Selection, not a full sort, on the XLA path (`lax.top_k`). On the CPU the numpy path sorts:
  with x86-simd-sort `np.sort` measured faster than `np.partition` (0.10 vs 0.19 ms per
  224x224 map on the 2-core development machine) and much faster than XLA's `top_k`.
  """
  x = jnp.asarray(x, jnp.float32)
  _check(x, method)
  k = int(k)
  if not 1 <= k <= x.shape[0]:
    raise ValueError(f"k must be in [1, {x.shape[0]}], got {k}")
  numpy_fn = lambda v: _callback_sort(v)[::-1][:k]
  xla_fn = lambda v: lax.top_k(v + 0.0, k)[0]
  return _dispatch(x, method, numpy_fn, xla_fn)
