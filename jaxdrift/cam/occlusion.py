"""Occlusion (Zeiler & Fergus 2014; captum's Occlusion): the score lost when a patch is hidden.

A square window of `size` pixels slides over the image with step `stride` (positions 0,
stride, 2 stride, ... while the window fits, as captum's sliding windows); each position
replaces the pixels under the window, in every channel, by the baseline and runs the
network. A pixel's attribution is the mean, over the windows that cover it, of
score(x) - score(occluded x); pixels that no window covers (a border that the stride does
not reach) get 0. The map is ReLU of that attribution (the evidence FOR the target).

Baselines (in the model's input units, i.e. after preprocessing): "zero"; "mean" (each
image's per-channel mean); "blur" (the image under a Gaussian blur of `blur_sigma` pixels,
reflected borders, scipy.ndimage.gaussian_filter's truncation at 4 sigma); or an image
[H, W, C] / one per image [B, H, W, C].

Cost: n_windows + 1 forward passes per image, n_windows = n_rows x n_cols with
n_rows = (H - size) // stride + 1.
"""

import jax
import jax.numpy as jnp
import numpy as np

from jaxdrift.cam.gradfree import batched_scores, map_chunks
from jaxdrift.geometry import gaussian_matrix

BASELINES = ("zero", "mean", "blur")
BLUR_TRUNCATE = 4.0


def pair(value, name: str) -> tuple:
  """(rows, cols) from an int or a pair of ints, checked positive."""
  out = (value, value) if isinstance(value, (int, np.integer)) else tuple(value)
  if len(out) != 2 or not all(isinstance(v, (int, np.integer)) and v >= 1 for v in out):
    raise ValueError(f"{name} must be a positive int or a pair of them, got {value!r}")
  return int(out[0]), int(out[1])


def cover_matrix(n: int, size: int, stride: int) -> np.ndarray:
  """[n_windows, n] float32: 1 where window i (start i * stride, `size` long) covers pixel j."""
  if size > n:
    raise ValueError(f"occlusion window of {size} pixels does not fit in {n} pixels; pass "
                     f"size <= {n}")
  starts = np.arange(0, n - size + 1, stride)
  pixels = np.arange(n)
  return ((pixels >= starts[:, None]) & (pixels < starts[:, None] + size)).astype(np.float32)


def n_windows(image_shape, size, stride) -> int:
  """Window positions per image for images [H, W, ...]."""
  (sh, sw), (th, tw) = pair(size, "size"), pair(stride, "stride")
  return ((image_shape[0] - sh) // th + 1) * ((image_shape[1] - sw) // tw + 1)


def blur(image, sigma: float):
  """Gaussian blur of ONE image [H, W, C] with reflected borders (scipy's convention)."""
  h, w = image.shape[:2]
  rows = jnp.asarray(gaussian_matrix(h, float(sigma), BLUR_TRUNCATE), jnp.float32)
  cols = jnp.asarray(gaussian_matrix(w, float(sigma), BLUR_TRUNCATE), jnp.float32)
  return jnp.einsum("Hh,hwc,Ww->HWc", rows, image.astype(jnp.float32), cols,
                    precision=jax.lax.Precision.HIGHEST)


def baseline_images(images, baseline, blur_sigma: float = 5.0, image=None):
  """The baseline of each image [B, H, W, C] float32.

  Args:
    images: [B, H, W, C].
    baseline: "zero", "mean", "blur" or "image" (then `image`, broadcast to the batch).
    blur_sigma: standard deviation of the "blur" baseline in pixels.
    image: [B, H, W, C] baseline images for baseline="image".
  """
  x = images.astype(jnp.float32)
  if baseline == "zero":
    return jnp.zeros_like(x)
  if baseline == "mean":
    return jnp.broadcast_to(jnp.mean(x, axis=(1, 2), keepdims=True), x.shape)
  if baseline == "blur":
    return jax.vmap(blur, in_axes=(0, None))(x, blur_sigma)
  if baseline == "image":
    return jnp.broadcast_to(image.astype(jnp.float32), x.shape)
  raise ValueError(f"baseline must be one of {BASELINES} or an image array, got {baseline!r}")


def occlusion(logits_fn, images, weights, clean_scores, baselines, *, size=32, stride=16,
              score: str = "logit", chunk: int = 16):
  """Occlusion attributions of a batch (module doc).

  Args:
    logits_fn: images [N, H, W, C] -> logits [N, K].
    images: [B, H, W, C] preprocessed.
    weights: [B, K] logit weights of the targets.
    clean_scores: score(x) of the unoccluded images [B] (same `score`).
    baselines: [B, H, W, C] what replaces an occluded pixel.
    size, stride: window side and step in pixels (int or (rows, cols)).
    score: "logit" or "probability".
    chunk: windows per image in one forward pass.

  Returns:
    (attribution [B, H, W] (signed; the map is its ReLU), score drops [B, n_rows, n_cols]).
  """
  (sh, sw), (th, tw) = pair(size, "size"), pair(stride, "stride")
  h, w = images.shape[1:3]
  rows, cols = cover_matrix(h, sh, th), cover_matrix(w, sw, tw)
  n_cols = cols.shape[0]
  rows_j, cols_j = jnp.asarray(rows), jnp.asarray(cols)

  def occluded(x, base, k):
    window = (rows_j[k // n_cols][:, None] * cols_j[k % n_cols][None, :])[..., None] > 0
    return jnp.where(window, base, x.astype(jnp.float32)).astype(x.dtype)

  def chunk_scores(ks):
    per_image = jax.vmap(occluded, in_axes=(None, None, 0))
    inputs = jax.vmap(per_image, in_axes=(0, 0, None))(images, baselines, ks)  # [B,c,H,W,C]
    return batched_scores(logits_fn, inputs, weights, score)

  n = rows.shape[0] * n_cols
  drops = clean_scores[:, None] - map_chunks(chunk_scores, n, chunk)  # [B, n]
  drops = drops.reshape(-1, rows.shape[0], n_cols)
  total = jnp.einsum("rH,brc,cW->bHW", rows_j, drops, cols_j,
                     precision=jax.lax.Precision.HIGHEST)
  count = np.outer(rows.sum(0), cols.sum(0))
  attribution = jnp.where(count > 0, total / np.maximum(count, 1), 0.0)
  return attribution, drops
