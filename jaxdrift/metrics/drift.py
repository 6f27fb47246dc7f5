"""Drift metrics of ONE pair of attribution maps (a = TL checkpoint, b = FT checkpoint), and
`drift`, which computes all of them for a batch of pairs in one jitted call.

Definitions are docs/metrics.md. Every function takes maps [H, W] of the same shape, is pure,
jittable and vmappable, and returns NaN when either map is invalid (not all finite, or sum
<= 0). A metric can also be undefined for a valid pair: correlations of a constant map (zero
variance; every 1x1 map). It is then NaN for that metric alone, and the statistics count it
as undefined for that metric (`jaxdrift.metrics.stats.describe`: n counts finite values).
Every metric is scale-invariant, so both maps are first rescaled by a power of two
(`maps.rescaled`, exact): maps whose sum overflows float32 still give finite metrics.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
from jax import lax

from jaxdrift.geometry import check_grid, upsample
from jaxdrift.metrics import maps as maps_lib
from jaxdrift.metrics import order
from jaxdrift.metrics import structural as ssim_lib

AUC_QS = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5)

# Metrics of a pair, in output order. Each also has a single-pair function of the same name.
PAIR_METRICS = ("displacement", "peak_displacement", "iou", "iou_auc", "soft_iou", "pearson",
                "spearman", "ssim", "concentration_change", "entropy_change", "gini_change")
# Quantities of each map that `drift` also returns, as f"{name}_a" and f"{name}_b".
MAP_QUANTITIES = ("concentration", "entropy", "gini")
# Every float output of `drift` (the columns of a drift table that hold numbers or NaN).
FLOAT_OUTPUTS = PAIR_METRICS + tuple(f"{q}_{m}" for q in MAP_QUANTITIES for m in "ab")


def _pair_valid(a, b):
  return maps_lib.is_valid(a) & maps_lib.is_valid(b)


def _nan_unless(valid, value):
  return jnp.where(valid, value, jnp.nan)


def _as_pair(a, b):
  a = jnp.asarray(a, jnp.float32)
  b = jnp.asarray(b, jnp.float32)
  if a.ndim != 2 or a.shape != b.shape:
    raise ValueError(f"expected two maps [H, W] of the same shape, got {a.shape} and "
                     f"{b.shape}; batch with jax.vmap or use jd.metrics.drift")
  return maps_lib.rescaled(a), maps_lib.rescaled(b)


def _diagonal(shape):
  return jnp.float32(math.sqrt(shape[0] ** 2 + shape[1] ** 2))


def displacement(a, b):
  """||c(a) - c(b)|| / sqrt(H^2 + W^2), c the centre of mass in pixel indices; in [0, 1]."""
  a, b = _as_pair(a, b)
  return jnp.linalg.norm(maps_lib.centroid(a) - maps_lib.centroid(b)) / _diagonal(a.shape)


def peak_displacement(a, b):
  """Distance between the argmax positions (first in row-major order on ties) / diagonal."""
  a, b = _as_pair(a, b)
  return jnp.linalg.norm(maps_lib.peak(a) - maps_lib.peak(b)) / _diagonal(a.shape)


def _iou_at(a, b, ta, tb):
  """IoU of the masks (m >= t) & (m > 0) for NON-INCREASING thresholds ta, tb [Q] -> [Q].

  The masks are nested (a lower threshold gives a larger mask), so each pixel has a level:
  the first threshold index whose mask holds it (Q if none). Intersection and union at
  index i count the pixels whose larger / smaller level of the two maps is <= i. This reads
  every map once instead of once per threshold.
  """
  q = ta.shape[0]
  def level(m, t):
    m = m.ravel()
    below = jnp.sum((m[None, :] < t[:, None]).astype(jnp.int32), axis=0)
    return jnp.where(m > 0, below, q)
  la, lb = level(a, ta), level(b, tb)
  index = jnp.arange(q)[:, None]
  inter = jnp.sum((jnp.maximum(la, lb)[None, :] <= index).astype(jnp.float32), axis=1)
  union = jnp.sum((jnp.minimum(la, lb)[None, :] <= index).astype(jnp.float32), axis=1)
  return inter / union


def _iou_levels(qs, n):
  """(ks, where): the distinct k = ceil(q N) in ascending order (non-increasing thresholds)
  and, for every q in qs, its index into ks."""
  ks = sorted({maps_lib.top_k_count(q, n) for q in qs})
  return ks, [ks.index(maps_lib.top_k_count(q, n)) for q in qs]


def _thresholds_from_top(top, ks):
  """k-th largest values for every k in ks, from the descending top values."""
  return jnp.stack([top[k - 1] for k in ks])


def iou(a, b, q=0.2, method="auto"):
  """IoU of the top-q masks: k = ceil(q N), t(m) = k-th largest value,
  mask(m) = (m >= t(m)) & (m > 0), IoU = |mask(a) & mask(b)| / |mask(a) | mask(b)|."""
  a, b = _as_pair(a, b)
  k = maps_lib.top_k_count(q, a.size)
  ta = order.top_values(a.ravel(), k, method)[k - 1:]
  tb = order.top_values(b.ravel(), k, method)[k - 1:]
  return _nan_unless(_pair_valid(a, b), _iou_at(a, b, ta, tb)[0])


def iou_auc(a, b, qs=AUC_QS, method="auto"):
  """Mean of `iou(a, b, q)` over q in qs (default 0.05, 0.10, ..., 0.50): one threshold can
  flip rankings, the average over thresholds cannot flip by a single choice."""
  a, b = _as_pair(a, b)
  ks, where = _iou_levels(qs, a.size)
  top_a = order.top_values(a.ravel(), ks[-1], method)
  top_b = order.top_values(b.ravel(), ks[-1], method)
  ious = _iou_at(a, b, _thresholds_from_top(top_a, ks), _thresholds_from_top(top_b, ks))
  return _nan_unless(_pair_valid(a, b), jnp.mean(ious[jnp.asarray(where)]))


def soft_iou(a, b):
  """sum_p min(pa, pb) / sum_p max(pa, pb) with pa = a / sum a, pb = b / sum b; in [0, 1]."""
  a, b = _as_pair(a, b)
  pa = a / maps_lib.fsum(a)
  pb = b / maps_lib.fsum(b)
  value = maps_lib.fsum(jnp.minimum(pa, pb)) / maps_lib.fsum(jnp.maximum(pa, pb))
  return _nan_unless(_pair_valid(a, b), value)


def _correlation(xa, xb):
  """Pearson correlation of two centred flat vectors."""
  return maps_lib.fsum(xa * xb) / jnp.sqrt(maps_lib.fsum(xa * xa) * maps_lib.fsum(xb * xb))


def _not_constant(m):
  return jnp.max(m) > jnp.min(m)


def pearson(a, b):
  """Pearson correlation of the flattened maps; NaN if either map is constant or invalid."""
  a, b = _as_pair(a, b)
  xa = a - maps_lib.fsum(a) / a.size
  xb = b - maps_lib.fsum(b) / b.size
  ok = _pair_valid(a, b) & _not_constant(a) & _not_constant(b)
  return _nan_unless(ok, _correlation(xa, xb))


def spearman(a, b, method="auto"):
  """Pearson correlation of the average ranks (ties share their mean rank, as
  scipy.stats.spearmanr); NaN if either map is constant or invalid."""
  a, b = _as_pair(a, b)
  rho = order.pair_order_stats(a.ravel(), b.ravel(), (1,), 1, method)["spearman"]
  ok = _pair_valid(a, b) & _not_constant(a) & _not_constant(b)
  return _nan_unless(ok, rho)


def ssim(a, b, sigma=1.5, truncate=3.5, k1=0.01, k2=0.03):
  """Mean Gaussian-window SSIM of the max-normalised maps (see `jaxdrift.metrics.structural`)."""
  a, b = _as_pair(a, b)
  return ssim_lib.ssim(a, b, sigma, truncate, k1, k2)


def concentration_change(a, b, q=0.1, method="auto"):
  """concentration(b, q) - concentration(a, q)."""
  a, b = _as_pair(a, b)
  return maps_lib.concentration(b, q, method) - maps_lib.concentration(a, q, method)


def entropy_change(a, b):
  """entropy(b) - entropy(a) (normalised entropies)."""
  a, b = _as_pair(a, b)
  return maps_lib.entropy(b) - maps_lib.entropy(a)


def gini_change(a, b, method="auto"):
  """gini(b) - gini(a)."""
  a, b = _as_pair(a, b)
  return maps_lib.gini(b, method) - maps_lib.gini(a, method)


@dataclasses.dataclass(frozen=True)
class DriftParams:
  """Every choice behind `drift`, recorded with the results (`dataclasses.asdict`).

  Attributes:
    iou_q: top fraction for `iou`.
    concentration_q: top fraction for `concentration` and its change.
    auc_qs: the fractions averaged by `iou_auc`.
    ssim_sigma, ssim_truncate, ssim_k1, ssim_k2: SSIM window and stabilisers.
    resolution: (H, W) to upsample both maps to first (jax.image.resize bilinear, half-pixel
      centres, like cv2.resize), or None to use the maps as given.
    grid: with `resolution`, (stride, offset) in output pixels: cell i of the map is centred
      at pixel offset + stride * i, where the network computes it (`jd.models.cam_grid`);
      None for half-pixel centres. See `upsample`.
    sort: "auto" ("packed" on the CPU, "xla" elsewhere), "packed", "numpy" or "xla"
      (`jaxdrift.metrics.order`).
    chunk: pairs computed together inside the jitted loop, or None to choose by map size
      (about 256k values per step: 5 pairs at 224x224, 1024 at 7x7). Small chunks keep
      the working set in cache; at 224x224 chunk 4 ran twice as fast as chunk 64.
  """

  iou_q: float = 0.2
  concentration_q: float = 0.1
  auc_qs: tuple = AUC_QS
  ssim_sigma: float = 1.5
  ssim_truncate: float = 3.5
  ssim_k1: float = 0.01
  ssim_k2: float = 0.03
  resolution: tuple | None = None
  grid: tuple | None = None
  sort: str = "auto"
  chunk: int | None = None

  def __post_init__(self):
    object.__setattr__(self, "auc_qs", tuple(float(q) for q in self.auc_qs))
    if self.resolution is not None:
      object.__setattr__(self, "resolution", tuple(int(s) for s in self.resolution))
      if len(self.resolution) != 2:
        raise ValueError(f"resolution must be (H, W), got {self.resolution}")
    if self.grid is not None:
      object.__setattr__(self, "grid", check_grid(self.grid))
      if self.resolution is None:
        raise ValueError("grid places the map's cells in the upsampled map: give a resolution")
    if self.sort not in order.METHODS:
      raise ValueError(f"sort must be one of {order.METHODS}, got {self.sort!r}")
    if self.chunk is not None and self.chunk < 1:
      raise ValueError(f"chunk must be >= 1, got {self.chunk}")


def make_params(resolution=None, **params):
  """DriftParams from keyword arguments, with an error that lists the accepted names."""
  names = {f.name for f in dataclasses.fields(DriftParams)}
  unknown = sorted(set(params) - names)
  if unknown:
    raise TypeError(f"unknown drift parameter(s) {unknown}; accepted: {sorted(names)}")
  return DriftParams(resolution=resolution, **params)


def pair_metrics(a, b, params=DriftParams()):
  """All drift metrics of one pair of maps a, b [h, w] (sharing one sort per map).

  Args:
    a, b: maps of the TL and FT checkpoint, [h, w].
    params: a `DriftParams`.

  Returns:
    dict of scalars: PAIR_METRICS, f"{q}_a"/f"{q}_b" for q in MAP_QUANTITIES, and "valid",
    "valid_a", "valid_b" (bool). Metrics of an invalid pair are NaN.
  """
  a, b = _as_pair(a, b)
  if params.resolution is not None:
    a, b = (upsample(m, params.resolution, params.grid) for m in (a, b))
  n = a.size
  ks, where = _iou_levels((params.iou_q,) + params.auc_qs, n)
  kc = maps_lib.top_k_count(params.concentration_q, n)
  # One sort per map for every rank-based metric.
  ranked = order.pair_order_stats(a.ravel(), b.ravel(), ks, kc, params.sort)
  valid_a, valid_b = maps_lib.is_valid(a), maps_lib.is_valid(b)
  valid = valid_a & valid_b
  correlated = valid & _not_constant(a) & _not_constant(b)
  ta, tb = ranked["thresholds"]
  ious = _iou_at(a, b, ta, tb)[jnp.asarray(where)]
  out = dict(
      displacement=displacement(a, b),
      peak_displacement=peak_displacement(a, b),
      iou=ious[0],
      iou_auc=jnp.mean(ious[1:]),
      soft_iou=soft_iou(a, b),
      pearson=pearson(a, b),
      spearman=jnp.where(correlated, ranked["spearman"], jnp.nan),
      ssim=ssim_lib.ssim(a, b, params.ssim_sigma, params.ssim_truncate, params.ssim_k1,
                         params.ssim_k2),
      entropy_a=maps_lib.entropy(a),
      entropy_b=maps_lib.entropy(b),
  )
  for name in ("concentration", "gini"):
    out[f"{name}_a"], out[f"{name}_b"] = ranked[name]
  for name in MAP_QUANTITIES:
    out[f"{name}_change"] = out[f"{name}_b"] - out[f"{name}_a"]
  out = {k: _nan_unless(valid, v) for k, v in out.items()}
  out.update(valid=valid, valid_a=valid_a, valid_b=valid_b)
  return out


def chunk_size(params, shape):
  """Pairs per step of the jitted loop for maps of `shape` (h, w) (see DriftParams.chunk)."""
  if params.chunk is not None:
    return params.chunk
  h, w = params.resolution or shape
  return max(1, min(1024, (1 << 18) // (h * w)))


def drift_batch(maps_a, maps_b, params):
  """`pair_metrics` of every pair of maps_a, maps_b [B, h, w] under `params` (a
  `DriftParams`), `chunk_size` pairs at a time; not jitted (`drift` and `drift_stream` jit
  it)."""
  fn = lambda ab: pair_metrics(ab[0], ab[1], params)
  chunk = min(chunk_size(params, maps_a.shape[1:]), maps_a.shape[0])
  return lax.map(fn, (maps_a, maps_b), batch_size=chunk)


_drift_jit = jax.jit(drift_batch, static_argnums=2)


def as_map_batch(maps, name="maps"):
  """A [B, h, w] float32 jax array from numpy or jax input, or an error saying what to pass."""
  if not (isinstance(maps, jax.Array) and maps.dtype == jnp.float32):
    maps = jnp.asarray(maps, jnp.float32)
  if maps.ndim != 3:
    raise ValueError(f"{name} must be a batch of maps [B, h, w], got shape {maps.shape}; "
                     "for one pair use the single-pair functions or add a leading axis")
  return maps


def drift(maps_a, maps_b, resolution=None, **params):
  """All drift metrics for a batch of map pairs, in one jitted call.

  Args:
    maps_a: [B, h, w] maps of the TL checkpoint (numpy or jax; any library's maps).
    maps_b: [B, h, w] maps of the FT checkpoint, same images and classes.
    resolution: optional (H, W): upsample both bilinearly first (half-pixel centres, or
      the cell centres of `grid`).
    **params: `DriftParams` fields (grid, iou_q, concentration_q, auc_qs, ssim_*, sort,
      chunk).

  Returns:
    dict: metric name -> [B] float32 (NaN for invalid pairs), plus "valid", "valid_a",
    "valid_b" [B] bool. Names: PAIR_METRICS and the per-map concentration/entropy/gini.

  Example:
    >>> out = jd.metrics.drift(tl_maps, ft_maps, resolution=(224, 224))
    >>> out["iou"][out["valid"]].mean()
  """
  p = make_params(resolution, **params)
  maps_a = as_map_batch(maps_a, "maps_a")
  maps_b = as_map_batch(maps_b, "maps_b")
  if maps_a.shape != maps_b.shape:
    raise ValueError(f"maps_a and maps_b must have the same shape, got {maps_a.shape} and "
                     f"{maps_b.shape}")
  if maps_a.shape[0] == 0:
    raise ValueError("drift needs at least one pair of maps, got an empty batch")
  return _drift_jit(maps_a, maps_b, p)
