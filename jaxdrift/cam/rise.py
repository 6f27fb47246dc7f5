"""RISE (Petsiuk et al. 2018): the score-weighted average of random smooth masks.

Mask i of an image: an s x s grid of independent Bernoulli(p) cells (1 = keep), upsampled
bilinearly (half-pixel centres, as the authors' skimage resize) to (s + 1) x cell pixels with
cell = ceil(H / s), then cropped to H x W at a random shift in [0, cell) per axis (and clipped to [0, 1]). The masked
input is x * M_i (0 in the model's input units where a cell is dropped), and

    saliency = sum_i score(x * M_i) M_i / (n_masks p)

with the target LOGIT as score by default (score="probability": the paper's softmax
confidence). The map is ReLU of the saliency. The masks are never stored: `chunk` of them
per image are drawn, evaluated and accumulated at a time inside a `lax.scan`.

Randomness: one typed key per image [B]; mask i of image b is drawn from
fold_in(keys[b], i), so a batch gives the same maps as its images one at a time with the
same keys. Or explicit `masks` [N, H, W] in [0, 1], shared by every image (then no key).

Cost: n_masks + 1 forward passes per image.
"""

import math

import jax
import jax.numpy as jnp

from jaxdrift.cam.gradfree import batched_scores


def rise_mask(key, size, s: int, p: float):
  """One RISE mask [H, W] float32 in [0, 1] (module doc)."""
  h, w = size
  cell_h, cell_w = math.ceil(h / s), math.ceil(w / s)
  k_grid, k_row, k_col = jax.random.split(key, 3)
  grid = jax.random.bernoulli(k_grid, p, (s, s)).astype(jnp.float32)
  up = jax.image.resize(grid, ((s + 1) * cell_h, (s + 1) * cell_w), method="bilinear")
  top = jax.random.randint(k_row, (), 0, cell_h)
  left = jax.random.randint(k_col, (), 0, cell_w)
  # Clipped: the resize rounds some values of an all-ones neighbourhood to 1 + 2e-7.
  return jnp.clip(jax.lax.dynamic_slice(up, (top, left), (h, w)), 0.0, 1.0)


def rise(logits_fn, images, weights, keys=None, masks=None, *, n_masks: int = 4000,
         s: int = 7, p: float = 0.5, score: str = "logit", chunk: int = 16):
  """RISE saliency of a batch (module doc).

  Args:
    logits_fn: images [N, H, W, C] -> logits [N, K].
    images: [B, H, W, C] preprocessed.
    weights: [B, K] logit weights of the targets.
    keys: one typed key per image [B] (random masks), or None with `masks`.
    masks: None, or explicit masks [N, H, W] shared by all images (n_masks = N).
    n_masks, s, p: number of random masks, grid cells per side, keep probability.
    score: "logit" or "probability".
    chunk: masks per image in one forward pass.

  Returns:
    Saliency [B, H, W] float32 (signed; the map is its ReLU).
  """
  size = images.shape[1:3]
  n = n_masks if masks is None else masks.shape[0]
  c = max(1, min(chunk, n))
  n_chunks = -(-n // c)
  ks = jnp.arange(n_chunks * c, dtype=jnp.int32).reshape(n_chunks, c)

  def draw(key, k):
    return rise_mask(jax.random.fold_in(key, k), size, s, p)

  def body(total, ks):
    idx = jnp.minimum(ks, n - 1)
    if masks is None:
      m = jax.vmap(lambda key: jax.vmap(lambda k: draw(key, k))(idx))(keys)  # [B, c, H, W]
    else:
      m = jnp.broadcast_to(masks[idx].astype(jnp.float32), (images.shape[0], c) + size)
    masked = (images[:, None].astype(jnp.float32) * m[..., None]).astype(images.dtype)
    scores = jnp.where(ks < n, batched_scores(logits_fn, masked, weights, score), 0.0)
    return total + jnp.einsum("bc,bchw->bhw", scores, m), None

  total, _ = jax.lax.scan(body, jnp.zeros((images.shape[0],) + size, jnp.float32), ks)
  return total / (n * p)
