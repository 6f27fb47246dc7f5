"""chest_xray5 and class-folder builders on small archives the tests write."""

import os
import zipfile

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

import jaxdrift as jd
from jaxdrift.data import chest_xray5
from tests import data_fakes

CLASSES = list(chest_xray5.CLASS_NAMES)
SPLITS = {"train": 0, "validation": 1, "test": 2}


@pytest.fixture(scope="module")
def kaggle(tmp_path_factory):
  root = tmp_path_factory.mktemp("kaggle")
  archive = root / "downloads" / "lungs.zip"
  archive.parent.mkdir()
  data_fakes.write_kaggle_zip(archive)
  data_dir = root / "tfds"
  b = jd.data.build("chest_xray5/gray", data_dir=data_dir, source=archive)
  return root, archive, data_dir, b


def test_chest_xray5_reads_back_pixels_labels_counts(kaggle):
  root, _, data_dir, _ = kaggle
  unusual = data_fakes.unusual_images()
  for split, s in SPLITS.items():
    # Plain TFDS reads it too: registered name, array_record, no TensorFlow.
    source = tfds.data_source("chest_xray5/gray", split=split, data_dir=os.fspath(data_dir),
                              download=False)
    expected_n = 15 + (len(unusual) if split == "train" else 0)
    assert len(source) == expected_n
    seen = set()
    for i in range(len(source)):
      ex = source[i]
      name = ex["file_name"].decode()
      seen.add(name)
      folder, base = name.split("/")[1:]
      c = [k.lower() for k in data_fakes.KAGGLE_FOLDERS].index(folder.lower())
      assert ex["label"] == c, name
      assert ex["image"].ndim == 3 and ex["image"].shape[-1] == 1
      if base in unusual:
        assert ex["image"].shape == (6, 7, 1)
        np.testing.assert_array_equal(ex["image"], unusual[base][1], err_msg=base)
      else:
        i_img = int(base[len("img_"):-len(".png")])
        assert ex["image"].shape == (8, 9, 1)
        np.testing.assert_array_equal(ex["image"], data_fakes.pixel_value(s, c, i_img))
    assert len(seen) == expected_n
    counts = jd.data.class_counts(source)
    assert counts == {k: 3 + (len(unusual) if (k, split) == ("Normal", "train") else 0)
                      for k in CLASSES}


def test_chest_xray5_skip_report_and_no_writes_outside(kaggle):
  root, archive, data_dir, b = kaggle
  source = jd.data.load("chest_xray5/gray", "train", data_dir=data_dir, download=False)
  report = jd.data.skip_report(source)
  assert report["counts"] == {"corrupt": 2, "not_image": 1, "system_file": 1,
                              "unsafe_path": 1}
  assert any("evil.png" in f for f in report["files"]["unsafe_path"])
  assert {"I;16", "P", "RGBA", "CMYK"} <= set(report["modes"])
  # Total accounted for: every zip member is either stored or counted as skipped.
  with zipfile.ZipFile(archive) as zf:
    members = [i for i in zf.infolist() if not i.is_dir()]
  stored = sum(b.info.splits[s].num_examples for s in SPLITS)
  assert stored + sum(report["counts"].values()) == len(members)
  # Nothing extracted: only the zip and the TFDS data dir exist; no escaped file anywhere.
  assert sorted(os.listdir(root)) == ["downloads", "tfds"]
  assert os.listdir(archive.parent) == ["lungs.zip"]
  assert not (root / "evil.png").exists() and not (root.parent / "evil.png").exists()
  assert b.info.metadata["split_source"] == "folders"


def _write_folder(root, classes, per_class=4, mode="L"):
  for c, cls in enumerate(classes):
    (root / cls).mkdir(parents=True)
    for i in range(per_class):
      value = 20 * c + i
      Image.new(mode, (5, 4), value if mode == "L" else (value, 0, 255 - value)).save(
          root / cls / f"{i}.png")


def test_chest_xray5_flat_folder_rgb_stratified_split(tmp_path):
  data_dir = tmp_path / "tfds"
  src = data_dir / "downloads" / "manual"  # The TFDS manual directory.
  _write_folder(src / "wrapper", ["BACTERIAL PNEUMONIA", "covid", "Normal", "tuberculosis",
                                  "viral_pneumonia"], per_class=10)
  b = jd.data.build("chest_xray5/rgb", data_dir=data_dir)
  meta = b.info.metadata
  assert meta["split_source"] == "stratified" and meta["split_seed"] == 0
  assert {s: sum(c.values()) for s, c in meta["class_counts"].items()} == {
      "train": 40, "validation": 5, "test": 5}
  assert all(v == 1 for v in meta["class_counts"]["test"].values())  # stratified
  names = {}
  for split in SPLITS:
    src_split = b.as_data_source(split)
    for i in range(len(src_split)):
      ex = src_split[i]
      assert ex["image"].shape == (4, 5, 3)
      assert (ex["image"] == ex["image"][..., :1]).all()  # gray replicated to RGB
      names[ex["file_name"].decode()] = split
  assert len(names) == 50
  # Deterministic: a second build elsewhere assigns every file to the same split.
  b2 = jd.data.build("chest_xray5/rgb", data_dir=tmp_path / "tfds2", source=src)
  names2 = {b2.as_data_source(s)[i]["file_name"].decode(): s for s in SPLITS
            for i in range(b2.info.splits[s].num_examples)}
  assert names2 == names


def test_class_folder_builder_with_splits(tmp_path):
  root = tmp_path / "ds"
  for split in ("train", "Test"):
    _write_folder(root / split, ["cats", "Dogs"], per_class=3, mode="RGB")
  (root / "train" / "cats" / "readme.md").write_text("hi")
  src = jd.data.load(f"folder:{root}", "train", data_dir=tmp_path / "tfds")
  assert jd.data.class_names(src) == ["cats", "Dogs"]
  assert jd.data.class_counts(src) == {"cats": 3, "Dogs": 3}
  assert jd.data.skip_report(src)["counts"] == {"not_image": 1}
  for i in range(len(src)):
    ex = src[i]
    _, cls, base = ex["file_name"].decode().split("/")
    value = 20 * ["cats", "Dogs"].index(cls) + int(base[0])
    np.testing.assert_array_equal(ex["image"][0, 0], [value, 0, 255 - value])
  test = jd.data.load(f"folder:{root}", "test", data_dir=tmp_path / "tfds")
  assert len(test) == 6
  with pytest.raises(ValueError, match=r"no split 'validation'.*\['test', 'train'\]"):
    jd.data.load(f"folder:{root}", "val", data_dir=tmp_path / "tfds")


def _zip_tree(path, files):
  with zipfile.ZipFile(path, "w") as zf:
    for name, data in files.items():
      if name.endswith("/"):
        zf.writestr(zipfile.ZipInfo(name), b"")
      else:
        zf.writestr(name, data)


def _kaggle_files(splits=("train", "val", "test"), classes=data_fakes.KAGGLE_FOLDERS):
  png = data_fakes.png_bytes(np.zeros((4, 4), np.uint8))
  return {f"{s}/{c}/a.png": png for s in splits for c in classes}


@pytest.mark.parametrize("files, error, pattern", [
    ({**_kaggle_files(), "train/Pneumothorax/a.png": b"x"}, "LayoutError",
     r"unknown class folder 'Pneumothorax'.*expected one of"),
    ({**_kaggle_files(), "val/Emptyish/": b""}, "LayoutError",
     r"class folder 'val/Emptyish' contains no image files"),
    (_kaggle_files(splits=("train", "test")), "LayoutError",
     r"found split folders for \['test', 'train'\] but not for \['validation'\]"),
    (_kaggle_files(classes=data_fakes.KAGGLE_FOLDERS[:4]), "LayoutError",
     r"no folder for class\(es\) \['Viral Pneumonia'\]"),
    ({"readme.txt": b"x"}, "LayoutError", r"found no image files"),
    ({**_kaggle_files(), "train/normal/bad.png": b"nope"}, "ImageError",
     r"bad.png: not a recognised image format.*skip_bad_files=True"),
    ({**_kaggle_files(), "train/normal/notes.txt": b"x"}, "ImageError",
     r"notes.txt is not an image file.*skip_bad_files=True"),
])
def test_bad_input_gives_clear_errors(tmp_path, files, error, pattern):
  archive = tmp_path / "bad.zip"
  _zip_tree(archive, files)
  with pytest.raises(getattr(jd.data, error), match=pattern):
    jd.data.build("chest_xray5/gray", data_dir=tmp_path / "tfds", source=archive,
                  skip_bad_files=False)


def test_dataset_not_there(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"(?s)chest_xray5 is not there.*Kaggle"):
    jd.data.load("chest_xray5", "train", data_dir=tmp_path)
  with pytest.raises(FileNotFoundError, match="not prepared"):
    jd.data.load("phantoms/small", "train", data_dir=tmp_path, download=False)
  with pytest.raises(FileNotFoundError, match="does not exist"):
    jd.data.load(f"folder:{tmp_path / 'nothing'}", "train", data_dir=tmp_path)
  with pytest.raises(ValueError, match="unknown dataset 'mnist'"):
    jd.data.builder("mnist")
