"""`Augment` in JAX: the radiograph-safe training augmentation, per example, on the device.

    images = augment_batch(key, epoch, index, images_u8, Augment())   # [B, S, S, C] float32

The same operations as the host pipeline's `Augment` (`jaxdrift.data.pipeline`), drawn from
the same ranges, in the same order:

  1. a random affine warp about the image centre: rotation in [-rotation, rotation] degrees,
     zoom in [1 - zoom, 1 + zoom], shift in [-shift, shift] x side per axis, and (only when
     `horizontal_flip`) a left-right flip with probability 1/2; bilinear sampling with
     half-pixel centres (PIL's convention), black outside the image;
  2. contrast around each channel's mean (factor in [1 - contrast, 1 + contrast]) plus a
     brightness offset in [-brightness, brightness] x 255, clipped to 0..255.

Differences from the host path, by design: the draws come from a JAX key, not numpy, and the
warped image is not rounded to uint8 in between (PIL's is). A step with every range 0 is
skipped (a static check), so `NO_AUGMENT` returns the input exactly, as on the host.

Keys: example `index` in epoch `epoch` uses `fold_in(fold_in(key, epoch), index)`, so its
augmentation depends on neither the batch it lands in nor the device count, and a resumed
run draws what an unbroken one drew.
"""

import jax
import jax.numpy as jnp

from jaxdrift.data.pipeline import NO_AUGMENT, Augment


def draw(key: jax.Array, aug: Augment, size: int) -> dict:
  """The random parameters of one example.

  Args:
    key: the example's PRNG key.
    aug: ranges.
    size: image side in pixels (shifts are fractions of it).

  Returns:
    float32 scalars "angle" (radians), "zoom", "tx", "ty" (pixels), "flip" (bool),
    "factor" (contrast), "offset" (grey levels).
  """
  # One draw of 7 uniforms (not 6 keys and 6 draws): a third of the cost per example.
  u = jax.random.uniform(key, (7,), jnp.float32)
  span = lambda v, r, c=0.0: (c - r) + (2.0 * r) * v  # noqa: E731  [0, 1) -> [c - r, c + r)
  return {"angle": jnp.deg2rad(span(u[0], aug.rotation)),
          "zoom": span(u[1], aug.zoom, 1.0), "tx": span(u[2], aug.shift) * size,
          "ty": span(u[3], aug.shift) * size,
          "flip": jnp.logical_and(aug.horizontal_flip, u[4] < 0.5),
          "factor": span(u[5], aug.contrast, 1.0),
          "offset": span(u[6], aug.brightness) * 255.0}


def affine_coefficients(params: dict, size: int) -> jax.Array:
  """float32 [6] (a, b, c, d, e, f): output (x, y) -> input (a x + b y + c, d x + e y + f).

  x, y are continuous coordinates (pixel j covers [j, j + 1)), PIL's AFFINE convention; the
  same map as the host pipeline's: input = R(-angle) / zoom @ (F @ (out - c) - t) + c.
  """
  centre = size / 2.0
  cos = jnp.cos(params["angle"]) / params["zoom"]
  sin = jnp.sin(params["angle"]) / params["zoom"]
  fx = jnp.where(params["flip"], -1.0, 1.0)
  tx, ty = params["tx"], params["ty"]
  a, b = cos * fx, sin
  d, e = -sin * fx, cos
  cx = centre - a * centre - b * centre - (cos * tx + sin * ty)
  cy = centre - d * centre - e * centre - (-sin * tx + cos * ty)
  return jnp.stack([a, b, cx, d, e, cy])


def warp(image: jax.Array, coefficients: jax.Array) -> jax.Array:
  """Bilinear affine warp of one image, zero outside it.

  Args:
    image: float32 [S, S, C].
    coefficients: [6], see `affine_coefficients`.

  Returns:
    float32 [S, S, C].
  """
  h, w = image.shape[:2]
  a, b, c, d, e, f = coefficients
  ys, xs = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32) + 0.5,
                        jnp.arange(w, dtype=jnp.float32) + 0.5, indexing="ij")
  # Sampling positions in pixel-index units (pixel j's centre at j).
  col = a * xs + b * ys + c - 0.5
  row = d * xs + e * ys + f - 0.5
  r0, c0 = jnp.floor(row), jnp.floor(col)
  fr, fc = row - r0, col - c0
  r0, c0 = r0.astype(jnp.int32), c0.astype(jnp.int32)

  def tap(r, cc, weight):
    # One gather per tap: on a CPU, XLA runs these ~30x faster than a single gather of
    # all four taps from the flattened image.
    inside = (r >= 0) & (r < h) & (cc >= 0) & (cc < w)
    value = image[jnp.clip(r, 0, h - 1), jnp.clip(cc, 0, w - 1)]
    return jnp.where(inside, weight, 0.0)[..., None] * value

  return (tap(r0, c0, (1 - fr) * (1 - fc)) + tap(r0, c0 + 1, (1 - fr) * fc)
          + tap(r0 + 1, c0, fr * (1 - fc)) + tap(r0 + 1, c0 + 1, fr * fc))


def photometric(image: jax.Array, factor, offset) -> jax.Array:
  """Contrast around each channel's mean, plus an offset, clipped to 0..255 ([S, S, C])."""
  mean = jnp.mean(image, axis=(0, 1), keepdims=True)
  return jnp.clip((image - mean) * factor + mean + offset, 0.0, 255.0)


def augment_image(key: jax.Array, image: jax.Array, aug: Augment) -> jax.Array:
  """One example: uint8 or float [S, S, C] in 0..255 -> float32 [S, S, C] in 0..255."""
  x = image.astype(jnp.float32)
  if aug == NO_AUGMENT:
    return x
  params = draw(key, aug, x.shape[0])
  if aug.rotation or aug.zoom or aug.shift or aug.horizontal_flip:
    x = warp(x, affine_coefficients(params, x.shape[0]))
  if aug.contrast or aug.brightness:
    x = photometric(x, params["factor"], params["offset"])
  return x


def example_keys(key: jax.Array, epoch, index: jax.Array) -> jax.Array:
  """Per-example keys `fold_in(fold_in(key, epoch), index)` for int indices [B]."""
  epoch_key = jax.random.fold_in(key, epoch)
  return jax.vmap(lambda i: jax.random.fold_in(epoch_key, i))(index)


def augment_batch(key: jax.Array, epoch, index: jax.Array, images: jax.Array,
                  aug: Augment) -> jax.Array:
  """`augment_image` over a batch, each example with its own key (see `example_keys`).

  Args:
    key: the run's augmentation key.
    epoch: int (traced or not); the global epoch.
    index: int [B], the examples' record indices in the source.
    images: uint8 or float [B, S, S, C] in 0..255.
    aug: ranges (static).

  Returns:
    float32 [B, S, S, C] in 0..255.
  """
  if aug == NO_AUGMENT:
    return images.astype(jnp.float32)
  keys = example_keys(key, epoch, index)
  return jax.vmap(lambda k, x: augment_image(k, x, aug))(keys, images)
