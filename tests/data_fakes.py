"""Small fake datasets on disk for the data tests (Kaggle layout, unusual image modes)."""

import io
import zipfile

import numpy as np
from PIL import Image

KAGGLE_FOLDERS = ("Bacterial Pneumonia", "Corona Virus Disease", "normal", "Tuberculosis",
                  "Viral Pneumonia")  # "normal": capitalisation varies between copies.


def png_bytes(array, mode=None, **save_kwargs) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(array, mode=mode).save(buffer, format="PNG", **save_kwargs)
  return buffer.getvalue()


def pixel_value(split_index: int, class_index: int, i: int) -> int:
  """Distinct constant gray value of fake image i of a class in a split."""
  return 10 + 50 * class_index + 10 * i + split_index


def unusual_images():
  """name -> (encoded bytes, expected 8-bit grayscale value of every pixel, format)."""
  out = {}
  sixteen = np.full((6, 7), 40000, np.uint16)  # 40000 / 65535 * 255 = 155.6 -> 156
  out["sixteen_bit.png"] = (png_bytes(sixteen), 156)
  palette = Image.new("P", (7, 6))
  palette.putpalette([0, 0, 0, 90, 90, 90] + [0] * 762)
  palette.paste(1, (0, 0, 7, 6))
  buf = io.BytesIO(); palette.save(buf, format="PNG")
  out["palette.png"] = (buf.getvalue(), 90)
  rgba = np.zeros((6, 7, 4), np.uint8); rgba[..., :3] = 120; rgba[..., 3] = 30
  out["rgba.png"] = (png_bytes(rgba), 120)
  cmyk = Image.new("CMYK", (7, 6), (0, 0, 0, 155))  # K=155 -> RGB 100
  buf = io.BytesIO(); cmyk.save(buf, format="TIFF")
  out["cmyk.tif"] = (buf.getvalue(), 100)
  return out


def write_kaggle_zip(path, per_class=3, splits=("train", "val", "test"),
                     wrapper="Lung Disease Dataset (4 types)", extras=True):
  """Writes a fake Kaggle-layout zip; returns the list of bad entries added.

  Image i of class c in split s is a 9x8 grayscale PNG of constant value pixel_value(s, c, i).
  With extras: unusual-mode images in train/Normal, a corrupt, a truncated and a non-image
  file, OS junk and a zip-slip entry.
  """
  with zipfile.ZipFile(path, "w") as zf:
    for s, split in enumerate(splits):
      for c, cls in enumerate(KAGGLE_FOLDERS):
        for i in range(per_class):
          value = pixel_value(s, c, i)
          zf.writestr(f"{wrapper}/{split}/{cls}/img_{i}.png",
                      png_bytes(np.full((8, 9), value, np.uint8)))
    if extras:
      base = f"{wrapper}/{splits[0]}/normal"
      for name, (data, _) in unusual_images().items():
        zf.writestr(f"{base}/{name}", data)
      good = png_bytes(np.full((8, 9), 7, np.uint8))
      zf.writestr(f"{base}/corrupt.png", b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
      zf.writestr(f"{base}/truncated.png", good[: len(good) // 2])
      zf.writestr(f"{base}/notes.txt", b"not an image")
      zf.writestr(f"__MACOSX/{base}/._img_0.png", b"junk")
      zf.writestr("../evil.png", good)
