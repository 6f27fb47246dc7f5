"""Data inputs of a run (issue 21, items 10 and 11): symbolic links in folder: data, and
the TFDS builders writing array_record by themselves (no TensorFlow)."""

import os

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

import jaxdrift as jd
from jaxdrift.data import folder, phantoms
from jaxdrift.data import walk as walk_lib
from tests import data_fakes


def _png(path, value):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(np.full((4, 5), value, np.uint8)).save(path)


@pytest.fixture
def linked_tree(tmp_path):
  """train/{cats, dogs, kittens -> cats} and test/{cats, dogs, kittens}, with links of every
  kind in train/dogs; a folder and a file outside the root."""
  root = tmp_path / "ds"
  outside = tmp_path / "outside"
  _png(outside / "secret.png", 200)
  for i in range(2):
    _png(root / "train" / "cats" / f"{i}.png", 10 + i)
  _png(root / "train" / "dogs" / "0.png", 50)
  for c, cls in enumerate(("cats", "dogs", "kittens")):
    _png(root / "test" / cls / "0.png", 100 + c)
  train = root / "train"
  os.symlink("cats", train / "kittens")  # a class folder linked inside the root
  dogs = train / "dogs"
  os.symlink("../cats/0.png", dogs / "inside.png")  # a file linked inside the root
  os.symlink(outside / "secret.png", dogs / "outside.png")
  os.symlink("/etc/passwd", dogs / "passwd.png")
  os.symlink("nothing.png", dogs / "dangling.png")
  os.symlink(outside, dogs / "escape")  # a folder outside the root
  os.symlink("..", dogs / "loop")  # the split folder, inside the root but a loop
  return root


def test_walk_follows_links_only_inside_the_root(linked_tree):
  listing = walk_lib.walk(linked_tree)
  assert listing.files == sorted(
      ["test/cats/0.png", "test/dogs/0.png", "test/kittens/0.png", "train/cats/0.png",
       "train/cats/1.png", "train/dogs/0.png", "train/dogs/inside.png",
       "train/kittens/0.png", "train/kittens/1.png"])
  assert "train/kittens" in listing.dirs
  assert dict(listing.unsafe) == {
      "train/dogs/outside.png": "symbolic link to a path outside the dataset root",
      "train/dogs/passwd.png": "symbolic link to a path outside the dataset root",
      "train/dogs/escape": "symbolic link to a path outside the dataset root",
      "train/dogs/loop": "symbolic link loop (links to a folder above it)"}
  assert [p for p, _ in listing.dangling] == ["train/dogs/dangling.png"]


def test_folder_data_with_symlinks_builds_and_counts_what_it_skipped(linked_tree, tmp_path):
  # Also item 11: no file_format given, and the builder writes array_record (no TensorFlow).
  builder = folder.ClassFolder.for_path(linked_tree, data_dir=tmp_path / "tfds")
  builder.download_and_prepare()
  assert builder.info.file_format == tfds.core.FileFormat.ARRAY_RECORD
  meta = builder.info.metadata
  assert meta["class_counts"]["train"] == {"cats": 2, "dogs": 2, "kittens": 2}
  assert meta["skipped"]["counts"] == {"dangling_link": 1, "unsafe_path": 4}
  source = builder.as_data_source("train")
  stored = {source[i]["file_name"].decode(): int(source[i]["image"][0, 0, 0])
            for i in range(len(source))}
  assert stored == {"train/cats/0.png": 10, "train/cats/1.png": 11, "train/dogs/0.png": 50,
                    "train/dogs/inside.png": 10, "train/kittens/0.png": 10,
                    "train/kittens/1.png": 11}


def test_tfds_builders_write_array_record_without_being_told(tmp_path):
  """The TFDS way: tfds.builder(name).download_and_prepare(download_config=...)."""
  manual = tmp_path / "manual"
  manual.mkdir()
  data_fakes.write_kaggle_zip(manual / "lungs.zip", per_class=1, extras=False)
  config = tfds.download.DownloadConfig(manual_dir=str(manual))
  chest = tfds.builder("chest_xray5/gray", data_dir=str(tmp_path / "tfds"))
  chest.download_and_prepare(download_config=config)
  tiny = phantoms.PhantomsConfig(name="tiny", image_size=32, num_train=5, num_validation=0,
                                 num_test=0)
  phantom = tfds.builder("phantoms", config=tiny, data_dir=str(tmp_path / "tfds"))
  phantom.download_and_prepare(download_config=config)
  for builder, n in ((chest, 5), (phantom, 5)):
    assert builder.info.file_format == tfds.core.FileFormat.ARRAY_RECORD
    train = tfds.data_source(builder.name + "/" + builder.builder_config.name, split="train",
                             data_dir=str(tmp_path / "tfds"), download=False)
    assert len(train) == n
  assert jd.data.class_names(train) == list(phantoms.CLASS_NAMES)
