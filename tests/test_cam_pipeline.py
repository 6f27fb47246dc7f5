"""The attribution pipeline end to end: hand-computed maps, closed form of a pooling head,
batched == per-image, finite differences, both checkpoints in one program, errors."""

import functools
import os
import re
import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdrift as jd
from jaxdrift.cam import core
from jaxdrift.models import layers as L
from jaxdrift.models.layers import tap
from tests import xla_env

CAM = ("gradcam", "gradcam++/eq19", "gradcam++/official", "layercam", "hirescam", "xgradcam")


class GapNet(nn.Module):
  """feat = x ** power (tapped as "feat"); logits = Dense(mean_ij feat)."""

  num_classes: int = 2
  power: int = 1

  @nn.compact
  def __call__(self, x, train: bool = False):
    feat = tap(self, "feat", x ** self.power)
    return nn.Dense(self.num_classes, name="predictions")(jnp.mean(feat, axis=(1, 2)))


def gapnet_variables(kernel, bias=None):
  kernel = jnp.asarray(kernel, jnp.float32)
  bias = jnp.zeros(kernel.shape[1]) if bias is None else jnp.asarray(bias, jnp.float32)
  return {"params": {"predictions": {"kernel": kernel, "bias": bias}}}


# A_0 = [1, 3], A_1 = [2, 2] (h=1, w=2, K=2), S = [4, 4]; kernel rows k, columns c.
X = np.stack([[1.0, 3.0], [2.0, 2.0]], axis=-1)[None, None].astype(np.float32)  # [1, 1, 2, 2]
KERNEL = [[1.0, -0.6], [2.0, 0.5]]
# Class 0: g = [0.5, 1] everywhere (W_k0 / hw). Class 1: g = [-0.3, 0.25].
HAND = {
    # class 0: w = g; 0.5 A_0 + A_1.  class 1: -0.3 A_0 + 0.25 A_1 = [0.2, -0.4] -> ReLU
    "gradcam": ([2.5, 3.5], [0.2, 0.0]),
    "hirescam": ([2.5, 3.5], [0.2, 0.0]),
    "xgradcam": ([2.5, 3.5], [0.2, 0.0]),
    # ReLU(g): class 1 keeps only 0.25 A_1
    "layercam": ([2.5, 3.5], [0.5, 0.5]),
    "gradcam++/official": ([2.5, 3.5], [0.5, 0.5]),
    # alpha = 1/(2 + 4 g): class 0 [1/4, 1/6] -> w = 2 alpha g = [1/4, 1/3];
    # class 1: only ch1, alpha = 1/3, w_1 = 2/3 * 0.25 = 1/6 -> A_1 / 6
    "gradcam++/eq19": ([0.25 + 2 / 3, 0.75 + 2 / 3], [1 / 3, 1 / 3]),
}


def test_maps_on_a_pooling_head_match_hand_computed_values():
  images = np.concatenate([X, X])  # the same image, explained for class 0 and class 1
  out = jd.cam.compute_many(GapNet(), gapnet_variables(KERNEL, [0.1, -0.2]), images,
                            np.array([0, 1]), methods=CAM, layer="feat")
  for name, (class0, class1) in HAND.items():
    np.testing.assert_allclose(out[name].maps[:, 0], [class0, class1], rtol=1e-5,
                               err_msg=name)
  # The pre-ReLU map keeps the negative evidence that the ReLU removes.
  np.testing.assert_array_equal(out["gradcam"].all_zero, [False, False])
  np.testing.assert_allclose(out["gradcam"].pre_relu[1, 0], [0.2, -0.4], rtol=1e-5)
  # Logits of the same pass: mean feat = [2, 2]; [2 + 4 + 0.1, -1.2 + 1 - 0.2]
  np.testing.assert_allclose(out["layercam"].logits[0], [6.1, -0.4], rtol=1e-5)


def test_all_zero_maps_are_flagged_and_finite():
  images = np.zeros((2, 3, 3, 2), np.float32)
  out = jd.cam.compute_many(GapNet(), gapnet_variables(KERNEL), images, np.array([0, 1]),
                            methods=CAM, layer="feat")
  for name, res in out.items():
    assert np.all(np.asarray(res.maps) == 0), name
    np.testing.assert_array_equal(res.all_zero, [True, True])
  negative = gapnet_variables(-np.abs(KERNEL))  # no positive gradient for any class
  res = jd.cam.compute(GapNet(), negative, np.abs(X) + 1, np.array([0]), "layercam",
                       layer="feat", with_aux=True)
  assert bool(res.all_zero[0]) and np.all(np.isfinite(np.asarray(res.pre_relu)))


class SmallNet(nn.Module):
  """conv -> Keras BatchNorm -> relu -> strided conv -> relu -> pooling head, all tapped."""

  num_classes: int = 4

  @nn.compact
  def __call__(self, x, train: bool = False):
    y = L.conv(self, x, 6, 3, "conv1", padding="SAME")
    y = L.relu(self, L.batch_norm(self, y, "bn1", train=train, epsilon=1e-3), "relu1")
    y = L.relu(self, L.conv(self, y, 8, 3, "conv2", strides=2, padding="SAME"), "relu2")
    return L.head(self, y, num_classes=self.num_classes, include_top=True, pooling=None)


def randomise_stats(variables, seed):
  keys = iter(jax.random.split(jax.random.key(seed), 10_000))
  stats = jax.tree.map(lambda v: v + 0.3 * jax.random.uniform(next(keys), v.shape),
                       variables["batch_stats"])
  return {**variables, "batch_stats": stats}


@functools.cache
def small(seed=0):
  model = SmallNet()
  variables = model.init(jax.random.key(seed), jnp.zeros((1, 8, 8, 3)), train=False)
  return model, randomise_stats(variables, seed + 100)


@functools.cache
def tiny(arch, num_classes=4, seed=0):
  model = jd.models.create(arch, num_classes=num_classes)
  size = jd.models.default_input_size(arch)
  x = jnp.zeros((1, size, size, 3))
  variables = jax.jit(functools.partial(model.init, train=False))(jax.random.key(seed), x)
  # Randomise BatchNorm statistics (init gives 0/1, which would hide mistakes).
  return model, randomise_stats(variables, seed + 100)


def images(batch, size=8, seed=0):
  return jax.random.uniform(jax.random.key(seed), (batch, size, size, 3), minval=-1, maxval=1)


def test_canonical_layer_of_a_pooling_head_has_the_closed_form_gradient():
  """g_k = W_kc / (h w) at post_relu; official Grad-CAM++ == LayerCAM there.

  The same identities for DenseNet201 and InceptionV3 are checked in test_models_parity.py
  against Keras's activations and Dense kernel.
  """
  model, variables = tiny("resnetv2_tiny")
  x, targets = images(2, 64, seed=1), np.array([1, 3])
  logits, acts, grads = jd.cam.activations_and_gradients(model, variables, x, targets,
                                                          "post_relu")
  h, w = acts["post_relu"].shape[1:3]
  kernel = variables["params"]["predictions"]["kernel"]  # [K, classes]
  want = np.broadcast_to((kernel[:, targets].T / (h * w))[:, None, None, :],
                         grads["post_relu"].shape)
  np.testing.assert_allclose(grads["post_relu"], want, rtol=1e-5, atol=1e-8)

  out = jd.cam.compute_many(model, variables, x, targets, methods=CAM)
  np.testing.assert_allclose(out["layercam"].logits, logits, rtol=1e-5)
  layercam, official = out["layercam"].maps, out["gradcam++/official"].maps
  eq19 = out["gradcam++/eq19"].maps
  assert float(jnp.min(jnp.max(layercam, axis=(1, 2)))) > 0
  np.testing.assert_allclose(official, layercam, rtol=1e-4, atol=1e-6 * float(layercam.max()))
  # eq19 differs from LayerCAM by the channel factors 1 / (2 + S_k g_k); with this random
  # head S_k g_k = mean_ij(A_k) W_kc is tiny, so eq19 is close to (h w / 2) LayerCAM here.
  # The next test shows the difference where S_k g_k is of order 1.
  np.testing.assert_allclose(eq19, layercam * h * w / 2, rtol=0.1, atol=1e-6)
  # Grad-CAM with a pooling head is the CAM of Zhou et al. / (h w): summed over space,
  # sum_k W_kc mean_ij A_k = the logit minus the bias.
  bias = variables["params"]["predictions"]["bias"][targets]
  np.testing.assert_allclose(jnp.sum(out["gradcam"].pre_relu, axis=(1, 2)),
                             logits[np.arange(2), targets] - bias, rtol=1e-4, atol=1e-5)


def ratio_spread(a, b):
  """Relative spread (std / mean) of a / b over the pixels where b > 0."""
  a, b = np.asarray(a), np.asarray(b)
  ratio = a[b > 0] / b[b > 0]
  return ratio.std() / ratio.mean()


def test_eq19_is_not_layercam_up_to_a_constant_where_official_is():
  """At the last feature map of a pooling head, with S_k g_k of order 1."""
  model, variables = small()
  x, targets = images(4, seed=6), np.array([0, 1, 2, 3])
  # S_k g_k = mean_ij(A_k) W_kc: give the head weights of order 1 / mean(A).
  _, acts = jd.models.capture(model, variables, x, ["relu2"])
  kernel = jax.random.normal(jax.random.key(7), (8, 4)) / float(jnp.mean(acts["relu2"]))
  head = {**variables["params"]["predictions"], "kernel": kernel}
  variables = {**variables, "params": {**variables["params"], "predictions": head}}
  out = jd.cam.compute_many(model, variables, x, targets, layer="relu2",
                            methods=("layercam", "gradcam++/official", "gradcam++/eq19"))
  layercam = out["layercam"].maps
  np.testing.assert_allclose(out["gradcam++/official"].maps, layercam, rtol=1e-5, atol=1e-7)
  spreads = [ratio_spread(out["gradcam++/eq19"].maps[i], layercam[i]) for i in range(4)]
  assert min(spreads) > 0.02, spreads


def test_batched_maps_equal_per_image_maps():
  model, variables = tiny("resnetv2_tiny")
  x, targets = images(2, 64, seed=2), np.array([2, 0])
  layer = "conv4_block2_out"  # inside the network: the backward pass crosses conv5
  batched = jd.cam.compute_many(model, variables, x, targets, methods=CAM, layer=layer)
  singles = [jd.cam.compute_many(model, variables, x[i:i + 1], targets[i:i + 1], methods=CAM,
                                 layer=layer) for i in range(2)]
  for name in CAM:
    per_image = np.concatenate([s[name].maps for s in singles])
    assert np.abs(per_image).max() > 0, name
    np.testing.assert_allclose(batched[name].maps, per_image, rtol=1e-4,
                               atol=1e-5 * float(np.abs(per_image).max()), err_msg=name)


def test_pair_equals_each_checkpoint_alone_in_every_checkpoint_mapping():
  model, tl = small(0)
  _, ft = small(1)
  x, targets = images(3, seed=3), np.array([1, 2, 0])
  methods = ("layercam", "gradcam++")
  pair = jd.cam.compute_pair(model, tl, ft, x, targets, methods=methods, layer="relu1")
  for i, variables in enumerate((tl, ft)):
    alone = jd.cam.compute_many(model, variables, x, targets, methods=methods, layer="relu1")
    for name in methods:
      np.testing.assert_allclose(pair[name].maps[i], alone[name].maps, rtol=1e-5, atol=1e-7)
      np.testing.assert_allclose(pair[name].logits[i], alone[name].logits, rtol=1e-5)
  for mode in ("map", "vmap"):
    other = jd.cam.compute_pair(model, tl, ft, x, targets, methods=methods, layer="relu1",
                                checkpoint_map=mode)
    for name in methods:
      np.testing.assert_allclose(other[name].maps, pair[name].maps, rtol=1e-4, atol=1e-6)
  assert not np.allclose(pair["layercam"].maps[0], pair["layercam"].maps[1])


def test_multilayer_layercam_fuses_scaled_maps_by_max():
  model, variables = small()
  x, targets = images(2, seed=4), np.array([0, 1])
  layers = ["relu1", "relu2"]
  res = jd.cam.compute(model, variables, x, targets, "layercam", layer=layers, with_aux=True)
  assert res.maps.shape == (2, 8, 8) and res.layer == tuple(layers)
  assert res.pre_relu["relu2"].shape == (2, 4, 4)
  singles = [jd.cam.compute(model, variables, x, targets, "layercam", layer=l) for l in layers]
  want = jax.vmap(lambda a, b: jd.cam.fuse_layers([a, b], (8, 8)))(*singles)
  np.testing.assert_allclose(res.maps, want, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(jnp.max(res.maps, axis=(1, 2)), np.tanh(2.0), rtol=1e-5)


def test_gradient_at_a_named_layer_equals_central_differences():
  """float64 end to end on a two-conv network, at the inner layer and at the input."""

  class ConvNet(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
      f64 = jnp.float64
      y = nn.Conv(4, (3, 3), dtype=f64, param_dtype=f64, name="conv1")(x)
      y = tap(self, "relu1", nn.relu(y))
      y = tap(self, "conv2", nn.Conv(5, (3, 3), dtype=f64, param_dtype=f64, name="conv2")(y))
      y = nn.relu(y)
      return nn.Dense(3, dtype=f64, param_dtype=f64, name="predictions")(jnp.mean(y, (1, 2)))

  with jax.enable_x64(True):
    model = ConvNet()
    x = jax.random.normal(jax.random.key(0), (2, 6, 6, 2), jnp.float64)
    variables = model.init(jax.random.key(1), x)
    targets = np.array([2, 0])
    _, acts, grads = jd.cam.activations_and_gradients(model, variables, x, targets, "relu1")
    eps = 1e-6
    idx = np.array([[0, 1, 2, 0], [0, 4, 3, 3], [1, 0, 5, 1], [1, 3, 3, 2], [1, 5, 0, 0]])

    def logit(delta):
      out = model.apply({**variables, "perturbations": {"relu1": delta}}, x)
      return out[np.arange(2), targets].sum()

    def central(i):
      e = jnp.zeros(acts["relu1"].shape, jnp.float64).at[tuple(i)].set(eps)
      return (logit(e) - logit(-e)) / (2 * eps)

    fd = jax.jit(jax.vmap(central))(jnp.asarray(idx))
    np.testing.assert_allclose(fd, grads["relu1"][tuple(idx.T)], rtol=1e-6, atol=1e-10)
    assert np.abs(np.asarray(fd)).min() > 0  # the checked entries are not trivially zero


def test_second_call_does_not_recompile():
  model, variables = small()
  x = images(2, seed=5)
  jd.cam.compute(model, variables, x, np.array([0, 1]), "gradcam", layer="relu2")
  requests = jd.cam.checks.requests(("gradcam",), {})
  program = core.program(model, ("relu2",), requests, False, "unroll")
  before = program._cache_size()
  jd.cam.compute(model, variables, x + 0.5, np.array([1, 1]), "gradcam", layer="relu2")
  assert program._cache_size() == before == 1


def test_clear_errors():
  model, variables = GapNet(), gapnet_variables(KERNEL)
  x = np.concatenate([X, X]).astype(np.float32)
  compute = functools.partial(jd.cam.compute, model, variables, x)
  with pytest.raises(ValueError, match="valid names.*feat"):
    compute(np.array([0, 1]), layer="feats")
  with pytest.raises(ValueError, match="shape \\[B\\].*not broadcast"):
    compute(np.int64(0), layer="feat")
  with pytest.raises(ValueError, match="shape \\[B\\]"):
    compute(np.array([0, 1, 1]), layer="feat")
  with pytest.raises(ValueError, match="out of range \\[0, 2\\): \\[2\\]"):
    compute(np.array([0, 2]), layer="feat")
  with pytest.raises(ValueError, match="out of range"):
    compute(np.array([-1, 0]), layer="feat")
  with pytest.raises(ValueError, match="\\[B, K\\] = \\(2, 2\\)"):
    compute(np.ones((2, 3), np.float32), layer="feat")
  with pytest.raises(ValueError, match="NaN"):
    compute(np.array([[1.0, np.nan], [0, 1]]), layer="feat")
  with pytest.raises(ValueError, match="NaN or infinite"):
    jd.cam.compute(model, variables, np.where(x > 2, np.nan, x), np.array([0, 1]), layer="feat")
  with pytest.raises(ValueError, match=re.escape("unknown method 'gradcam+'")):
    compute(np.array([0, 1]), method="gradcam+", layer="feat")
  with pytest.raises(ValueError, match="variant must be one of"):
    compute(np.array([0, 1]), method="gradcam++", layer="feat", variant="paper")
  with pytest.raises(ValueError, match="option\\(s\\) steps not used"):
    compute(np.array([0, 1]), layer="feat", steps=3)
  with pytest.raises(ValueError, match="layercam only"):
    jd.cam.compute_many(model, variables, x, np.array([0, 1]), methods=("gradcam",),
                        layer=["feat", "feat"])
  with pytest.raises(ValueError, match="no default attribution layer"):
    compute(np.array([0, 1]))
  with pytest.raises(ValueError, match="need key"):
    compute(np.array([0, 1]), method="smoothgrad")
  with pytest.raises(ValueError, match="typed key"):
    compute(np.array([0, 1]), method="smoothgrad", key=jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match="needs baselines"):
    compute(np.array([0, 1]), method="expected_gradients", key=jax.random.key(0))
  with pytest.raises(ValueError, match="preprocessed"):
    jd.cam.compute(model, variables, x.astype(np.uint8), np.array([0, 1]), layer="feat")
  with pytest.raises(ValueError, match="same tree structure"):
    jd.cam.compute_pair(model, variables, {**variables, "extra": variables["params"]}, x,
                        np.array([0, 1]), layer="feat")


def test_wrong_layer_of_a_port_lists_its_valid_names():
  model = jd.models.create("resnetv2_tiny", num_classes=4)
  with pytest.raises(ValueError) as err:  # the tiny variant has 2 blocks per stage
    jd.cam.checks.layers(model, "conv5_block3_out", (64, 64, 3))
  assert "conv5_block2_out" in str(err.value) and "post_relu" in str(err.value)
  assert jd.cam.checks.layers(model, None, (64, 64, 3)) == ("post_relu",)


def test_sharded_over_eight_devices_equals_one_device():
  code = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from tests.test_cam_pipeline import images, small
    import jaxdrift as jd
    assert jax.device_count() == 8
    model, v = small()
    one = jax.make_mesh((1,), ("data",), devices=jax.devices()[:1])
    for b in (3, 8):  # 3: padded to 8 and cut back
      x, t = images(b), np.arange(b) % 4
      out = jd.cam.compute_pair(model, v, v, x, t, layer="relu2",
                                methods=("layercam", "gradcam++"))
      ref = jd.cam.compute_pair(model, v, v, x, t, layer="relu2",
                                methods=("layercam", "gradcam++"), mesh=one)
      assert out["layercam"].maps.shape == (2, b, 4, 4)
      if b == 8:
        assert len(out["layercam"].maps.sharding.device_set) == 8
      for m in out:
        np.testing.assert_allclose(out[m].maps, ref[m].maps, rtol=1e-5, atol=1e-7)
    # Variables move to every device once; placed ones are passed on untouched.
    from jaxdrift import distributed
    replicated = distributed.replicated(distributed.data_mesh())
    placed = distributed.place(v, replicated)
    assert all(len(a.sharding.device_set) == 8 for a in jax.tree.leaves(placed))
    assert distributed.place(placed, replicated) is placed
    print("ok")
  """)
  env = {**os.environ, "XLA_FLAGS": xla_env.flags("--xla_force_host_platform_device_count=8"),
         "JAX_PLATFORMS": "cpu"}
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  run = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True,
                       text=True, timeout=300)
  assert run.returncode == 0 and "ok" in run.stdout, run.stderr[-3000:]
