"""`drift`: batched == per pair, == the numpy reference, degenerate maps, no recompiling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdrift as jd
from jaxdrift.metrics import reference
from jaxdrift.metrics.drift import DriftParams, pair_metrics
from tests import xla_env

M = jd.metrics
NAMES = list(M.PAIR_METRICS) + [f"{q}_{c}" for q in M.MAP_QUANTITIES for c in "ab"]


def cam_maps(seed, n=12, shape=(7, 7)):
  rng = np.random.default_rng(seed)
  return [np.maximum(rng.standard_normal((n,) + shape) + 0.2, 0).astype(np.float32)
          for _ in range(2)]


def degenerate_batch():
  """Pairs whose second map is all-zero, constant, single-pixel, NaN, +Inf, -Inf."""
  a, b = cam_maps(3, n=8)
  b[0] = 0.0
  b[1] = 0.5
  b[2] = 0.0
  b[2, 3, 4] = 1.0
  b[3, 2, 2] = np.nan
  b[4, 0, 0] = np.inf
  b[5, 6, 6] = -np.inf
  return a, b


@pytest.fixture(scope="module")
def maps():
  return cam_maps(0)


@pytest.fixture(scope="module")
def out(maps):
  return jax.tree.map(np.asarray, M.drift(*maps))


def test_output_names_and_shapes(out):
  assert set(out) == set(NAMES) | {"valid", "valid_a", "valid_b"}
  assert all(v.shape == (12,) for v in out.values())
  assert out["valid"].all()


def test_batched_equals_per_pair_vmap_and_single_functions(maps, out):
  per_pair = jax.jit(jax.vmap(pair_metrics))(*maps)
  for name in NAMES:
    np.testing.assert_allclose(out[name], per_pair[name], atol=1e-6, err_msg=name)
  for name in M.PAIR_METRICS:
    single = jax.jit(jax.vmap(getattr(M, name)))(*maps)
    np.testing.assert_allclose(out[name], single, atol=1e-6, err_msg=name)


def test_equals_numpy_scipy_reference(maps, out):
  ref = reference.drift(*maps)
  for name in NAMES:
    np.testing.assert_allclose(out[name], ref[name], atol=1e-5, err_msg=name)


def test_degenerate_maps_give_nan_and_invalid_never_crash():
  a, b = degenerate_batch()
  out = jax.tree.map(np.asarray, M.drift(a, b))
  ref = reference.drift(a, b)
  # all-zero, NaN, +Inf, -Inf: invalid, every metric NaN.
  for i in (0, 3, 4, 5):
    assert not out["valid"][i] and not out["valid_b"][i] and out["valid_a"][i]
    assert all(np.isnan(out[name][i]) for name in NAMES), i
  # constant: valid; correlations undefined (NaN, documented); the rest are numbers.
  assert out["valid"][1]
  assert np.isnan(out["pearson"][1]) and np.isnan(out["spearman"][1])
  assert out["entropy_b"][1] == pytest.approx(1.0, abs=1e-6)
  assert out["gini_b"][1] == pytest.approx(0.0, abs=1e-6)
  # single pixel: valid, all finite.
  assert out["valid"][2] and all(np.isfinite(out[name][2]) for name in NAMES)
  for name in NAMES:
    np.testing.assert_allclose(out[name], ref[name], atol=1e-5, err_msg=name)


def test_xla_and_numpy_sort_paths_agree(maps, out):
  # Same sort, same ranks; the numpy path accumulates in float64, XLA in float32.
  xla = M.drift(*maps, sort="xla")
  for name in NAMES:
    np.testing.assert_allclose(xla[name], out[name], atol=1e-6, err_msg=name)


def test_larger_maps_use_shifted_ssim_and_match_reference():
  # 70x70 > the dense-filter limit: the shifted-sum Gaussian path; with resolution upsampling.
  small = cam_maps(5, n=3)
  out = M.drift(*small, resolution=(70, 70))
  up = [np.asarray(jax.vmap(lambda m: M.upsample(m, (70, 70)))(m)) for m in small]
  ref = reference.drift(*up)
  for name in NAMES:
    np.testing.assert_allclose(out[name], ref[name], atol=1e-5, err_msg=name)


def test_upsample_is_half_pixel_bilinear():
  m = np.arange(4, dtype=np.float32).reshape(2, 2)
  up = np.asarray(M.upsample(m, (4, 4)))
  # Half-pixel centres (cv2.resize INTER_LINEAR): edges replicate, inner rows interpolate.
  np.testing.assert_allclose(up[0], [0, 0.25, 0.75, 1])
  np.testing.assert_allclose(up[:, 0], [0, 0.5, 1.5, 2])


def test_params_are_used_and_checked(maps):
  a, b = maps
  out = M.drift(a, b, iou_q=0.5, concentration_q=0.3)
  np.testing.assert_allclose(out["iou"], jax.vmap(lambda x, y: M.iou(x, y, 0.5))(a, b))
  np.testing.assert_allclose(out["concentration_a"],
                             jax.vmap(lambda x: M.concentration(x, 0.3))(a), atol=1e-6)
  with pytest.raises(TypeError, match="accepted"):
    M.drift(a, b, iou=0.3)
  with pytest.raises(ValueError, match=r"\[B, h, w\]"):
    M.drift(a[0], b[0])
  with pytest.raises(ValueError, match="sort"):
    M.drift(a, b, sort="quick")


def test_no_recompilation_on_second_call(maps):
  a, b = maps
  M.drift(a, b, chunk=5)  # warm (chunk 5: a remainder chunk as well)
  M.drift(jnp.asarray(a), jnp.asarray(b), chunk=5)
  with xla_env.count_compiles() as compiles:
    for seed in (10, 11):
      x, y = cam_maps(seed)
      jax.block_until_ready(M.drift(x, y, chunk=5))
      jax.block_until_ready(M.drift(jnp.asarray(x), jnp.asarray(y), chunk=5))
  assert compiles == []


def test_params_record_every_choice():
  p = M.make_params(resolution=[224, 224], auc_qs=[0.1, 0.2])
  assert p.resolution == (224, 224) and p.auc_qs == (0.1, 0.2)
  assert DriftParams() == M.make_params()
  hash(p)  # static argument of the jitted computation
