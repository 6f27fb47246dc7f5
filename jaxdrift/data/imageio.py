"""Decoding, validating and normalising image files for the dataset builders.

Every builder stores images as 8-bit PNG in one colour layout per dataset ("L" for
grayscale, "RGB" for colour), whatever the files on disk look like. This module turns the
bytes of one file into that form, or raises `ImageError` saying why it cannot.

Conversions (all deterministic, documented so results can be reproduced):

* 16-bit grayscale ("I;16", "I;16B", "I;16L", "I" from 16-bit PNG/TIFF): value * 255 / 65535,
  rounded, so the full dynamic range survives. (Pillow's own `convert("L")` clips at 255,
  which turns most 16-bit radiographs white.) 32-bit float ("F") images in 0..1 are scaled by
  255, others are min-max scaled.
* Palette ("P", "PA"): expanded through the palette; transparency is dropped.
* With alpha ("RGBA", "LA"): the alpha channel is dropped (as `tf.io.decode_image(...,
  channels=3)` does), the stored colour values are kept.
* "CMYK" (including Adobe-inverted JPEG), "YCbCr", "LAB", "HSV", "1": Pillow's conversion.
* RGB -> L uses ITU-R 601-2 luma (Pillow); L -> RGB repeats the channel.
* EXIF orientation is applied, so the stored image looks like it does in an image viewer.
"""

import io
import os

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm"})

# Files that operating systems and archivers leave behind; never data.
JUNK_NAMES = frozenset({"thumbs.db", "desktop.ini", ".ds_store"})

_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})


class ImageError(ValueError):
  """A file that claims to be an image cannot be decoded into one."""


def is_image_name(name: str) -> bool:
  """Whether a file name has one of the `IMAGE_EXTENSIONS` (case-insensitive)."""
  return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def is_junk_name(path: str) -> bool:
  """Whether a path is an OS/archiver leftover (`__MACOSX/`, `._x`, `.DS_Store`, ...)."""
  parts = path.replace("\\", "/").split("/")
  base = parts[-1].lower()
  return ("__MACOSX" in parts or base in JUNK_NAMES or base.startswith("._")
          or any(p.startswith(".") and p not in (".", "..") for p in parts[:-1]))


def _to_8bit_gray(image: Image.Image) -> Image.Image:
  """16-bit / 32-bit grayscale -> 8-bit "L" keeping the full dynamic range."""
  values = np.asarray(image)
  if image.mode == "F":
    values = values.astype(np.float64)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
      raise ImageError("float image has no finite pixel values")
    low, high = (0.0, 1.0) if finite.min() >= 0 and finite.max() <= 1 else (
        finite.min(), max(finite.max(), finite.min() + 1e-12))
    scaled = (np.nan_to_num(values, nan=low) - low) / (high - low) * 255.0
  else:
    scaled = values.astype(np.float64) * (255.0 / 65535.0)
  return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")


def normalize_mode(image: Image.Image, channels: int) -> Image.Image:
  """Converts a decoded Pillow image to 8-bit "L" (channels=1) or "RGB" (channels=3).

  Args:
    image: any decoded Pillow image.
    channels: 1 or 3.

  Returns:
    A new Pillow image in mode "L" or "RGB" (the input when it already is in that mode).
  """
  if channels not in (1, 3):
    raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels}")
  mode = image.mode
  if mode in _SIXTEEN_BIT_MODES or mode == "F":
    image = _to_8bit_gray(image)
  elif mode in ("P", "PA"):
    image = image.convert("RGBA").convert("RGB")
  elif mode in ("RGBA", "RGBa", "RGBX"):
    image = image.convert("RGB")
  elif mode in ("LA", "La"):
    image = image.getchannel(0)
  elif mode not in ("L", "RGB"):
    image = image.convert("RGB")
  target = "L" if channels == 1 else "RGB"
  return image if image.mode == target else image.convert(target)


def decode(data: bytes, channels: int, name: str = "<bytes>"):
  """Fully decodes image bytes and converts them to the dataset's colour layout.

  Args:
    data: the encoded file content.
    channels: 1 (store grayscale) or 3 (store RGB).
    name: file name used in error messages.

  Returns:
    (image, original_mode): a Pillow image in mode "L" or "RGB" and the mode the file had.

  Raises:
    ImageError: the bytes are empty, not an image, truncated or otherwise undecodable.
  """
  if not data:
    raise ImageError(f"{name}: file is empty (0 bytes)")
  try:
    with Image.open(io.BytesIO(data)) as image:
      image.load()  # Decodes every pixel: truncation shows up here, not later.
      original_mode = image.mode
      image = ImageOps.exif_transpose(image)
      converted = normalize_mode(image, channels)
      converted.load()
  except UnidentifiedImageError:
    raise ImageError(f"{name}: not a recognised image format") from None
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    raise ImageError(f"{name}: cannot decode ({type(e).__name__}: {e})") from None
  if converted.width == 0 or converted.height == 0:
    raise ImageError(f"{name}: image has zero size {converted.size}")
  return converted, original_mode


def limit_size(image: Image.Image, max_side: int | None) -> Image.Image:
  """Downscales (antialiased bilinear) so that the longer side is at most `max_side`."""
  if max_side is None or max(image.size) <= max_side:
    return image
  scale = max_side / max(image.size)
  size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
  return image.resize(size, Image.Resampling.BILINEAR)


def encode_png(image: Image.Image) -> bytes:
  """Lossless PNG bytes of a Pillow image."""
  buffer = io.BytesIO()
  image.save(buffer, format="PNG", compress_level=3)
  return buffer.getvalue()


def encode_array_png(array: np.ndarray) -> bytes:
  """Lossless PNG bytes of a uint8 array [H, W] or [H, W, 3]."""
  array = np.asarray(array)
  if array.dtype != np.uint8 or array.ndim not in (2, 3):
    raise ValueError(f"expected a uint8 array [H, W] or [H, W, 3], got {array.dtype} "
                     f"{array.shape}")
  return encode_png(Image.fromarray(array))
