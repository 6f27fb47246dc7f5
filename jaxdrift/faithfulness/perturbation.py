"""Deletion and insertion curves (Petsiuk et al. 2018, the RISE paper) of attribution maps.

Each map is upsampled to the image size (`jaxdrift.geometry.upsample`, the same `grid` argument as
the drift metrics) and ranks the pixels: value descending, ties by flat row-major index
ascending. At step i = 0..steps the first n_i = round(i * H * W / steps) ranked pixels
(halves rounded up) are

- deletion: replaced by the baseline image (the score should FALL fast: lower AUC is better);
- insertion: revealed on the baseline image (the score should RISE fast: higher AUC is better),

and the target's score is read: its softmax probability over all K logits (`score=
"probability"`, as in the paper) or its logit (`score="logit"`). A pixel is replaced in
every channel. The AUC is the trapezoid rule over x = i / steps, in [0, 1] for
probabilities.

Baselines live in the model's input space (after preprocessing):
- "blur" (default): the image under a Gaussian blur of `blur_sigma` = 5 pixels per channel,
  truncated at 4 sigma, reflected borders (scipy.ndimage.gaussian_filter's mode "reflect");
  the RISE code used sigma 5 with an 11-pixel kernel and zero borders.
- "mean": each image's per-channel mean; "zero": zeros (for Keras "tf" preprocessing that
  is mid-grey; a black image is -1); or an array [H, W, C] or [B, H, W, C].
A constant baseline makes deletion measure, in part, how the model responds to images
unlike any it was trained on (see `road` and docs/faithfulness.md).
"""

import jax
import jax.numpy as jnp
import numpy as np

from jaxdrift import geometry
from jaxdrift.faithfulness import runner

BASELINES = ("blur", "mean", "zero")
BLUR_TRUNCATE = 4.0
TIE_RULE = "value descending, then flat row-major index ascending"


def blur(images, sigma, truncate=BLUR_TRUNCATE):
  """Gaussian blur of images [B, H, W, C] per channel, reflected borders, float32."""
  x = jnp.moveaxis(images.astype(jnp.float32), -1, 1)
  return jnp.moveaxis(geometry.gaussian_filter(x, sigma, truncate), 1, -1)


def prepare_inputs(images, extra, *, baseline, blur_sigma, mode):
  del mode
  if baseline == "blur":
    return blur(images, blur_sigma)
  if baseline == "mean":
    return jnp.broadcast_to(jnp.mean(images, axis=(1, 2), keepdims=True), images.shape)
  if baseline == "zero":
    return jnp.zeros_like(images)
  return extra.astype(images.dtype)


def perturb_one(image, base, rank, count, step, *, baseline, blur_sigma, mode):
  """One perturbed image [H, W, C]: the first `count` ranked pixels from `base` (deletion)
  or from `image` on `base` (insertion)."""
  del step, baseline, blur_sigma
  first = (rank < count)[..., None]
  if mode == "deletion":
    return jnp.where(first, base, image)
  return jnp.where(first, image, base)


def _baseline_array(baseline, images):
  if isinstance(baseline, str):
    if baseline not in BASELINES:
      raise ValueError(f"baseline must be one of {BASELINES} or an image array, got "
                       f"{baseline!r}")
    return baseline, None
  array = jnp.asarray(baseline, jnp.float32)
  shape = tuple(images.shape)
  if array.shape == shape[1:]:
    array = jnp.broadcast_to(array, shape)
  if array.shape != shape:
    raise ValueError(f"a baseline array must be [H, W, C] = {shape[1:]} or [B, H, W, C] = "
                     f"{shape}, got {array.shape}")
  return "array", array


def trapezoid_auc(curve):
  """Area under curves [B, S + 1] over x = i / S (trapezoid rule) -> [B]."""
  steps = curve.shape[-1] - 1
  return (jnp.sum(curve, axis=-1) - 0.5 * (curve[..., 0] + curve[..., -1])) / steps


def _curve(mode, logits_fn, images, maps, targets, steps, baseline, score, grid, blur_sigma,
           chunk, mesh):
  if not isinstance(steps, (int, np.integer)) or steps < 1:
    raise ValueError(f"steps must be a positive int, got {steps!r}")
  images = jnp.asarray(images)
  if images.ndim != 4:
    raise ValueError(f"images must be [B, H, W, C], got shape {images.shape}")
  kind, extra = _baseline_array(baseline, images)
  n = images.shape[1] * images.shape[2]
  counts = runner.round_counts((np.arange(steps + 1), steps), n)
  options = (("baseline", kind), ("blur_sigma", float(blur_sigma)), ("mode", mode))
  curve = runner.evaluate(logits_fn, images, maps, targets, counts, perturb=perturb_one,
                          prepare=prepare_inputs, options=options, extra=extra, score=score,
                          grid=grid, chunk=chunk, mesh=mesh)
  settings = {"method": mode, "steps": int(steps), "score": score,
              "baseline": kind if kind != "blur" else f"blur(sigma={float(blur_sigma)}px, "
                                                      f"truncate={BLUR_TRUNCATE}, reflect)",
              "ties": TIE_RULE, "rounding": "round(i * H * W / steps), halves up",
              "upsampling": "bilinear, " + ("half-pixel centres" if grid is None
                                            else f"grid (stride, offset) = {tuple(grid)}"),
              "auc": "trapezoid over x = i / steps"}
  return {"curve": curve, "auc": trapezoid_auc(curve), "x": counts / n, "settings": settings}


def deletion(logits_fn, images, maps, targets, *, steps=50, baseline="blur",
             score="probability", grid=None, blur_sigma=5.0, chunk=None, mesh=None):
  """Deletion curve and AUC of each map (lower AUC = the map finds what the model uses).

  Args:
    logits_fn: images [b, H, W, C] -> logits [b, K], e.g.
      `functools.partial(model.apply, variables, train=False)` (its arrays are passed to
      the compiled program, so new variables do not recompile; see `runner`).
    images: [B, H, W, C] float, as the model takes them (preprocessed).
    maps: [B, h, w] attribution maps (any resolution; upsampled bilinearly to H x W).
    targets: int [B], the class whose score is followed.
    steps: number of steps; the curve has steps + 1 points (0 and all pixels included).
    baseline: "blur", "mean", "zero" or an array [H, W, C] / [B, H, W, C] (module doc).
    score: "probability" (softmax of the target) or "logit".
    grid: None (half-pixel centres) or (stride, offset) from `jd.models.cam_grid`.
    blur_sigma: standard deviation of the "blur" baseline, in pixels.
    chunk: steps per forward pass (default: about 256 perturbed images per device and pass).
    mesh: a mesh with a "data" axis (default: every device).

  Returns:
    {"curve": [B, steps + 1] scores, "auc": [B], "x": [steps + 1] fraction of pixels
    actually replaced at each step, "settings": every choice, named}.
  """
  return _curve("deletion", logits_fn, images, maps, targets, steps, baseline, score, grid,
                blur_sigma, chunk, mesh)


def insertion(logits_fn, images, maps, targets, *, steps=50, baseline="blur",
              score="probability", grid=None, blur_sigma=5.0, chunk=None, mesh=None):
  """Insertion curve and AUC of each map (higher AUC = better); arguments as `deletion`.

  Step i shows the first n_i ranked pixels of the image on the baseline (step 0 is the
  baseline alone, step `steps` the whole image).
  """
  return _curve("insertion", logits_fn, images, maps, targets, steps, baseline, score, grid,
                blur_sigma, chunk, mesh)
