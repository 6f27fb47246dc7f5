"""Ablation-CAM's rank-one suffix (jaxdrift/cam/suffix.py): the same maps and channel weights
as the plain suffix where a port declares its readout, the declared convolutions gone from the
compiled program, every declaration of the ports checked, wrong declarations raising, and
the cost counting the rank-one update, eight devices equal to one."""

import functools
import os
import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdrift as jd
from jaxdrift.cam import checks, gradfree, suffix
from jaxdrift.cam.cost import suffix_fraction
from jaxdrift.models import ChannelReadout
from jaxdrift.models import layers as L
from jaxdrift.models.densenet import DenseNet
from jaxdrift.models.resnet_v2 import ResNetV2
from tests import xla_env
from tests.model_fixtures import random_variables

RESNET_TINY = dict(stack_sizes=(2, 2, 2, 2), filters=(8, 16, 32, 64), stem_filters=8,
                   num_classes=4)
DENSENET_TINY = dict(blocks=(2, 2, 2, 2), growth_rate=8, stem_filters=16, num_classes=4)
SHAPE = (64, 64, 3)


class PlainResNetV2(ResNetV2):
  """resnetv2_tiny without declarations: Ablation-CAM runs the plain suffix."""

  def channel_readouts(self):
    return {}


class PlainDenseNet(DenseNet):
  def channel_readouts(self):
    return {}


def declaring(base, layer, readout):
  """A subclass of `base` that declares only `readout` for `layer`."""
  return type("Declaring", (base,), {"channel_readouts": lambda self: {layer: readout}})


@functools.cache
def resnet():
  model = ResNetV2(**RESNET_TINY)
  variables = random_variables(model, (1,) + SHAPE, seed=3)
  x = np.asarray(jax.random.uniform(jax.random.key(7), (2,) + SHAPE, minval=-1, maxval=1))
  return model, variables, x, np.array([2, 0])


def both_suffixes(model, variables, x, targets, layer):
  """(pre-ReLU map, channel weights) of Ablation-CAM with the plain and the rank-one suffix."""
  readout = model.channel_readouts()[layer]

  @jax.jit
  def run(variables, x, weights):
    logits, state = model.apply(variables, x, train=False, mutable=[L.TAPS])
    taps = state[L.TAPS]["layers"]
    out = []
    for fn in (suffix.plain_suffix(model, variables, x, layer, taps),
               suffix.rank1_suffix(model, variables, x, layer, taps, readout)):
      pre, channel_weights, _ = gradfree.ablationcam(fn, taps[layer], logits, weights, chunk=32)
      out.append((pre, channel_weights))
    return out

  return run(variables, x, checks.target_weights(targets, x.shape[0], 4))


@pytest.mark.parametrize("layer", ["conv3_block2_out", "conv4_block1_out"])
def test_rank1_suffix_gives_the_plain_suffix_maps_and_weights(layer):
  # conv3_block2_out feeds conv4_block1's shortcut conv and its first conv; conv4_block1_out
  # feeds conv4_block2_1_conv and, unchanged, the stride-2 shortcut (a max pool).
  model, variables, x, targets = resnet()
  (plain_pre, plain_w), (pre, w) = both_suffixes(model, variables, x, targets, layer)
  assert np.abs(plain_w).max() > 0 and np.abs(plain_pre).max() > 0
  np.testing.assert_allclose(w, plain_w, rtol=1e-5, atol=1e-5 * np.abs(plain_w).max())
  np.testing.assert_allclose(pre, plain_pre, rtol=1e-5, atol=1e-5 * np.abs(plain_pre).max())


def test_compute_drops_the_declared_convolutions():
  """Through jd.cam.compute: same maps as the plain suffix, and the compiled program holds
  one convolution fewer per declared one (conv4_block1_0_conv and _1_conv)."""
  model, variables, x, targets = resnet()
  layer = "conv3_block2_out"
  counts, maps = [], []
  for m in (model, PlainResNetV2(**RESNET_TINY)):
    maps.append(jd.cam.compute(m, variables, x, targets, "ablationcam", layer=layer, chunk=16))
    requests = checks.requests(("ablationcam",), {"chunk": 16})
    compiled = jd.cam.program(m, (layer,), requests, False, "unroll").lower(
        variables, jnp.asarray(x), checks.target_weights(targets, 2, 4),
        {"ablationcam": {}}).compile()
    counts.append(compiled.as_text().count(" convolution("))
  assert counts[1] - counts[0] == 2, counts
  np.testing.assert_allclose(maps[0], maps[1], rtol=1e-5, atol=1e-5 * float(maps[1].max()))


def test_densenet_rank1_suffix_equals_plain():
  model = DenseNet(**DENSENET_TINY)
  variables = random_variables(model, (1,) + SHAPE, seed=5)
  x = np.asarray(jax.random.uniform(jax.random.key(8), (2,) + SHAPE, minval=-1, maxval=1))
  targets = np.array([1, 3])
  for layer in ("conv3_block1_concat", "pool3_pool"):  # a conv block's and a transition's input
    want = jd.cam.compute(PlainDenseNet(**DENSENET_TINY), variables, x, targets, "ablationcam",
                          layer=layer, chunk=16, with_aux=True).pre_relu
    got = jd.cam.compute(model, variables, x, targets, "ablationcam", layer=layer, chunk=16,
                         with_aux=True).pre_relu
    assert np.abs(want).max() > 0, layer
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max(),
                               err_msg=layer)


# ---------------------------------------------------------------------------- declarations


def test_every_declaration_of_the_ports_holds():
  for arch in ("resnetv2_tiny", "densenet_tiny"):
    model = jd.models.create(arch, num_classes=4)
    for layer, readout in model.channel_readouts().items():
      assert suffix.checked_readout(model, layer, SHAPE) == readout, (arch, layer)
  declared = set(jd.models.create("resnetv2_tiny").channel_readouts())
  assert declared == {"pool1_pool"} | {f"conv{s}_block{b}_out" for s in (2, 3, 4, 5)
                                       for b in (1, 2)} - {"conv5_block2_out"}
  # Undeclared layers and models without declarations run the plain suffix.
  assert suffix.checked_readout(jd.models.create("resnetv2_tiny"), "post_relu", SHAPE) is None
  assert suffix.checked_readout(PlainResNetV2(**RESNET_TINY), "conv4_block1_out", SHAPE) is None


class Toy(nn.Module):
  """feat (3x3 conv) -> mix (`kind`) -> head_conv (1x1) -> tanh -> mean -> Dense; declares
  that mix is per channel and head_conv a 1x1 convolution of it."""

  kind: str = "affine_relu"

  def channel_readouts(self):
    return {"feat": ChannelReadout("mix", ("head_conv",))}

  @nn.compact
  def __call__(self, x, train: bool = False):
    a = L.conv(self, x, 6, 3, "feat")
    scale = self.param("scale", nn.initializers.ones, (6,))
    if self.kind == "roll":  # moves values across positions
      mix = jnp.roll(a, 1, axis=1)
    elif self.kind == "channel_mean":  # mixes channels
      mix = a - jnp.mean(a, axis=-1, keepdims=True)
    else:  # per channel, as declared
      mix = nn.relu(a * scale - 0.2)
    mix = L.tap(self, "mix", mix)
    head = nn.Conv(5, (1, 1), name="head_conv")(mix)
    if self.kind == "scaled":
      head = 2.0 * head  # a 1x1 convolution, but not with the declared kernel
    y = jnp.tanh(L.tap(self, "head_conv", head))
    return nn.Dense(3, name="predictions")(jnp.mean(y, axis=(1, 2)))


def test_toy_readout_holds_and_matches_the_plain_suffix():
  model = Toy()
  x = np.asarray(jax.random.normal(jax.random.key(1), (2, 8, 8, 3)))
  variables = random_variables(model, (1, 8, 8, 3), seed=2)
  (plain_pre, plain_w), (pre, w) = both_suffixes_toy(model, variables, x)
  assert np.abs(plain_w).max() > 0
  np.testing.assert_allclose(w, plain_w, rtol=1e-5, atol=1e-6 * np.abs(plain_w).max())
  np.testing.assert_allclose(pre, plain_pre, rtol=1e-5, atol=1e-6 * np.abs(plain_pre).max())


def both_suffixes_toy(model, variables, x):
  logits, state = model.apply(variables, x, mutable=[L.TAPS])
  taps = state[L.TAPS]["layers"]
  weights = jax.nn.one_hot(jnp.array([0, 2]), 3)
  readout = suffix.checked_readout(model, "feat", x.shape[1:])
  return [gradfree.ablationcam(fn, taps["feat"], logits, weights, chunk=4)[:2]
          for fn in (suffix.plain_suffix(model, variables, x, "feat", taps),
                     suffix.rank1_suffix(model, variables, x, "feat", taps, readout))]


@pytest.mark.parametrize("kind,message", [
    ("roll", "'mix' is not computed from the layer's output element by element"),
    ("channel_mean", "'mix' is not computed from the layer's output element by element"),
    ("scaled", "'head_conv' is not a 1x1, stride-1 convolution of 'mix' with the kernel")],
    ids=["roll", "channel_mean", "scaled"])
def test_a_declaration_that_does_not_hold_raises(kind, message):
  model = Toy(kind=kind)
  x = np.zeros((1, 8, 8, 3), np.float32)
  variables = random_variables(model, x.shape)
  with pytest.raises(ValueError, match=message):
    jd.cam.compute(model, variables, x, np.array([0]), "ablationcam", layer="feat")


@pytest.mark.parametrize("readout,message", [
    (ChannelReadout("conv2_block2_preact_bn", ("conv2_block2_1_conv",)),  # the ReLU is left out
     "'conv2_block2_1_conv' is not a 1x1, stride-1 convolution of 'conv2_block2_preact_bn'"),
    (ChannelReadout("conv2_block1_out", ("conv2_block2_1_conv",)),  # BN and ReLU left out
     "'conv2_block2_1_conv' is not a 1x1, stride-1 convolution of 'conv2_block1_out'"),
    (ChannelReadout("conv2_block2_preact_relu", ("conv2_block2_2_conv",)),  # a 3x3 conv
     r"convolution 'conv2_block2_2_conv' \(kernel \(3, 3, 8, 8\)"),
    (ChannelReadout("conv2_block2_preact_relu", ("conv2_block2_1_cnv",)),
     "the model has no layer 'conv2_block2_1_cnv'")],
    ids=["bn_without_relu", "identity", "3x3", "misspelt"])
def test_wrong_resnet_declarations_raise(readout, message):
  model, variables, x, targets = resnet()
  wrong = declaring(ResNetV2, "conv2_block1_out", readout)(**RESNET_TINY)
  with pytest.raises(ValueError, match=message):
    jd.cam.compute(wrong, variables, x, targets, "ablationcam", layer="conv2_block1_out")


def test_cost_counts_the_rank1_update():
  """Per image after conv4_block1_out (4 x 4 x 128 at 64 px): conv4_block2_1_conv (128 -> 32
  channels, 16 x 128 x 32 MACs) becomes a rank-one update of 16 x 32 multiply-adds."""
  model = jd.models.create("resnetv2_tiny", num_classes=4)
  plain = suffix_fraction(model, "conv4_block1_out", SHAPE)
  rank1 = jd.cam.cost(model, "ablationcam", "conv4_block1_out", image_shape=SHAPE)
  one_conv = (suffix_fraction(model, "conv4_block2_preact_relu", SHAPE)
              - suffix_fraction(model, "conv4_block2_1_conv", SHAPE))  # its share of the MACs
  assert (plain - rank1["partial_fraction"]) / one_conv == pytest.approx(1 - 1 / 128)
  assert rank1["forward_equivalents"] == pytest.approx(1 + 128 * rank1["partial_fraction"])


EIGHT_DEVICES = textwrap.dedent("""
  import jax, numpy as np
  import jaxdrift as jd
  assert jax.device_count() == 8
  model = jd.models.create("resnetv2_tiny", num_classes=4)
  from tests.model_fixtures import random_variables
  v = random_variables(model, (1, 64, 64, 3), seed=3)
  x = np.asarray(jax.random.uniform(jax.random.key(7), (3, 64, 64, 3), minval=-1, maxval=1))
  t = np.array([0, 3, 1])  # 3 images: padded to 8 and cut back
  one = jax.make_mesh((1,), ("data",), devices=jax.devices()[:1])
  kw = dict(layer="conv3_block2_out", chunk=16, with_aux=True)
  out = jd.cam.compute(model, v, x, t, "ablationcam", **kw).pre_relu
  ref = jd.cam.compute(model, v, x, t, "ablationcam", mesh=one, **kw).pre_relu
  assert out.shape == (3, 4, 4) and np.abs(np.asarray(ref)).max() > 0
  # Per-device batches of other sizes round differently (the plain suffix too: 1.5e-5 of
  # the largest value here); y - y_k cancels, so compare at 1e-4.
  np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5 * np.abs(np.asarray(ref)).max())
  print("ok")
""")


def test_rank1_suffix_on_eight_devices_equals_one_device():
  env = {**os.environ, "XLA_FLAGS": xla_env.flags("--xla_force_host_platform_device_count=8"),
         "JAX_PLATFORMS": "cpu"}
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  run = subprocess.run([sys.executable, "-c", EIGHT_DEVICES], env=env, cwd=root,
                       capture_output=True, text=True, timeout=600)
  assert run.returncode == 0 and "ok" in run.stdout, run.stderr[-3000:]
