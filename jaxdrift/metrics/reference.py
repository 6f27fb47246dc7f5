"""A straightforward per-pair numpy/scipy implementation of the drift metrics.

The baseline of `benchmarks/metrics.py` and an independent check of `drift` in the tests:
each metric is written on its own from the definitions in docs/metrics.md in float64, the way one would write it
without JAX (scipy.stats.spearmanr, np.corrcoef, np.partition, np.sort,
scipy.ndimage.gaussian_filter). Not used by the library itself.
"""

import math

import numpy as np
import scipy.ndimage
import scipy.stats

from jaxdrift.metrics.drift import AUC_QS, MAP_QUANTITIES, PAIR_METRICS, DriftParams
from jaxdrift.metrics.maps import top_k_count

NAN = float("nan")


def is_valid(m):
  return bool(np.all(np.isfinite(m)) and m.sum() > 0)


def centroid(m):
  rows, cols = np.indices(m.shape)
  return np.array([(rows * m).sum(), (cols * m).sum()]) / m.sum()


def displacement(a, b):
  return float(np.linalg.norm(centroid(a) - centroid(b)) / math.hypot(*a.shape))


def peak_displacement(a, b):
  pa = np.array(np.unravel_index(np.argmax(a), a.shape), float)
  pb = np.array(np.unravel_index(np.argmax(b), b.shape), float)
  return float(np.linalg.norm(pa - pb) / math.hypot(*a.shape))


def kth_largest(m, k):
  flat = m.ravel()
  return np.partition(flat, flat.size - k)[flat.size - k]


def iou(a, b, q=0.2):
  k = top_k_count(q, a.size)
  ma = (a >= kth_largest(a, k)) & (a > 0)
  mb = (b >= kth_largest(b, k)) & (b > 0)
  return float((ma & mb).sum() / (ma | mb).sum())


def iou_auc(a, b, qs=AUC_QS):
  # One sort per map for all thresholds.
  sa, sb = np.sort(a.ravel()), np.sort(b.ravel())
  values = []
  for q in qs:
    k = top_k_count(q, a.size)
    ma = (a >= sa[-k]) & (a > 0)
    mb = (b >= sb[-k]) & (b > 0)
    values.append((ma & mb).sum() / (ma | mb).sum())
  return float(np.mean(values))


def soft_iou(a, b):
  pa, pb = a / a.sum(), b / b.sum()
  return float(np.minimum(pa, pb).sum() / np.maximum(pa, pb).sum())


def pearson(a, b):
  if a.max() == a.min() or b.max() == b.min():
    return NAN
  return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def spearman(a, b):
  if a.max() == a.min() or b.max() == b.min():
    return NAN
  return float(scipy.stats.spearmanr(a.ravel(), b.ravel())[0])


def ssim(a, b, sigma=1.5, truncate=3.5, k1=0.01, k2=0.03):
  x, y = a / a.max(), b / b.max()
  f = lambda z: scipy.ndimage.gaussian_filter(z, sigma, mode="reflect", truncate=truncate)
  mx, my = f(x), f(y)
  sxx, syy, sxy = f(x * x) - mx * mx, f(y * y) - my * my, f(x * y) - mx * my
  c1, c2 = k1 ** 2, k2 ** 2
  s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
  return float(s.mean())


def concentration(m, q=0.1):
  k = top_k_count(q, m.size)
  flat = m.ravel()
  return float(np.partition(flat, flat.size - k)[flat.size - k:].sum() / flat.sum())


def entropy(m):
  p = m.ravel() / m.sum()
  p = p[p > 0]
  return float(-(p * np.log(p)).sum() / math.log(m.size))


def gini(m):
  x = np.sort(m.ravel())
  n = x.size
  i = np.arange(1, n + 1)
  return float(((2 * i - n - 1) * x).sum() / (n * x.sum()))


def pair_metrics(a, b, params=DriftParams()):
  """All metrics of one pair as floats (NaN if invalid), the same keys as `drift`."""
  a = np.asarray(a, np.float64)
  b = np.asarray(b, np.float64)
  valid_a, valid_b = is_valid(a), is_valid(b)
  out = dict(valid=valid_a and valid_b, valid_a=valid_a, valid_b=valid_b)
  if not out["valid"]:
    return out
  out.update(
      displacement=displacement(a, b),
      peak_displacement=peak_displacement(a, b),
      iou=iou(a, b, params.iou_q),
      iou_auc=iou_auc(a, b, params.auc_qs),
      soft_iou=soft_iou(a, b),
      pearson=pearson(a, b),
      spearman=spearman(a, b),
      ssim=ssim(a, b, params.ssim_sigma, params.ssim_truncate, params.ssim_k1,
                params.ssim_k2),
  )
  for name, fn in (("concentration", lambda m: concentration(m, params.concentration_q)),
                   ("entropy", entropy), ("gini", gini)):
    out[f"{name}_a"], out[f"{name}_b"] = fn(a), fn(b)
    out[f"{name}_change"] = out[f"{name}_b"] - out[f"{name}_a"]
  return out


def drift(maps_a, maps_b, params=DriftParams()):
  """The per-pair loop: dict of [B] float64 arrays (NaN if invalid) and [B] bool flags."""
  rows = [pair_metrics(a, b, params) for a, b in zip(maps_a, maps_b)]
  names = list(PAIR_METRICS) + [f"{q}_{c}" for q in MAP_QUANTITIES for c in "ab"]
  out = {k: np.array([r.get(k, NAN) for r in rows], np.float64) for k in names}
  for k in ("valid", "valid_a", "valid_b"):
    out[k] = np.array([r[k] for r in rows], bool)
  return out
