"""Null baselines, so that a drift figure can be read against noise.

- `perturbation_null`: one checkpoint against itself under a tiny input perturbation
  (explanation noise: drift that is not due to fine-tuning at all).
- `head_null`: the checkpoint against the same backbone with a randomly re-initialised head
  (what a change of head alone does to the maps).
- `permutation_null`: TL maps against FT maps of OTHER images (shuffled pairing; optionally
  within the same class): the drift of unrelated maps, the ceiling of the scale.

The parts that need a model take a plain callable `maps_fn(images) -> maps [B, h, w]`
(for example `lambda x: jd.cam.compute(model, variables, x, targets)`), so this module does
not depend on any model code. `null_report` puts the real drift beside the nulls.
"""

import jax
import jax.numpy as jnp
import numpy as np

from jaxdrift.metrics.drift import drift
from jaxdrift.metrics.stats import describe, group_rng
from jaxdrift.metrics.streaming import drift_stream


def perturb(images, key, sigma=0.01):
  """images [B, H, W, C] plus Gaussian noise of std `sigma` times each image's own std."""
  images = jnp.asarray(images, jnp.float32)
  scale = sigma * jnp.std(images, axis=tuple(range(1, images.ndim)), keepdims=True)
  return images + scale * jax.random.normal(key, images.shape, images.dtype)


def perturbation_null(maps_fn, images, key, sigma=0.01, resolution=None, **params):
  """Drift of one checkpoint's maps against its maps of slightly perturbed inputs.

  Args:
    maps_fn: callable images [B, H, W, C] -> maps [B, h, w] (one checkpoint, fixed targets).
    images: [B, H, W, C] preprocessed images.
    key: a jax PRNG key for the noise.
    sigma: noise standard deviation relative to each image's own standard deviation.
    resolution, **params: as for `jd.metrics.drift`.

  Returns:
    The `drift` dict for the pairs (maps of images, maps of images + noise).
  """
  images = jnp.asarray(images, jnp.float32)
  return drift(maps_fn(images), maps_fn(perturb(images, key, sigma)), resolution, **params)


def head_null(maps_fn, random_head_maps_fn, images, resolution=None, **params):
  """Drift of a checkpoint's maps against those of the same backbone with a randomly
  re-initialised head (build `random_head_maps_fn` from re-initialised head parameters)."""
  return drift(maps_fn(images), random_head_maps_fn(images), resolution, **params)


def shuffled_pairing(key, n, groups=None):
  """A random pairing without fixed points: index [n] such that sample i is paired with
  sample index[i] != i, within the same group when `groups` [n] is given.

  Samples are put in a random order (inside each group) and each is paired with the next one
  in that order, cyclically. A sample alone in its group cannot be paired: index[i] = i.
  """
  order_key = np.asarray(jax.random.uniform(key, (n,)))
  groups = np.zeros((n,), np.int64) if groups is None else np.asarray(groups)
  if groups.shape != (n,):
    raise ValueError(f"groups must have shape ({n},), got {groups.shape}")
  order = np.lexsort((order_key, groups))  # by group, random inside each group
  sorted_groups = groups[order]
  starts = np.flatnonzero(np.r_[True, sorted_groups[1:] != sorted_groups[:-1]])
  lengths = np.diff(np.r_[starts, n])
  start = np.repeat(starts, lengths)
  end = start + np.repeat(lengths, lengths)
  position = np.arange(n)
  following = np.where(position + 1 < end, position + 1, start)
  index = np.empty((n,), np.int64)
  index[order] = order[following]
  return index


def permutation_null(maps_a, maps_b, key, groups=None, resolution=None, batch_size=None,
                     **params):
  """Drift of maps_a [B, h, w] against maps_b of other images (`shuffled_pairing`).

  With `batch_size`, the pairs go through `drift_stream` in padded batches of that fixed
  shape (one compile whatever B is: the drift stage's selection changes B from run to run).

  Returns:
    The `drift` dict plus "partner" [B] (the image index each TL map was paired with) and
    "shuffled" [B] bool; samples alone in their group are not shuffled and their metrics
    are NaN (valid False) rather than a silent zero drift.
  """
  maps_a = np.asarray(maps_a, np.float32)
  maps_b = np.asarray(maps_b, np.float32)
  partner = shuffled_pairing(key, maps_a.shape[0], groups)
  if batch_size is None:
    out = dict(drift(maps_a, maps_b[partner], resolution, **params))
  else:
    pairs = ((maps_a[i:i + batch_size], maps_b[partner[i:i + batch_size]])
             for i in range(0, maps_a.shape[0], batch_size))
    out = drift_stream(pairs, batch_size, resolution=resolution, **params)
  shuffled = jnp.asarray(partner != np.arange(partner.size))
  out = {k: (v & shuffled) if v.dtype == jnp.bool_ else jnp.where(shuffled, v, jnp.nan)
         for k, v in out.items()}
  out.update(partner=jnp.asarray(partner), shuffled=shuffled)
  return out


def null_report(real, nulls, metrics=None, n_boot=1000, ci=0.95, seed=0):
  """Real drift beside each null, per metric: rows of `describe` with "source".

  Args:
    real: the `drift` dict of the TL/FT pairs.
    nulls: dict name -> `drift`-like dict (e.g. {"perturbation": ..., "permutation": ...}).
    metrics: metric names (default: every metric present in `real`).

  Returns:
    list of dicts (metric, source, n_pairs, n_invalid, n, mean, sd, median, ..., ci_low,
    ci_high), the real drift first for every metric.
  """
  sources = [("real", real)] + list(nulls.items())
  if metrics is None:
    metrics = [k for k, v in real.items()
               if np.asarray(v).dtype.kind == "f" and k not in ("partner",)]
  rows = []
  for metric in metrics:
    for name, out in sources:
      values = np.asarray(out[metric], np.float64)
      valid = np.asarray(out["valid"], bool)
      stats = describe(values[valid], n_boot, ci, group_rng(seed, (name, metric)))
      rows.append(dict(metric=metric, source=name, n_pairs=int(values.size),
                       n_invalid=int((~valid).sum()), **stats))
  return rows
