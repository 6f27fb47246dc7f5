"""Localisation against ground-truth masks, without Quantus's known bugs."""

import numpy as np
import pytest

import jaxdrift as jd

M = jd.metrics

MASK = np.zeros((4, 5), bool)
MASK[1:3, 1:3] = True  # 4 pixels


def f(x):
  return float(np.asarray(x))


def test_pointing_game_hit_and_miss():
  m = np.zeros((4, 5), np.float32)
  m[2, 2] = 1.0
  assert f(M.pointing_game(m, MASK)) == 1.0
  m[0, 4] = 2.0
  assert f(M.pointing_game(m, MASK)) == 0.0
  # The peak (0, 4) is sqrt(5) px from the nearest mask pixel (1, 2).
  assert f(M.pointing_game(m, MASK, tolerance=2.2)) == 0.0
  assert f(M.pointing_game(m, MASK, tolerance=2.3)) == 1.0


def test_pointing_game_all_equal_is_a_miss_and_invalid_is_nan():
  assert f(M.pointing_game(np.full((4, 5), 3.0, np.float32), MASK)) == 0.0  # never a hit
  assert np.isnan(f(M.pointing_game(np.zeros((4, 5), np.float32), MASK)))  # all-zero
  nan_map = np.ones((4, 5), np.float32)
  nan_map[1, 1] = np.nan
  assert np.isnan(f(M.pointing_game(nan_map, MASK)))  # NaN is not True
  inf_map = np.zeros((4, 5), np.float32)
  inf_map[1, 1] = np.inf
  assert np.isnan(f(M.pointing_game(inf_map, MASK)))
  assert np.isnan(f(M.pointing_game(np.eye(4, 5, dtype=np.float32), np.zeros((4, 5), bool))))


def test_pointing_game_places_a_coarse_peak_at_its_cell_centre():
  # A 3x3 map over a 12x12 mask: cells of 4 px, centres at 1.5, 5.5, 9.5 (rounded 2, 6, 10).
  mask = np.zeros((12, 12), bool)
  mask[4:8, 1:4] = True  # inside the middle-left cell, off the image border
  m = np.zeros((3, 3), np.float32)
  m[1, 0] = 1.0
  assert f(M.pointing_game(m, mask)) == 1.0
  # Upsampled, the edge cell is a plateau reaching the border, whose first maximum (col 0)
  # misses: the reason the coarse peak is placed at its cell's centre.
  up = np.asarray(M.upsample(m, (12, 12)))
  assert f(M.pointing_game(up, mask)) == 0.0
  # An interior peak lands where the upsampled map has its maximum.
  m = np.zeros((3, 3), np.float32)
  m[1, 1] = 1.0
  mask = np.zeros((12, 12), bool)
  mask[5:7, 5:7] = True  # the centre 5.5 falls between pixels; either side is the peak
  up = np.asarray(M.upsample(m, (12, 12)))
  assert f(M.pointing_game(m, mask)) == f(M.pointing_game(up, mask)) == 1.0
  with pytest.raises(ValueError, match="h <= H"):
    M.pointing_game(np.ones((13, 3), np.float32), mask)


def test_pointing_chance_counts_cells_whose_centre_hits():
  mask = np.zeros((12, 12), bool)
  mask[4:8, 1:4] = True  # holds the centre (6, 2) of cell (1, 0) of a 3x3 map, no other
  assert f(M.pointing_chance((3, 3), mask)) == pytest.approx(1 / 9)
  # Centres (rounded half to even) at rows/cols 2, 6, 10: (2, 2) is 2 px from the mask,
  # (10, 2) and (6, 6) are 3 px, (2, 6) is sqrt(13) px.
  assert f(M.pointing_chance((3, 3), mask, tolerance=2.0)) == pytest.approx(2 / 9)
  assert f(M.pointing_chance((3, 3), mask, tolerance=3.0)) == pytest.approx(4 / 9)
  assert f(M.pointing_chance((12, 12), mask)) == pytest.approx(12 / 144)
  assert np.isnan(f(M.pointing_chance((3, 3), np.zeros((12, 12), bool))))


def test_pointing_chance_matches_a_euclidean_distance_transform():
  """The cell-centre hit test against scipy's exact distance transform, on lesion-like and
  scattered masks, coarse and full-resolution maps, integer and fractional tolerances."""
  from scipy import ndimage
  rng = np.random.default_rng(3)
  yy, xx = np.mgrid[:40, :48]
  masks = [(yy - 11) ** 2 / 30 + (xx - 30) ** 2 / 12 < 1, rng.random((40, 48)) > 0.995,
           np.zeros((40, 48), bool)]
  masks[2][39, 0] = True  # one corner pixel
  for mask in masks:
    distance = ndimage.distance_transform_edt(~mask)
    for shape, grid in (((5, 6), (8.0, 3.0)), ((5, 6), None), ((40, 48), None)):
      if grid is None:
        rows = np.clip(np.round((np.arange(shape[0]) + 0.5) * 40 / shape[0] - 0.5), 0, 39)
        cols = np.clip(np.round((np.arange(shape[1]) + 0.5) * 48 / shape[1] - 0.5), 0, 47)
      else:
        rows, cols = (np.clip(np.round(grid[1] + grid[0] * np.arange(n)), 0, big - 1)
                      for n, big in zip(shape, (40, 48)))
      at_centres = distance[rows.astype(int)[:, None], cols.astype(int)[None, :]]
      for tolerance in (0.0, 1.0, 2.5, 7.3):
        expected = np.mean(at_centres <= tolerance)
        assert f(M.pointing_chance(shape, mask, tolerance, grid)) == pytest.approx(expected)


def test_energy_inside_and_mask_iou_hand():
  m = np.zeros((4, 5), np.float32)
  m[1, 1], m[2, 2], m[0, 0] = 3.0, 1.0, 4.0
  assert f(M.energy_inside(m, MASK)) == pytest.approx(0.5)
  # N = 20, q = 0.1 -> k = 2: top values 4 and 3 -> {(0,0), (1,1)}; with the mask: 1 / 5.
  assert f(M.mask_iou(m, MASK, q=0.1)) == pytest.approx(1 / 5)
  # q = 0.2 -> k = 4, threshold 0: only the 3 positive pixels: inter 2, union 5.
  assert f(M.mask_iou(m, MASK, q=0.2)) == pytest.approx(2 / 5)


def test_localize_batch_with_resolution():
  maps = np.zeros((3, 2, 2), np.float32)
  maps[0, 0, 0] = 1.0  # upsampled peak lands at the top-left corner
  maps[1] = 1.0  # constant: a miss
  # maps[2] all zero: invalid
  masks = np.zeros((3, 4, 4), bool)
  masks[:, :2, :2] = True
  out = M.localize(maps, masks, resolution=(4, 4))
  np.testing.assert_array_equal(np.asarray(out["pointing_game"])[:2], [1.0, 0.0])
  assert np.isnan(out["pointing_game"][2]) and out["valid"].tolist() == [True, True, False]
  assert f(out["energy_inside"][1]) == pytest.approx(0.25)
  with pytest.raises(ValueError, match="masks"):
    M.localize(maps, masks[:, :2])


def test_a_grid_places_cells_where_the_network_centred_them():
  # A 3x3 map of stride 4 whose cell i is centred on pixel 4 i (ResNet50V2-like): the peak
  # cell (1, 1) sits on pixel (4, 4), not on the half-pixel centre (5.5 -> 6, 6).
  m = np.zeros((3, 3), np.float32)
  m[1, 1] = 1.0
  mask = np.zeros((12, 12), bool)
  mask[3:5, 3:5] = True
  grid = (4.0, 0.0)
  assert f(M.pointing_game(m, mask)) == 0.0
  assert f(M.pointing_game(m, mask, grid=grid)) == 1.0
  assert f(M.pointing_chance((3, 3), mask, grid=grid)) == pytest.approx(1 / 9)
  up = np.asarray(M.upsample(m, (12, 12), grid))
  assert np.unravel_index(up.argmax(), up.shape) == (4, 4)
  np.testing.assert_allclose(up[[0, 4, 8], :][:, [0, 4, 8]], m)  # cell values at centres
  np.testing.assert_allclose(up[4, 2], 0.5)  # linear between centres
  assert (up[9:, :] == up[8:9, :]).all()  # clamped beyond the last centre
  out = M.localize(m[None], mask[None], resolution=(12, 12), grid=grid)
  assert f(out["pointing_game"][0]) == 1.0
  assert f(out["energy_inside"][0]) == pytest.approx(up[mask].sum() / up.sum())


def test_upsample_with_the_half_pixel_grid_is_jax_image_resize():
  m = np.random.default_rng(0).random((2, 5, 5)).astype(np.float32)
  for size in (160, 203):
    half_pixel = (size / 5, (size / 5 - 1) / 2)
    np.testing.assert_allclose(M.upsample(m, (size, size), half_pixel),
                               M.upsample(m, (size, size)), atol=1e-6)
  with pytest.raises(ValueError, match="stride"):
    M.upsample(m, (10, 10), (0.0, 1.0))
