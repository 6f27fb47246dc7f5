"""Gradient-free methods (Score-CAM, Ablation-CAM, occlusion, RISE): known answers by hand and
from an independent numpy computation on a tiny port, batched == per-image, no recompiles,
costs, errors. The 8-device run is in test_cam_gradfree_sharding.py."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage

import jaxdrift as jd
from jaxdrift.cam import rise as rise_lib
from tests import xla_env
from tests.model_fixtures import random_variables
from tests.test_cam_pipeline import KERNEL, X, GapNet, gapnet_variables, images, small

# ---------------------------------------------------------------------------- hand-computed


def test_scorecam_and_ablationcam_on_a_pooling_head_match_hand_values():
  # feat = x: A_0 = [1, 3], A_1 = [2, 2] (constant); logits = KERNEL^T mean(feat) + bias.
  bias = np.array([0.1, -0.2])
  out = jd.cam.compute_many(GapNet(), gapnet_variables(KERNEL, bias), X, np.array([0]),
                            methods=("scorecam", "ablationcam"), layer="feat")
  # Score-CAM: mask_0 = ([1, 3] - 1) / (2 + 1e-8) ~ [0, 1] -> input [[0, 0], [3, 2]], mean
  # [1.5, 1] -> logit 1.5 + 2 + 0.1 = 3.6; mask_1 of the constant channel is all zero (the
  # documented normalisation) -> input 0 -> logit = bias 0.1.
  w = np.exp([3.6, 0.1]) / np.exp([3.6, 0.1]).sum()
  np.testing.assert_allclose(out["scorecam"].maps[0, 0], w[0] * np.array([1, 3]) + w[1] * 2,
                             rtol=1e-5)
  assert out["scorecam"].method == "scorecam/logit"
  # Ablation-CAM: y = 2 + 4 + 0.1 = 6.1; y - y_k = W_k0 mean(A_k) = [2, 4].
  np.testing.assert_allclose(out["ablationcam"].maps[0, 0],
                             (2 * np.array([1, 3]) + 4 * np.array([2, 2])) / 6.1, rtol=1e-5)
  # A zero target logit gives zero weights (never inf or NaN), flagged as an all-zero map.
  zero = gapnet_variables(KERNEL, [-6.0, 0.0])  # y = 6 - 6 = 0
  res = jd.cam.compute(GapNet(), zero, X, np.array([0]), "ablationcam", layer="feat",
                       with_aux=True)
  assert bool(res.all_zero[0]) and np.all(np.asarray(res.pre_relu) == 0)


class LinearNet(nn.Module):
  """logits_k = sum_{h,w,c} x_hwc W_hwck + b_k."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    kernel = self.param("kernel", nn.initializers.zeros, x.shape[1:] + (3,))
    bias = self.param("bias", nn.initializers.zeros, (3,))
    return jnp.einsum("bhwc,hwck->bk", x, kernel, precision=jax.lax.Precision.HIGHEST) + bias


def linear_variables(rng, shape):
  kernel = rng.integers(-2, 3, shape + (3,)).astype(np.float32)
  return {"params": {"kernel": jnp.asarray(kernel), "bias": jnp.asarray([1.0, -2.0, 0.5])}}


def occlusion_closed_form(x, kernel, bias, target, base, size, stride, probability=False):
  """Per-pixel mean of score(x) - score(occluded), by explicit windows, float64."""
  h, w = x.shape[:2]

  def score(z):
    logits = np.einsum("hwc,hwck->k", z, kernel) + bias
    if probability:
      logits = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    return logits[target]

  total, count = np.zeros((h, w)), np.zeros((h, w))
  for top in range(0, h - size + 1, stride):
    for left in range(0, w - size + 1, stride):
      z = x.copy()
      z[top:top + size, left:left + size] = base[top:top + size, left:left + size]
      total[top:top + size, left:left + size] += score(x) - score(z)
      count[top:top + size, left:left + size] += 1
  return np.where(count > 0, total / np.maximum(count, 1), 0.0), count


def test_occlusion_of_a_linear_logit_model_equals_the_closed_form():
  rng = np.random.default_rng(0)
  # Small integers: every sum is exact in float32, so only the final mean rounds.
  x = rng.integers(-3, 4, (2, 10, 9, 3)).astype(np.float64)
  kernel = rng.integers(-2, 3, (10, 9, 3, 3)).astype(np.float64)
  bias = np.array([1.0, -2.0, 0.5])
  variables = {"params": {"kernel": jnp.asarray(kernel, jnp.float32),
                          "bias": jnp.asarray(bias, jnp.float32)}}
  targets = np.array([2, 0])
  image = rng.integers(-1, 2, (10, 9, 3)).astype(np.float64)
  blurred = np.stack([np.stack([scipy.ndimage.gaussian_filter(x[b, ..., c], 1.5,
                                                              mode="reflect")
                                for c in range(3)], -1) for b in range(2)])
  cases = {  # name -> (options, baseline of each image)
      "zero": ({"baseline": "zero"}, np.zeros_like(x)),
      "mean": ({"baseline": "mean"}, np.broadcast_to(x.mean((1, 2), keepdims=True), x.shape)),
      "blur": ({"baseline": "blur", "blur_sigma": 1.5}, blurred),
      "image": ({"baseline": image.astype(np.float32)}, np.broadcast_to(image, x.shape)),
  }
  for name, (options, base) in cases.items():
    res = jd.cam.compute(LinearNet(), variables, x.astype(np.float32), targets, "occlusion",
                         size=4, stride=3, chunk=5, with_aux=True, **options)
    for b in range(2):
      want, count = occlusion_closed_form(x[b], kernel, bias, targets[b], base[b], 4, 3)
      np.testing.assert_allclose(res.pre_relu[b], want, rtol=1e-5, atol=1e-5, err_msg=name)
      np.testing.assert_allclose(res.maps[b], np.maximum(want, 0), rtol=1e-5, atol=1e-5)
    assert res.layer == "input" and res.method == "occlusion/logit"
  # Columns 7 and 8 are in no window (starts 0 and 3 of width 4 in 9 columns): exactly 0.
  assert (count[:, 7:] == 0).all() and np.all(np.asarray(res.pre_relu)[:, :, 7:] == 0)
  prob = jd.cam.compute(LinearNet(), variables, x.astype(np.float32) / 8, targets,
                        "occlusion/probability", size=(4, 3), stride=(2, 3), with_aux=True)
  assert prob.method == "occlusion/probability"
  for b in range(2):
    expect = rect_closed_form(x[b] / 8, kernel, bias, targets[b], (4, 3), (2, 3))
    np.testing.assert_allclose(prob.pre_relu[b], expect, rtol=1e-4, atol=1e-6)


def rect_closed_form(x, kernel, bias, target, size, stride):
  """Probability-score occlusion with rectangular windows and a zero baseline, float64."""
  h, w = x.shape[:2]

  def prob(z):
    logits = np.einsum("hwc,hwck->k", z, kernel) + bias
    e = np.exp(logits - logits.max())
    return (e / e.sum())[target]

  total, count = np.zeros((h, w)), np.zeros((h, w))
  for top in range(0, h - size[0] + 1, stride[0]):
    for left in range(0, w - size[1] + 1, stride[1]):
      z = x.copy()
      z[top:top + size[0], left:left + size[1]] = 0
      total[top:top + size[0], left:left + size[1]] += prob(x) - prob(z)
      count[top:top + size[0], left:left + size[1]] += 1
  return np.where(count > 0, total / np.maximum(count, 1), 0.0)


def test_rise_with_all_ones_masks_returns_the_score_over_p():
  model, variables = LinearNet(), linear_variables(np.random.default_rng(1), (8, 8, 3))
  x, targets = images(2, seed=8), np.array([1, 2])
  logits = model.apply(variables, x, train=False)
  score = np.asarray(logits)[np.arange(2), targets]
  res = jd.cam.compute(model, variables, x, targets, "rise", masks=np.ones((1, 8, 8)), p=0.5,
                       with_aux=True)
  np.testing.assert_allclose(res.pre_relu, np.broadcast_to(2 * score[:, None, None],
                                                           (2, 8, 8)), rtol=1e-5)
  # Random masks with p = 1 keep everything: saliency = score (n_masks draws / n_masks).
  ones = jd.cam.compute(model, variables, x, targets, "rise", key=jax.random.key(3),
                        n_masks=5, s=3, p=1.0, chunk=2, with_aux=True)
  np.testing.assert_allclose(ones.pre_relu, np.broadcast_to(score[:, None, None], (2, 8, 8)),
                             rtol=1e-5)
  # A mask: values in [0, 1], mean near p, smooth (bilinear cells of ceil(32 / 4) = 8 px).
  masks = jax.vmap(lambda k: rise_lib.rise_mask(k, (32, 32), 4, 0.5))(
      jax.random.split(jax.random.key(0), 256))
  assert masks.shape == (256, 32, 32)
  assert float(masks.min()) >= 0 and float(masks.max()) <= 1
  assert abs(float(masks.mean()) - 0.5) < 0.03
  assert float(jnp.max(jnp.abs(jnp.diff(masks, axis=1)))) <= 1 / 8 + 1e-6


# ---------------------------------------------------------------------------- tiny port vs numpy


def half_pixel(n_out, n_in, grid=None):
  """[n_out, n_in] bilinear weights: half-pixel centres, or cell i at offset + stride * i."""
  i = np.arange(n_out, dtype=np.float64)
  src = (i + 0.5) * n_in / n_out - 0.5 if grid is None else (i - grid[1]) / grid[0]
  src = np.clip(src, 0, n_in - 1)
  lo = np.floor(src).astype(int)
  hi = np.minimum(lo + 1, n_in - 1)
  m = np.zeros((n_out, n_in))
  m[np.arange(n_out), lo] += 1 - (src - lo)
  m[np.arange(n_out), hi] += src - lo
  return m


@functools.cache
def port():
  model = jd.models.create("resnetv2_tiny", num_classes=4)
  tl = random_variables(model, (1, 64, 64, 3), seed=0)
  ft = random_variables(model, (1, 64, 64, 3), seed=1)
  x = np.asarray(jax.random.uniform(jax.random.key(4), (2, 64, 64, 3), minval=-1, maxval=1))
  return model, tl, ft, x, np.array([1, 3])


@functools.cache
def reference_fns(layer):
  model = port()[0]
  capture = jax.jit(lambda v, x: jd.models.capture(model, v, x, [layer])[1][layer])
  apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
  ablated = jax.jit(jax.vmap(lambda v, x, d: model.apply({**v, "perturbations": {layer: d}},
                                                          x, train=False),
                             in_axes=(None, None, 0)))
  return capture, apply, ablated


def numpy_scorecam(variables, x, targets, layer, grid=None, top_k=None, probability=False):
  """Score-CAM from the layer's activations and plain model.apply calls (float64 on host)."""
  capture, apply, _ = reference_fns(layer)
  acts = np.asarray(capture(variables, x), np.float64)  # [B, h, w, K]
  b, h, w, k = acts.shape
  keep = np.argsort(-acts.std(axis=(1, 2)), axis=1, kind="stable")
  keep = keep[:, :top_k] if top_k else np.broadcast_to(np.arange(k), (b, k))
  rows, cols = half_pixel(64, h, grid), half_pixel(64, w, grid)
  out = []
  for i in range(b):
    a = acts[i][..., keep[i]]
    up = np.einsum("Hh,hwk,Ww->kHW", rows, a, cols)
    low, high = up.min((1, 2), keepdims=True), up.max((1, 2), keepdims=True)
    masks = (up - low) / (high - low + 1e-8)
    inputs = (x[i][None] * masks[..., None]).astype(np.float32)
    logits = np.concatenate([np.asarray(apply(variables, inputs[j:j + 32]), np.float64)
                             for j in range(0, len(inputs), 32)])
    if probability:
      logits = np.exp(logits - logits.max(1, keepdims=True))
      logits /= logits.sum(1, keepdims=True)
    s = logits[:, targets[i]]
    weights = np.exp(s - s.max()) / np.exp(s - s.max()).sum()
    out.append(np.maximum(np.einsum("k,hwk->hw", weights, a), 0))
  return np.stack(out)


def numpy_ablationcam(variables, x, targets, layer):
  """Ablation-CAM by full forward passes with one channel zeroed through the layer's tap."""
  capture, apply, ablated = reference_fns(layer)
  acts = np.asarray(capture(variables, x), np.float64)
  k = acts.shape[-1]
  y = np.asarray(apply(variables, x), np.float64)[np.arange(2), targets]
  y_k = []
  for start in range(0, k, 32):
    eye = np.eye(k)[start:start + 32]  # [c, K]
    deltas = -(acts[None] * eye[:, None, None, None, :]).astype(np.float32)
    y_k.append(np.asarray(ablated(variables, x, deltas))[:, np.arange(2), targets])
  weights = (y[None] - np.concatenate(y_k)) / y[None]  # [K, B]
  return np.maximum(np.einsum("kb,bhwk->bhw", weights, acts), 0)


def test_pair_with_mixed_methods_matches_numpy_on_a_tiny_port():
  """compute_pair with gradient and gradient-free methods, as the drift stage calls it."""
  model, tl, ft, x, targets = port()
  layer = "conv4_block1_out"  # 4 x 4 x 128 at 64 px: off the canonical grid (half-pixel)
  out = jd.cam.compute_pair(model, tl, ft, x, targets, layer=layer, chunk=48,
                            methods=("layercam", "gradcam++", "scorecam", "ablationcam"))
  for name, res in out.items():
    assert res.maps.shape == (2, 2, 4, 4) and res.logits.shape == (2, 2, 4), name
    assert res.all_zero.shape == (2, 2), name
    np.testing.assert_allclose(res.logits, out["layercam"].logits, rtol=1e-5, atol=1e-6)
  # Score-CAM of the TL checkpoint, Ablation-CAM of the FT one (each reference costs a
  # forward pass per channel and image).
  want = numpy_scorecam(tl, x, targets, layer)
  assert want.max() > 0
  np.testing.assert_allclose(out["scorecam"].maps[0], want, rtol=2e-4, atol=1e-5 * want.max())
  want = numpy_ablationcam(ft, x, targets, layer)
  assert want.max() > 0
  np.testing.assert_allclose(out["ablationcam"].maps[1], want, rtol=2e-4,
                             atol=1e-4 * want.max())
  for name in ("scorecam", "ablationcam"):  # the two checkpoints' maps differ
    assert not np.allclose(out[name].maps[0], out[name].maps[1], rtol=0.05), name


def test_canonical_layer_top_k_probability_and_grid():
  """At post_relu: Score-CAM's masks on the network's grid, top-k channels by spread,
  softmax scores; Ablation-CAM's closed form y - y_k = W_kc mean_ij A_k of a pooling head."""
  model, _, ft, x, targets = port()
  out = jd.cam.compute_many(model, ft, x, targets, methods=("scorecam/probability",
                                                            "ablationcam"), top_k=12)
  assert out["scorecam/probability"].method == "scorecam/probability/top12"
  grid = jd.models.cam_grid("resnet50v2", 64)  # (32, 0): cells centred on pixels 0 and 32
  want = numpy_scorecam(ft, x, targets, "post_relu", grid=grid, top_k=12, probability=True)
  np.testing.assert_allclose(out["scorecam/probability"].maps, want, rtol=2e-4,
                             atol=1e-5 * want.max())
  acts = np.asarray(reference_fns("post_relu")[0](ft, x), np.float64)
  kernel = np.asarray(ft["params"]["predictions"]["kernel"], np.float64)
  y = np.asarray(out["ablationcam"].logits, np.float64)[np.arange(2), targets]
  keep = np.argsort(-acts.std(axis=(1, 2)), axis=1, kind="stable")[:, :12]
  want = []
  for i in range(2):
    weights = kernel[keep[i], targets[i]] * acts[i].mean((0, 1))[keep[i]] / y[i]
    want.append(np.maximum(np.einsum("k,hwk->hw", weights, acts[i][..., keep[i]]), 0))
  np.testing.assert_allclose(out["ablationcam"].maps, np.stack(want), rtol=1e-3,
                             atol=1e-4 * np.max(want))


# ---------------------------------------------------------------------------- batching, compiles

GRADFREE = ("scorecam", "ablationcam", "occlusion", "rise")
SMALL_OPTIONS = dict(layer="relu2", size=4, stride=2, n_masks=6, s=2, chunk=4)


def test_batched_equals_per_image_and_second_call_does_not_recompile():
  model, variables = small()
  x, targets = images(3, seed=9), np.array([0, 3, 2])
  keys = jax.random.split(jax.random.key(5), 3)
  batched = jd.cam.compute_many(model, variables, x, targets, methods=GRADFREE, key=keys,
                                **SMALL_OPTIONS)
  singles = [jd.cam.compute_many(model, variables, x[i:i + 1], targets[i:i + 1],
                                 methods=GRADFREE, key=keys[i:i + 1], **SMALL_OPTIONS)
             for i in range(3)]
  for name in GRADFREE:
    per_image = np.concatenate([s[name].pre_relu for s in singles])
    assert np.abs(per_image).max() > 0, name
    np.testing.assert_allclose(batched[name].pre_relu, per_image, rtol=1e-4,
                               atol=1e-5 * np.abs(per_image).max(), err_msg=name)
  x2, keys2 = jax.block_until_ready((x + 0.25, jax.random.split(jax.random.key(6), 3)))
  with xla_env.count_compiles() as compiles:
    again = jd.cam.compute_many(model, variables, x2, targets[::-1], methods=GRADFREE,
                                key=keys2, **SMALL_OPTIONS)
    jax.block_until_ready(again)
  assert compiles == []
  assert not np.allclose(again["scorecam"].maps, batched["scorecam"].maps)


# ---------------------------------------------------------------------------- cost and errors


def test_cost_counts_passes_per_image():
  model = jd.models.create("resnetv2_tiny", num_classes=4)
  shape = (64, 64, 3)
  cost = functools.partial(jd.cam.cost, model, image_shape=shape)
  assert cost("scorecam")["full_passes"] == 1 + 256  # post_relu: 4 * 64 channels
  assert cost("scorecam", top_k=10)["forward_equivalents"] == 11
  assert cost("rise", n_masks=50)["full_passes"] == 51
  assert cost("occlusion", size=16, stride=8)["full_passes"] == 1 + 7 * 7
  inner, canonical = cost("ablationcam", "conv4_block2_out"), cost("ablationcam")
  assert inner["partial_passes"] == 128 and canonical["partial_passes"] == 256
  # After post_relu only the Dense layer runs; after conv4 the whole conv5 stage does.
  assert 0 < canonical["partial_fraction"] < 1e-3 < inner["partial_fraction"] < 0.5
  assert inner["forward_equivalents"] == pytest.approx(1 + 128 * inner["partial_fraction"])
  assert cost("integrated_gradients", steps=8)["forward_equivalents"] == 1 + 8 + 16


def test_clear_errors():
  model, variables = small()
  x, t = images(2), np.array([0, 1])
  compute = functools.partial(jd.cam.compute, model, variables, x, t)
  with pytest.raises(ValueError, match="score must be one of"):
    compute("scorecam", layer="relu2", score="softmax")
  with pytest.raises(ValueError, match="unknown method 'ablationcam/probability'"):
    compute("ablationcam/probability", layer="relu2")
  with pytest.raises(ValueError, match="top_k must be"):
    compute("scorecam", layer="relu2", top_k=0)
  with pytest.raises(ValueError, match="does not fit"):
    compute("occlusion", size=9)
  with pytest.raises(ValueError, match="baseline must be one of"):
    compute("occlusion", baseline="noise")
  with pytest.raises(ValueError, match="does not broadcast"):
    compute("occlusion", size=4, baseline=np.zeros((5, 5, 3), np.float32))
  with pytest.raises(ValueError, match="p must be in"):
    compute("rise", key=jax.random.key(0), p=0.0)
  with pytest.raises(ValueError, match="rise need key"):
    compute("rise")
  with pytest.raises(ValueError, match="masks must have shape"):
    compute("rise", masks=np.ones((2, 4, 4)))
  with pytest.raises(ValueError, match="layer is only used by CAM"):
    compute("occlusion", layer="relu2")
  with pytest.raises(ValueError, match="layercam only"):
    compute("scorecam", layer=["relu1", "relu2"])
  with pytest.raises(ValueError, match="replacement of layer 'relu2' has shape"):
    model.apply({**variables, "replacements": {"relu2": jnp.zeros((2, 3, 3, 8))}}, x)
