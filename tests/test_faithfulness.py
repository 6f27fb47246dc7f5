"""Deletion, insertion and ROAD: closed forms on a linear model, tie rule, batching, compiles."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage

import jaxdrift as jd
from tests import xla_env

F = jd.faithfulness
B, H, W, C, K = 4, 6, 5, 2, 3


def linear_logits(weights, images):
  """logit_k = sum_hwc weights[h, w, c, k] * images[b, h, w, c]."""
  return jnp.einsum("bhwc,hwck->bk", images, weights, precision=jax.lax.Precision.HIGHEST)


def tanh_logits(weights, images):
  """A non-linear model: the linear logits of tanh(images)."""
  return linear_logits(weights, jnp.tanh(images))


@pytest.fixture(scope="module")
def data():
  rng = np.random.default_rng(0)
  images = rng.standard_normal((B, H, W, C)).astype(np.float32)
  weights = rng.standard_normal((H, W, C, K)).astype(np.float32)
  targets = np.array([0, 2, 1, 2])
  contrib = images * np.moveaxis(weights[..., targets], -1, 0)  # [B, H, W, C]
  return images, weights, targets, contrib


def closed_form(contrib_map, order, steps, deletion):
  """Sum of the weight x pixel terms that are still present (deletion) or revealed."""
  n = contrib_map.size
  ranked = contrib_map.ravel()[order]
  out = []
  for i in range(steps + 1):
    k = (2 * i * n + steps) // (2 * steps)  # round half up
    out.append(ranked[k:].sum() if deletion else ranked[:k].sum())
  return np.array(out)


def test_linear_model_curves_equal_the_closed_form_at_every_step(data):
  images, weights, targets, contrib = data
  fn = functools.partial(linear_logits, jnp.asarray(weights))
  maps = contrib.sum(-1)
  maps[0] = np.round(maps[0])  # many ties: the flat-index rule decides the order
  steps = 7  # 30 pixels: counts 0, 4, 9, 13, 17, 21, 26, 30
  dele = F.deletion(fn, images, maps, targets, steps=steps, baseline="zero", score="logit")
  ins = F.insertion(fn, images, maps, targets, steps=steps, baseline="zero", score="logit")
  for b in range(B):
    order = np.argsort(-maps[b].ravel(), kind="stable")
    cmap = contrib[b].sum(-1)
    np.testing.assert_allclose(dele["curve"][b], closed_form(cmap, order, steps, True),
                               atol=1e-4)
    np.testing.assert_allclose(ins["curve"][b], closed_form(cmap, order, steps, False),
                               atol=1e-4)
  np.testing.assert_allclose(dele["x"], [0, 4 / 30, 9 / 30, 13 / 30, 17 / 30, 21 / 30,
                                         26 / 30, 1])
  curve = np.asarray(dele["curve"], np.float64)
  auc = (curve[:, :-1] + curve[:, 1:]).sum(1) / (2 * steps)
  np.testing.assert_allclose(dele["auc"], auc, rtol=1e-5)
  assert dele["settings"]["baseline"] == "zero" and "ascending" in dele["settings"]["ties"]


def test_weight_times_pixel_map_has_the_lowest_deletion_auc_of_100_random_maps(data):
  images, weights, targets, contrib = data
  fn = functools.partial(linear_logits, jnp.asarray(weights))
  rng = np.random.default_rng(1)
  maps = np.concatenate([contrib[:1].sum(-1), rng.random((100, H, W), np.float32)])
  out = F.deletion(fn, np.repeat(images[:1], 101, 0), maps, np.repeat(targets[:1], 101),
                   steps=10, baseline="zero", score="logit")
  auc = np.asarray(out["auc"])
  assert np.argmin(auc) == 0 and np.all(auc[1:] > auc[0] + 1e-6)


def test_rank_ties_follow_flat_index_and_signed_zeros_tie():
  m = jnp.array([[1.0, 2.0], [2.0, 0.0]])
  np.testing.assert_array_equal(F.rank_positions(m), [[2, 0], [1, 3]])
  z = jnp.array([[0.0, -0.0, 0.0], [-0.0, 0.5, 0.0]])
  np.testing.assert_array_equal(F.rank_positions(z), [[1, 2, 3], [4, 0, 5]])
  np.testing.assert_array_equal(F.round_counts((np.arange(5), 4), 6), [0, 2, 3, 5, 6])


def test_baselines_blur_mean_and_array(data):
  images, weights, targets, _ = data
  fn = functools.partial(linear_logits, jnp.asarray(weights))
  maps = np.ones((B, 2, 2), np.float32)
  blurred = F.blur(jnp.asarray(images), 1.5)
  ref = scipy.ndimage.gaussian_filter(images, (0, 1.5, 1.5, 0), mode="reflect", truncate=4.0)
  np.testing.assert_allclose(blurred, ref, atol=1e-5)
  # With every pixel deleted the model sees the baseline alone.
  for baseline, seen in (("mean", np.broadcast_to(images.mean((1, 2), keepdims=True),
                                                  images.shape)),
                         (images[::-1].copy(), images[::-1]),
                         (images[0], np.broadcast_to(images[0], images.shape))):
    out = F.deletion(fn, images, maps, targets, steps=2, baseline=baseline, score="logit")
    want = np.asarray(linear_logits(weights, seen))[np.arange(B), targets]
    np.testing.assert_allclose(out["curve"][:, -1], want, rtol=1e-4, atol=1e-4)
  out = F.deletion(fn, images, maps, targets, steps=2, blur_sigma=1.5, score="probability")
  probs = jax.nn.softmax(linear_logits(weights, ref))[np.arange(B), targets]
  np.testing.assert_allclose(out["curve"][:, -1], probs, rtol=1e-4)
  with pytest.raises(ValueError, match="baseline must be"):
    F.deletion(fn, images, maps, targets, baseline="black")
  with pytest.raises(ValueError, match="baseline array"):
    F.deletion(fn, images, maps, targets, baseline=images[:2])


def test_grid_upsampling_matches_jd_metrics_upsample(data):
  images, weights, targets, _ = data
  fn = functools.partial(tanh_logits, jnp.asarray(weights))
  small = np.random.default_rng(2).random((B, 2, 2), np.float32)
  grid = (3.0, 1.0)
  a = F.insertion(fn, images, small, targets, steps=5, grid=grid)
  b = F.insertion(fn, images, jd.metrics.upsample(small, (H, W), grid), targets, steps=5)
  np.testing.assert_allclose(a["curve"], b["curve"], rtol=1e-6)
  assert "grid" in a["settings"]["upsampling"]


def test_batched_equals_per_image_chunks_and_second_call_does_not_recompile(data):
  images, weights, targets, contrib = data
  maps = np.abs(contrib.sum(-1))
  batched = F.deletion(functools.partial(tanh_logits, jnp.asarray(weights)), images, maps,
                       targets, steps=6, chunk=3)
  for b in range(B):
    one = F.deletion(functools.partial(tanh_logits, jnp.asarray(weights)), images[b:b + 1],
                     maps[b:b + 1], targets[b:b + 1], steps=6, chunk=3)
    np.testing.assert_allclose(one["curve"][0], batched["curve"][b], rtol=1e-5, atol=1e-7)
  # Chunking (7 steps: one chunk of 7 instead of 3 chunks of 3) does not change the curve.
  whole = F.deletion(functools.partial(tanh_logits, jnp.asarray(weights)), images, maps,
                     targets, steps=6, chunk=7)
  np.testing.assert_allclose(whole["curve"], batched["curve"], rtol=1e-6)
  # New variables of the same structure and a new partial: nothing compiles again.
  other = functools.partial(tanh_logits, jnp.asarray(weights * 2.0))
  with xla_env.count_compiles() as compiles:
    again = F.deletion(other, images, maps, targets, steps=6, chunk=3)
  assert compiles == []
  assert not np.allclose(again["curve"], batched["curve"])


def test_road_imputes_linear_images_exactly_inside_and_scores_per_image(data):
  images, weights, targets, contrib = data
  maps = np.abs(contrib.sum(-1))
  linear = functools.partial(linear_logits, jnp.asarray(weights))
  ranks = np.asarray(jax.vmap(F.rank_positions)(jnp.asarray(maps)))
  yy, xx = np.mgrid[:H, :W]
  ramp = np.stack([0.3 * yy - 0.2 * xx + 1.0, 0.1 * xx + 0.5 * yy], -1).astype(np.float32)
  hole = np.zeros((H, W), bool)
  hole[1:5, 1:4] = True  # an interior hole: a linear image is harmonic there
  keys = jax.random.split(jax.random.key(3), B)
  noise = np.stack([0.01 * jax.random.normal(jax.random.fold_in(k, 0), (H, W, C))
                    for k in keys])
  # MoRF removes the top-ranked pixels, LeRF the bottom-ranked ones (15 of 30 here); LeRF
  # adds N(0, 0.01^2) noise from fold_in(key_b, fraction index) to the imputed pixels.
  removed = np.concatenate([ranks < 15, ranks >= 15, hole[None]])
  stacked = np.concatenate([images, images, ramp[None]])
  noises = np.concatenate([np.zeros_like(images), noise, np.zeros_like(ramp[None])])
  filled = np.asarray(jax.jit(jax.vmap(F.impute))(stacked, removed, noises))
  np.testing.assert_allclose(filled[-1], ramp, atol=1e-4)
  want = np.asarray(linear_logits(weights, filled[:-1]))[np.arange(2 * B), np.tile(targets, 2)]
  kw = dict(fractions=(0.5,), score="logit")
  morf = F.road(linear, images, maps, targets, order="morf", noise=0.0, **kw)
  lerf = F.road(linear, images, maps, targets, order="lerf", key=keys, **kw)
  got = np.concatenate([morf["curve"][:, 0], lerf["curve"][:, 0]])
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(lerf["fractions"], [0.5])
  # Per-image keys: each image's result depends on its own inputs only.
  perm = np.array([2, 0, 3, 1])
  permuted = F.road(linear, images[perm], maps[perm], targets[perm], order="lerf",
                    key=keys[perm], **kw)
  np.testing.assert_allclose(permuted["curve"], lerf["curve"][perm], rtol=1e-5)
  with pytest.raises(ValueError, match="key"):
    F.road(linear, images, maps, targets)


def test_inputs_are_checked(data):
  images, weights, targets, contrib = data
  fn = functools.partial(linear_logits, jnp.asarray(weights))
  maps = contrib.sum(-1)
  with pytest.raises(ValueError, match="targets must be int"):
    F.deletion(fn, images, maps, 1)
  with pytest.raises(ValueError, match=r"maps must be \[B, h, w\]"):
    F.deletion(fn, images, maps[0], targets)
  with pytest.raises(ValueError, match="targets"):
    F.deletion(fn, images, maps, np.array([0, 1, 2, 3]))  # 3 >= K
  bad = maps.copy()
  bad[1, 0, 0] = np.nan
  with pytest.raises(ValueError, match="maps"):
    F.insertion(fn, images, bad, targets)
