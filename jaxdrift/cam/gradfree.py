"""Gradient-free CAM weightings at a layer: Score-CAM and Ablation-CAM, batched.

Both weight the channels of the layer's activation A [h, w, K] by how the target score
responds when the input or the activation is changed, never by a gradient; the map is
ReLU(sum_k w_k A_k) like every CAM. Every changed input of every image is evaluated in one
jitted program: `chunk` changes per image at a time (one forward pass of B x chunk inputs,
image-major, so a batch sharded along its first axis stays sharded), the chunks in a
`lax.map`.

| method       | channel weight w_k                                                     |
|--------------|------------------------------------------------------------------------|
| scorecam     | softmax over channels of s_k = score(x * n(up(A_k))), up = bilinear to |
|              | the input size on the study's grid, n(m) = (m - min m) /               |
|              | (max m - min m + 1e-8) (Wang et al. 2020; pytorch-grad-cam's ScoreCAM) |
| ablationcam  | (y - y_k) / y, y the target logit, y_k the logit with channel k of A   |
|              | set to zero (Desai & Ramaswamy 2020; pytorch-grad-cam's AblationCAM);  |
|              | 0 where y = 0                                                          |

score(.) is the target LOGIT (sum_c weight_c logit_c) by default, or with
score="probability" the softmax confidence sum_c weight_c softmax(logits)_c, as in the
Score-CAM paper. Ablation-CAM always uses the logit (its paper's definition). Ablation-CAM
runs the network before the layer ONCE: the caller passes `suffix_fn`, the network from the
layer on (`jaxdrift.cam.suffix`: the layer and every earlier layer replaced with values
computed once, and where the port declares it, the 1x1 convolutions right after the layer
updated by rank one).

`top_k` keeps, per image, the k channels with the largest spatial standard deviation of A
(tf-keras-vis's ScoreCAM `max_N` rule; ties: the lower channel index), and the others get
weight 0: k forward passes per image instead of K.
"""

import jax
import jax.numpy as jnp

from jaxdrift.cam.postprocess import safe_div
from jaxdrift.geometry import upsample

SCORES = ("logit", "probability")
NORM_EPS = 1e-8


def target_scores(logits, weights, score: str = "logit"):
  """Target score of each row: sum_c weights_c * logits_c, or of the softmax probabilities.

  Args:
    logits: [..., K].
    weights: [..., K] logit weights (one-hot for a class), broadcastable to `logits`.
    score: "logit" or "probability".

  Returns:
    [...] float32.
  """
  logits = logits.astype(jnp.float32)
  if score == "probability":
    logits = jax.nn.softmax(logits, axis=-1)
  return jnp.sum(weights * logits, axis=-1)


def map_chunks(fn, n: int, chunk: int):
  """[B, n, ...] results of fn over the indices 0..n-1, evaluated `chunk` at a time.

  Args:
    fn: ks [c] int32 -> a result [B, c, ...] for those indices.
    n: number of indices.
    chunk: indices per call (memory scales with it); the last chunk is padded by repeating
      index n - 1, and the padding is cut.

  Returns:
    [B, n, ...], in index order.
  """
  c = max(1, min(chunk, n))
  n_chunks = -(-n // c)
  ks = jnp.minimum(jnp.arange(n_chunks * c, dtype=jnp.int32), n - 1).reshape(n_chunks, c)
  out = jnp.moveaxis(jax.lax.map(fn, ks), 0, 1)  # [B, n_chunks, c, ...]
  return out.reshape((out.shape[0], n_chunks * c) + out.shape[3:])[:, :n]


def batched_scores(logits_fn, inputs, weights, score: str = "logit"):
  """Scores of B x c changed inputs in ONE forward pass, image-major.

  Args:
    logits_fn: inputs [N, ...] (a pytree of such) -> logits [N, K].
    inputs: a pytree of arrays [B, c, ...]: c changed versions of each of B inputs.
    weights: [B, K] logit weights.
    score: "logit" or "probability".

  Returns:
    [B, c] float32.
  """
  b, c = jax.tree.leaves(inputs)[0].shape[:2]
  flat = jax.tree.map(lambda a: a.reshape((b * c,) + a.shape[2:]), inputs)
  logits = logits_fn(flat)
  return target_scores(logits.reshape(b, c, -1), weights[:, None, :], score)


def select_channels(acts, top_k):
  """Channel indices per image [B, k]: all K in order, or the top_k by spatial std of A.

  Args:
    acts: [B, h, w, K].
    top_k: None (every channel) or an int in [1, K].
  """
  b, k = acts.shape[0], acts.shape[-1]
  if top_k is None or top_k >= k:
    return jnp.broadcast_to(jnp.arange(k, dtype=jnp.int32), (b, k))
  spread = jnp.std(acts.astype(jnp.float32), axis=(1, 2))  # [B, K]
  return jax.lax.top_k(spread, top_k)[1].astype(jnp.int32)


def _weighted_sum(weights, acts, channels):
  """sum_j weights[b, j] A[b, :, :, channels[b, j]] -> [B, h, w]."""
  picked = jnp.take_along_axis(acts.astype(jnp.float32), channels[:, None, None, :], axis=-1)
  return jnp.einsum("bk,bhwk->bhw", weights, picked)


def scorecam_masks(acts, channels, size, grid=None):
  """Score-CAM's masks of ONE image: chosen channels upsampled and min-max normalised.

  Args:
    acts: A of one image, [h, w, K].
    channels: channel indices [c].
    size: (H, W) of the input.
    grid: None (half-pixel centres) or (stride, offset) (`jd.cam.upsample`).

  Returns:
    [c, H, W] in [0, 1): n(up(A_k)), with 1e-8 in the denominator (a constant channel gives
    an all-zero mask).
  """
  picked = jnp.moveaxis(jnp.take(acts.astype(jnp.float32), channels, axis=-1), -1, 0)
  up = upsample(picked, size, grid)
  low = jnp.min(up, axis=(1, 2), keepdims=True)
  high = jnp.max(up, axis=(1, 2), keepdims=True)
  return (up - low) / (high - low + NORM_EPS)


def scorecam(logits_fn, images, acts, weights, *, score: str = "logit", top_k=None,
             chunk: int = 16, grid=None):
  """Score-CAM (Wang et al. 2020): channels weighted by the score of the input they mask.

  Args:
    logits_fn: images [N, H, W, C] -> logits [N, K] (the full network).
    images: [B, H, W, C] preprocessed.
    acts: the layer's activations of these images, [B, h, w, K].
    weights: [B, classes] logit weights of the targets.
    score: "logit" (default, pytorch-grad-cam with a logit model) or "probability".
    top_k: None (every channel) or the number of channels kept per image (module doc).
    chunk: masked inputs per image in one forward pass.
    grid: placement of the map's cells when upsampling the masks (`jd.cam.upsample`).

  Returns:
    (pre-ReLU map [B, h, w], channel scores [B, k], channels [B, k]).
  """
  channels = select_channels(acts, top_k)
  size = images.shape[1:3]

  def chunk_scores(ks):
    masks = jax.vmap(scorecam_masks, in_axes=(0, 0, None, None))(acts, channels[:, ks], size,
                                                                  grid)  # [B, c, H, W]
    masked = images[:, None].astype(jnp.float32) * masks[..., None]
    return batched_scores(logits_fn, masked.astype(images.dtype), weights, score)

  scores = map_chunks(chunk_scores, channels.shape[1], chunk)
  return _weighted_sum(jax.nn.softmax(scores, axis=-1), acts, channels), scores, channels


def ablationcam(suffix_fn, acts, logits, weights, *, top_k=None, chunk: int = 16):
  """Ablation-CAM (Desai & Ramaswamy 2020): w_k = (y - y_k) / y, channel k zeroed.

  Args:
    suffix_fn: the network after the layer: channels [B, c] int32 (c ablations of each
      image's A, channel channels[b, j] zeroed in ablation j) -> logits [B, c, classes]
      (`jaxdrift.cam.suffix`). The part before the layer must not be recomputed inside it.
    acts: the layer's activations [B, h, w, K].
    logits: the unablated logits [B, classes] (y is their target score).
    weights: [B, classes] logit weights of the targets.
    top_k: None (every channel) or the number of channels ablated per image.
    chunk: ablations per image in one pass of the suffix.

  Returns:
    (pre-ReLU map [B, h, w], channel weights [B, k], channels [B, k]).
  """
  channels = select_channels(acts, top_k)

  def chunk_scores(ks):
    return target_scores(suffix_fn(channels[:, ks]), weights[:, None, :])

  ablated_scores = map_chunks(chunk_scores, channels.shape[1], chunk)  # y_k, [B, k]
  y = target_scores(logits, weights)[:, None]
  channel_weights = safe_div(y - ablated_scores, jnp.broadcast_to(y, ablated_scores.shape))
  return _weighted_sum(channel_weights, acts, channels), channel_weights, channels
