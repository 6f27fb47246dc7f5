"""grain pipeline: fixed shapes, padding masks, sharding, seeded order, augmentation, no TF."""

import functools
import os
import subprocess
import sys
import textwrap
import types

import numpy as np
import pytest

import jaxdrift as jd
from jaxdrift.data import pipeline
from tests import xla_env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PHANTOMS = dict(image_size=32, num_train=50, num_validation=37, num_test=5, seed=2)


class FakeSource:
  """Minimal random-access source with the `dataset_info.features` the pipeline reads."""

  def __init__(self, examples):
    self.examples = examples
    self.dataset_info = types.SimpleNamespace(features=dict.fromkeys(examples[0]),
                                              metadata={})

  def __len__(self):
    return len(self.examples)

  def __getitem__(self, i):
    return self.examples[i]


def _run(script, tmp_path, devices=1):
  path = tmp_path / "script.py"
  path.write_text(f"import sys\nsys.path.insert(0, {REPO!r})\n" + textwrap.dedent(script))
  env = dict(os.environ,
             XLA_FLAGS=xla_env.flags(f"--xla_force_host_platform_device_count={devices}"),
             JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, str(path), str(tmp_path)], env=env,
                       capture_output=True, text=True, timeout=240)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  return out.stdout


def test_eval_batches_cover_every_example_once_on_8_devices(tmp_path):
  stdout = _run(f"""
    import functools, jax, numpy as np, pytest
    import jaxdrift as jd
    assert jax.device_count() == 8
    pre = functools.partial(jd.models.preprocess, "resnetv2_tiny")
    source = jd.data.load("phantoms", "validation", data_dir=sys.argv[1], **{PHANTOMS!r})
    traces = []
    @jax.jit
    def total(image, mask):
      traces.append(1)
      return (image.sum(axis=(1, 2, 3)) * mask).sum()
    seen, ids, pads = [], [], 0
    for batch in jd.data.batches(source, preprocess=pre, batch_size=16, train=False,
                                 image_size=32):
      image = batch["image"]
      assert image.shape == (16, 32, 32, 3) and batch["mask"].shape == (16,)
      assert len(image.sharding.device_set) == 8
      assert {{s.data.shape for s in image.addressable_shards}} == {{(2, 32, 32, 3)}}
      assert batch["label"].sharding.spec == jax.sharding.PartitionSpec("data")
      mask, index = np.asarray(batch["mask"]), np.asarray(batch["index"])
      assert (index[~mask] == -1).all() and (np.asarray(image)[~mask] == 0).all()
      assert all(i == "" for i in batch["id"][~mask])
      seen += index[mask].tolist(); ids += batch["id"][mask].tolist(); pads += (~mask).sum()
      total(image, batch["mask"])
    assert sorted(seen) == list(range(37)), seen
    assert sorted(ids) == sorted(source[i]["file_name"].decode() for i in range(37))
    assert pads == 48 - 37 and len(traces) == 1
    with pytest.raises(ValueError, match="divisible by the 8 devices"):
      next(jd.data.batches(source, preprocess=pre, image_size=32, batch_size=12,
                           train=False))
    print("OK", len(seen), pads)
  """, tmp_path, devices=8)
  assert "OK 37 11" in stdout


def test_pipeline_never_imports_tensorflow(tmp_path):
  stdout = _run("""
    import functools, pathlib
    from tests import data_fakes
    import jaxdrift as jd
    root = pathlib.Path(sys.argv[1])
    data_fakes.write_kaggle_zip(root / "k.zip")
    for name, kw in (("chest_xray5/rgb", dict(source=root / "k.zip")),
                     ("phantoms", dict(image_size=32, num_train=8, num_validation=0,
                                       num_test=0)),
                     (f"folder:{root / 'k.zip'}", {})):
      source = jd.data.load(name, "train", data_dir=root / "tfds", **kw)
      batch = next(jd.data.batches(source,
                                   preprocess=functools.partial(jd.models.preprocess,
                                                                "densenet_tiny"),
                                   batch_size=4, train=True, image_size=32))
      assert batch["image"].shape == (4, 32, 32, 3)
    loaded = sorted(m for m in sys.modules if m == "tensorflow" or m.startswith("tensorflow."))
    print("TF", loaded)
  """, tmp_path)
  assert "TF []" in stdout


@pytest.fixture(scope="module")
def phantom_train(tmp_path_factory):
  return jd.data.load("phantoms", "train", data_dir=tmp_path_factory.mktemp("tfds"),
                      **PHANTOMS)


def _indices(source, **kwargs):
  return [np.asarray(b["index"]) for b in jd.data.batches(
      source, preprocess=functools.partial(jd.models.preprocess, "resnetv2_tiny"), batch_size=8, train=True,
      image_size=32, **kwargs)]


def test_training_order_is_seeded_and_drops_the_ragged_batch(phantom_train):
  run = _indices(phantom_train, seed=1, num_epochs=2)
  assert len(run) == 2 * 6 == 2 * pipeline.steps_per_epoch(50, 8, train=True)
  epoch0, epoch1 = np.concatenate(run[:6]), np.concatenate(run[6:])
  assert len(set(epoch0)) == len(set(epoch1)) == 48  # no repeats within an epoch
  assert not np.array_equal(epoch0, epoch1)  # reshuffled each epoch
  again = _indices(phantom_train, seed=1, num_epochs=2)
  np.testing.assert_array_equal(np.concatenate(run), np.concatenate(again))
  resumed = _indices(phantom_train, seed=1, num_epochs=1, start_epoch=1)
  np.testing.assert_array_equal(np.concatenate(resumed), epoch1)
  other = _indices(phantom_train, seed=2, num_epochs=1)
  assert not np.array_equal(np.concatenate(other), epoch0)


def test_training_batches_match_source_examples(phantom_train):
  batch = next(jd.data.batches(phantom_train, preprocess=functools.partial(jd.models.preprocess, "resnetv2_tiny"),
                               batch_size=8, train=True,
                               image_size=32, seed=0, augment=False))
  images = np.asarray(batch["image"])
  for i, image, label, lesion in zip(np.asarray(batch["index"]), images,
                                     np.asarray(batch["label"]),
                                     np.asarray(batch["lesion_mask"])):
    example = phantom_train[int(i)]
    assert label == example["label"]
    np.testing.assert_array_equal(lesion, example["lesion_mask"][..., 0] > 0)
    np.testing.assert_allclose(image, np.repeat(example["image"], 3, -1) / 127.5 - 1,
                               atol=1e-6)
  assert images.dtype == np.float32 and np.asarray(batch["mask"]).all()


def _square_source(n=16, size=40):
  image = np.full((size, size, 1), 20, np.uint8)
  image[6:18, 4:16] = 200  # a bright square in the upper left (patient's right)
  mask = (image > 100).astype(np.uint8)
  return FakeSource([{"image": image, "lesion_mask": mask, "label": 0,
                      "file_name": f"{i}".encode()} for i in range(n)])


@pytest.mark.parametrize("flip", [False, True])
def test_augmentation_moves_mask_with_image_and_flips_only_on_request(flip):
  aug = pipeline.Augment(rotation=10, shift=0.1, zoom=0.1, brightness=0, contrast=0,
                         horizontal_flip=flip)
  batch = next(jd.data.batches(_square_source(),
                               preprocess=functools.partial(jd.models.preprocess, "resnetv2_tiny"), batch_size=16,
                               train=True, image_size=40, augment=aug, seed=0))
  pixels = (np.asarray(batch["image"])[..., 0] + 1) * 127.5  # undo mode "tf"
  masks = np.asarray(batch["lesion_mask"])
  for p, m in zip(pixels, masks):
    assert m.sum() > 50
    assert p[m].mean() > 170 and p[~m].mean() < 40
  assert len({m.tobytes() for m in masks}) > 10  # each example warped differently
  columns = np.array([np.nonzero(m)[1].mean() for m in masks])
  assert (columns > 20).any() == flip  # only a flip moves it to the other side


@pytest.mark.parametrize("arch", ["resnetv2_tiny", "densenet_tiny"])
def test_eval_images_are_resized_and_preprocessed_for_the_arch(arch):
  source = FakeSource([{"image": np.full((7, 10, 1), 100, np.uint8), "label": 3,
                        "file_name": b"a"}] * 3)
  batch = next(jd.data.batches(source, preprocess=functools.partial(jd.models.preprocess, arch), batch_size=4,
                               train=False, image_size=33))
  expected = jd.models.preprocess(arch, np.full((33, 33, 3), 100, np.uint8))
  image, mask = np.asarray(batch["image"]), np.asarray(batch["mask"])
  np.testing.assert_allclose(image[:3], np.broadcast_to(expected, (3, 33, 33, 3)), atol=1e-6)
  np.testing.assert_array_equal(mask, [True, True, True, False])
  np.testing.assert_array_equal(np.asarray(batch["label"])[:3], [3, 3, 3])


class CountingSource(FakeSource):
  """FakeSource that counts the reads of each record."""

  def __init__(self, examples):
    super().__init__(examples)
    self.reads = np.zeros(len(examples), int)

  def __getitem__(self, i):
    self.reads[i] += 1
    return super().__getitem__(i)


def _host_arrays(batches):
  return [{k: np.asarray(v) for k, v in b.items()} for b in batches]


def test_a_memo_gives_the_uncached_batches_and_reads_each_record_once(phantom_train):
  source = CountingSource([phantom_train[i] for i in range(len(phantom_train))])
  memo = jd.data.Memo()
  kwargs = dict(preprocess=functools.partial(jd.models.preprocess, "resnetv2_tiny"), batch_size=8, image_size=48,
                seed=3)
  train = lambda memo, epoch: _host_arrays(jd.data.batches(  # noqa: E731
      source, train=True, augment=False, num_epochs=1, start_epoch=epoch, memo=memo,
      **kwargs))
  evaluate = lambda memo: _host_arrays(jd.data.batches(  # noqa: E731
      source, train=False, memo=memo, **kwargs))
  passes = [train(memo, 0), train(memo, 1), evaluate(memo), train(memo, 2)]
  # Training reads 48 of the 50 records (ragged batch dropped); evaluation the other 2.
  np.testing.assert_array_equal(source.reads, np.ones(50))
  expected = [train(None, 0), train(None, 1), evaluate(None), train(None, 2)]
  for got, want in zip(passes, expected):
    assert len(got) == len(want)
    for a, b in zip(got, want):
      assert a.keys() == b.keys()
      for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  assert not np.array_equal(passes[0][0]["index"], passes[1][0]["index"])  # reshuffled
  assert (np.asarray(passes[2][-1]["mask"]) == (np.arange(8) < 50 % 8)).all()  # padding
  with pytest.raises(ValueError, match="resnetv2_tiny', \.\.\.\) at 48 px, not .* at 64 px"):
    next(jd.data.batches(source, train=False, memo=memo, **{**kwargs, "image_size": 64}))
  # Augmented passes draw a new warp each time: they read through the memo.
  reads = source.reads.copy()
  train_aug = lambda: _host_arrays(jd.data.batches(  # noqa: E731
      source, train=True, augment=True, memo=memo, **kwargs))
  assert not np.array_equal(train_aug()[0]["image"], passes[0][0]["image"])
  assert (source.reads - reads).sum() == 48
