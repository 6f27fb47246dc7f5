"""CAM weightings, fusion, upsampling and normalisation against values computed by hand.

The tiny example (h=1, w=2, K=2), written as channel rows:
  A_0 = [1, 3], A_1 = [2, 0]  ->  S = [4, 2]
  g_0 = [1, -1], g_1 = [0.5, 2]
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdrift as jd

A = np.stack([[1.0, 3.0], [2.0, 0.0]], axis=-1)[None]  # [1, 2, 2]: (h, w, K)
G = np.stack([[1.0, -1.0], [0.5, 2.0]], axis=-1)[None]

HAND = {
    # w = mean g = [0, 1.25]; 0 * A_0 + 1.25 * A_1
    "gradcam": [2.5, 0.0],
    # sum_k g A: 1*1 + 0.5*2 = 2; -1*3 + 2*0 = -3
    "hirescam": [2.0, -3.0],
    # sum_k ReLU(g) A: 1*1 + 0.5*2 = 2; 0*3 + 2*0 = 0
    "layercam": [2.0, 0.0],
    # w_0 = (1*1 - 1*3) / 4 = -0.5, w_1 = (0.5*2 + 2*0) / 2 = 0.5
    "xgradcam": [0.5, -1.5],
    # alpha = 1/(2 + S g) where g > 0: ch0 [1/6, -], ch1 [1/3, 1/6];
    # w_0 = 1/6, w_1 = 0.5/3 + 2/6 = 1/2;  1/6 A_0 + 1/2 A_1
    "gradcam++/eq19": [7 / 6, 0.5],
    # alpha for g != 0: ch0 [1/6, 1/(2-4) = -1/2], sum -1/3 -> [-1/2, 3/2];
    # ch1 [1/3, 1/6], sum 1/2 -> [2/3, 1/3]; w_0 = -1/2 * 1 = -1/2, w_1 = 2/3*0.5 + 1/3*2 = 1
    "gradcam++/official": [1.5, -1.5],
}


@pytest.mark.parametrize("name", sorted(HAND))
def test_weighting_matches_hand_computed_values(name):
  pre = jd.cam.WEIGHTINGS[name](jnp.asarray(A), jnp.asarray(G))
  np.testing.assert_allclose(pre, [HAND[name]], rtol=1e-6, atol=1e-7)


def _tf_keras_vis_gradcam_pp(acts, grads, score):
  """tf-keras-vis GradcamPlusPlus, transcribed to numpy for one image (activation ReLU)."""
  first = np.exp(score) * grads
  second, third = first * grads, first * grads * grads
  global_sum = acts.sum(axis=(0, 1), keepdims=True)
  denom = second * 2.0 + third * global_sum
  denom = denom + (second == 0.0)
  alphas = second / denom
  norm = alphas.sum(axis=(0, 1), keepdims=True)
  alphas = alphas / (norm + (norm == 0.0))
  weights = (np.maximum(first, 0.0) * alphas).sum(axis=(0, 1), keepdims=True)
  return np.maximum((weights * acts).sum(axis=-1), 0.0)


def _pytorch_grad_cam_pp(acts, grads):
  """pytorch-grad-cam GradCAMPlusPlus weights (eq. 19), transcribed to numpy (HWC)."""
  g2 = grads ** 2
  g3 = g2 * grads
  s = acts.sum(axis=(0, 1))
  aij = g2 / (2 * g2 + s * g3 + 1e-7)
  aij = np.where(grads != 0, aij, 0)
  weights = (np.maximum(grads, 0) * aij).sum(axis=(0, 1))
  return np.maximum((weights * acts).sum(axis=-1), 0.0)


def test_gradcam_pp_variants_match_the_reference_implementations():
  rng = np.random.default_rng(0)
  acts = np.maximum(rng.normal(size=(5, 4, 6)), 0.0)
  grads = rng.normal(size=(5, 4, 6)) * 0.3
  score = 1.7  # tf-keras-vis scales by exp(score); jaxdrift leaves that factor out
  official = jax.nn.relu(jd.cam.gradcam_pp_official(acts, grads))
  np.testing.assert_allclose(np.exp(score) * official,
                             _tf_keras_vis_gradcam_pp(acts, grads, score), rtol=1e-5)
  eq19 = jax.nn.relu(jd.cam.gradcam_pp_eq19(acts, grads))
  np.testing.assert_allclose(eq19, _pytorch_grad_cam_pp(acts, grads), rtol=1e-5)
  # The two variants are different methods, not two scalings of one.
  eq19, official = np.asarray(eq19), np.asarray(official)
  ratio = eq19[official > 0] / official[official > 0]
  assert ratio.std() / ratio.mean() > 0.05


def test_eq19_is_stable_where_g_cubed_underflows():
  acts = jnp.full((2, 2, 1), 3.0, jnp.float32)
  grads = jnp.full((2, 2, 1), 1e-20, jnp.float32)  # g^2 and g^3 are 0 in float32
  pre = jd.cam.gradcam_pp_eq19(acts, grads)
  # alpha = 1/(2 + 12e-20) = 1/2; w = 4 * 1/2 * 1e-20; map = w * 3
  np.testing.assert_allclose(pre, np.full((2, 2), 6e-20), rtol=1e-5)


@pytest.mark.parametrize("name", sorted(jd.cam.WEIGHTINGS))
def test_zero_activations_or_gradients_give_zero_maps_not_nan(name):
  zeros, ones = jnp.zeros((3, 3, 4)), jnp.ones((3, 3, 4))
  for acts, grads in ((zeros, ones), (ones, zeros), (zeros, zeros)):
    pre = jd.cam.WEIGHTINGS[name](acts, grads)
    assert np.all(np.asarray(pre) == 0), name


def test_tanh_scale_and_fusion_by_hand():
  t = np.tanh(2.0)
  np.testing.assert_allclose(jd.cam.tanh_scale(jnp.array([[0.0, 1.0], [2.0, 4.0]])),
                             np.tanh([[0.0, 0.5], [1.0, 2.0]]), rtol=1e-6)
  np.testing.assert_array_equal(jd.cam.tanh_scale(jnp.zeros((2, 2))), np.zeros((2, 2)))
  coarse = jnp.array([[0.0, 1.0]])  # -> [0, t], upsampled to 4 columns: [0, t/4, 3t/4, t]
  fine = jnp.array([[4.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])  # -> t at (0, 0)
  fused = jd.cam.fuse_layers([coarse, fine], (2, 4))
  want = [[t, t / 4, 3 * t / 4, t], [0.0, t / 4, 3 * t / 4, t]]
  np.testing.assert_allclose(fused, want, rtol=1e-6, atol=1e-7)


def test_upsample_is_bilinear_with_half_pixel_centres():
  # Output column j reads input coordinate (j + 0.5) * 2/4 - 0.5 = -0.25, 0.25, 0.75, 1.25,
  # clamped at the border (cv2.resize INTER_LINEAR gives the same).
  np.testing.assert_allclose(jd.cam.upsample(jnp.array([[[0.0, 1.0]]]), (1, 4)),
                             [[[0.0, 0.25, 0.75, 1.0]]], atol=1e-7)
  m = jnp.array([[0.0, 4.0], [8.0, 12.0]])
  up = jd.cam.upsample(m, (4, 4))
  assert up.shape == (4, 4)
  np.testing.assert_allclose(up[1, 1], 0.5625 * 0 + 0.1875 * 4 + 0.1875 * 8 + 0.0625 * 12)
  np.testing.assert_allclose(up[0], [0.0, 1.0, 3.0, 4.0], atol=1e-6)
  assert np.all(np.asarray(jd.cam.upsample(jnp.zeros((2, 3, 3)), (7, 7))) == 0)


def test_normalize_modes_by_hand_and_zero_maps_stay_zero():
  m = jnp.array([[[0.0, 2.0], [4.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])
  np.testing.assert_allclose(jd.cam.normalize(m, "max")[0], [[0, 0.5], [1, 0]])
  np.testing.assert_allclose(jd.cam.normalize(m, "sum")[0], [[0, 1 / 3], [2 / 3, 0]])
  np.testing.assert_allclose(jd.cam.normalize(m + 1, "minmax")[0], [[0, 0.5], [1, 0]])
  for mode in ("max", "sum", "minmax"):
    assert np.all(np.asarray(jd.cam.normalize(m, mode)[1]) == 0)
  with pytest.raises(ValueError, match="mode must be"):
    jd.cam.normalize(m, "l2")
