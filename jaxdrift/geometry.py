"""Map geometry: where a map's cells sit in the image, bilinear upsampling, Gaussian smoothing.

A leaf module (it imports nothing from jaxdrift) shared by `cam`, `metrics`, `faithfulness`
and `report`, so that every layer places a map's cells the same way:

    big = jaxdrift.geometry.upsample(maps, (224, 224))                  # half-pixel centres
    big = jaxdrift.geometry.upsample(maps, (224, 224), grid=(32, 15.5))  # network's centres

A `grid` is (stride, offset) in output pixels: cell i of the map is centred at pixel
offset + stride * i (`jd.models.cam_grid` gives it for an architecture). None means
half-pixel centres, (i + 0.5) * H / h - 0.5, the convention of `jax.image.resize` and
cv2.resize that most CAM libraries use. Also public as `jd.cam.upsample` and
`jd.metrics.upsample`.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

# Filter along an axis with a dense (n x n) matrix up to this length, above it with shifted
# sums over the 2r + 1 taps (a dense GEMM wastes n / (2r + 1) of its work at large n).
_DENSE_MAX = 64


def check_grid(grid):
  """(stride, offset) as two floats, or a ValueError."""
  stride, offset = (float(v) for v in grid)
  if not stride > 0:
    raise ValueError(f"grid stride must be > 0, got {stride}")
  return stride, offset


def cell_centres(n: int, big: int, grid=None):
  """int32 [n]: the pixel (of an axis of `big` pixels) at the centre of each of n cells,
  rounded and clipped to [0, big - 1]; `grid` None for half-pixel centres."""
  stride, offset = (big / n, (big / n - 1) / 2) if grid is None else check_grid(grid)
  centres = offset + stride * jnp.arange(n)  # half-pixel: (i + 0.5) * big / n - 0.5
  return jnp.clip(jnp.round(centres), 0, big - 1).astype(jnp.int32)


def grid_weights(n_in: int, n_out: int, grid):
  """[n_out, n_in] linear interpolation weights of `upsample` along one axis: output pixel p
  reads the input coordinate (p - offset) / stride, clamped to [0, n_in - 1]."""
  stride, offset = grid
  u = jnp.clip((jnp.arange(n_out, dtype=jnp.float32) - offset) / stride, 0, n_in - 1)
  lo = jnp.floor(u)
  frac = u - lo
  cells = jnp.arange(n_in, dtype=jnp.float32)
  return (jnp.where(cells == lo[:, None], 1 - frac[:, None], 0.0)
          + jnp.where(cells == lo[:, None] + 1, frac[:, None], 0.0))


def upsample(m, resolution, grid=None):
  """Bilinear upsampling of maps [..., h, w] to resolution (H, W), float32.

  Args:
    m: maps [..., h, w] (numpy or jax).
    resolution: (H, W).
    grid: None for half-pixel centres: cell i centred at pixel (i + 0.5) * H / h - 0.5
      (`jax.image.resize(method="bilinear")`, like cv2.resize(INTER_LINEAR), which
      pytorch-grad-cam uses). Or (stride, offset) in output pixels: cell i centred at
      offset + stride * i, where the network's padding and strides put the centre of its
      receptive field (`jd.models.cam_grid`; Keras ResNet50V2's last feature map sits half a
      cell up and left of the half-pixel convention). Pixels beyond the first or last centre
      take the edge value in both cases.

  Returns:
    float32 [..., H, W]. Non-negative maps stay non-negative and an all-zero map stays zero.
  """
  m = jnp.asarray(m, jnp.float32)
  if grid is None:
    return jax.image.resize(m, m.shape[:-2] + tuple(resolution), method="bilinear")
  grid = check_grid(grid)
  rows = grid_weights(m.shape[-2], int(resolution[0]), grid)
  cols = grid_weights(m.shape[-1], int(resolution[1]), grid)
  return jnp.einsum("Hh,...hw,Ww->...HW", rows, m, cols, precision=lax.Precision.HIGHEST)


def gaussian_taps(sigma, truncate):
  """The normalised 1-D Gaussian taps [2r + 1] of scipy.ndimage.gaussian_filter1d."""
  radius = int(truncate * float(sigma) + 0.5)
  x = np.arange(-radius, radius + 1, dtype=np.float64)
  w = np.exp(-0.5 * (x / float(sigma)) ** 2)
  return w / w.sum()


@functools.lru_cache(maxsize=32)
def gaussian_matrix(n, sigma, truncate):
  """The (n, n) float64 matrix G with (G @ x) = gaussian_filter1d(x, mode="reflect")."""
  taps = gaussian_taps(sigma, truncate)
  radius = (taps.size - 1) // 2
  g = np.zeros((n, n))
  rows = np.arange(n)
  for offset, weight in zip(range(-radius, radius + 1), taps):
    # Reflection with period 2n: index j and 2n - 1 - j read the same pixel.
    j = np.mod(rows + offset, 2 * n)
    j = np.where(j >= n, 2 * n - 1 - j, j)
    np.add.at(g, (rows, j), weight)
  return g


def _filter_axis(x, axis, sigma, truncate):
  """Gaussian-filters x [..., H, W] along axis -2 or -1 with reflected borders."""
  n = x.shape[axis]
  taps = gaussian_taps(sigma, truncate)
  radius = (taps.size - 1) // 2
  if n <= _DENSE_MAX or radius >= n:
    g = jnp.asarray(gaussian_matrix(n, float(sigma), float(truncate)), jnp.float32)
    if axis == -2:
      return jnp.einsum("ij,...jw->...iw", g, x)
    return jnp.einsum("...hj,ij->...hi", x, g)
  pad = [(0, 0)] * x.ndim
  pad[axis] = (radius, radius)
  padded = jnp.pad(x, pad, mode="symmetric")
  out = 0.0
  for t, weight in enumerate(taps.astype(np.float32)):
    window = padded[..., t:t + n, :] if axis == -2 else padded[..., t:t + n]
    out = out + weight * window
  return out


def gaussian_filter(x, sigma=1.5, truncate=3.5):
  """2-D Gaussian filter of x [..., H, W] (scipy.ndimage mode "reflect"), float32.

  The taps are scipy.ndimage.gaussian_filter's: radius int(truncate * sigma + 0.5) pixels.
  """
  x = _filter_axis(x, -2, sigma, truncate)
  return _filter_axis(x, -1, sigma, truncate)
