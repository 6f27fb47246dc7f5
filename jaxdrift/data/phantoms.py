"""Synthetic chest X-ray phantoms with ground-truth lesion masks.

Radiograph-like images drawn procedurally (soft-tissue thorax, two dark lung fields, heart
and mediastinum shadow, ribs, low-frequency exposure variation, noise), varying patient size,
position, tilt and exposure. Five classes differ by lesion type and location; their index
order matches `chest_xray5.CLASS_NAMES` so demos can stand in for the real data:

  0 lobar_consolidation      one dense, sharply bounded opacity in a lower zone, one side
  1 peripheral_ground_glass  faint patches at the periphery of both lungs
  2 no_lesion                nothing (empty mask)
  3 upper_lobe_nodules       2-5 small nodules, some cavitated (ring), clustered in a faint
                             infiltrate in one upper zone
  4 diffuse_bilateral        faint, wide perihilar haze with a reticular texture

The lung fields span about 0.12-0.72 of the half-width either side of the midline and most
of the height, as on a PA radiograph, so that a 5x5 attribution grid (the coarsest of the
demo's) has cell centres inside every lesion zone.

The task is deliberately not trivial: 15% of lesions are weak (overlapping with no_lesion),
ground glass and diffuse haze are both faint and bilateral, consolidations can sit in the
mid zone, and every class carries lesion-like distractors (calcified granulomas) that are
not in the mask.

The lesion mask marks pixels where the lesion adds more than `MASK_THRESHOLD` (on a 0..1
intensity scale, before exposure and noise) to the image. Each image is a pure function of
(seed, stream, index): `generate(n, start=k)` returns the images k..k+n-1 of the full
sequence whatever the chunking, and `lesions=False` draws the same images without lesions.

`generate` is vectorised over chunks of images (10,000 images at 128 px take 16-20 s on two
CPU cores). The TFDS builder `Phantoms` stores train/validation/test splits (streams 0/1/2).
"""

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from jaxdrift.data import imageio

CLASS_NAMES = ("lobar_consolidation", "peripheral_ground_glass", "no_lesion",
               "upper_lobe_nodules", "diffuse_bilateral")
MASK_THRESHOLD = 0.02
_NUM_PARAMS = 64
_MAX_NODULES = 5
_LUNG_X = np.float32(0.42)


def _params(seed: int, stream: int, index: int, size: int):
  """Per-image random draws: 64 uniforms, a noise image [size, size], a 4x4 field."""
  rng = np.random.default_rng([seed, stream, index])
  return (rng.random(_NUM_PARAMS, dtype=np.float32),
          rng.standard_normal((size, size), dtype=np.float32),
          rng.standard_normal((4, 4), dtype=np.float32))


def _interp_matrix(size: int, grid: int) -> np.ndarray:
  """[size, grid] bilinear interpolation weights from a coarse grid to `size` pixels."""
  pos = (np.arange(size) + 0.5) / size * grid - 0.5
  pos = np.clip(pos, 0, grid - 1)
  lo = np.floor(pos).astype(int)
  hi = np.minimum(lo + 1, grid - 1)
  frac = (pos - lo).astype(np.float32)
  m = np.zeros((size, grid), np.float32)
  m[np.arange(size), lo] += 1 - frac
  m[np.arange(size), hi] += frac
  return m


def _lerp(u, lo, hi):
  return lo + (hi - lo) * u


def _blob(x, y, cx, cy, sx, sy):
  """Gaussian bump exp(-d^2/2) with per-image centre and widths [B] -> [B, H, W]."""
  dx = (x - cx[:, None, None]) / sx[:, None, None]
  dy = (y - cy[:, None, None]) / sy[:, None, None]
  return np.exp(-0.5 * (dx * dx + dy * dy))


def _render(u, noise, coarse, labels, size, lesions):
  """Draws one chunk. u: [B, 64] uniforms; noise [B, S, S]; coarse [B, 4, 4]."""
  lin = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
  gy, gx = np.meshgrid(lin, lin, indexing="ij")
  # Patient pose: shift, size, tilt (u[:, 0:4]).
  cx, cy = _lerp(u[:, 0], -0.06, 0.06), _lerp(u[:, 1], -0.06, 0.06)
  scale, theta = _lerp(u[:, 2], 0.85, 1.05), _lerp(u[:, 3], -0.07, 0.07)
  c, s = np.cos(theta)[:, None, None], np.sin(theta)[:, None, None]
  dx, dy = gx[None] - cx[:, None, None], gy[None] - cy[:, None, None]
  sc = scale[:, None, None]
  x, y = (c * dx + s * dy) / sc, (-s * dx + c * dy) / sc
  ax = x.dtype.type
  # Anatomy (u[:, 4:10]).
  body = np.clip((1 - (x / _lerp(u[:, 4], 0.82, 0.95)[:, None, None]) ** 2
                  - ((y - ax(0.15)) / ax(1.15)) ** 2) / ax(0.12), 0, 1)
  lung_h = _lerp(u[:, 5], 0.6, 0.7)[:, None, None]
  lungs = []
  for side in (-1, 1):
    r2 = ((x - side * _LUNG_X) / ax(0.3)) ** 2 + ((y + ax(0.05)) / lung_h) ** 2
    lungs.append(np.clip((1 - r2) / ax(0.45), 0, 1))
  lung = np.maximum(lungs[0], lungs[1])
  heart_s = _lerp(u[:, 6], 0.9, 1.15)[:, None, None]
  heart = np.clip(1 - ((x - ax(0.1)) / (ax(0.27) * heart_s)) ** 2
                  - ((y - ax(0.32)) / (ax(0.2) * heart_s)) ** 2, 0, 1) ** ax(0.5)
  medi = np.clip(1 - (x / ax(0.13)) ** 2, 0, 1)
  freq, phase = _lerp(u[:, 7], 5.0, 6.5), u[:, 8]
  ribs = np.clip(np.cos(2 * np.pi * (freq[:, None, None] * (y + ax(0.3) * np.abs(x))
                                     + phase[:, None, None])), 0, 1) ** 4
  density = (ax(0.08) + body * (ax(0.48) + ax(0.14) * medi + ax(0.14) * heart)
             - ax(0.36) * lung * (1 - ax(0.6) * heart) + ax(0.1) * ribs * np.clip(3 * lung, 0, 1))
  # Distractor: a calcified granuloma in any class (u[:, 10:14]); not a lesion.
  side = np.where(u[:, 10] < 0.5, -1, 1) * _LUNG_X
  gran = (u[:, 11] < 0.35)[:, None, None] * _blob(
      x, y, side + _lerp(u[:, 12], -0.12, 0.12), _lerp(u[:, 13], -0.45, 0.3),
      np.full_like(cx, 0.025), np.full_like(cx, 0.025))
  density = density + ax(0.25) * gran * lung
  lesion = np.zeros_like(density)
  if lesions:
    lesion = _lesions(u, x, y, labels, lesion)
    lesion *= lung
  value = np.clip(density + lesion, 0, 1)
  # Exposure and detector (u[:, 14:18]).
  gamma = _lerp(u[:, 14], 0.8, 1.25)[:, None, None]
  contrast = _lerp(u[:, 15], 0.75, 1.1)[:, None, None]
  offset = _lerp(u[:, 16], -0.04, 0.06)[:, None, None]
  sigma = _lerp(u[:, 17], 0.01, 0.035)[:, None, None]
  m = _interp_matrix(size, 4)
  field = np.einsum("hi,bij,wj->bhw", m, coarse, m)
  value = value ** gamma * contrast + offset + ax(0.03) * field + sigma * noise
  image = np.clip(np.rint(value * 255), 0, 255).astype(np.uint8)
  return image, lesion > MASK_THRESHOLD


def _lesions(u, x, y, labels, out):
  """Adds each image's class lesion to `out` [B, H, W] (u[:, 20:64] are lesion draws)."""
  ax = x.dtype.type
  severity = np.where(u[:, 20] < 0.15, _lerp(u[:, 21], 0.35, 0.6), 1.0).astype(np.float32)
  for label in range(len(CLASS_NAMES)):
    idx = np.flatnonzero(labels == label)
    if idx.size == 0 or CLASS_NAMES[label] == "no_lesion":
      continue
    v, xs, ys, sev = u[idx], x[idx], y[idx], severity[idx]
    side = np.where(v[:, 22] < 0.5, -1.0, 1.0).astype(np.float32) * _LUNG_X
    name = CLASS_NAMES[label]
    if name == "lobar_consolidation":
      b = _blob(xs, ys, side + _lerp(v[:, 23], -0.06, 0.06), _lerp(v[:, 24], 0.05, 0.35),
                _lerp(v[:, 25], 0.13, 0.2), _lerp(v[:, 26], 0.12, 0.18))
      layer = np.clip(ax(1.6) * b - ax(0.3), 0, 1) * _lerp(v[:, 27], 0.18, 0.4)[:, None, None]
    elif name == "peripheral_ground_glass":
      layer = np.zeros_like(xs)
      for k in range(3):
        # Patch 0 in the left lung, patch 1 in the right, patch 2 on either side.
        sk = np.where(v[:, 28] < 0.5, -1.0, 1.0) if k == 2 else np.full(len(idx), 2.0 * k - 1)
        cxk = sk * (_LUNG_X + _lerp(v[:, 29 + k], 0.06, 0.16))
        b = _blob(xs, ys, cxk, _lerp(v[:, 32 + k], -0.2, 0.4), _lerp(v[:, 35 + k], 0.09, 0.13),
                  _lerp(v[:, 35 + k], 0.11, 0.16))
        layer = np.maximum(layer, b * _lerp(v[:, 38 + k], 0.08, 0.16)[:, None, None])
    elif name == "upper_lobe_nodules":
      count = 2 + np.floor(v[:, 41] * 4).astype(int)
      side = np.where(v[:, 42] < 0.5, -1.0, 1.0) * _LUNG_X
      ccy = _lerp(v[:, 43], -0.45, -0.3)
      sig = _lerp(v[:, 44], 0.12, 0.16)
      layer = _blob(xs, ys, side, ccy, sig, sig) * _lerp(v[:, 45], 0.04, 0.07)[:, None, None]
      for k in range(_MAX_NODULES):
        sig = _lerp(v[:, 47 + k], 0.035, 0.055)
        ncx = side + _lerp(v[:, 52 + k], -0.15, 0.15)
        ncy = ccy + _lerp(v[:, 57 + k], -0.12, 0.12)
        b = _blob(xs, ys, ncx, ncy, sig, sig)
        cavity = (v[:, 62] < 0.4)[:, None, None] * _blob(xs, ys, ncx, ncy, sig * 0.5, sig * 0.5)
        amp = (k < count) * _lerp(v[:, 63], 0.2, 0.4)
        layer = layer + np.clip(b - ax(0.75) * cavity, 0, 1) * amp[:, None, None]
    else:  # diffuse_bilateral
      sx, sy, hy = _lerp(v[:, 23], 0.22, 0.32), _lerp(v[:, 24], 0.25, 0.35), np.full_like(sev, 0.05)
      haze = np.maximum(_blob(xs, ys, -0.25 + 0 * hy, hy, sx, sy),
                        _blob(xs, ys, 0.25 + 0 * hy, hy, sx, sy))
      freq = _lerp(v[:, 25], 14, 20)[:, None, None]
      texture = ax(0.75) + ax(0.25) * np.cos(freq * xs) * np.cos(freq * ys)
      layer = haze * texture * _lerp(v[:, 26], 0.08, 0.15)[:, None, None]
    out[idx] = layer * sev[:, None, None]
  return out


def generate(num: int, image_size: int = 128, seed: int = 0, *, start: int = 0,
             stream: int = 0, lesions: bool = True, chunk: int | None = None) -> dict:
  """Draws phantoms `start .. start + num - 1` of the sequence given by (seed, stream).

  Args:
    num: number of images.
    image_size: side length in pixels (square images).
    seed: base seed.
    stream: independent sequence number (the TFDS builder uses 0/1/2 for its splits).
    start: index of the first image.
    lesions: False draws the same images without their lesions (masks then all False).
    chunk: images rendered together; default: about 2^20 pixels per chunk, which keeps
      the temporaries in cache (memory ~ 40 * chunk * image_size^2 bytes).

  Returns:
    dict with "image" uint8 [num, S, S] (grayscale), "lesion_mask" bool [num, S, S],
    "label" int32 [num] (index into CLASS_NAMES; label = index mod 5, balanced), and
    "index" int64 [num].
  """
  if num < 0 or image_size < 8:
    raise ValueError(f"expected num >= 0 and image_size >= 8, got {num} and {image_size}")
  chunk = chunk or max(8, 2**20 // image_size**2)
  index = np.arange(start, start + num, dtype=np.int64)
  labels = (index % len(CLASS_NAMES)).astype(np.int32)
  images = np.empty((num, image_size, image_size), np.uint8)
  masks = np.empty((num, image_size, image_size), bool)
  for lo in range(0, num, chunk):
    hi = min(num, lo + chunk)
    draws = [_params(seed, stream, int(i), image_size) for i in index[lo:hi]]
    u, noise, coarse = (np.stack(d) for d in zip(*draws))
    images[lo:hi], masks[lo:hi] = _render(u, noise, coarse, labels[lo:hi], image_size,
                                          lesions)
  return {"image": images, "lesion_mask": masks, "label": labels, "index": index}


@dataclasses.dataclass(eq=False)
class PhantomsConfig(tfds.core.BuilderConfig):
  """Size and split sizes of a prepared phantom dataset (seed recorded in the name)."""

  image_size: int = 128
  num_train: int = 8000
  num_validation: int = 1000
  num_test: int = 1000
  seed: int = 0


class Phantoms(tfds.core.GeneratorBasedBuilder):
  """Synthetic chest X-ray phantoms with lesion masks (see the module docstring).

  Features: image uint8 [S, S, 1]; lesion_mask uint8 [S, S, 1] (1 inside the lesion);
  label (CLASS_NAMES); file_name "train/000123". Metadata: class_counts per split, the
  generator settings and an (empty) skip report, like the file-based builders.
  """

  name = "phantoms"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  BUILDER_CONFIGS = [
      PhantomsConfig(name="128", description="128 px, 8000/1000/1000"),
      PhantomsConfig(name="224", description="224 px, 8000/1000/1000", image_size=224),
      PhantomsConfig(name="small", description="64 px, 500/100/100 (smoke tests)",
                     image_size=64, num_train=500, num_validation=100, num_test=100),
  ]
  DEFAULT_CONFIG_NAME = "128"
  _STREAMS = {"train": 0, "validation": 1, "test": 2}

  def __init__(self, *, file_format="array_record", **kwargs):
    # array_record by default (TFDS's is tfrecord, which needs TensorFlow).
    super().__init__(file_format=file_format, **kwargs)

  def _info(self):
    size = self.builder_config.image_size
    return tfds.core.DatasetInfo(
        builder=self, description=__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(size, size, 1), encoding_format="png"),
            "lesion_mask": tfds.features.Image(shape=(size, size, 1), encoding_format="png"),
            "label": tfds.features.ClassLabel(names=list(CLASS_NAMES)),
            "file_name": tfds.features.Text(),
        }),
        supervised_keys=("image", "label"), metadata=tfds.core.MetadataDict())

  def _split_generators(self, dl_manager):
    c = self.builder_config
    sizes = {"train": c.num_train, "validation": c.num_validation, "test": c.num_test}
    self.info.metadata.update(
        generator="jaxdrift.data.phantoms.generate", seed=c.seed, image_size=c.image_size,
        streams=self._STREAMS, mask_threshold=MASK_THRESHOLD, class_counts={},
        skipped={"counts": {}, "modes": {}, "files": {}})
    return {s: self._generate_examples(s, n) for s, n in sizes.items() if n > 0}

  def _generate_examples(self, split, num, chunk=512):
    c = self.builder_config
    counts = np.zeros(len(CLASS_NAMES), int)
    for lo in range(0, num, chunk):
      batch = generate(min(chunk, num - lo), c.image_size, c.seed, start=lo,
                       stream=self._STREAMS[split])
      for image, mask, label, index in zip(*(batch[k] for k in
                                             ("image", "lesion_mask", "label", "index"))):
        counts[label] += 1
        key = f"{split}/{index:06d}"
        yield key, {"image": imageio.encode_array_png(image),
                    "lesion_mask": imageio.encode_array_png(mask.astype(np.uint8)),
                    "label": int(label), "file_name": key}
    self.info.metadata["class_counts"][split] = dict(zip(CLASS_NAMES, counts.tolist()))
