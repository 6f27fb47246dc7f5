"""The ports on their own: sizes, parameter counts, names, batching, dtypes, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdrift as jd
from tests.model_fixtures import random_variables

# Keras's model.count_params() with a 1000-class top (docs/training.md, Backbones and weights), and the reduced variants.
PARAM_COUNTS = {
    "densenet201": 20_242_984, "resnet50v2": 25_613_800, "inceptionv3": 23_851_784,
    "densenet_tiny": 62_680, "resnetv2_tiny": 482_696, "inceptionv3_tiny": 603_412,
}
FEATURES = {"densenet201": (7, 7, 1920), "resnet50v2": (7, 7, 2048),
            "inceptionv3": (8, 8, 2048)}


def abstract_variables(arch, size=None, **kwargs):
  model = jd.models.create(arch, **kwargs)
  size = size or jd.models.default_input_size(arch)
  x = jnp.zeros((1, size, size, 3))
  return model, jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))


@pytest.mark.parametrize("arch", list(PARAM_COUNTS))
def test_parameter_counts_are_keras_counts(arch):
  _, variables = abstract_variables(arch)
  assert set(variables) == {"params", "batch_stats"}
  count = sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(variables))
  assert count == PARAM_COUNTS[arch]


@pytest.mark.parametrize("arch", jd.models.ARCHS)
def test_canonical_feature_map_and_headless_outputs(arch):
  size = jd.models.default_input_size(arch)
  model = jd.models.create(arch, include_top=False)
  shapes = jd.models.layer_shapes(model, (2, size, size, 3))
  assert shapes[jd.models.default_cam_layer(arch)].shape == (2, *FEATURES[arch])
  out = jax.eval_shape(lambda: model.apply(
      model.init(jax.random.key(0), jnp.zeros((2, size, size, 3))), jnp.zeros((2, size, size, 3))))
  assert out.shape == (2, *FEATURES[arch])
  for pooling in ("avg", "max"):
    m = jd.models.create(arch, include_top=False, pooling=pooling)
    x = jnp.zeros((2, size, size, 3))
    assert jax.eval_shape(lambda: m.apply(m.init(jax.random.key(0), x), x)).shape == (
        2, FEATURES[arch][-1])


@pytest.mark.parametrize("arch", ["densenet201", "resnet50v2", "inceptionv3"])
def test_minimum_input_size(arch):
  spec = jd.models.spec(arch)
  model = jd.models.create(arch, num_classes=3)
  shapes = jd.models.layer_shapes(model, (1, spec.min_size, spec.min_size, 3))
  assert all(s.shape[1] >= 1 and s.shape[2] >= 1 for s in shapes.values())


@pytest.fixture(scope="module", params=sorted(jd.models.TINY.values()))
def tiny(request):
  arch = request.param
  model = jd.models.create(arch, num_classes=5)
  size = jd.models.default_input_size(arch)
  x = jax.random.uniform(jax.random.key(1), (4, size, size, 3), minval=-1, maxval=1)
  return arch, model, random_variables(model, x.shape), x


def test_batched_inference_equals_per_image(tiny):
  _, model, variables, x = tiny
  apply = jax.jit(model.apply)
  batched = apply(variables, x)
  single = jnp.concatenate([apply(variables, x[i:i + 1]) for i in range(len(x))])
  np.testing.assert_allclose(batched, single, rtol=1e-5, atol=1e-5)


def test_training_mode_updates_only_batch_stats(tiny):
  _, model, variables, x = tiny
  logits, state = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(
      variables, x)
  assert set(state) == {"batch_stats"}
  changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), state["batch_stats"],
                         variables["batch_stats"])
  assert all(jax.tree.leaves(changed))
  assert not np.allclose(logits, jax.jit(model.apply)(variables, x))


def test_jit_does_not_recompile_for_the_same_shapes(tiny):
  _, model, variables, x = tiny
  traces = []

  @jax.jit
  def forward(v, x):
    traces.append(1)
    return model.apply(v, x)

  forward(variables, x)
  forward(variables, x + 1.0)
  assert len(traces) == 1


def test_capture_returns_named_layers_and_lists_valid_names(tiny):
  arch, model, variables, x = tiny
  layer = jd.models.default_cam_layer(arch)
  logits, acts = jax.jit(lambda v, x: jd.models.capture(model, v, x, [layer]))(variables, x)
  np.testing.assert_allclose(logits, jax.jit(model.apply)(variables, x), rtol=1e-5, atol=1e-6)
  assert acts[layer].ndim == 4 and bool(jnp.all(acts[layer] >= 0))
  with pytest.raises(ValueError, match="valid names.*" + layer):
    jax.eval_shape(lambda v, x: jd.models.capture(model, v, x, ["no_such_layer"]), variables, x)


def test_perturbation_at_a_named_layer_is_its_gradient(tiny):
  """Adding delta at a tapped layer shifts its output: d logit / d delta = d logit / d A."""
  arch, model, variables, x = tiny
  layer = jd.models.default_cam_layer(arch)
  shape = jd.models.layer_shapes(model, x.shape)[layer].shape
  delta = jnp.zeros(shape)

  def logit(delta):
    return model.apply({**variables, "perturbations": {layer: delta}}, x)[:, 0].sum()

  grad = jax.jit(jax.grad(logit))(delta)
  # The head is global average pooling + Dense: d logit_0 / d A = W[:, 0] / (h w).
  w = variables["params"]["predictions"]["kernel"][:, 0]
  np.testing.assert_allclose(grad, jnp.broadcast_to(w / (shape[1] * shape[2]), shape),
                             rtol=1e-5, atol=1e-8)


def test_bfloat16_compute_keeps_float32_params(tiny):
  arch, _, variables, x = tiny
  model = jd.models.create(arch, num_classes=5, dtype=jnp.bfloat16)
  assert all(l.dtype == jnp.float32 for l in jax.tree.leaves(
      jax.eval_shape(model.init, jax.random.key(0), x[:1])))
  out = jax.jit(model.apply)(variables, x)
  ref = jax.jit(jd.models.create(arch, num_classes=5).apply)(variables, x)
  assert out.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(out, np.float32), ref, atol=0.1 * float(
      jnp.abs(ref).max()) + 0.05)


def test_preprocess_modes_and_no_in_place_change():
  x = np.array([[[[0, 127.5, 255]]]], np.float32)
  before = x.copy()
  np.testing.assert_allclose(jd.models.preprocess("resnet50v2", x), [[[[-1, 0, 1]]]])
  np.testing.assert_allclose(jd.models.preprocess("inceptionv3", x), [[[[-1, 0, 1]]]])
  torch = (np.array([0, 0.5, 1]) - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
  np.testing.assert_allclose(jd.models.preprocess("densenet201", x)[0, 0, 0], torch, rtol=1e-6)
  np.testing.assert_array_equal(x, before)
  u8 = np.full((1, 2, 2, 3), 255, np.uint8)
  assert jd.models.preprocess("resnet50v2", u8).dtype == np.float32
  assert isinstance(jd.models.preprocess("resnet50v2", jnp.asarray(u8)), jax.Array)
  with pytest.raises(ValueError, match="3 channels"):
    jd.models.preprocess("resnet50v2", np.zeros((1, 2, 2, 1)))


def test_defaults_and_unknown_names():
  assert jd.models.ARCHS == ("densenet201", "resnet50v2", "inceptionv3")
  assert [jd.models.default_input_size(a) for a in jd.models.ARCHS] == [224, 224, 299]
  assert [jd.models.default_cam_layer(a) for a in jd.models.ARCHS] == [
      "relu", "post_relu", "mixed10"]
  with pytest.raises(ValueError, match="unknown architecture 'resnet50'.*resnet50v2"):
    jd.models.create("resnet50")
  with pytest.raises(ValueError, match="pooling"):
    jd.models.create("resnet50v2", include_top=False, pooling="mean")


@pytest.mark.parametrize("arch,size", [("resnetv2_tiny", 256), ("densenet_tiny", 256),
                                       ("inceptionv3_tiny", 736)])
def test_cam_grid_is_the_centre_of_the_receptive_field(arch, size):
  """Cell i of the canonical map reads input rows [c_i - R, c_i + R] (clipped to the
  image) with c_i = offset + stride * i: the first cell's support ends at c_0 + R and the
  last cell's starts at c_last - R, so their sum is c_0 + c_last whatever R is."""
  model = jd.models.create(arch, include_top=False)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, size, size, 3)), jnp.float32)
  variables = random_variables(model, x.shape)
  h = jax.eval_shape(lambda x: model.apply(variables, x), x).shape[1]
  # d(first cell, last cell) / d input: rows of the input each cell depends on, two images.
  corners = lambda x: (lambda y: jnp.stack([y[:, 0, 0].sum(), y[:, -1, -1].sum()]))(
      model.apply(variables, x))
  g = np.abs(np.asarray(jax.jit(jax.jacrev(corners))(x))).sum((1, 3, 4))  # eager: 4x slower
  first, last = np.flatnonzero(g[0]), np.flatnonzero(g[1])
  assert first[-1] < size - 1 and last[0] > 0, "receptive field wider than the test image"
  stride, offset = jd.models.cam_grid(arch, size)
  assert first[-1] + last[0] == 2 * offset + stride * (h - 1)
  # Placed on an image of another resolution, the grid scales with pixel centres.
  assert jd.models.cam_grid(arch, size, 2 * size) == (2 * stride, 2 * offset + 0.5)
