"""Named post-processing steps for raw maps: upsampling and normalisation."""

import jax.numpy as jnp

from jaxdrift import metrics


def safe_div(num, den):
  """num / den, and 0 where den == 0 (no NaN, and no NaN gradient either)."""
  ok = den != 0
  return jnp.where(ok, num / jnp.where(ok, den, 1.0), 0.0)


def upsample(maps, size, grid=None):
  """Bilinear resize of maps [B, h, w] (or [h, w]) to `size` = (H, W), float32.

  By default the cells sit at half-pixel centres (output pixel i reads input coordinate
  (i + 0.5) * h / H - 0.5) and the border is clamped: `jax.image.resize(method="bilinear")`,
  the convention of OpenCV's cv2.resize(INTER_LINEAR) that pytorch-grad-cam uses
  (tf-keras-vis uses scipy.ndimage.zoom order 1, captum nearest, xplique bicubic). With
  `grid` = (stride, offset) from `jd.models.cam_grid`, cell i sits where the network
  centred it, pixel offset + stride * i (`jd.metrics.upsample`). Non-negative maps stay
  non-negative and an all-zero map stays zero.
  """
  return metrics.upsample(jnp.asarray(maps, jnp.float32), size, grid)


def normalize(maps, mode: str = "max"):
  """Per-map normalisation, a separate step (drift metrics use raw maps).

  Args:
    maps: [..., h, w].
    mode: "max" (m / max m), "minmax" ((m - min) / (max - min)) or "sum" (m / sum m).

  Returns:
    Maps of the same shape; an all-zero (or constant, for "minmax") map becomes zeros,
    never NaN.
  """
  maps = jnp.asarray(maps, jnp.float32)
  axes = (-2, -1)
  if mode == "max":
    num, den = maps, jnp.max(maps, axis=axes, keepdims=True)
  elif mode == "minmax":
    low = jnp.min(maps, axis=axes, keepdims=True)
    num, den = maps - low, jnp.max(maps, axis=axes, keepdims=True) - low
  elif mode == "sum":
    num, den = maps, jnp.sum(maps, axis=axes, keepdims=True)
  else:
    raise ValueError(f"mode must be 'max', 'minmax' or 'sum', got {mode!r}")
  return safe_div(num, den)
