"""Finding the split and class folders of an image dataset in a folder or a zip archive.

Builders see a dataset through `FileTree`, a read-only list of the files in a folder or zip
archive. A zip is read in place: nothing is extracted, so nothing is ever written outside the
TFDS data directory, and members whose names would escape the archive (absolute paths,
drive letters, ".." components) or that are symbolic links are refused and counted.

`find_layout` recognises, after stripping wrapper folders that every image shares:

* ``root/<split>/<class>/**/<image>`` with split folders named train/training,
  val/valid/validation, test/testing (case-insensitive), or
* ``root/<class>/**/<image>`` (no split folders).

Anything it cannot place raises `LayoutError` naming what it found and what it expected.
"""

import collections
import dataclasses
import os
import re
import stat
import zipfile

import numpy as np

from jaxdrift.data import imageio
from jaxdrift.data import walk as walk_lib

SPLIT_ALIASES = {"train": "train", "training": "train", "val": "validation",
                 "valid": "validation", "validation": "validation", "test": "test",
                 "testing": "test"}


class LayoutError(ValueError):
  """The files do not form a split/class folder layout this module understands."""


def normalize_name(name: str) -> str:
  """Case- and separator-insensitive key: "Corona_Virus-disease " -> "corona virus disease"."""
  return re.sub(r"[\s_\-]+", " ", name).strip().lower()


@dataclasses.dataclass
class SkipReport:
  """Everything a build did not store, by reason, so nothing is dropped silently.

  Attributes:
    skipped: reason -> list of (path, detail). Reasons used by the builders: "corrupt"
      (cannot be decoded), "not_image" (not an image file name), "unsafe_path" (zip entry
      refused: escapes the archive or is a link; folder entry refused: a link out of the
      root or into a loop, a special file), "dangling_link" (a link to nothing),
      "system_file" (OS/archiver leftovers).
    modes: original Pillow mode -> number of stored images (shows what was converted).
  """

  skipped: dict = dataclasses.field(default_factory=lambda: collections.defaultdict(list))
  modes: collections.Counter = dataclasses.field(default_factory=collections.Counter)

  def add(self, reason: str, path: str, detail: str = "") -> None:
    self.skipped[reason].append((path, detail))

  def counts(self) -> dict:
    """reason -> number of skipped files."""
    return {reason: len(items) for reason, items in sorted(self.skipped.items())}

  def total(self) -> int:
    return sum(len(items) for items in self.skipped.values())

  def to_dict(self) -> dict:
    """JSON-friendly form stored in the dataset's metadata."""
    return {"counts": self.counts(), "modes": dict(sorted(self.modes.items())),
            "files": {reason: [f"{p}: {d}" if d else p for p, d in items]
                      for reason, items in sorted(self.skipped.items())}}

  def summary(self) -> str:
    """One human-readable paragraph for logs."""
    if not self.total():
      return "no files skipped"
    lines = [f"skipped {self.total()} file(s): " + ", ".join(
        f"{n} {reason}" for reason, n in self.counts().items())]
    for reason, items in sorted(self.skipped.items()):
      for path, detail in items[:10]:
        lines.append(f"  {reason}: {path}" + (f" ({detail})" if detail else ""))
      if len(items) > 10:
        lines.append(f"  ... and {len(items) - 10} more {reason}")
    return "\n".join(lines)


def _unsafe_reason(info: zipfile.ZipInfo) -> str | None:
  name = info.filename.replace("\\", "/")
  parts = name.split("/")
  if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
    return "absolute path escapes the archive"
  if ".." in parts:
    return "'..' component escapes the archive"
  if stat.S_ISLNK(info.external_attr >> 16):
    return "symbolic link"
  return None


class FileTree:
  """Read-only view of the files in a folder or a zip archive.

  Attributes:
    source: the folder or zip path.
    files: sorted relative POSIX paths of the regular files.
    dirs: relative POSIX paths of every folder (explicit or implied by a file path).
    refused: (path, reason) of zip members and folder entries that were refused (escape
      the root, link loops, special files).
    dangling: (path, detail) of dangling symbolic links in a folder.
  """

  def __init__(self, source):
    self.source = os.fspath(source)
    self.refused = []
    self._zip = None
    dirs = set()
    self.dangling = []
    if os.path.isdir(self.source):  # links followed only inside the root (`walk`)
      listing = walk_lib.walk(self.source)
      files, self.dangling = listing.files, listing.dangling
      dirs.update(listing.dirs)
      self.refused.extend(listing.unsafe)
    elif zipfile.is_zipfile(self.source):
      self._zip = zipfile.ZipFile(self.source)
      files, self._members = [], {}
      for info in self._zip.infolist():
        reason = _unsafe_reason(info)
        if reason:
          self.refused.append((info.filename, reason))
        elif info.is_dir():
          dirs.add(info.filename.replace("\\", "/").rstrip("/"))
        else:
          name = info.filename.replace("\\", "/")
          files.append(name)
          self._members[name] = info
    elif os.path.exists(self.source):
      raise LayoutError(f"{self.source} is neither a folder nor a zip archive; expected the "
                        "dataset's zip file or the folder it was extracted to")
    else:
      raise FileNotFoundError(f"dataset source {self.source} does not exist; expected the "
                              "dataset's zip file or the folder it was extracted to")
    for f in files:
      parts = f.split("/")[:-1]
      dirs.update("/".join(parts[:i + 1]) for i in range(len(parts)))
    self.files = sorted(files)
    self.dirs = dirs

  def read(self, path: str) -> bytes:
    """Bytes of the file at relative path `path`."""
    if self._zip is not None:
      return self._zip.read(self._members[path])
    with open(os.path.join(self.source, path), "rb") as f:
      return f.read()

  def close(self) -> None:
    if self._zip is not None:
      self._zip.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


@dataclasses.dataclass
class Layout:
  """Where the images of a dataset are.

  Attributes:
    prefix: wrapper folders stripped from every path ("" when none).
    splits: canonical split name ("train", "validation", "test"), or None for a layout
      without split folders -> class folder name as found -> sorted image paths (full
      relative paths inside the tree).
    split_folders: canonical split name -> folder name as found.
  """

  prefix: str
  splits: dict
  split_folders: dict


def _strip_prefix(paths):
  prefix = []
  while paths and all(len(p) >= 3 for p in paths) and len({p[0] for p in paths}) == 1 and (
      normalize_name(paths[0][0]) not in SPLIT_ALIASES):
    prefix.append(paths[0][0])
    paths = [p[1:] for p in paths]
  return prefix, paths


def find_layout(tree: FileTree, report: SkipReport) -> Layout:
  """Locates split and class folders; records junk and non-image files in `report`.

  Raises:
    LayoutError: no images, images outside class folders, a mix of split and non-split
      top-level folders, two folders for one split, or an empty class folder.
  """
  for path, reason in tree.refused:
    report.add("unsafe_path", path, reason)
  for path, detail in tree.dangling:
    report.add("dangling_link", path, detail)
  images = []
  for path in tree.files:
    if imageio.is_junk_name(path):
      report.add("system_file", path)
    elif imageio.is_image_name(path):
      images.append(path.split("/"))
    else:
      report.add("not_image", path, "extension is not one of " +
                 " ".join(sorted(imageio.IMAGE_EXTENSIONS)))
  if not images:
    raise LayoutError(f"found no image files in {tree.source} ({len(tree.files)} files in "
                      f"all); expected <split>/<class>/<image> or <class>/<image> with image "
                      f"extensions {' '.join(sorted(imageio.IMAGE_EXTENSIONS))}")
  prefix, rel = _strip_prefix(images)
  tops = sorted({p[0] for p in rel if len(p) > 1})
  loose = ["/".join(prefix + p) for p in rel if len(p) == 1]
  has_splits = any(normalize_name(t) in SPLIT_ALIASES for t in tops)
  if has_splits:
    loose += ["/".join(prefix + p) for p in rel if len(p) == 2]
  if loose:
    expected = "<split>/<class>/<image>" if has_splits else "<class>/<image>"
    raise LayoutError(f"found {len(loose)} image(s) outside any class folder, e.g. "
                      f"{loose[:3]}; expected {expected} under {tree.source}. Move them into "
                      "a class folder or remove them.")
  pre = "/".join(prefix) + "/" if prefix else ""
  split_folders = {}
  if has_splits:
    non_split = [t for t in tops if normalize_name(t) not in SPLIT_ALIASES]
    if non_split:
      raise LayoutError(f"found top-level folders {non_split} next to split folders in "
                        f"{tree.source}; expected only train, val/validation and test folders")
    for t in tops:
      canonical = SPLIT_ALIASES[normalize_name(t)]
      if canonical in split_folders:
        raise LayoutError(f"folders {split_folders[canonical]!r} and {t!r} both name the "
                          f"{canonical} split; keep one")
      split_folders[canonical] = t
  groups = {s: collections.defaultdict(list) for s in (split_folders or [None])}
  by_folder = {v: k for k, v in split_folders.items()}
  for p in rel:
    split, cls = (by_folder[p[0]], p[1]) if has_splits else (None, p[0])
    groups[split][cls].append(pre + "/".join(p))
  # Every folder at the class level must hold at least one image.
  for split in groups:
    base = pre + (split_folders[split] + "/" if split else "")
    for d in sorted(tree.dirs):
      if d.startswith(base) and "/" not in d[len(base):] and d[len(base):]:
        name = d[len(base):]
        if imageio.is_junk_name(d + "/x") or name in groups[split]:
          continue
        raise LayoutError(f"class folder {d!r} contains no image files; expected at least "
                          "one image per class folder. Add images or remove the folder.")
  return Layout(prefix=pre, splits={s: {c: sorted(v) for c, v in sorted(g.items())}
                                    for s, g in groups.items()},
                split_folders=split_folders)


def stratified_split(files_by_class: dict, fractions: dict, seed: int) -> dict:
  """Deterministic stratified split of each class's files.

  Files of each class are sorted, permuted with `np.random.default_rng([seed, k])` (k = the
  class's position in sorted order) and cut by `fractions`, so the result depends only on
  the file names, the fractions and the seed, never on file system order.

  Args:
    files_by_class: class -> list of paths.
    fractions: split name -> fraction; must sum to 1.
    seed: recorded seed.

  Returns:
    split name -> class -> sorted list of paths.
  """
  if abs(sum(fractions.values()) - 1.0) > 1e-6 or min(fractions.values()) < 0:
    raise ValueError(f"split fractions must be >= 0 and sum to 1, got {fractions}")
  out = {s: {} for s in fractions}
  for k, cls in enumerate(sorted(files_by_class)):
    files = sorted(files_by_class[cls])
    order = np.random.default_rng([seed, k]).permutation(len(files))
    bounds = np.rint(np.cumsum([0.0] + list(fractions.values())) * len(files)).astype(int)
    for (split, _), lo, hi in zip(fractions.items(), bounds[:-1], bounds[1:]):
      out[split][cls] = sorted(files[i] for i in order[lo:hi])
  empty = [s for s, f in fractions.items() if f > 0 and not any(out[s].values())]
  if empty:
    counts = ", ".join(f"{cls}: {len(files)}" for cls, files in sorted(files_by_class.items()))
    raise LayoutError(
        f"the stratified {'/'.join(f'{f:g}' for f in fractions.values())} split of "
        f"{'/'.join(fractions)} needs an image in every split, found too few images per "
        f"class ({counts}), which leaves {' and '.join(empty)} empty; a class needs at least "
        f"{_min_class_size(fractions)} images. Add images, or lay the data out in split "
        "folders (train/, val/, test/).")
  return out


def _min_class_size(fractions: dict) -> int:
  """The fewest files of one class that `stratified_split` spreads over every split."""
  cuts = np.cumsum([0.0] + list(fractions.values()))
  wanted = np.array([f > 0 for f in fractions.values()])
  for n in range(1, 100_000):
    bounds = np.rint(cuts * n).astype(int)
    if np.all(np.diff(bounds)[wanted] > 0):
      return n
  raise ValueError(f"split fractions {fractions} leave a split empty for any class size")
