"""`chest_xray5`: the study's five-class chest X-ray dataset as a TensorFlow-free TFDS builder.

The study most likely used the Kaggle "Lungs Disease Dataset (4 types)"
(omkarmanohardalvi/lungs-disease-dataset-4-types). It cannot be downloaded automatically:
download the zip yourself and either

* put the zip (or the folder it extracts to) into the TFDS manual directory,
  ``<data_dir>/downloads/manual/``, or
* pass its path: ``jaxdrift.data.load("chest_xray5", "train", source=PATH)``, or from the
  command line ``python -m jaxdrift.data.chest_xray5 --source PATH --data_dir DIR``.

Classes (label order): Bacterial Pneumonia, Corona Virus Disease, Normal, Tuberculosis,
Viral Pneumonia. Folder names map to them case-insensitively and ignoring spaces, "_" and
"-" (also accepted: "COVID", "COVID-19", "TB"); any other class folder is an error. When the
archive has train/val/test folders they are the splits (all three must exist and hold all
five classes); without split folders a stratified split (80/10/10, seed 0 by default) is
made and recorded in the metadata. Splits are named "train", "validation" and "test".

Configs: "rgb" (default; 3 channels, original size), "gray" (1 channel), "rgb_512" and
"gray_512" (longer side at most 512 px: about 10x faster to read). Images are stored as
lossless PNG, so "rgb"/"gray" keep every decoded pixel. See `folder.py` for the features
and metadata, and `imageio.py` for how 16-bit, palette, RGBA and CMYK files are converted.

The zip is read in place (nothing extracted, nothing written outside the TFDS data
directory); members that would escape the archive are refused and counted.
"""

import argparse
import glob
import logging
import os

from jaxdrift.data import folder as folder_lib
from jaxdrift.data import layout as layout_lib

CLASS_NAMES = ("Bacterial Pneumonia", "Corona Virus Disease", "Normal", "Tuberculosis",
               "Viral Pneumonia")

_ALIASES = {layout_lib.normalize_name(n): n for n in CLASS_NAMES}
_ALIASES.update({"covid": "Corona Virus Disease", "covid 19": "Corona Virus Disease",
                 "covid19": "Corona Virus Disease", "coronavirus disease":
                 "Corona Virus Disease", "tb": "Tuberculosis"})

REQUIRED_SPLITS = ("train", "validation", "test")


class ChestXray5(folder_lib.ImageFolderBuilder):
  """Five-class chest X-ray dataset (Kaggle "Lungs Disease Dataset (4 types)" layout)."""

  name = "chest_xray5"
  BUILDER_CONFIGS = [
      folder_lib.FolderConfig(name="rgb", description="RGB, original size", channels=3),
      folder_lib.FolderConfig(name="gray", description="grayscale, original size",
                              channels=1),
      folder_lib.FolderConfig(name="rgb_512", description="RGB, longer side <= 512 px",
                              channels=3, max_side=512),
      folder_lib.FolderConfig(name="gray_512", description="grayscale, longer side <= 512 px",
                              channels=1, max_side=512),
  ]
  DEFAULT_CONFIG_NAME = "rgb"
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Download the Kaggle dataset "Lungs Disease Dataset (4 types)"
  (https://www.kaggle.com/datasets/omkarmanohardalvi/lungs-disease-dataset-4-types) and put
  the zip file, or the folder it extracts to, into the manual directory
  (<data_dir>/downloads/manual/), or pass source=PATH.
  """

  def _class_names(self):
    return list(CLASS_NAMES)

  def _class_of_folder(self, folder, split):
    try:
      return _ALIASES[layout_lib.normalize_name(folder)]
    except KeyError:
      where = f"split {split!r}" if split else "the dataset root"
      raise layout_lib.LayoutError(
          f"found unknown class folder {folder!r} in {where}; expected one of "
          f"{list(CLASS_NAMES)} (case-insensitive). Rename or remove that folder.") from None

  def _resolve_source(self, dl_manager) -> str:
    if self._source is not None:
      if not os.path.exists(self._source):
        raise FileNotFoundError(f"chest_xray5 source {self._source} does not exist; expected "
                                "the Kaggle zip or the folder it extracts to")
      return self._source
    manual = os.fspath(dl_manager._manual_dir or "")  # pylint: disable=protected-access
    if not manual or not os.path.isdir(manual) or not os.listdir(manual):
      raise FileNotFoundError(
          f"chest_xray5 is not there: the manual directory {manual or '(unset)'} is missing "
          f"or empty, and no source=PATH was given.\n{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    zips = sorted(glob.glob(os.path.join(manual, "*.zip")))
    if len(zips) > 1:
      raise ValueError(f"found {len(zips)} zip files in {manual}: {zips}; expected one. "
                       "Remove the others or pass source=PATH.")
    if zips:
      logging.getLogger(__name__).info("chest_xray5: reading %s", zips[0])
      return zips[0]
    return manual

  def _check_splits(self, splits):
    missing = [s for s in REQUIRED_SPLITS if s not in splits]
    if missing:
      raise layout_lib.LayoutError(
          f"found split folders for {sorted(splits)} but not for {missing}; expected train, "
          "val (or validation) and test folders, or no split folders at all (then a "
          "stratified split with a recorded seed is made)")
    for split, by_class in splits.items():
      absent = [c for c in CLASS_NAMES if c not in by_class]
      if absent:
        raise layout_lib.LayoutError(
            f"split {split!r} has no folder for class(es) {absent}; expected all of "
            f"{list(CLASS_NAMES)} in every split")


def main(argv=None) -> None:
  """Command line: prepare chest_xray5 from a zip or folder into a TFDS data directory."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--source", help="Kaggle zip or extracted folder (default: the TFDS "
                      "manual directory)")
  parser.add_argument("--data_dir", default=None, help="TFDS data directory")
  parser.add_argument("--config", default="rgb", choices=[c.name for c in
                                                          ChestXray5.BUILDER_CONFIGS])
  parser.add_argument("--strict", action="store_true",
                      help="fail on corrupt or non-image files instead of skipping them")
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO)
  builder = ChestXray5(config=args.config, data_dir=args.data_dir, source=args.source,
                       skip_bad_files=not args.strict, file_format="array_record")
  builder.download_and_prepare(file_format="array_record")
  meta = builder.info.metadata
  print(f"prepared {builder.data_dir}")
  for split, counts in meta.get("class_counts", {}).items():
    print(f"  {split}: {counts}")
  print(f"  skipped: {meta.get('skipped', {}).get('counts', {})}")


if __name__ == "__main__":
  main()
