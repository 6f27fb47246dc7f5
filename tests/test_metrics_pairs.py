"""Single-pair drift metrics: hand-computed values on tiny maps, and properties."""

import math

import jax
import numpy as np
import pytest

import jaxdrift as jd

M = jd.metrics

# Two 2x4 maps worked by hand (comments give the arithmetic).
A = np.array([[0, 1, 0, 0], [0, 0, 0, 3]], np.float32)  # sum 4, centroid (0.75, 2.5)
B = np.array([[2, 0, 0, 0], [0, 0, 0, 2]], np.float32)  # sum 4, centroid (0.5, 1.5)
DIAG = math.sqrt(2 ** 2 + 4 ** 2)
H_A = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75)) / math.log(8)


def f(x):
  return float(np.asarray(x))


def test_displacement_hand():
  assert f(M.displacement(A, B)) == pytest.approx(math.hypot(0.25, 1.0) / DIAG, abs=1e-7)


def test_peak_displacement_hand_first_maximum_on_ties():
  # argmax(A) = (1, 3); B has two maxima, the first in row-major order is (0, 0).
  assert f(M.peak_displacement(A, B)) == pytest.approx(math.sqrt(10) / DIAG, abs=1e-7)


def test_iou_hand():
  # N = 8, q = 0.2 -> k = 2; t(A) = 1 -> {(0,1), (1,3)}; t(B) = 2 -> {(0,0), (1,3)}.
  assert f(M.iou(A, B, q=0.2)) == pytest.approx(1 / 3, abs=1e-7)
  # q = 0.5 -> k = 4, t = 0: the (m > 0) rule keeps zeros out, the masks stay the same.
  assert f(M.iou(A, B, q=0.5)) == pytest.approx(1 / 3, abs=1e-7)
  # q = 1/8 -> k = 1: {(1,3)} vs {(0,0), (1,3)} (ties at the threshold are kept).
  assert f(M.iou(A, B, q=0.125)) == pytest.approx(1 / 2, abs=1e-7)


def test_iou_auc_hand():
  # At N = 8 the qs 0.05..0.5 give k = 1,1,2,2,2,3,3,4,4,4: IoU 1/2 for k = 1 and 1/3
  # otherwise (k = 3: t(A) = 0 -> same mask; t(B) = 0 -> same mask).
  expected = (2 * 0.5 + 8 / 3) / 10
  assert f(M.iou_auc(A, B)) == pytest.approx(expected, abs=1e-7)


def test_soft_iou_hand():
  # pa = [.25 at (0,1), .75 at (1,3)], pb = [.5 at (0,0), .5 at (1,3)]: min sum .5, max 1.5.
  assert f(M.soft_iou(A, B)) == pytest.approx(1 / 3, abs=1e-7)


def test_pearson_hand():
  # Centred sums: cov 4, var 8 and 6.
  assert f(M.pearson(A, B)) == pytest.approx(4 / math.sqrt(48), abs=1e-7)


def test_spearman_hand_with_ties():
  # Ranks A: six zeros 3.5, then 7, 8; B: six zeros 3.5, two 2s 7.5. cov 10, var 24.5, 24.
  assert f(M.spearman(A, B)) == pytest.approx(10 / math.sqrt(24.5 * 24), abs=1e-7)


def test_concentration_entropy_gini_hand():
  # q = 0.1 -> k = 1: 3/4 and 2/4.
  assert f(M.concentration(A)) == pytest.approx(0.75)
  assert f(M.concentration_change(A, B)) == pytest.approx(-0.25)
  assert f(M.entropy(A)) == pytest.approx(H_A, abs=1e-7)
  assert f(M.entropy(B)) == pytest.approx(1 / 3, abs=1e-7)
  assert f(M.entropy_change(A, B)) == pytest.approx(1 / 3 - H_A, abs=1e-7)
  # Ascending, weights (2i - 9): 5 * 1 + 7 * 3 = 26 over 8 * 4; B: 5 * 2 + 7 * 2 = 24.
  assert f(M.gini(A)) == pytest.approx(26 / 32)
  assert f(M.gini(B)) == pytest.approx(24 / 32)
  assert f(M.gini_change(A, B)) == pytest.approx(-2 / 32)


def test_ssim_hand_with_point_window():
  # sigma 0.1 -> radius 0: local statistics are the pixels themselves, variances 0, so
  # SSIM(p) = (2xy + C1) / (x^2 + y^2 + C1): pixels give 1, C1/(1+C1), 1, C1/(1+C1).
  a = np.array([[1, 0], [0, 1]], np.float32)
  b = np.array([[1, 1], [0, 0]], np.float32)
  c1 = 0.01 ** 2
  expected = (2 + 2 * c1 / (1 + c1)) / 4
  assert f(M.ssim(a, b, sigma=0.1)) == pytest.approx(expected, abs=1e-7)


def test_uniform_and_single_pixel_maps():
  uniform = np.full((3, 3), 2.0, np.float32)
  single = np.zeros((3, 3), np.float32)
  single[1, 2] = 5.0
  assert f(M.entropy(uniform)) == pytest.approx(1.0, abs=1e-7)
  assert f(M.gini(uniform)) == pytest.approx(0.0, abs=1e-7)
  assert f(M.concentration(uniform, q=0.1)) == pytest.approx(1 / 9)  # k = ceil(0.9) = 1
  assert f(M.entropy(single)) == pytest.approx(0.0, abs=1e-7)
  assert f(M.gini(single)) == pytest.approx(8 / 9)
  assert f(M.concentration(single)) == pytest.approx(1.0)
  np.testing.assert_allclose(M.centroid(single), [1.0, 2.0])


def _blob(h, w, centre, sigma=2.0):
  rows, cols = np.mgrid[0:h, 0:w]
  return np.exp(-((rows - centre[0]) ** 2 + (cols - centre[1]) ** 2) / (2 * sigma ** 2))


@pytest.mark.parametrize("dy,dx", [(3, 4), (-5, 2), (0, -7)])
def test_translated_blob_displacement(dy, dx):
  a = _blob(32, 40, (14, 18)).astype(np.float32)
  b = _blob(32, 40, (14 + dy, 18 + dx)).astype(np.float32)
  expected = math.hypot(dy, dx) / math.hypot(32, 40)
  assert f(M.displacement(a, b)) == pytest.approx(expected, abs=1e-5)
  assert f(M.peak_displacement(a, b)) == pytest.approx(expected, abs=1e-7)


def _random_maps(seed, shape=(9, 11)):
  rng = np.random.default_rng(seed)
  return [np.maximum(rng.standard_normal(shape), 0).astype(np.float32) + 0.01 * i
          for i in range(2)]


SINGLE_PAIR = ("displacement", "peak_displacement", "iou", "iou_auc", "soft_iou", "pearson",
               "spearman", "ssim", "concentration_change", "entropy_change", "gini_change")


def test_identical_maps():
  a, _ = _random_maps(0)
  expected = dict(displacement=0, peak_displacement=0, iou=1, iou_auc=1, soft_iou=1,
                  pearson=1, spearman=1, ssim=1, concentration_change=0, entropy_change=0,
                  gini_change=0)
  for name in SINGLE_PAIR:
    assert f(getattr(M, name)(a, a)) == pytest.approx(expected[name], abs=1e-6), name


@pytest.mark.parametrize("scale", [1e-3, 7.3, 1e4])
def test_positive_scaling_invariance(scale):
  a, b = _random_maps(1)
  for name in SINGLE_PAIR:
    fn = getattr(M, name)
    assert f(fn(a * scale, b)) == pytest.approx(f(fn(a, b)), abs=1e-5), name
  for name in ("concentration", "entropy", "gini"):
    fn = getattr(M, name)
    assert f(fn(a * scale)) == pytest.approx(f(fn(a)), abs=1e-6), name


def test_single_pair_functions_jit_and_vmap():
  rng = np.random.default_rng(2)
  a = np.maximum(rng.standard_normal((3, 6, 7)), 0).astype(np.float32)
  b = np.maximum(rng.standard_normal((3, 6, 7)), 0).astype(np.float32)
  for name in SINGLE_PAIR:
    fn = getattr(M, name)
    batched = jax.jit(jax.vmap(fn))(a, b)
    single = jax.jit(fn)
    looped = [f(single(x, y)) for x, y in zip(a, b)]
    np.testing.assert_allclose(batched, looped, atol=1e-6, err_msg=name)


def test_wrong_shapes_say_what_to_do():
  with pytest.raises(ValueError, match="same shape"):
    M.iou(np.ones((3, 3)), np.ones((3, 4)))
  with pytest.raises(ValueError, match="vmap"):
    M.pearson(np.ones((2, 3, 3)), np.ones((2, 3, 3)))
  with pytest.raises(ValueError, match="q must be"):
    M.iou(np.ones((3, 3)), np.ones((3, 3)), q=0.0)
