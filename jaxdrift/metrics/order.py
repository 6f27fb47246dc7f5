"""Order statistics of flattened maps: sorted values, top-k values, average ranks, and the
per-pair statistics that the rank-based drift metrics need.

`drift` sorts each map ONCE (`pair_order_stats`) and reads every rank-based metric from that
sort: the IoU thresholds (k-th largest values), concentration (top-k mass), gini (sorted
values) and spearman (average ranks).

Three exact implementations sit behind each primitive; sorted values, ranks and thresholds
are identical, sums differ by float32 rounding:

- "packed": each value becomes an order-preserving 32-bit key (float bits, sign-flipped),
  shifted into the high word of a 64-bit integer whose low word is the element's index; ONE
  single-operand XLA sort of those integers gives the sorted values (high words) and the
  stable permutation (low words). XLA's CPU sort of one integer operand is several times
  faster than its comparator sort of (float, index) pairs, which is what "xla" runs. The
  64-bit integers exist only inside this function (`jax.enable_x64` around the sort); the
  program's inputs and outputs stay 32-bit.
- "xla": `lax.sort` of (values, index) / `lax.top_k`, for GPU and TPU.
- "numpy": a `jax.pure_callback` into numpy, packing keys the same way (x86-simd-sort). An
  independent implementation kept for checking; a program that holds a host callback cannot
  enter XLA's persistent compilation cache, so it is never the default.

`method="auto"` (the default everywhere) lowers to "packed" on the CPU and "xla" elsewhere,
chosen per platform at lowering time with `lax.platform_dependent`. Measured on the 2-core
development CPU for a batch of pairs of maps (`pair_order_stats`, both maps sorted and
ranked): 64 pairs of 64x64 maps 13 ms packed, 16 ms numpy, 92 ms xla; 16 pairs of 224x224
53 ms packed, 42 ms numpy, 174 ms xla (2026-12-05).
"""

import concurrent.futures
import os
import threading

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

try:
  from jax import enable_x64  # a context manager
except ImportError:  # older jax
  from jax.experimental import enable_x64

METHODS = ("auto", "packed", "numpy", "xla")

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


def _rowwise(fn, inputs, outputs):
  """Applies `fn(*input_rows, *output_rows)` to blocks of rows (leading axis) of the arrays,
  split over the thread pool when the inputs are large (numpy releases the GIL)."""
  rows = inputs[0].shape[0]
  workers = min(os.cpu_count() or 1, 8, rows)
  if workers <= 1 or sum(x.size for x in inputs) < _MIN_PARALLEL_ELEMENTS:
    fn(*inputs, *outputs)
    return
  bounds = np.linspace(0, rows, workers + 1).astype(int)
  futures = [_pool().submit(fn, *(x[lo:hi] for x in inputs), *(o[lo:hi] for o in outputs))
             for lo, hi in zip(bounds[:-1], bounds[1:]) if hi > lo]
  for future in futures:
    future.result()


_SIGN = np.uint32(0x80000000)


_BLOCK_ELEMENTS = 1 << 16  # rows per numpy step: about 64k values (cache-resident)
_FEW_TIE_GROUPS = 64


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
  mean_rank = ((starts % n + ends % n) * 0.5 + 1.0).astype(np.float32)
  ranks = base.copy()
  flat = ranks.reshape(-1)
  if starts.size <= _FEW_TIE_GROUPS:
    # Typical CAMs: one large group of zeros per map and few others; slices beat scatters.
    for start, end, value in zip(starts.tolist(), ends.tolist(), mean_rank.tolist()):
      flat[start:end + 1] = value
    return ranks
  lengths = ends - starts + 1
  positions = np.repeat(starts - np.cumsum(lengths) + lengths, lengths)
  positions += np.arange(positions.size)
  flat[positions] = np.repeat(mean_rank, lengths)
  return ranks


class _BlockSorter:
  """Sorts and ranks blocks of up to `rows` rows of length n, reusing its buffers.

  64-bit keys = order-preserving float bits (high word) | index (low word), written through
  a uint32 view; one np.sort of the keys gives the sorted values and the stable permutation.
  """

  def __init__(self, rows, n):
    self.keys = np.empty((rows, n), np.uint64)
    self.words = self.keys.view(np.uint32).reshape(rows, n, 2)  # little-endian: 0 = low
    self.flip = np.empty((rows, n), np.uint32)
    self.values = np.empty((rows, n), np.float32)
    self.ranks = np.empty((rows, n), np.float32)
    self.index = np.arange(n, dtype=np.uint32)
    self.base = np.broadcast_to(np.arange(1, n + 1, dtype=np.float32), (rows, n))
    self.offsets = (np.arange(rows) * n)[:, None]

  def __call__(self, x):
    """x [r, n] float32 -> (ascending values, average ranks), views valid until next call."""
    r, n = x.shape
    keys, words, flip = self.keys[:r], self.words[:r], self.flip[:r]
    bits = (x + np.float32(0)).view(np.uint32)  # + 0 turns -0.0 into +0.0
    # Negative floats: flip all bits; non-negative: set the sign bit. Order-preserving.
    np.right_shift(bits.view(np.int32), 31, out=flip.view(np.int32))
    np.bitwise_or(flip, _SIGN, out=flip)
    words[..., 0] = self.index
    np.bitwise_xor(flip, bits, out=words[..., 1])
    keys.sort(axis=-1)
    high = words[..., 1]
    np.right_shift(high.view(np.int32), 31, out=flip.view(np.int32))
    np.invert(flip, out=flip)
    np.bitwise_or(flip, _SIGN, out=flip)
    values = self.values[:r]
    np.bitwise_xor(flip, high, out=values.view(np.uint32))
    perm = words[..., 0].astype(np.intp) + self.offsets[:r]
    ranks = self.ranks[:r]
    ranks.reshape(-1)[perm.ravel()] = _average_ranks(values, self.base[:r]).ravel()
    return values, ranks


def _np_sort_and_rank_rows(x, sorted_out, ranks_out):
  """numpy kernel: x [R, N] float32 -> ascending values and average ranks (1-based)."""
  rows, n = x.shape
  block = max(1, min(rows, _BLOCK_ELEMENTS // n))
  sorter = _BlockSorter(block, n)
  for lo in range(0, rows, block):
    values, ranks = sorter(x[lo:lo + block])
    sorted_out[lo:lo + block] = values
    ranks_out[lo:lo + block] = ranks


def _np_sort_and_rank(x):
  x = np.asarray(x, np.float32)
  flat = np.ascontiguousarray(x.reshape(-1, x.shape[-1]))
  sorted_out = np.empty_like(flat)
  ranks_out = np.empty_like(flat)
  _rowwise(_np_sort_and_rank_rows, (flat,), (sorted_out, ranks_out))
  return sorted_out.reshape(x.shape), ranks_out.reshape(x.shape)


def _np_pair_stats_rows(a, b, thresholds, concentration, gini, spearman, ks, kc):
  """numpy kernel for `pair_order_stats` on rows a, b [P, N] (float64 accumulation)."""
  pairs, n = a.shape
  block = max(1, min(pairs, _BLOCK_ELEMENTS // (2 * n)))
  sorter = _BlockSorter(2 * block, n)
  weights = (2.0 * np.arange(1, n + 1) - n - 1) / n
  kth = n - np.asarray(ks)
  for lo in range(0, pairs, block):
    r = min(block, pairs - lo)
    values, ranks = sorter(np.concatenate([a[lo:lo + r], b[lo:lo + r]]))  # a rows, b rows
    with np.errstate(all="ignore"):  # invalid maps give NaN/Inf here; callers mask them
      total = values.sum(axis=1, dtype=np.float64)
      two = lambda v: np.stack([v[:r], v[r:]], axis=1)  # [2r, ...] -> [r, 2, ...]
      thresholds[lo:lo + r] = two(values[:, kth])
      concentration[lo:lo + r] = two(values[:, n - kc:].sum(axis=1, dtype=np.float64) / total)
      gini[lo:lo + r] = two((values @ weights) / total)
      centred = ranks - np.float32((n + 1) / 2)  # exact: ranks are half-integers
      ca, cb = centred[:r].astype(np.float64), centred[r:].astype(np.float64)
      spearman[lo:lo + r] = np.einsum("ij,ij->i", ca, cb) / np.sqrt(
          np.einsum("ij,ij->i", ca, ca) * np.einsum("ij,ij->i", cb, cb))


def _np_pair_stats(a, b, ks, kc):
  a = np.asarray(a, np.float32)
  b = np.asarray(b, np.float32)
  lead, n = a.shape[:-1], a.shape[-1]
  a2 = np.ascontiguousarray(a.reshape(-1, n))
  b2 = np.ascontiguousarray(b.reshape(-1, n))
  p = a2.shape[0]
  outs = (np.empty((p, 2, len(ks)), np.float32), np.empty((p, 2), np.float32),
          np.empty((p, 2), np.float32), np.empty((p,), np.float32))
  _rowwise(lambda *args: _np_pair_stats_rows(*args, ks=ks, kc=kc), (a2, b2), outs)
  return tuple(o.reshape(lead + o.shape[1:]) for o in outs)


def _np_sort_rows(x, out):
  out[...] = np.sort(x + np.float32(0), axis=-1)


def _np_sort(x):
  x = np.asarray(x, np.float32)
  flat = np.ascontiguousarray(x.reshape(-1, x.shape[-1]))
  out = np.empty_like(flat)
  _rowwise(_np_sort_rows, (flat,), (out,))
  return out.reshape(x.shape)


def _callback_sort_and_rank(x):
  shape = jax.ShapeDtypeStruct(x.shape, jnp.float32)
  return jax.pure_callback(_np_sort_and_rank, (shape, shape), x, vmap_method="broadcast_all")


def _callback_sort(x):
  shape = jax.ShapeDtypeStruct(x.shape, jnp.float32)
  return jax.pure_callback(_np_sort, shape, x, vmap_method="broadcast_all")


def _float_keys(x):
  """Order-preserving uint32 keys of float32 values (-0.0 counts as 0.0)."""
  bits = lax.bitcast_convert_type(x + 0.0, jnp.uint32)
  negative = (bits >> 31) == 1
  return jnp.where(negative, ~bits, bits | jnp.uint32(0x80000000))


def _float_of_keys(keys):
  negative = (keys >> 31) == 0
  return lax.bitcast_convert_type(jnp.where(negative, ~keys, keys & jnp.uint32(0x7FFFFFFF)),
                                  jnp.float32)


def _packed_sort(x):
  """[N] float32 -> (ascending values [N], stable permutation [N] int32): one sort of
  (key << 32 | index) as 64-bit integers (module doc)."""
  keys = _float_keys(x)
  with enable_x64(True):
    index = lax.iota(jnp.uint64, x.shape[0])
    packed = jnp.sort((keys.astype(jnp.uint64) << 32) | index)
    perm = (packed & 0xFFFFFFFF).astype(jnp.int32)
    high = (packed >> 32).astype(jnp.uint32)
  return _float_of_keys(high), perm


def _average_ranks_of_sorted(values, perm):
  """Average 1-based ranks in the original order, from ascending values and their
  permutation: every member of a tie group gets the mean of its positions."""
  n = values.shape[0]
  index = jnp.arange(n, dtype=jnp.int32)
  changes = values[1:] != values[:-1]
  starts = jnp.concatenate([jnp.ones((1,), bool), changes])
  ends = jnp.concatenate([changes, jnp.ones((1,), bool)])
  first = lax.cummax(jnp.where(starts, index, 0))
  last = lax.cummin(jnp.where(ends, index, n - 1), reverse=True)
  avg = (first + last).astype(jnp.float32) / 2.0 + 1.0
  return jnp.zeros((n,), jnp.float32).at[perm].set(avg, unique_indices=True)


def _packed_sort_and_rank(x):
  values, perm = _packed_sort(x)
  return values, _average_ranks_of_sorted(values, perm)


def _packed_sorted(x):
  return _float_of_keys(jnp.sort(_float_keys(x)))


def _xla_sort_and_rank(x):
  n = x.shape[-1]
  index = jnp.arange(n, dtype=jnp.int32)
  values, perm = lax.sort((x + 0.0, index), num_keys=1, is_stable=True)
  return values, _average_ranks_of_sorted(values, perm)


def _xla_sort(x):
  return jnp.sort(x + 0.0)


def _xla_pair_stats(a, b, ks, kc, sort_and_rank=_xla_sort_and_rank):
  n = a.shape[0]
  (va, ra), (vb, rb) = sort_and_rank(a), sort_and_rank(b)
  values = jnp.stack([va, vb])
  total = blocked_sum(values)
  thresholds = values[:, n - jnp.asarray(ks)]
  concentration = blocked_sum(values[:, n - kc:]) / total
  weights = (2.0 * jnp.arange(1, n + 1, dtype=jnp.float32) - n - 1) / n
  gini = blocked_sum(weights * values) / total
  ca, cb = (ra - (n + 1) / 2.0) / n, (rb - (n + 1) / 2.0) / n
  spearman = blocked_sum(ca * cb) / jnp.sqrt(blocked_sum(ca * ca) * blocked_sum(cb * cb))
  return thresholds, concentration, gini, spearman


def blocked_sum(x):
  """Sum over the last axis in float32 with a two-level (blocked) reduction.

  A single long float32 reduction loses about eps * N / lanes of relative precision; summing
  blocks of 512 first keeps 224x224 maps within ~1e-7 of a float64 sum.
  """
  n = x.shape[-1]
  block = 512
  if n <= 2 * block:
    return jnp.sum(x, axis=-1)
  x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, (-n) % block)])
  return jnp.sum(jnp.sum(x.reshape(x.shape[:-1] + (-1, block)), axis=-1), axis=-1)


def _callback_pair_stats(a, b, ks, kc):
  p = len(ks)
  shapes = (jax.ShapeDtypeStruct((2, p), jnp.float32), jax.ShapeDtypeStruct((2,), jnp.float32),
            jax.ShapeDtypeStruct((2,), jnp.float32), jax.ShapeDtypeStruct((), jnp.float32))
  fn = lambda x, y: _np_pair_stats(x, y, ks, kc)
  return jax.pure_callback(fn, shapes, a, b, vmap_method="broadcast_all")


def pair_order_stats(a, b, ks, kc, method="auto"):
  """Every order statistic that the drift metrics need from a pair, from ONE sort per map.

  The "numpy" callback returns only these few numbers per pair: copying arrays back out of
  a `pure_callback` cost more (~0.45 ms per 224x224 pair) than the sort itself.

  Args:
    a, b: [N] float32 flattened maps.
    ks: ascending tuple of k: the k-th largest values to return (IoU thresholds).
    kc: k of the top-k mass share (concentration).
    method: "auto", "packed", "numpy" or "xla" (see the module docstring).

  Returns:
    dict with "thresholds" [2, len(ks)] (k-th largest value of a, b for each k),
    "concentration" [2] (sum of the kc largest / sum), "gini" [2]
    (sum_i (2i - N - 1) x_(i) / (N sum x)) and "spearman" (Pearson correlation of the
    average ranks). Values for invalid or constant maps are meaningless (NaN or Inf):
    callers mask them with their validity.
  """
  a = jnp.asarray(a, jnp.float32)
  b = jnp.asarray(b, jnp.float32)
  _check(a, method)
  if a.shape != b.shape:
    raise ValueError(f"a and b must have the same shape, got {a.shape} and {b.shape}")
  ks = tuple(int(k) for k in ks)
  if list(ks) != sorted(ks) or not all(1 <= k <= a.shape[0] for k in ks + (kc,)):
    raise ValueError(f"ks must be ascending and in [1, {a.shape[0]}], got {ks} and {kc}")
  kc = int(kc)
  out = _dispatch((a, b), method, {
      "packed": lambda x, y: _xla_pair_stats(x, y, ks, kc, _packed_sort_and_rank),
      "numpy": lambda x, y: _callback_pair_stats(x, y, ks, kc),
      "xla": lambda x, y: _xla_pair_stats(x, y, ks, kc)})
  return dict(zip(("thresholds", "concentration", "gini", "spearman"), out))


def _check(x, method):
  if method not in METHODS:
    raise ValueError(f"unknown sort method {method!r}; expected one of {METHODS}")
  if x.ndim != 1:
    raise ValueError(f"expected one flattened map of shape [N], got shape {x.shape}; "
                     "batch with jax.vmap")


def _dispatch(args, method, impls):
  """impls[method](*args); "auto": "packed" on the CPU, "xla" elsewhere, per platform."""
  if method != "auto":
    return impls[method](*args)
  return lax.platform_dependent(*args, cpu=impls["packed"], default=impls["xla"])


def sort_and_rank(x, method="auto"):
  """Sorts one flattened map and ranks it, sharing one sort.

  Args:
    x: [N] float32 map values.
    method: "auto" ("packed" on the CPU, "xla" elsewhere), "packed", "numpy" or "xla".

  Returns:
    (values, ranks): values [N] ascending; ranks [N] float32 in the original order, 1-based,
    ties sharing their mean rank (scipy.stats.rankdata's "average"). -0.0 counts as 0.0.
  """
  x = jnp.asarray(x, jnp.float32)
  _check(x, method)
  return _dispatch((x,), method, {"packed": _packed_sort_and_rank,
                                  "numpy": _callback_sort_and_rank, "xla": _xla_sort_and_rank})


def sorted_values(x, method="auto"):
  """Returns [N] the values of one flattened map [N] in ascending order."""
  x = jnp.asarray(x, jnp.float32)
  _check(x, method)
  return _dispatch((x,), method, {"packed": _packed_sorted, "numpy": _callback_sort,
                                  "xla": _xla_sort})


def top_values(x, k, method="auto"):
  """Returns [k] the k largest values of one flattened map [N], in descending order.

  Selection, not a full sort, on the "xla" path (`lax.top_k`). On the CPU "packed" sorts the
  integer keys instead: XLA's CPU `top_k` is several times slower than that sort.
  """
  x = jnp.asarray(x, jnp.float32)
  _check(x, method)
  k = int(k)
  if not 1 <= k <= x.shape[0]:
    raise ValueError(f"k must be in [1, {x.shape[0]}], got {k}")
  return _dispatch((x,), method, {"packed": lambda v: _packed_sorted(v)[::-1][:k],
                                  "numpy": lambda v: _callback_sort(v)[::-1][:k],
                                  "xla": lambda v: lax.top_k(v + 0.0, k)[0]})
