"""Training input at device speed: the uint8 cache and the on-device augmentation."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage
from PIL import Image

import jaxdrift as jd
from jax._src import array as jax_array
from jaxdrift.data import augment as augment_lib
from jaxdrift.data import cache
from jaxdrift.data import pipeline

PHANTOMS = dict(image_size=40, num_train=30, num_validation=4, num_test=4, seed=5)


@pytest.fixture(scope="module")
def phantom_train(tmp_path_factory):
  return jd.data.load("phantoms", "train", data_dir=tmp_path_factory.mktemp("tfds"),
                      **PHANTOMS)


def _arrays(batches):
  return [{k: np.asarray(b[k]) for k in ("image", "label", "mask", "index")}
          for b in batches]


@pytest.mark.parametrize("arch,placement", [("resnetv2_tiny", "device"),
                                            ("densenet_tiny", "host")])
def test_cached_batches_are_bitwise_the_streamed_batches_without_augmentation(
    phantom_train, arch, placement):
  """Resized at another size than stored (40 -> 36 px), two epochs (two orders)."""
  mesh = jd.data.default_mesh()
  images = cache.build(phantom_train, image_size=36, mesh=mesh, placement=placement)
  assert images.placement == placement and images.images.dtype == np.uint8
  assert images.images.shape == (30, 36, 36, 1)
  preprocess = functools.partial(jd.models.preprocess, arch)
  for epoch in (0, 1):
    streamed = _arrays(jd.data.batches(phantom_train, preprocess=preprocess, batch_size=8,
                                       train=True, seed=3, image_size=36, augment=False,
                                       start_epoch=epoch, mesh=mesh))
    cached = _arrays(cache.batches(images, preprocess=preprocess, batch_size=8, seed=3,
                                   epoch=epoch, mesh=mesh))
    assert len(cached) == len(streamed) == 3
    for s, c in zip(streamed, cached):
      for k in s:
        assert s[k].dtype == c[k].dtype and np.array_equal(s[k], c[k]), (epoch, k)


def test_placement_follows_the_budget_or_the_request(monkeypatch):
  mesh = jd.data.default_mesh()
  monkeypatch.delenv(cache.ENV_PLACEMENT, raising=False)
  assert cache.choose_placement(1 << 20, mesh) == "device"
  assert cache.choose_placement(1 << 60, mesh) == "stream"
  assert cache.choose_placement(1 << 20, mesh, "host") == "host"
  monkeypatch.setenv(cache.ENV_PLACEMENT, "stream")
  assert cache.choose_placement(1 << 20, mesh) == "stream"
  with pytest.raises(ValueError, match="'disk' is not one of device, host, stream"):
    cache.choose_placement(1, mesh, "disk")


# --- augmentation -----------------------------------------------------------------------

AUG = pipeline.Augment(rotation=7.0, shift=0.05, zoom=0.08, brightness=0.1, contrast=0.15,
                       horizontal_flip=True)


def _reference(image: np.ndarray, p: dict) -> np.ndarray:
  """numpy/scipy: the host pipeline's affine map, scipy's bilinear sampling, photometric."""
  size = image.shape[0]
  centre = size / 2.0
  angle, zoom = float(p["angle"]), float(p["zoom"])
  tx, ty = float(p["tx"]), float(p["ty"])
  cos, sin = np.cos(angle) / zoom, np.sin(angle) / zoom
  fx = -1.0 if bool(p["flip"]) else 1.0
  a, b, d, e = cos * fx, sin, -sin * fx, cos
  c = centre - a * centre - b * centre - (cos * tx + sin * ty)
  f = centre - d * centre - e * centre - (-sin * tx + cos * ty)
  ys, xs = np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5, indexing="ij")
  rows, cols = d * xs + e * ys + f - 0.5, a * xs + b * ys + c - 0.5
  x = image.astype(np.float64)
  warped = np.stack([scipy.ndimage.map_coordinates(x[..., k], [rows, cols], order=1,
                                                   mode="grid-constant", cval=0.0)
                     for k in range(x.shape[-1])], -1)
  mean = warped.mean(axis=(0, 1), keepdims=True)
  return np.clip((warped - mean) * float(p["factor"]) + mean + float(p["offset"]), 0, 255)


@pytest.mark.parametrize("channels", [1, 3])
def test_device_augmentation_equals_a_numpy_reference_on_fixed_keys(channels):
  rng = np.random.default_rng(channels)
  images = rng.integers(0, 256, (6, 24, 24, channels), dtype=np.uint8)
  index = jnp.arange(10, 16)
  key = jax.random.key(42)
  augment = jax.jit(augment_lib.augment_batch, static_argnums=4)
  got = np.asarray(augment(key, 3, index, images, AUG))
  keys = augment_lib.example_keys(key, 3, index)
  params = jax.jit(jax.vmap(lambda k: augment_lib.draw(k, AUG, 24)))(keys)
  for i, (image, out) in enumerate(zip(images, got)):
    np.testing.assert_allclose(out, _reference(image, {k: v[i] for k, v in params.items()}),
                               atol=2e-3)
  flips = np.asarray(params["flip"])
  assert flips.any() and not flips.all()
  assert np.all(np.abs(np.rad2deg(params["angle"])) <= 7.0)
  assert np.all(np.abs(params["zoom"] - 1) <= 0.08 + 1e-6)
  assert np.all(np.abs(np.stack([params["tx"], params["ty"]])) <= 0.05 * 24 + 1e-5)
  assert np.all(np.abs(params["factor"] - 1) <= 0.15 + 1e-6)
  assert np.all(np.abs(params["offset"]) <= 25.5 + 1e-4)
  # Another epoch draws other warps; the same (epoch, index) the same, in any batch position.
  other = np.asarray(augment(key, 4, index, images, AUG))
  assert not np.allclose(other, got)
  reversed_ = np.asarray(augment(key, 3, index[::-1], images[::-1], AUG))
  np.testing.assert_allclose(reversed_[::-1], got, atol=1e-3)


def test_a_pure_translation_moves_pixels_by_whole_pixels_and_fills_black():
  """Hand-computed: shift (tx, ty) = (2, -1) px, no rotation or zoom -> out[r, c] =
  in[r + 1, c - 2] (the map output -> input subtracts the shift), 0 where that is outside."""
  image = np.arange(1, 1 + 5 * 6, dtype=np.float32).reshape(5, 6, 1)
  params = {"angle": 0.0, "zoom": 1.0, "tx": 2.0, "ty": -1.0, "flip": False}
  coefficients = jax.jit(augment_lib.affine_coefficients, static_argnums=1)(params, 6)
  out = np.asarray(jax.jit(augment_lib.warp)(image, coefficients))[..., 0]
  expected = np.zeros((5, 6), np.float32)
  expected[:4, 2:] = image[1:, :4, 0]
  np.testing.assert_array_equal(out, expected)


def test_the_device_warp_matches_the_host_pipelines_pil_warp():
  """The same coefficients through PIL (the host `Augment`) on a smooth image: equal up to
  PIL's uint8 rounding and its fixed-point interpolation weights."""
  ys, xs = np.mgrid[0:48, 0:48]
  image = (120 + 80 * np.sin(xs / 6.0) * np.cos(ys / 9.0)).astype(np.uint8)
  params = {"angle": np.deg2rad(6.0), "zoom": 1.07, "tx": -2.3, "ty": 1.6, "flip": True}
  coefficients = np.asarray(jax.jit(augment_lib.affine_coefficients, static_argnums=1)(
      params, 48), np.float64)
  pil = np.asarray(Image.fromarray(image).transform(
      (48, 48), Image.Transform.AFFINE, tuple(coefficients),
      resample=Image.Resampling.BILINEAR, fillcolor=0), np.float32)
  mine = np.asarray(jax.jit(augment_lib.warp)(image[..., None].astype(np.float32),
                                              coefficients.astype(np.float32)))[..., 0]
  inner = np.s_[4:-4, 4:-4]  # away from the border, where the fill rules differ slightly
  assert np.abs(mine[inner] - pil[inner]).max() <= 1.5
  assert np.abs(mine[inner] - pil[inner]).mean() <= 0.6


# --- the train loop -------------------------------------------------------------------


def test_the_step_loop_reads_nothing_back_and_logs_its_timings(tmp_path, monkeypatch):
  """Every device-to-host read (float(), np.asarray, device_get all go through
  `ArrayImpl._value`) is counted; none may happen while the loop's guard is on, which
  covers every step and every hook call. (On a CPU the guard itself lets reads through.)"""
  reads = {"in_steps": 0, "elsewhere": 0}
  original = jax_array.ArrayImpl._value

  def probe(self):
    guarded = jax.config.jax_transfer_guard_device_to_host == "disallow"
    reads["in_steps" if guarded else "elsewhere"] += 1
    return original.fget(self)

  guard_in_hooks = []
  monkeypatch.setattr(jax_array.ArrayImpl, "_value", property(probe))
  data_dir = tmp_path / "tfds"
  jd.data.build("phantoms/small", data_dir=data_dir)
  # The smoke run of tests/test_train_loop.py (the same compiled steps).
  config = jd.train.preset("smoke", arch="resnet50v2", data_dir=str(data_dir), epochs_tl=1,
                           epochs_ft=1)
  summary = jd.train.train(
      config, tmp_path / "run", progress=False,
      hooks=[lambda info: guard_in_hooks.append(jax.config.jax_transfer_guard_device_to_host)])
  assert reads["in_steps"] == 0 and reads["elsewhere"] > 0
  assert guard_in_hooks == ["disallow"] * 6  # 2 epochs x 3 steps, all inside the guard
  records = [json.loads(line) for line in
             (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  epochs = [r for r in records if r["kind"] == "epoch"]
  assert [r["train_input"] for r in epochs] == ["device", "device"]
  assert all(r["compile_s"] > 0 and r["images_per_s"] > 0 and r["input_s"] >= 0
             and r["time_s"] > r["compile_s"] for r in epochs)
  timings = summary["timings"]
  assert set(timings) == {"compile_s", "input_s", "compute_s", "eval_s", "write_s",
                          "train_input"}
  assert timings["compile_s"] == pytest.approx(sum(r["compile_s"] for r in epochs))
  assert min(v for k, v in timings.items() if k != "train_input") > 0
  stored = json.loads((tmp_path / "run" / "summary.json").read_text())
  assert stored["timings"] == timings
