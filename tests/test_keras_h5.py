"""Weight files: round trips, clear errors for bad files, and the pretrained download path."""

import hashlib
import importlib
import io
import shutil
import urllib.error

import h5py
import jax
import numpy as np
import pytest

import jaxdrift as jd
from tests.model_fixtures import random_variables

pretrained_module = importlib.import_module("jaxdrift.models.pretrained")  # not the function

ARCH = "resnetv2_tiny"


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
  model = jd.models.create(ARCH, num_classes=5)
  variables = random_variables(model, (1, 64, 64, 3))
  path = tmp_path_factory.mktemp("h5") / "tiny.h5"
  jd.models.save_keras_h5(variables, path)
  return path, variables


@pytest.fixture
def copy(weights_file, tmp_path):
  target = tmp_path / "copy.h5"
  shutil.copy(weights_file[0], target)
  return target


@pytest.mark.parametrize("arch", sorted(jd.models.TINY.values()))
def test_round_trip_is_exact(arch, tmp_path):
  model = jd.models.create(arch, num_classes=3)
  size = jd.models.default_input_size(arch)
  variables = random_variables(model, (1, size, size, 3))
  jd.models.save_keras_h5(variables, tmp_path / "w.h5")
  loaded = jd.models.load_keras_h5(arch, tmp_path / "w.h5")
  jax.tree.map(np.testing.assert_array_equal, loaded, variables)


def test_wrong_architecture_names_both_sides(weights_file):
  with pytest.raises(jd.models.WeightFileError) as err:
    jd.models.load_keras_h5("densenet_tiny", weights_file[0])
  message = str(err.value)
  assert "looks like a resnet50v2 file" in message
  assert "missing from the file (55)" in message and "batch_stats/bn/mean" in message
  assert "in the file but not in the model" in message and "conv2_block1_preact_bn" in message


def test_missing_layer_is_listed(copy):
  with h5py.File(copy, "a") as f:
    del f["conv1_conv"]
    f.attrs["layer_names"] = np.array([n for n in f.attrs["layer_names"] if n != b"conv1_conv"])
  with pytest.raises(jd.models.WeightFileError,
                     match=r"missing from the file \(2\): params/conv1_conv/bias, "
                           r"params/conv1_conv/kernel"):
    jd.models.load_keras_h5(ARCH, copy)


def test_listed_layer_without_group(copy):
  with h5py.File(copy, "a") as f:
    del f["post_bn"]
  with pytest.raises(jd.models.WeightFileError, match="'post_bn' is listed but has no group"):
    jd.models.load_keras_h5(ARCH, copy)


def test_wrong_shape_is_a_conflict(copy):
  with h5py.File(copy, "a") as f:
    del f["conv1_conv"]["conv1_conv/kernel:0"]
    f["conv1_conv"].create_dataset("conv1_conv/kernel:0", data=np.zeros((3, 3, 3, 8), "f4"))
  with pytest.raises(jd.models.WeightFileError,
                     match=r"shape conflicts \(1\): params/conv1_conv/kernel: "
                           r"file \(3, 3, 3, 8\) vs model \(7, 7, 3, 8\)"):
    jd.models.load_keras_h5(ARCH, copy)


def test_truncated_file(copy):
  data = copy.read_bytes()
  copy.write_bytes(data[: len(data) // 2])
  with pytest.raises(jd.models.WeightFileError, match="truncated|not an HDF5"):
    jd.models.load_keras_h5(ARCH, copy)


def test_not_hdf5_and_not_keras(tmp_path):
  text = tmp_path / "weights.h5"
  text.write_text("this is not a weight file")
  with pytest.raises(jd.models.WeightFileError, match="not an HDF5 file"):
    jd.models.load_keras_h5(ARCH, text)
  other = tmp_path / "other.h5"
  with h5py.File(other, "w") as f:
    f["x"] = np.zeros(3)
  with pytest.raises(jd.models.WeightFileError, match="not a Keras weight file"):
    jd.models.load_keras_h5(ARCH, other)
  with pytest.raises(jd.models.WeightFileError, match="no such file"):
    jd.models.load_keras_h5(ARCH, tmp_path / "absent.h5")


def test_unknown_weight_kind(copy):
  with h5py.File(copy, "a") as f:
    f["post_bn"].create_dataset("post_bn/gain:0", data=np.zeros(3))
    f["post_bn"].attrs["weight_names"] = np.append(f["post_bn"].attrs["weight_names"],
                                                   b"post_bn/gain:0")
  with pytest.raises(jd.models.WeightFileError, match="unknown kind 'gain'"):
    jd.models.load_keras_h5(ARCH, copy)


def test_weights_url_pins_keras_md5():
  url, name, md5 = jd.models.weights_url("inceptionv3")
  assert url.endswith("inception_v3/inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5")
  assert md5 == "bcbd6486424b2319ff4ef7d526e38f63"
  with pytest.raises(ValueError, match="reduced variants have none"):
    jd.models.weights_url("resnetv2_tiny")


@pytest.fixture
def fake_release(weights_file, monkeypatch, tmp_path):
  """Pretends the tiny file is an official release; serves it through a fake urlopen."""
  path, _ = weights_file
  md5 = hashlib.md5(path.read_bytes()).hexdigest()
  monkeypatch.setitem(pretrained_module._FILES, ARCH, ("resnet", "tiny", md5, md5))
  monkeypatch.setenv("JAXDRIFT_CACHE", str(tmp_path / "cache"))
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  served = []

  def urlopen(url, timeout):
    served.append(url)
    return io.BytesIO(path.read_bytes())

  monkeypatch.setattr(pretrained_module.urllib.request, "urlopen", urlopen)
  return served


def test_imagenet_download_is_verified_cached_and_converted(fake_release, weights_file,
                                                             tmp_path):
  variables = jd.models.pretrained(ARCH, 3, "imagenet", key=jax.random.key(0))
  assert fake_release == [f"{pretrained_module._BASE}resnet/tiny_notop.h5"]
  assert (tmp_path / "cache" / "tiny_notop.h5").is_file()
  _, source = weights_file
  np.testing.assert_array_equal(variables["params"]["conv1_conv"]["kernel"],
                                source["params"]["conv1_conv"]["kernel"])
  np.testing.assert_array_equal(variables["batch_stats"]["post_bn"]["var"],
                                source["batch_stats"]["post_bn"]["var"])
  assert variables["params"]["predictions"]["kernel"].shape[-1] == 3
  jd.models.pretrained(ARCH, 3, "imagenet", key=jax.random.key(0))
  assert len(fake_release) == 1  # the second call uses the cache


def test_damaged_cached_file_is_refused(fake_release, tmp_path):
  (tmp_path / "cache").mkdir()
  (tmp_path / "cache" / "tiny_notop.h5").write_bytes(b"half a file")
  with pytest.raises(RuntimeError, match="md5 .* expected"):
    jd.models.pretrained(ARCH, 3, "imagenet", key=jax.random.key(0))


def test_offline_fails_fast_saying_where_to_put_the_file(monkeypatch, tmp_path):
  monkeypatch.setenv("JAXDRIFT_CACHE", str(tmp_path / "cache"))
  monkeypatch.setenv("HOME", str(tmp_path / "home"))

  def offline(url, timeout):
    raise urllib.error.URLError("no network")

  monkeypatch.setattr(pretrained_module.urllib.request, "urlopen", offline)
  with pytest.raises(RuntimeError) as err:
    jd.models.pretrained("resnet50v2", 5, "imagenet", key=jax.random.key(0))
  assert str(tmp_path / "cache" / "resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5") in (
      str(err.value))
  assert "weights=PATH" in str(err.value)


def test_random_init_has_the_model_structure():
  model = jd.models.create(ARCH, num_classes=4)
  variables = jd.models.pretrained(ARCH, 4, "none", key=jax.random.key(0))
  expected = jax.eval_shape(model.init, jax.random.key(0), np.zeros((1, 64, 64, 3), "f4"))
  assert jax.tree.structure(variables) == jax.tree.structure(expected)
