"""Sanity checks (Adebayo et al. 2018): Keras layer order, cascading randomisation, random logit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdrift as jd

F = jd.faithfulness


@pytest.fixture(scope="module")
def resnet():
  model = jd.models.create("resnetv2_tiny", num_classes=5)
  images = jax.random.normal(jax.random.key(1), (8, 128, 128, 3))  # 4 x 4 maps
  # The same jitted init as the randomisation's own (an eager one takes tens of seconds).
  variables = F.init_variables(model, jax.random.key(10), images)
  return model, variables, images, np.arange(8) % 5


def test_layer_order_is_keras_order_with_the_head_last(resnet):
  model, variables, images, _ = resnet
  order = F.layer_order(model, variables, images.shape[1:])
  assert order[:4] == ["conv1_conv", "conv2_block1_preact_bn", "conv2_block1_0_conv",
                       "conv2_block1_1_conv"]
  assert order[-3:] == ["conv5_block2_3_conv", "post_bn", "predictions"]
  assert sorted(order) == sorted(variables["params"])  # every BN also holds params


def test_randomising_every_layer_decorrelates_gradcam_and_none_gives_one(resnet):
  model, variables, images, targets = resnet
  head_down = F.layer_order(model, variables, images.shape[1:])[::-1]
  out = F.parameter_randomization(model, variables, images, targets, "gradcam",
                                  key=jax.random.key(20), layers=[head_down[-1]])
  assert out["layers"] == ["(none)", "conv1_conv"]
  np.testing.assert_allclose(out["spearman"][0], 1.0, atol=1e-6)
  np.testing.assert_allclose(out["ssim"][0], 1.0, atol=1e-5)
  fully = out["spearman"][1]
  assert np.sum(np.isfinite(fully)) >= 5  # all-zero maps (NaN) are counted, not hidden
  assert np.nanmean(fully) < 0.2, fully
  # Re-initialising with the key that made the variables changes nothing, layer by layer.
  same = F.parameter_randomization(model, variables, images, targets, "gradcam",
                                   key=jax.random.key(10), order="independent",
                                   layers=["predictions", "conv3_block1_1_conv"])
  np.testing.assert_allclose(same["spearman"], 1.0, atol=1e-6)
  with pytest.raises(ValueError, match="hold no variables"):
    F.parameter_randomization(model, variables, images, targets, "gradcam",
                              key=jax.random.key(0), layers=["conv1_pad"])


def test_random_logit_picks_another_class_and_equal_heads_give_equal_maps(resnet):
  model, variables, images, targets = resnet
  kernel = variables["params"]["predictions"]["kernel"]
  tied = {**variables, "params": {**variables["params"], "predictions": {
      "kernel": jnp.repeat(kernel[:, :1], 5, axis=1),
      "bias": variables["params"]["predictions"]["bias"]}}}
  out = F.random_logit(model, tied, images, targets, "gradcam", key=jax.random.key(3))
  other = out["random_targets"]
  assert np.all(other != targets) and np.all((other >= 0) & (other < 5))
  valid = np.isfinite(out["spearman"])
  np.testing.assert_allclose(out["spearman"][valid], 1.0, atol=1e-6)
  assert valid.sum() >= 1
