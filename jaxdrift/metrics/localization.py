"""Attribution maps against ground-truth masks (phantoms): are the maps right, not only moved?

Single-map functions take a map [H, W] and a boolean mask [H, W] of the same shape, are pure,
jittable and vmappable. An invalid map (not all finite, or sum <= 0) or an empty mask gives
NaN, never a hit: unlike Quantus, an all-zero map is not a pointing-game hit and NaN is not
cast to True.
"""

import jax
import jax.numpy as jnp

from jaxdrift.geometry import cell_centres, check_grid, upsample
from jaxdrift.metrics import maps as maps_lib


def _check(m, mask):
  m = jnp.asarray(m, jnp.float32)
  mask = jnp.asarray(mask).astype(bool)
  if m.ndim != 2 or m.shape != mask.shape:
    raise ValueError(f"expected a map [H, W] and a mask of the same shape, got {m.shape} and "
                     f"{mask.shape}; resize the map first (jd.metrics.upsample)")
  return m, mask


def _defined(m, mask):
  return maps_lib.is_valid(m) & jnp.any(mask)


def _cell_hits(shape, mask, tolerance: float, grid=None):
  """bool [h, w]: for a map of `shape` (h, w), whether each cell's centre in mask pixels
  (`jaxdrift.geometry.cell_centres`) lies within `tolerance` (Euclidean, in pixels) of a
  mask pixel."""
  if len(shape) != 2 or mask.ndim != 2 or shape[0] > mask.shape[0] or shape[1] > mask.shape[1]:
    raise ValueError(f"expected a map [h, w] and a mask [H, W] with h <= H and w <= W, got "
                     f"{tuple(shape)} and {mask.shape}")
  rows, cols = (cell_centres(n, big, grid) for n, big in zip(shape, mask.shape))
  if tolerance == 0:
    return mask[rows[:, None], cols[None, :]]
  # Exact Euclidean test in two separable passes (memory h*H*W + h*w*W, not a dilation of
  # the whole mask by a disk): the squared distance from each centre row to the nearest
  # mask pixel of every column, then the nearest column within tolerance of each centre.
  ys = jnp.arange(mask.shape[0], dtype=jnp.float32)
  dy2 = jnp.min(jnp.where(mask[None], (ys[None, :, None] - rows[:, None, None]) ** 2, jnp.inf),
                axis=1)  # [h, W]
  dx2 = (jnp.arange(mask.shape[1], dtype=jnp.float32)[None, :] - cols[:, None]) ** 2  # [w, W]
  return jnp.any(dy2[:, None, :] + dx2[None, :, :] <= jnp.float32(tolerance) ** 2, axis=-1)


def pointing_game(m, mask, tolerance=0.0, grid=None):
  """1.0 if the map's maximum lies in the mask (within `tolerance` pixels), else 0.0.

  The map may be coarser than the mask (a CAM at its layer's resolution): its peak cell is
  then placed at the cell's centre in mask pixels, rounded: offset + stride * row with a
  `grid`, else (row + 0.5) * H / h - 0.5 (half-pixel centres), likewise for columns. That is
  where a bilinear upsampling (`jd.metrics.upsample` with the same grid) has its maximum,
  but without the plateau an upsampled EDGE cell leaves on the image border, where "the
  first maximum" would point at pixel 0 instead of the cell. The peak is the first in
  row-major order on ties. A map whose values are all equal (constant, no maximum to point
  with) is a MISS (0.0), never a hit. NaN if the map is invalid (all-zero, NaN, Inf) or the
  mask is empty. `pointing_chance` is the hit rate of a peak at a random cell.

  Args:
    m: [h, w] attribution map, h <= H and w <= W.
    mask: [H, W] bool ground truth.
    tolerance: Euclidean distance in mask pixels from the peak to the nearest mask pixel
      that still counts as a hit (Zhang et al. use 15 px at 224). A Python number.
    grid: optional (stride, offset) in mask pixels: where the network centres the map's
      cells (`jd.models.cam_grid`). A Python tuple.

  Returns:
    Scalar float32 in {0, 1} or NaN.
  """
  m = jnp.asarray(m, jnp.float32)
  mask = jnp.asarray(mask).astype(bool)
  return _point(m, mask, _cell_hits(m.shape, mask, tolerance, grid))


def _point(m, mask, hits):
  """`pointing_game` given the map's cell hits [h, w] (`_cell_hits`)."""
  row, col = jnp.nan_to_num(maps_lib.peak(m)).astype(jnp.int32)
  hit = hits[row, col] & (jnp.max(m) > jnp.min(m))
  return jnp.where(_defined(m, mask), hit.astype(jnp.float32), jnp.nan)


def _chance(mask, hits):
  """`pointing_chance` given the map's cell hits [h, w]."""
  return jnp.where(jnp.any(mask), jnp.mean(hits.astype(jnp.float32)), jnp.nan)


def pointing_chance(shape, mask, tolerance=0.0, grid=None):
  """The pointing game's chance level: the share of a [h, w] map's cells whose centre
  counts as a hit (a map peaking at a uniformly random cell); NaN for an empty mask.

  Report it beside the hit rate: a large lesion on a coarse grid is easy to point at.
  """
  mask = jnp.asarray(mask).astype(bool)
  return _chance(mask, _cell_hits(tuple(shape), mask, tolerance, grid))


def energy_inside(m, mask):
  """Share of the map's mass inside the mask: sum(m * mask) / sum(m); NaN if undefined."""
  m, mask = _check(m, mask)
  value = maps_lib.fsum(jnp.where(mask, m, 0.0)) / maps_lib.fsum(m)
  return jnp.where(_defined(m, mask), value, jnp.nan)


def mask_iou(m, mask, q=0.2, method="auto"):
  """IoU of the map's top-q mask (m >= t) & (m > 0), t its k-th largest value with
  k = ceil(q N) (as `jd.metrics.iou`), with the ground-truth mask; NaN if undefined."""
  m, mask = _check(m, mask)
  top = maps_lib.top_mask(m, maps_lib.threshold(m, q, method))
  inter = jnp.sum(top & mask).astype(jnp.float32)
  union = jnp.sum(top | mask).astype(jnp.float32)
  return jnp.where(_defined(m, mask), inter / union, jnp.nan)


def _localize_one(m, mask, q, tolerance, resolution, grid):
  fine = m if resolution is None else upsample(m, resolution, grid)
  hits = _cell_hits(m.shape, mask, tolerance, grid)  # shared by the hit and its chance level
  return dict(pointing_game=_point(m, mask, hits),
              pointing_chance=_chance(mask, hits),
              energy_inside=energy_inside(fine, mask),
              mask_iou=mask_iou(fine, mask, q),
              valid=_defined(fine, mask))


_localize = jax.jit(jax.vmap(_localize_one, in_axes=(0, 0, None, None, None, None)),
                    static_argnums=(2, 3, 4, 5))


def localize(maps, masks, q=0.2, tolerance=0.0, resolution=None, grid=None):
  """All localisation scores for a batch, in one jitted call.

  Args:
    maps: [B, h, w] attribution maps (numpy or jax).
    masks: [B, H, W] bool ground-truth masks; H, W = resolution or (h, w).
    q: top fraction for `mask_iou`.
    tolerance: pointing-game tolerance in pixels.
    resolution: optional (H, W) to upsample the maps to for energy and IoU (bilinear, cells
      at `grid` or half-pixel centres); the pointing game places the native map's peak cell
      (`pointing_game`).
    grid: optional (stride, offset) in mask pixels: where the network centres the map's
      cells (`jd.models.cam_grid`), for the pointing game and the upsampling; None for
      half-pixel centres.

  Returns:
    dict of [B]: "pointing_game" (1/0/NaN), "pointing_chance" (its random-peak level),
    "energy_inside", "mask_iou" (NaN where undefined) and "valid" (bool: map valid and mask
    non-empty). The hit rate is
    nanmean(pointing_game) over valid samples; report the invalid count beside it.
  """
  maps = jnp.asarray(maps, jnp.float32)
  masks = jnp.asarray(masks).astype(bool)
  resolution = None if resolution is None else tuple(int(s) for s in resolution)
  expected = (maps.shape[0],) + (resolution or maps.shape[1:])
  if maps.ndim != 3 or masks.shape != expected:
    raise ValueError(f"expected maps [B, h, w] and masks {expected}, got {maps.shape} and "
                     f"{masks.shape}")
  grid = None if grid is None else check_grid(grid)
  return _localize(maps, masks, float(q), float(tolerance), resolution, grid)
