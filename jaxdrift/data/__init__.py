"""Datasets and the input pipeline, with no TensorFlow anywhere.

Datasets (TFDS builders writing `array_record`, read with `tfds.data_source`):

  "chest_xray5"      the study's five-class chest X-ray data (manual download; `chest_xray5`)
  "phantoms"         synthetic chest X-ray phantoms with lesion masks (`phantoms`)
  "folder:PATH"      any root/<split>/<class>/* or root/<class>/* folder or zip (`folder`)

A name may carry a config: "chest_xray5/gray", "phantoms/224". Keyword arguments go to
the builder: `source=PATH` and `skip_bad_files=False` for the file-based builders;
`image_size`, `num_train`, `num_validation`, `num_test`, `seed` for "phantoms";
`channels`, `max_side`, `split_seed`, `split_fractions` for "folder:PATH".

    import jaxdrift as jd
    train = jd.data.load("phantoms", "train", data_dir="/data/tfds")  # builds on first use
    jd.data.class_names(train)           # ['lobar_consolidation', ...]
    jd.data.class_counts(train)          # {'lobar_consolidation': 1600, ...}
    jd.data.skip_report(train)           # what the build did not store, by reason
    preprocess = functools.partial(jd.models.preprocess, "resnet50v2")
    for batch in jd.data.batches(train, preprocess=preprocess, image_size=224, batch_size=32,
                                 train=True, seed=0):
      ...

    images = jd.data.generate_phantoms(1000, image_size=128, seed=0)  # plain numpy arrays

Split names follow TFDS: "train", "validation" (alias "val"), "test"; slicing such as
"train[:10%]" works as in `tfds.data_source`.
"""

import logging
import os

import tensorflow_datasets as tfds

from jaxdrift.data import chest_xray5
from jaxdrift.data import folder
from jaxdrift.data import phantoms
from jaxdrift.data.imageio import ImageError
from jaxdrift.data.layout import LayoutError, SkipReport
from jaxdrift.data.phantoms import generate as generate_phantoms
from jaxdrift.data.pipeline import (NO_AUGMENT, Augment, Memo, batches, default_mesh,
                                    host_batches, steps_per_epoch, to_device)

NAMES = ("chest_xray5", "phantoms", "folder:PATH")
_SPLIT_ALIASES = {"val": "validation", "valid": "validation"}
_PHANTOM_FIELDS = ("image_size", "num_train", "num_validation", "num_test", "seed")


def builder(name: str, *, data_dir=None, **kwargs) -> tfds.core.DatasetBuilder:
  """The TFDS builder for `name` ("chest_xray5[/config]", "phantoms[/config]", "folder:PATH").

  Args:
    name: dataset name, see the module docstring.
    data_dir: TFDS data directory (default: TFDS's, usually ~/tensorflow_datasets).
    **kwargs: builder options, see the module docstring.
  """
  common = {"data_dir": None if data_dir is None else os.fspath(data_dir),
            "file_format": "array_record"}
  if name.startswith("folder:"):
    return folder.ClassFolder.for_path(name[len("folder:"):], **common, **kwargs)
  base, _, config = name.partition("/")
  if base == "chest_xray5":
    return chest_xray5.ChestXray5(config=config or None, **common, **kwargs)
  if base == "phantoms":
    custom = {k: kwargs.pop(k) for k in _PHANTOM_FIELDS if k in kwargs}
    if custom:
      if config:
        raise ValueError(f"give either a config name ({name}) or settings {custom}, not both")
      c = phantoms.PhantomsConfig(name="tmp")
      values = {k: custom.get(k, getattr(c, k)) for k in _PHANTOM_FIELDS}
      config = phantoms.PhantomsConfig(
          name="s{image_size}_n{num_train}-{num_validation}-{num_test}_seed{seed}".format(
              **values), description="custom phantoms", **values)
    return phantoms.Phantoms(config=config or None, **common, **kwargs)
  raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(NAMES)} "
                   "(optionally with /config, e.g. 'phantoms/224')")


def build(name: str, *, data_dir=None, **kwargs) -> tfds.core.DatasetBuilder:
  """Prepares `name` (if not prepared yet) as array_record and logs its skip report."""
  return _prepare(builder(name, data_dir=data_dir, **kwargs), name)


def _prepare(b, name):
  b.download_and_prepare(file_format="array_record")
  skipped = b.info.metadata.get("skipped", {}).get("counts", {}) if b.info.metadata else {}
  logging.getLogger(__name__).info("%s at %s; skipped: %s", name, b.data_dir,
                                   skipped or "nothing")
  return b


def load(name: str, split: str, *, data_dir=None, download: bool = True, **kwargs):
  """Random-access source of one split (prepared on first use when `download`).

  Returns:
    a `tfds` ArrayRecordDataSource: len(), [i] -> dict of numpy values, `.dataset_info`.

  Raises:
    FileNotFoundError: the dataset is not prepared and `download` is False, or its files
      (manual download) are not there.
    ValueError: the split does not exist (the message lists those that do).
  """
  b = builder(name, data_dir=data_dir, **kwargs)
  if not b.is_prepared():
    if not download:
      raise FileNotFoundError(f"{name} is not prepared under {b.data_dir}; call "
                              f"jaxdrift.data.build({name!r}, data_dir=...) or pass "
                              "download=True")
    _prepare(b, name)
  base = split.split("[")[0]
  split = _SPLIT_ALIASES.get(base, base) + split[len(base):]
  if split.split("[")[0] not in b.info.splits:
    raise ValueError(f"{name} has no split {split.split('[')[0]!r} (asked for {base!r}); it "
                     f"has {sorted(b.info.splits)}")
  return b.as_data_source(split=split)


def class_names(source) -> list:
  """Label names of a source, in label order."""
  return list(source.dataset_info.features["label"].names)


def class_counts(source, split: str | None = None) -> dict:
  """class name -> examples, for `split` (default: the source's own split)."""
  meta = source.dataset_info.metadata or {}
  split = split or str(source.split).split("[")[0]
  try:
    return dict(meta["class_counts"][split])
  except KeyError:
    raise ValueError(f"no class counts for split {split!r}; recorded: "
                     f"{sorted(meta.get('class_counts', {}))}") from None


def skip_report(source) -> dict:
  """What the build skipped: {"counts": reason -> n, "modes": ..., "files": reason -> paths}."""
  meta = source.dataset_info.metadata or {}
  return dict(meta.get("skipped", {"counts": {}, "modes": {}, "files": {}}))
