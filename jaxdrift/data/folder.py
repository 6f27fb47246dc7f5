"""TFDS builders for image datasets laid out as one folder per class (no TensorFlow).

`ImageFolderBuilder` holds everything the class-folder datasets share: it reads a folder or
zip archive through `layout.FileTree` (zips are read in place, zip-slip entries refused),
finds ``root/<split>/<class>/*`` or ``root/<class>/*``, uses the dataset's own splits when
there are split folders and otherwise a deterministic stratified split with a recorded seed,
decodes and validates every image (`imageio.decode`), and stores it as lossless 8-bit PNG
in `array_record` files, readable with `tfds.data_source` / `builder.as_data_source`.

Features of every example:
  image: uint8 [H, W, C], C = config.channels (1 or 3), sizes vary.
  label: int64 class index (`info.features["label"].names`).
  file_name: the source path relative to the dataset root, e.g. "train/Normal/0001.png".

Metadata (`builder.info.metadata`, kept with the prepared data):
  class_counts: split -> class name -> stored examples.
  skipped: `SkipReport.to_dict()`: what was not stored, by reason, with every path.
  split_source: "folders" (the dataset's own split folders) or "stratified".
  split_seed, split_fractions: the recipe of a stratified split.
  class_folders: folder as found -> class name.

`ClassFolder` is the generic builder (TensorFlow-free replacement for
`tfds.folder_dataset.ImageFolder`): class names are the folder names, merged
case-insensitively. Use `jaxdrift.data.load("folder:/path/to/root", split)`, or
`ClassFolder.for_path(root, data_dir=...)` for the builder itself.
"""

import abc
import dataclasses
import hashlib
import logging
import os

import tensorflow_datasets as tfds

from jaxdrift.data import imageio
from jaxdrift.data import layout as layout_lib
from jaxdrift.data import walk as walk_lib

_LOG = logging.getLogger(__name__)

DEFAULT_FRACTIONS = (("train", 0.8), ("validation", 0.1), ("test", 0.1))


@dataclasses.dataclass(eq=False)
class FolderConfig(tfds.core.BuilderConfig):
  """How a class-folder dataset is stored.

  Attributes:
    channels: 1 stores grayscale, 3 stores RGB.
    max_side: when set, images whose longer side exceeds it are downscaled (antialiased
      bilinear, aspect ratio kept) before storing; None keeps the original size.
    split_seed: seed of the stratified split used when the data has no split folders.
    split_fractions: ((split, fraction), ...) of that split.
  """

  channels: int = 3
  max_side: int | None = None
  split_seed: int = 0
  split_fractions: tuple = DEFAULT_FRACTIONS


class ImageFolderBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Shared machinery of the class-folder builders; subclasses say where the data is.

  Args (keyword, besides those of `tfds.core.GeneratorBasedBuilder`):
    source: folder or zip to read; None uses the builder's default (for example the TFDS
      manual directory).
    skip_bad_files: True (default) skips corrupt, truncated and non-image files, counts them
      and reports them at the end of the build; False raises on the first one.
    file_format: "array_record" (default, here rather than TFDS's tfrecord: it needs no
      TensorFlow and gives random access, so `tfds.builder(name).download_and_prepare()`
      works as TFDS documents it).
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}

  def __init__(self, *, source=None, skip_bad_files: bool = True,
               file_format="array_record", **kwargs):
    self._source = None if source is None else os.fspath(source)
    self._skip_bad_files = skip_bad_files
    super().__init__(file_format=file_format, **kwargs)

  # Subclass hooks -------------------------------------------------------------------------
  @abc.abstractmethod
  def _class_names(self) -> list:
    """The class names, in label order."""

  @abc.abstractmethod
  def _class_of_folder(self, folder: str, split) -> str:
    """Class name for a class folder; raises LayoutError for an unknown folder."""

  def _resolve_source(self, dl_manager) -> str:
    if self._source is None:
      raise ValueError(f"{self.name}: no source folder or zip given; pass source=PATH")
    return self._source

  def _check_splits(self, splits: dict) -> None:
    """Raises when the split folders found are not acceptable (default: any is fine).

    Args:
      splits: canonical split name -> class name -> image paths.
    """

  # TFDS interface -------------------------------------------------------------------------
  def _info(self) -> tfds.core.DatasetInfo:
    channels = self.builder_config.channels
    return tfds.core.DatasetInfo(
        builder=self,
        description=self.__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, channels), encoding_format="png"),
            "label": tfds.features.ClassLabel(names=self._class_names()),
            "file_name": tfds.features.Text(),
        }),
        supervised_keys=("image", "label"),
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager):
    config = self.builder_config
    source = self._resolve_source(dl_manager)
    self._report = layout_lib.SkipReport()
    self._tree = layout_lib.FileTree(source)
    found = layout_lib.find_layout(self._tree, self._report)
    self._check_bad_files()
    folders = {}
    splits = {}
    for split, by_folder in found.splits.items():
      by_class = {}
      for folder, files in by_folder.items():
        cls = self._class_of_folder(folder, split)
        folders[folder] = cls
        by_class.setdefault(cls, []).extend(files)
      splits[split] = by_class
    metadata = self.info.metadata
    if None in splits:
      fractions = dict(config.split_fractions)
      splits = layout_lib.stratified_split(splits[None], fractions, config.split_seed)
      metadata.update(split_source="stratified", split_seed=config.split_seed,
                      split_fractions=fractions)
    else:
      self._check_splits(splits)
      metadata.update(split_source="folders", split_folders=found.split_folders)
    metadata.update(source=os.path.abspath(source), class_folders=folders,
                    class_counts={}, skipped=self._report.to_dict())
    self._pending = set(splits)
    return {split: self._generate_examples(split, by_class, found.prefix)
            for split, by_class in splits.items()}

  def _generate_examples(self, split, by_class, prefix):
    config = self.builder_config
    counts = {name: 0 for name in self._class_names()}
    for cls in sorted(by_class):
      for path in by_class[cls]:
        try:
          image, mode = imageio.decode(self._tree.read(path), config.channels, name=path)
        except imageio.ImageError as e:
          if not self._skip_bad_files:
            raise imageio.ImageError(f"{e}. Pass skip_bad_files=True to skip and count such "
                                     "files instead.") from None
          self._report.add("corrupt", path, str(e).split(": ", 1)[-1])
          continue
        image = imageio.limit_size(image, config.max_side)
        self._report.modes[mode] += 1
        counts[cls] += 1
        rel = path[len(prefix):]
        yield rel, {"image": imageio.encode_png(image), "label": cls, "file_name": rel}
    self._finish_split(split, counts)

  def _finish_split(self, split, counts) -> None:
    metadata = self.info.metadata
    metadata["class_counts"][split] = counts
    metadata["skipped"] = self._report.to_dict()
    _LOG.info("%s/%s: stored %d examples", self.name, split, sum(counts.values()))
    self._pending.discard(split)
    if not self._pending:
      self._tree.close()
      log = _LOG.warning if self._report.total() else _LOG.info
      log("%s build finished: %s", self.name, self._report.summary())

  def _check_bad_files(self) -> None:
    if not self._skip_bad_files and self._report.skipped.get("not_image"):
      path, _ = self._report.skipped["not_image"][0]
      raise imageio.ImageError(f"{path} is not an image file. Remove it, or pass "
                               "skip_bad_files=True to skip and count such files.")


def _fingerprint(root: str) -> str:
  """Short hash of a folder's or zip's absolute path, file names, sizes and mtimes (links
  followed only inside the folder, as the build reads it; skipped entries by name)."""
  digest = hashlib.sha1(os.path.abspath(root).encode())
  if os.path.isdir(root):
    listing = walk_lib.walk(root)
    for rel in listing.files:
      st = os.stat(os.path.join(root, rel))
      digest.update(f"{rel}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    for rel, _ in sorted(listing.unsafe + listing.dangling):
      digest.update(f"{rel}|skipped\n".encode())
  elif os.path.exists(root):
    st = os.stat(root)
    digest.update(f"{st.st_size}|{st.st_mtime_ns}".encode())
  else:
    raise FileNotFoundError(f"dataset folder {root} does not exist; expected a folder laid "
                            "out as <split>/<class>/<image> or <class>/<image>, or a zip of one")
  return digest.hexdigest()[:10]


class ClassFolder(ImageFolderBuilder):
  """Any dataset laid out as root/<split>/<class>/<image> or root/<class>/<image>.

  Build it with `ClassFolder.for_path(root, ...)`: the config name combines the folder's name
  with a fingerprint of its content, so each folder (and each change to it) gets its own
  prepared copy under data_dir/class_folder/.
  """

  MANUAL_DOWNLOAD_INSTRUCTIONS = "Pass the dataset folder or zip as source=PATH."

  def __init__(self, *, class_names=None, **kwargs):
    self._names = None if class_names is None else list(class_names)
    super().__init__(**kwargs)

  @classmethod
  def for_path(cls, root, *, channels: int = 3, max_side=None, split_seed: int = 0,
               split_fractions=DEFAULT_FRACTIONS, **kwargs) -> "ClassFolder":
    """Builder for the dataset at `root` (a folder or zip), class names from its folders."""
    root = os.fspath(root)
    key = _fingerprint(root)
    with layout_lib.FileTree(root) as tree:
      found = layout_lib.find_layout(tree, layout_lib.SkipReport())
    merged = {}
    for by_folder in found.splits.values():
      for folder in by_folder:
        merged.setdefault(layout_lib.normalize_name(folder), folder)
    names = [merged[k] for k in sorted(merged)]
    base = "".join(c if c.isalnum() else "_" for c in os.path.basename(
        os.path.abspath(root)))[:40] or "root"
    config = FolderConfig(
        name=f"{base}_{key}_c{channels}" + (f"_max{max_side}" if max_side else ""),
        description=f"class folders of {os.path.abspath(root)}", channels=channels,
        max_side=max_side, split_seed=split_seed, split_fractions=tuple(split_fractions))
    return cls(source=root, class_names=names, config=config, **kwargs)

  def _class_names(self):
    if self._names is None:
      raise ValueError("ClassFolder needs class_names; build it with ClassFolder.for_path(root)")
    return self._names

  def _class_of_folder(self, folder, split):
    key = layout_lib.normalize_name(folder)
    for name in self._names:
      if layout_lib.normalize_name(name) == key:
        return name
    raise layout_lib.LayoutError(
        f"found class folder {folder!r} in split {split}; expected one of {self._names}")
