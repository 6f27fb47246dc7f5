"""Integrated gradients, SmoothGrad and expected gradients: hand values, completeness, keys."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdrift as jd
from tests.test_cam_pipeline import GapNet, gapnet_variables, images, small

# GapNet: logit_c = sum_k W_kc mean_ij(x_ijk ** power) + b_c, on 2x2 images with 2 channels.
KERNEL = np.array([[1.0, -0.5], [2.0, 0.25]], np.float32)
X = np.array([[[[1.0, -2.0], [0.5, 1.0]], [[3.0, 0.0], [-1.0, 2.0]]]], np.float32)


@pytest.mark.parametrize("rule", ["trapezoid", "midpoint", "gausslegendre"])
def test_integrated_gradients_of_a_quadratic_by_hand(rule):
  """d logit / dx = 2 W x / (h w) along the path t x: IG = W x^2 / (h w) exactly."""
  res = jd.cam.compute(GapNet(power=2), gapnet_variables(KERNEL), X, np.array([0]),
                       "integrated_gradients", steps=4, rule=rule, with_aux=True)
  want = KERNEL[:, 0] * X ** 2 / 4
  np.testing.assert_allclose(res.attributions, want, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(res.pre_relu, want.sum(-1), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(res.maps, np.maximum(want.sum(-1), 0), rtol=1e-5, atol=1e-7)


def test_smoothgrad_and_expected_gradients_of_a_linear_model_by_hand():
  """A linear logit has the constant gradient W / (h w), whatever the noise or baseline."""
  variables, targets = gapnet_variables(KERNEL), np.array([1])
  grad = np.broadcast_to(KERNEL[:, 1] / 4, X.shape)
  sg = jd.cam.compute(GapNet(), variables, X, targets, "smoothgrad", key=jax.random.key(0),
                      n_samples=5, batch_points=2, with_aux=True)
  np.testing.assert_allclose(sg.attributions, grad, rtol=1e-5)
  np.testing.assert_allclose(sg.maps, np.abs(grad).sum(-1), rtol=1e-5)  # default "abs"
  base = np.full((1,) + X.shape[1:], 0.5, np.float32)
  eg = jd.cam.compute(GapNet(), variables, X, targets, "expected_gradients",
                      key=jax.random.key(1), baselines=base, n_samples=3, with_aux=True)
  np.testing.assert_allclose(eg.attributions, (X - 0.5) * grad, rtol=1e-5, atol=1e-7)


def test_integrated_gradients_completeness_within_one_percent_at_64_steps():
  model, variables = small()
  x, targets = 3 * images(3, seed=11), np.array([0, 2, 3])
  baseline = jnp.zeros_like(x)
  res = jd.cam.compute(model, variables, x, targets, "integrated_gradients", steps=64,
                       baseline=baseline, batch_points=16, with_aux=True)
  logits_x = model.apply(variables, x)
  logits_b = model.apply(variables, baseline)
  rows = np.arange(3)
  delta = np.asarray(logits_x[rows, targets] - logits_b[rows, targets])
  total = np.asarray(jnp.sum(res.attributions, axis=(1, 2, 3)))
  assert np.all(np.abs(delta) > 0.1)
  assert np.all(np.abs(total - delta) <= 0.01 * np.abs(delta)), (total, delta)
  np.testing.assert_allclose(res.logits, logits_x, rtol=1e-5)


def test_random_methods_batched_equal_per_image_with_per_image_keys():
  model, variables = small()
  x, targets = images(2, seed=12), np.array([1, 3])
  keys = jax.random.split(jax.random.key(5), 2)
  bases = images(3, seed=13)
  opts = {"smoothgrad": {"n_samples": 3},
          "expected_gradients": {"n_samples": 3, "baselines": bases}}
  for method, kw in opts.items():
    batched = jd.cam.compute(model, variables, x, targets, method, key=keys, **kw)
    singles = [jd.cam.compute(model, variables, x[i:i + 1], targets[i:i + 1], method,
                              key=keys[i:i + 1], **kw) for i in range(2)]
    np.testing.assert_allclose(batched, np.concatenate(singles), rtol=1e-4, atol=1e-6,
                               err_msg=method)
    again = jd.cam.compute(model, variables, x, targets, method, key=keys, **kw)
    np.testing.assert_array_equal(again, batched)
    other = jd.cam.compute(model, variables, x, targets, method,
                           key=jax.random.split(jax.random.key(6), 2), **kw)
    assert not np.allclose(other, batched), method


def test_input_methods_in_a_pair_share_their_random_draws():
  model, tl = small(0)
  x, targets = images(2, seed=14), np.array([0, 1])
  out = jd.cam.compute_pair(model, tl, tl, x, targets,
                            methods=("layercam", "smoothgrad", "integrated_gradients"),
                            layer="relu2", key=jax.random.key(3), n_samples=2, steps=4)
  for name in ("smoothgrad", "integrated_gradients"):  # identical checkpoints: same maps
    assert out[name].maps.shape == (2, 2, 8, 8) and out[name].layer == "input"
    np.testing.assert_array_equal(out[name].maps[0], out[name].maps[1])
  with pytest.raises(ValueError, match="only used by CAM methods"):
    jd.cam.compute(model, tl, x, targets, "integrated_gradients", layer="relu2")
  with pytest.raises(ValueError, match="does not broadcast"):
    jd.cam.compute(model, tl, x, targets, "integrated_gradients", baseline=np.zeros((3, 3)))
