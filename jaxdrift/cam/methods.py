"""Class-activation weightings: one map from one image's activations and gradients.

Every CAM method shares one pipeline (see `core.py`): a single forward pass, one backward
pass from the class logit to the target layer, and then a weighting. This file holds only the
weightings, written for ONE example and vectorised with `jax.vmap` by the caller.

Notation: A [h, w, K] are the activations of the target layer, g = d score / d A [h, w, K]
with score = sum_c weight_c * logit_c (one-hot weights: the class LOGIT, never the softmax).
S_k = sum_ij A_ijk. Each weighting returns the map BEFORE the final ReLU, [h, w]; the
pipeline applies the ReLU.

| method               | pre-ReLU map                                                       |
|----------------------|--------------------------------------------------------------------|
| gradcam              | sum_k w_k A_k, w_k = mean_ij g_ijk                                 |
| hirescam             | sum_k g_k * A_k (element-wise, no averaging)                       |
| layercam             | sum_k ReLU(g_k) * A_k (element-wise)                               |
| xgradcam             | sum_k w_k A_k, w_k = sum_ij g_ijk A_ijk / S_k (0 where S_k = 0)    |
| gradcam++ eq19       | sum_k w_k A_k, w_k = sum_ij alpha_ijk ReLU(g_ijk),                 |
|                      | alpha = g^2 / (2 g^2 + S_k g^3), 0 where g = 0 (paper eq. 19)      |
| gradcam++ official   | as eq19 but alpha normalised over space: alpha / sum_ij alpha      |

Grad-CAM++ is derived for an exponential output Y = exp(score), which makes every higher
derivative a power of g. Only ReLU(g) > 0 positions contribute to w_k, and there
alpha = 1 / (2 + S_k g): that is what we evaluate (no g^3 underflow in low precision; for
A >= 0 the denominator is >= 2). "official" follows the authors' released code and
tf-keras-vis (`GradcamPlusPlus`), where alpha is computed for every g != 0, a zero
normaliser is replaced by 1, and the weights carry a positive per-image factor exp(score)
that only rescales the map; we leave it out (it overflows float32 for logits above 88).
pytorch-grad-cam implements eq19 (up to its 1e-7 epsilon); xplique uses the spatial mean of
A instead of S_k and is not reproduced here.

With a head that starts with global average pooling, g at the last feature map is constant
over space, g_k = W_kc / (h w). Then the normalised (official) alpha is 1 / (h w) everywhere,
w_k = ReLU(g_k), and official Grad-CAM++ EQUALS LayerCAM (the constant is exactly 1, up to
rounding); Grad-CAM is the CAM of Zhou et al. divided by h w; eq19 has
w_k = h w g_k / (2 + S_k g_k), which reweights the channels by 1 / (2 + S_k g_k) and differs
from all of them. A study that finds LayerCAM and Grad-CAM++ disagreeing at the last feature
map of such a network used eq19 (or a layer inside the network).
"""

import jax
import jax.numpy as jnp

from jaxdrift.cam.postprocess import safe_div
from jaxdrift.geometry import upsample


def channel_sum(weights, acts):
  """sum_k weights_k * A_k for channel weights [K] and activations [h, w, K] -> [h, w]."""
  return jnp.einsum("k,hwk->hw", weights, acts)


def gradcam(acts, grads):
  """Grad-CAM (Selvaraju et al. 2017): channel weights are the spatial mean of g.

  Args:
    acts: A, [h, w, K].
    grads: g = d score / d A, [h, w, K].

  Returns:
    The pre-ReLU map [h, w].
  """
  return channel_sum(jnp.mean(grads, axis=(0, 1)), acts)


def hirescam(acts, grads):
  """HiResCAM (Draelos & Carin 2020): sum_k g_k * A_k element-wise. [h,w,K] x2 -> [h, w]."""
  return jnp.sum(grads * acts, axis=-1)


def layercam(acts, grads):
  """LayerCAM (Jiang et al. 2021): sum_k ReLU(g_k) * A_k element-wise. [h,w,K] x2 -> [h, w]."""
  return jnp.sum(jax.nn.relu(grads) * acts, axis=-1)


def xgradcam(acts, grads):
  """XGrad-CAM (Fu et al. 2020): w_k = sum_ij g A / S_k (0 for S_k = 0). [h,w,K] x2 -> [h, w]."""
  totals = jnp.sum(acts, axis=(0, 1))
  return channel_sum(safe_div(jnp.sum(grads * acts, axis=(0, 1)), totals), acts)


def _alpha(acts, grads, where):
  """Grad-CAM++ alpha = g^2 / (2 g^2 + S g^3) = 1 / (2 + S g) on `where` (g != 0), else 0."""
  totals = jnp.sum(acts, axis=(0, 1))
  return jnp.where(where, safe_div(1.0, 2.0 + totals * grads), 0.0)


def gradcam_pp_eq19(acts, grads):
  """Grad-CAM++ as in eq. 19 of Chattopadhyay et al. (2018), alpha not normalised.

  w_k = sum_ij alpha_ijk ReLU(g_ijk) with alpha = 1 / (2 + S_k g) for g > 0 (the positions
  where ReLU(g) is non-zero; elsewhere the product is 0 whatever alpha is).

  Args:
    acts: A, [h, w, K].
    grads: g, [h, w, K].

  Returns:
    The pre-ReLU map [h, w].
  """
  alpha = _alpha(acts, grads, grads > 0)
  return channel_sum(jnp.sum(alpha * jax.nn.relu(grads), axis=(0, 1)), acts)


def gradcam_pp_official(acts, grads):
  """Grad-CAM++ as in the authors' code and tf-keras-vis: alpha normalised over space.

  alpha = 1 / (2 + S_k g) for every g != 0 (0 where g = 0), divided by its spatial sum per
  channel (a zero sum counts as 1), then w_k = sum_ij alpha ReLU(g). The authors' positive
  per-image factor exp(score) is left out (see the module docstring).

  Args:
    acts: A, [h, w, K].
    grads: g, [h, w, K].

  Returns:
    The pre-ReLU map [h, w].
  """
  alpha = _alpha(acts, grads, grads != 0)
  norm = jnp.sum(alpha, axis=(0, 1))
  alpha = alpha / jnp.where(norm == 0, 1.0, norm)
  return channel_sum(jnp.sum(alpha * jax.nn.relu(grads), axis=(0, 1)), acts)


WEIGHTINGS = {
    "gradcam": gradcam,
    "hirescam": hirescam,
    "layercam": layercam,
    "xgradcam": xgradcam,
    "gradcam++/eq19": gradcam_pp_eq19,
    "gradcam++/official": gradcam_pp_official,
}
GRADCAM_PP_VARIANTS = ("eq19", "official")


def tanh_scale(cam, gamma: float = 2.0):
  """LayerCAM's scaling for fusing layers: tanh(gamma * M / max M); an all-zero map stays 0.

  Args:
    cam: one non-negative map [h, w].
    gamma: 2 in the LayerCAM paper.

  Returns:
    [h, w] in [0, tanh(gamma)].
  """
  return jnp.tanh(gamma * safe_div(cam, jnp.max(cam)))


def fuse_layers(cams, size, gamma: float = 2.0):
  """Multi-layer LayerCAM: scale each layer's map, resize to `size`, take the element-wise max.

  Every map is scaled with `tanh_scale` (so layers with activations of different magnitude
  become comparable), upsampled bilinearly with half-pixel centres
  (`jaxdrift.geometry.upsample`) to `size` (the finest layer's resolution), then fused by
  element-wise maximum.

  Args:
    cams: sequence of non-negative maps [h_l, w_l], one per layer.
    size: (H, W) of the fused map.
    gamma: the tanh scaling factor (2 in the paper).

  Returns:
    [H, W] fused map.
  """
  scaled = [upsample(tanh_scale(c, gamma), size) for c in cams]
  return jnp.max(jnp.stack(scaled), axis=0)
