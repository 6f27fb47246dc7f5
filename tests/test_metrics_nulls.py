"""Null baselines: perturbation, re-initialised head (callables), permutation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdrift as jd

M = jd.metrics


def toy_maps_fn(weights):
  """A stand-in for `jd.cam.compute`: images [B, 14, 14, 3] -> maps [B, 7, 7] >= 0."""
  def maps_fn(images):
    pooled = images.reshape(images.shape[0], 7, 2, 7, 2, 3).mean(axis=(2, 4))
    return jax.nn.relu(jnp.einsum("bhwc,c->bhw", pooled, weights))
  return maps_fn


@pytest.fixture(scope="module")
def images():
  return jax.random.normal(jax.random.key(0), (10, 14, 14, 3))


def test_perturbation_null_is_small_and_seeded(images):
  maps_fn = toy_maps_fn(jnp.array([1.0, 0.5, -0.2]))
  out = M.perturbation_null(maps_fn, images, jax.random.key(1), sigma=1e-3)
  assert np.asarray(out["valid"]).all()
  assert np.nanmax(out["displacement"]) < 1e-3
  assert np.nanmin(out["pearson"]) > 0.999
  zero = M.perturbation_null(maps_fn, images, jax.random.key(1), sigma=0.0)
  np.testing.assert_allclose(zero["iou"], 1.0)
  again = M.perturbation_null(maps_fn, images, jax.random.key(1), sigma=1e-3)
  np.testing.assert_array_equal(again["pearson"], out["pearson"])


def test_head_null_accepts_callables(images):
  trained = toy_maps_fn(jnp.array([1.0, 0.5, -0.2]))
  random_head = toy_maps_fn(jnp.array([-0.3, 1.0, 0.4]))
  out = M.head_null(trained, random_head, images)
  ref = M.drift(trained(images), random_head(images))
  np.testing.assert_array_equal(out["iou"], ref["iou"])
  assert np.nanmean(out["pearson"]) < 0.9


def test_shuffled_pairing_has_no_fixed_points_and_respects_groups():
  key = jax.random.key(3)
  index = M.shuffled_pairing(key, 9)
  assert sorted(index.tolist()) == list(range(9)) and (index != np.arange(9)).all()
  np.testing.assert_array_equal(index, M.shuffled_pairing(key, 9))  # seeded
  groups = np.array([0, 1, 0, 1, 0, 1, 2])
  index = M.shuffled_pairing(key, 7, groups)
  assert (groups[index] == groups).all()
  assert (index[:6] != np.arange(6)).all() and index[6] == 6  # alone in its group


def test_permutation_null_pairs_other_images_and_flags_singletons():
  rng = np.random.default_rng(0)
  a = np.maximum(rng.standard_normal((7, 7, 7)), 0).astype(np.float32)
  groups = np.array([0, 1, 0, 1, 0, 1, 2])
  out = M.permutation_null(a, a, jax.random.key(4), groups=groups)
  partner = np.asarray(out["partner"])
  ref = M.drift(a, a[partner])
  np.testing.assert_allclose(out["iou"][:6], ref["iou"][:6])
  assert not out["shuffled"][6] and not out["valid"][6] and np.isnan(out["iou"][6])
  assert np.nanmax(out["iou"]) < 1.0  # never an image against itself


def test_null_report_puts_real_beside_nulls():
  rng = np.random.default_rng(1)
  a = np.maximum(rng.standard_normal((8, 7, 7)), 0).astype(np.float32)
  b = np.maximum(a + 0.3 * rng.standard_normal((8, 7, 7)), 0).astype(np.float32)
  real = M.drift(a, b)
  perm = M.permutation_null(a, b, jax.random.key(0))
  rows = M.null_report(real, {"permutation": perm}, metrics=["iou", "pearson"], n_boot=100)
  assert [(r["metric"], r["source"]) for r in rows] == [
      ("iou", "real"), ("iou", "permutation"), ("pearson", "real"),
      ("pearson", "permutation")]
  real_iou, perm_iou = rows[0], rows[1]
  assert real_iou["mean"] > perm_iou["mean"]
  assert real_iou["n"] == 8 and real_iou["n_invalid"] == 0
