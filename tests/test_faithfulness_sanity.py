"""Sanity checks (Adebayo et al. 2018) on the three tiny ports at their canonical layers:
Keras layer order, full re-initialisation, Grad-CAM decorrelates, why LayerCAM and
Grad-CAM++ do not on untrained networks (docs/faithfulness.md), random logit."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdrift as jd
from jaxdrift.faithfulness import sanity

F = jd.faithfulness
# Input sizes that give 4 x 4 canonical maps; 32 noise images, one class each, so that the
# Grad-CAM mean is over 32 independent head columns (docs/faithfulness.md, "Sanity checks").
SIZES = {"resnetv2_tiny": 128, "densenet_tiny": 128, "inceptionv3_tiny": 171}
BATCH = CLASSES = 32
PAIRS = ((10, 11), (12, 13))  # (key of the checkpoint under test, key of the re-initialisation)


@pytest.fixture(scope="module")
def port():
  """arch -> (model, images, targets, {seed: variables}), built once per arch. Variables
  come from the randomisation's own jitted init (an eager one takes tens of seconds)."""

  @functools.lru_cache(maxsize=None)
  def build(arch):
    size = SIZES[arch]
    model = jd.models.create(arch, num_classes=CLASSES)
    images = jax.random.normal(jax.random.key(1), (BATCH, size, size, 3))
    seeds = sorted({s for pair in PAIRS for s in pair})
    variables = {s: F.init_variables(model, jax.random.key(s), images) for s in seeds}
    return model, images, np.arange(BATCH) % CLASSES, variables

  return build


def spearman_rows(a, b):
  """Per-image Spearman of maps [B, h, w] (NaN where a map is constant)."""
  return np.asarray(jax.vmap(jd.metrics.spearman)(jnp.asarray(a), jnp.asarray(b)))


def test_layer_order_is_keras_order_with_the_head_last(port):
  model, images, _, variables = port("resnetv2_tiny")
  variables = variables[PAIRS[0][0]]
  order = F.layer_order(model, variables, images.shape[1:])
  assert order[:4] == ["conv1_conv", "conv2_block1_preact_bn", "conv2_block1_0_conv",
                       "conv2_block1_1_conv"]
  assert order[-3:] == ["conv5_block2_3_conv", "post_bn", "predictions"]
  assert sorted(order) == sorted(variables["params"])  # every BN also holds params


@pytest.mark.parametrize("arch", list(SIZES))
def test_full_randomisation_replaces_every_variable(port, arch):
  """Kernels, biases, BatchNorm scale and bias AND moving statistics, and the head."""
  model, images, _, variables = port(arch)
  original, fresh = variables[PAIRS[0][0]], variables[PAIRS[0][1]]
  order = F.layer_order(model, original, images.shape[1:])
  assert order[-1] == "predictions"
  assert set(original["batch_stats"]) <= set(order) and set(original["params"]) <= set(order)
  full = sanity.reinitialize(original, fresh, order)
  assert jax.tree.structure(full) == jax.tree.structure(fresh)
  assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), full, fresh))
  # Every randomly drawn leaf (the kernels) changed; the constant ones (zero biases, BN
  # scale 1 and statistics 0 / 1) are the initialiser's values in both.
  kernels = {k: v["kernel"] for k, v in original["params"].items() if "kernel" in v}
  assert len(kernels) > len(order) // 3
  assert all(not jnp.array_equal(v, fresh["params"][k]["kernel"]) for k, v in kernels.items())
  # Half of the layers: exactly those are replaced, in both collections.
  half = sanity.reinitialize(original, fresh, order[::2])
  for collection in ("params", "batch_stats"):
    for name, leaves in half[collection].items():
      assert leaves is (fresh if name in order[::2] else original)[collection][name], name


@pytest.mark.parametrize("arch", list(SIZES))
def test_randomising_every_layer_decorrelates_gradcam_and_none_gives_one(port, arch):
  model, images, targets, variables = port(arch)
  fully, n_defined = [], 0
  for seed, reinit_seed in PAIRS:
    order = F.layer_order(model, variables[seed], images.shape[1:])
    out = F.parameter_randomization(model, variables[seed], images, targets, "gradcam",
                                    key=jax.random.key(reinit_seed), layers=[order[0]])
    assert out["layers"] == ["(none)", order[0]]
    none = out["spearman"][0]
    n_defined += np.isfinite(none).sum()  # an all-zero original map has no ranking (NaN)
    np.testing.assert_allclose(none[np.isfinite(none)], 1.0, atol=1e-6)
    np.testing.assert_allclose(out["ssim"][0][np.isfinite(out["ssim"][0])], 1.0, atol=1e-5)
    fully.append(out["spearman"][1])
  fully = np.concatenate(fully)
  assert n_defined >= BATCH  # half of the maps or more
  assert np.isfinite(fully).sum() >= BATCH // 2  # NaNs are counted, not hidden
  assert np.nanmean(fully) < 0.2, (arch, np.nanmean(fully))
  # The last row IS the freshly initialised model: its maps, compared directly.
  direct = F.similarity(out["original"], jd.cam.compute(model, variables[PAIRS[-1][1]],
                                                        images, targets, "gradcam"))
  np.testing.assert_array_equal(np.asarray(direct["spearman"]), out["spearman"][1])


@pytest.mark.parametrize("arch", list(SIZES))
def test_layercam_and_gradcampp_follow_the_activation_energy(port, arch):
  """At a GAP head the gradient is constant over space, so LayerCAM and Grad-CAM++ (eq19)
  are NON-NEGATIVE combinations of the post-ReLU channels and follow sum_k A_k, whose
  pattern on noise images is set by the zero padding and shared by random networks;
  Grad-CAM's signed weights do not follow it. Why they fail the randomisation check on
  untrained networks (docs/faithfulness.md)."""
  model, images, targets, variables = port(arch)
  layer = jd.models.default_cam_layer(arch)
  _, acts, grads = jd.cam.activations_and_gradients(model, variables[PAIRS[0][0]], images,
                                                    targets, layer)
  acts, grads = acts[layer], grads[layer]
  assert acts.shape[1:3] == (4, 4)
  np.testing.assert_allclose(grads, jnp.broadcast_to(grads[:, :1, :1], grads.shape),
                             rtol=1e-5, atol=1e-8)  # global average pooling head
  energy = jnp.sum(acts, axis=-1)
  follows = {}
  for name, weighting in (("gradcam", jd.cam.gradcam), ("layercam", jd.cam.layercam),
                          ("gradcam++", jd.cam.gradcam_pp_eq19)):
    maps = jax.nn.relu(jax.vmap(weighting)(acts, grads))
    follows[name] = np.nanmean(spearman_rows(maps, energy))
  assert follows["layercam"] > 0.5 and follows["gradcam++"] > 0.5, follows
  assert follows["gradcam"] < follows["layercam"] - 0.3, follows


def test_random_logit_picks_another_class_and_equal_heads_give_equal_maps(port):
  model, images, targets, variables = port("resnetv2_tiny")
  variables = variables[PAIRS[0][0]]
  kernel = variables["params"]["predictions"]["kernel"]
  tied = {**variables, "params": {**variables["params"], "predictions": {
      "kernel": jnp.repeat(kernel[:, :1], CLASSES, axis=1),
      "bias": variables["params"]["predictions"]["bias"]}}}
  out = F.random_logit(model, tied, images, targets, "gradcam", key=jax.random.key(3))
  other = out["random_targets"]
  assert np.all(other != targets) and np.all((other >= 0) & (other < CLASSES))
  valid = np.isfinite(out["spearman"])
  np.testing.assert_allclose(out["spearman"][valid], 1.0, atol=1e-6)
  assert valid.sum() >= 1


def test_the_checkpoints_own_key_changes_nothing_and_unknown_layers_raise(port):
  model, images, targets, variables = port("resnetv2_tiny")
  seed = PAIRS[0][0]
  same = F.parameter_randomization(model, variables[seed], images, targets, "gradcam",
                                   key=jax.random.key(seed), order="independent",
                                   layers=["predictions", "conv3_block1_1_conv"])
  assert same["layers"] == ["(none)", "predictions", "conv3_block1_1_conv"]
  finite = np.isfinite(same["spearman"])
  assert finite[0].sum() >= BATCH // 4
  np.testing.assert_allclose(same["spearman"][finite], 1.0, atol=1e-6)
  with pytest.raises(ValueError, match="hold no variables"):
    F.parameter_randomization(model, variables[seed], images, targets, "gradcam",
                              key=jax.random.key(0), layers=["conv1_pad"])
