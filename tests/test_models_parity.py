"""Parity of the Flax ports with Keras Applications (Keras 3, JAX backend, float32).

Per architecture, one Keras model (random weights, randomised BatchNorm statistics) is built
and run once per module: logits and named layers at the default input size and a small odd
size in inference mode, and logits plus updated moving statistics in training mode. Both
weight-file layouts are loaded through `load_keras_h5` and compared against those outputs.
"""

import dataclasses
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdrift as jd
from tests import keras_reference

keras = pytest.importorskip("keras")

TOL = 1e-4
NUM_CLASSES = 7
ODD_SIZE = {"densenet201": 97, "resnet50v2": 97, "inceptionv3": 139}
INNER = {
    "resnet50v2": ["conv1_conv", "max_pooling2d_1", "conv2_block1_out", "conv4_block6_2_relu",
                   "conv5_block3_preact_bn", "post_bn"],
    "densenet201": ["conv1_relu", "conv2_block1_concat", "pool3_pool", "conv4_block48_1_relu",
                    "bn"],
    "inceptionv3": ["activation_2", "average_pooling2d", "mixed0", "mixed5", "mixed9_1",
                    "concatenate_1", "conv2d_93"],
}


def rel_err(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.abs(a - b).max() / np.abs(b).max()


@dataclasses.dataclass
class Case:
  arch: str
  files: keras_reference.Reference
  layer_names: list  # every Keras layer with a 4-D output
  names: list  # layers compared: the canonical feature map, then INNER
  inputs: dict  # size -> x
  expected: dict  # size -> [logits, *named layer outputs]
  train_x: np.ndarray
  train_logits: np.ndarray
  train_stats: dict  # (layer, "mean"|"var") -> updated moving statistic


@pytest.fixture(scope="module", params=jd.models.ARCHS)
def case(request, tmp_path_factory):
  arch = request.param
  files = keras_reference.make(arch, tmp_path_factory.mktemp(arch), NUM_CLASSES)
  model = files.model
  names = [jd.models.default_cam_layer(arch)] + INNER[arch]
  probe = keras.Model(model.input, [model.output] + [model.get_layer(n).output for n in names])
  trainable = [v.value for v in model.trainable_variables]
  non_trainable = [v.value for v in model.non_trainable_variables]
  # Keras's eager mode compiles every op on first use (30 s for DenseNet201): jit instead.
  infer = jax.jit(lambda x: probe.stateless_call(trainable, non_trainable, x)[0])
  rng = np.random.default_rng(1)
  inputs, expected = {}, {}
  for size, batch in ((jd.models.default_input_size(arch), 1), (ODD_SIZE[arch], 2)):
    inputs[size] = rng.uniform(-1, 1, (batch, size, size, 3)).astype(np.float32)
    expected[size] = [np.asarray(o) for o in infer(inputs[size])]
  train_x = rng.uniform(-1, 1, (3, ODD_SIZE[arch], ODD_SIZE[arch], 3)).astype(np.float32)
  logits, non_trainable = jax.jit(
      lambda x: model.stateless_call(trainable, non_trainable, x, training=True))(train_x)
  roles = {"moving_mean": "mean", "moving_variance": "var"}
  train_stats = {}
  for var, new in zip(model.non_trainable_variables, non_trainable):
    layer, role = re.match(r"^(.*)/(moving_mean|moving_variance)$", var.path).groups()
    train_stats[layer, roles[role]] = np.asarray(new)
  layer_names = [l.name for l in model.layers
                 if len(l.output.shape) == 4 and not l.name.startswith("input")]
  return Case(arch, files, layer_names, names, inputs, expected, train_x, np.asarray(logits),
              train_stats)


@functools.cache
def flax_capture(arch, names):
  model = jd.models.create(arch, num_classes=NUM_CLASSES)
  return jax.jit(lambda v, x: jd.models.capture(model, v, x, names))


def test_every_keras_layer_is_tappable_by_name(case):
  size = ODD_SIZE[case.arch]
  model = jd.models.create(case.arch, num_classes=NUM_CLASSES)
  ports = jd.models.layer_shapes(model, (1, size, size, 3))
  assert sorted(ports) == sorted(case.layer_names)


@pytest.mark.parametrize("layout", ["keras3_h5", "official_h5"])
def test_inference_parity(case, layout):
  variables = jd.models.load_keras_h5(case.arch, getattr(case.files, layout))
  run = flax_capture(case.arch, tuple(case.names))
  for size, x in case.inputs.items():
    logits, acts = run(variables, x)
    assert rel_err(logits, case.expected[size][0]) <= TOL, (size, "logits")
    for name, want in zip(case.names, case.expected[size][1:]):
      assert acts[name].shape == want.shape, (size, name)
      assert rel_err(acts[name], want) <= TOL, (size, name)


def test_both_layouts_load_the_same_variables(case):
  official = jd.models.load_keras_h5(case.arch, case.files.official_h5)
  keras3 = jd.models.load_keras_h5(case.arch, case.files.keras3_h5)
  jax.tree.map(np.testing.assert_array_equal, official, keras3)


def test_training_mode_batchnorm_parity(case):
  """Batch statistics in the forward pass and the updated moving statistics match Keras."""
  variables = jd.models.load_keras_h5(case.arch, case.files.keras3_h5)
  model = jd.models.create(case.arch, num_classes=NUM_CLASSES)
  logits, state = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(
      variables, case.train_x)
  assert rel_err(logits, case.train_logits) <= TOL
  stats = state["batch_stats"]
  assert len(case.train_stats) == 2 * len(stats)
  for (layer, role), want in case.train_stats.items():
    assert rel_err(stats[layer][role], want) <= TOL, (layer, role)
    # The update really happened (BN statistics were randomised away from the batch's).
    assert not np.allclose(stats[layer][role], variables["batch_stats"][layer][role])


def test_notop_file_loads_into_headless_model(case):
  variables = jd.models.load_keras_h5(case.arch, case.files.notop_h5)
  assert "predictions" not in variables["params"]
  model = jd.models.create(case.arch, include_top=False)
  size = ODD_SIZE[case.arch]
  features = jax.jit(model.apply)(variables, case.inputs[size])
  assert rel_err(features, case.expected[size][1]) <= TOL


def test_pretrained_from_file_keeps_backbone_and_inits_head(case):
  variables = jd.models.pretrained(case.arch, 5, weights=case.files.official_h5,
                                   key=jax.random.key(0), input_size=ODD_SIZE[case.arch])
  loaded = jd.models.load_keras_h5(case.arch, case.files.keras3_h5)
  head = variables["params"]["predictions"]["kernel"]
  assert head.shape[-1] == 5 and float(jnp.abs(head).sum()) > 0
  for tree in ("params", "batch_stats"):
    want = {k: v for k, v in loaded[tree].items() if k != "predictions"}
    got = {k: v for k, v in variables[tree].items() if k != "predictions"}
    jax.tree.map(np.testing.assert_array_equal, got, want)


def test_cam_maps_are_computed_from_activations_that_match_keras(case):
  """Attribution maps at the canonical layer and at an inner layer, against Keras.

  At the canonical layer (a pooling head follows) the gradient has the closed form
  g_k = W_kc / (h w), so the maps can be rebuilt from Keras alone: Keras's activation and
  Keras's Dense kernel. At the inner layer the map is rebuilt from Keras's activation and
  jaxdrift's gradient. The official Grad-CAM++ variant equals LayerCAM at the canonical layer.
  """
  variables = jd.models.load_keras_h5(case.arch, case.files.keras3_h5)
  model = jd.models.create(case.arch, num_classes=NUM_CLASSES)
  size = ODD_SIZE[case.arch]
  x, targets = case.inputs[size], np.array([1, 5])
  keras_acts = dict(zip(case.names, case.expected[size][1:]))
  canonical, inner = case.names[0], case.names[-1]
  methods = ("layercam", "gradcam++/eq19", "gradcam++/official")

  kernel = np.asarray(case.files.model.get_layer("predictions").kernel)
  a = keras_acts[canonical]
  g = np.broadcast_to((kernel[:, targets].T / (a.shape[1] * a.shape[2]))[:, None, None, :],
                      a.shape)
  out = jd.cam.compute_many(model, variables, x, targets, methods=methods)
  assert rel_err(out["layercam"].logits, case.expected[size][0]) <= TOL
  for name in methods:
    want = jax.nn.relu(jax.vmap(jd.cam.WEIGHTINGS[name])(a, g))
    assert rel_err(out[name].maps, want) <= 1e-3, (canonical, name)
  assert rel_err(out["gradcam++/official"].maps, out["layercam"].maps) <= 1e-4

  _, acts, grads = jd.cam.activations_and_gradients(model, variables, x, targets, inner)
  assert rel_err(acts[inner], keras_acts[inner]) <= TOL, inner
  out = jd.cam.compute_many(model, variables, x, targets, methods=methods, layer=inner)
  for name in methods:
    want = jax.nn.relu(jax.vmap(jd.cam.WEIGHTINGS[name])(keras_acts[inner], grads[inner]))
    assert rel_err(out[name].maps, want) <= 1e-3, (inner, name)
