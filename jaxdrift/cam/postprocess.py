"""Named post-processing steps for raw maps: normalisation and a NaN-free division.

Upsampling is the map geometry's (`jaxdrift.geometry.upsample`, public as `jd.cam.upsample`
and `jd.metrics.upsample`).
"""

import jax.numpy as jnp


def safe_div(num, den):
  """num / den, and 0 where den == 0 (no NaN, and no NaN gradient either)."""
  ok = den != 0
  return jnp.where(ok, num / jnp.where(ok, den, 1.0), 0.0)


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
