"""Input pipeline: a TFDS data source -> grain -> preprocessed, fixed-shape, sharded batches.

    source = jaxdrift.data.load("phantoms", "train", data_dir=...)
    preprocess = functools.partial(jaxdrift.models.preprocess, "resnet50v2")
    for batch in jaxdrift.data.batches(source, preprocess=preprocess, image_size=224,
                                       batch_size=64, train=True, seed=0, num_epochs=1):
      ...  # batch["image"]: float32 [64, 224, 224, 3], sharded along the mesh's "data" axis

Per example (numpy, in grain threads or worker processes):
  1. resize to `image_size` x `image_size` (bilinear, antialiased; aspect ratio not kept,
     like Keras `image_dataset_from_directory`),
  2. training only: a random affine warp (rotation, shift, zoom; black fill) and random
     brightness/contrast (`Augment`); no horizontal flip by default, because a flip moves
     the heart to the wrong side,
  3. grayscale -> 3 channels, then the caller's `preprocess` (float32 pixels in 0..255 ->
     the model's input range, e.g. `functools.partial(jaxdrift.models.preprocess, arch)`).

Batches are dicts (global batch dimension B first):
  image       float32 [B, S, S, 3], preprocessed by `preprocess`
  label       int32 [B]
  mask        bool [B]; False marks padding (evaluation only pads)
  index       int32 [B]; the record's position in the source, -1 for padding
  lesion_mask bool [B, S, S], warped like the image (only when the source has one)
  id          numpy str [B] of file names; stays on the host ("" for padding)

Training shuffles with `seed` (a new order each epoch, `train_order`: a pure function of seed
and epoch) and drops the ragged last batch; evaluation keeps source order, pads the last
batch to full size and marks the padding in "mask", so every example appears exactly once with mask True
and shapes never change. Numeric arrays are placed on all devices of `mesh` (default: every
device) sharded along "data"; with several hosts each process loads its own rows.
"""

import collections
import dataclasses
import functools
import math

import grain
import jax
import numpy as np
from PIL import Image

from jaxdrift import distributed

_PAD = -1


@dataclasses.dataclass(frozen=True)
class Augment:
  """Radiograph-friendly training augmentation; each range is symmetric around identity.

  Attributes:
    rotation: max rotation in degrees.
    shift: max translation as a fraction of the image side.
    zoom: scale drawn from [1 - zoom, 1 + zoom].
    brightness: max added offset as a fraction of 255.
    contrast: contrast factor drawn from [1 - contrast, 1 + contrast] (around the mean).
    horizontal_flip: flip left-right with probability 1/2 (off: anatomy is not symmetric).
  """

  rotation: float = 7.0
  shift: float = 0.05
  zoom: float = 0.08
  brightness: float = 0.1
  contrast: float = 0.15
  horizontal_flip: bool = False


NO_AUGMENT = Augment(0.0, 0.0, 0.0, 0.0, 0.0, False)


def _to_pil(array: np.ndarray) -> Image.Image:
  array = np.asarray(array)
  if array.ndim == 3 and array.shape[-1] == 1:
    array = array[..., 0]
  return Image.fromarray(array)


def resize(array: np.ndarray, size: int, resample=Image.Resampling.BILINEAR) -> Image.Image:
  """A decoded image [H, W] or [H, W, C] as a PIL image of `size` x `size` (as stored when
  it already has that size). The one resize of the pipeline and of `jaxdrift.data.cache`."""
  image = _to_pil(array)
  if image.size != (size, size):
    image = image.resize((size, size), resample)
  return image


def _affine(rng: np.random.Generator, size: int, aug: Augment):
  """PIL AFFINE coefficients mapping output pixels to input pixels, or None."""
  angle = np.deg2rad(rng.uniform(-aug.rotation, aug.rotation))
  zoom = rng.uniform(1 - aug.zoom, 1 + aug.zoom)
  tx, ty = rng.uniform(-aug.shift, aug.shift, size=2) * size
  flip = aug.horizontal_flip and rng.random() < 0.5
  if angle == 0 and zoom == 1 and tx == 0 and ty == 0 and not flip:
    return None
  c = size / 2.0
  cos, sin = np.cos(angle) / zoom, np.sin(angle) / zoom
  fx = -1.0 if flip else 1.0
  # input = R(-angle) / zoom @ (F @ (out - c) - t) + c, F = diag(fx, 1).
  a, b = cos * fx, sin
  d, e = -sin * fx, cos
  cx = c - a * c - b * c - (cos * tx + sin * ty)
  cy = c - d * c - e * c - (-sin * tx + cos * ty)
  return (a, b, cx, d, e, cy)


class _Transform:
  """Decoded example -> model-ready example (picklable, for grain worker processes)."""

  def __init__(self, preprocess, size, augment, has_mask, id_key):
    self.preprocess, self.size, self.augment = preprocess, size, augment
    self.has_mask, self.id_key = has_mask, id_key

  def __call__(self, example, rng: np.random.Generator):
    if example.get("_index", _PAD) == _PAD:
      return self.padding()
    size = self.size
    image = resize(example["image"], size)
    mask = None
    if self.has_mask:
      mask = resize(example["lesion_mask"], size, Image.Resampling.NEAREST)
    coeffs = _affine(rng, size, self.augment) if self.augment != NO_AUGMENT else None
    if coeffs is not None:
      image = image.transform((size, size), Image.Transform.AFFINE, coeffs,
                              resample=Image.Resampling.BILINEAR, fillcolor=0)
      if mask is not None:
        mask = mask.transform((size, size), Image.Transform.AFFINE, coeffs,
                              resample=Image.Resampling.NEAREST, fillcolor=0)
    pixels = np.asarray(image, np.float32)
    if self.augment.contrast or self.augment.brightness:
      factor = rng.uniform(1 - self.augment.contrast, 1 + self.augment.contrast)
      offset = rng.uniform(-self.augment.brightness, self.augment.brightness) * 255.0
      mean = pixels.mean(axis=(0, 1), keepdims=True)
      pixels = np.clip((pixels - mean) * factor + mean + offset, 0.0, 255.0)
    if pixels.ndim == 2:
      pixels = np.repeat(pixels[..., None], 3, axis=-1)
    out = {"image": np.asarray(self.preprocess(pixels), np.float32),
           "label": np.int32(example["label"]), "mask": np.bool_(True),
           "index": np.int32(example["_index"]), "id": _text(example.get(self.id_key, ""))}
    if mask is not None:
      out["lesion_mask"] = np.asarray(mask) > 0
    return out

  def padding(self):
    s = self.size
    out = {"image": np.zeros((s, s, 3), np.float32), "label": np.int32(0),
           "mask": np.bool_(False), "index": np.int32(_PAD), "id": ""}
    if self.has_mask:
      out["lesion_mask"] = np.zeros((s, s), bool)
    return out


def _text(value) -> str:
  return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class _Indexed:
  """Random-access view: position j -> source[positions[j]] plus "_index".

  Padding positions (-1) give {"_index": -1} (grain treats None as a filtered element).
  """

  def __init__(self, source, positions: np.ndarray):
    self.source, self.positions = source, positions

  def __len__(self):
    return len(self.positions)

  def __getitem__(self, j):
    i = int(self.positions[j])
    if i == _PAD:
      return {"_index": _PAD}
    example = dict(self.source[i])
    example["_index"] = i
    return example


def _identity(fn):
  """A key equal for equal preprocessing: partials compare by function and arguments."""
  if isinstance(fn, functools.partial):
    return (_identity(fn.func), fn.args, tuple(sorted(fn.keywords.items())))
  return fn


def describe(fn) -> str:
  """A readable name of a preprocessing function, e.g. "preprocess('resnet50v2', ...)"."""
  if isinstance(fn, functools.partial):
    args = [repr(a) for a in fn.args] + [f"{k}={v!r}" for k, v in fn.keywords.items()]
    return f"{describe(fn.func)}({', '.join(args + ['...'])})"
  return getattr(fn, "__qualname__", repr(fn))


class Memo:
  """Model-ready examples of one source, kept after their first pass through `batches`.

  Hand the same Memo to every `batches` call over one source, preprocessing and image size
  (each epoch, each evaluation) and every record is read, decoded, resized and preprocessed once:
  a pass without augmentation yields the same values every time. Passes that augment draw
  a new warp each time and do not use it. It holds float32 images in memory (2000 phantoms
  at 224 px: 1.2 GB), and with grain worker processes each worker would fill a copy.
  """

  def __init__(self):
    self.examples, self.key, self.name = {}, None, None

  def check(self, preprocess, size: int):
    """Binds the memo to one preprocessing and size, or raises if it holds another's."""
    key = (_identity(preprocess), size)
    name = f"{describe(preprocess)} at {size} px"
    if self.key is None:
      self.key, self.name = key, name
    elif self.key != key:
      raise ValueError(f"this Memo holds examples prepared by {self.name}, not by {name}; "
                       "use one Memo per source, preprocessing and image size")


class _Prepared(_Indexed):
  """`_Indexed` with the (deterministic) transform applied, memoized by record index."""

  def __init__(self, source, positions: np.ndarray, transform: "_Transform", memo: Memo):
    super().__init__(source, positions)
    self.transform, self.memo = transform, memo

  def __getitem__(self, j):
    i = int(self.positions[j])
    if i == _PAD:
      return self.transform.padding()
    if i not in self.memo.examples:
      self.memo.examples[i] = self.transform(super().__getitem__(j), None)
    return self.memo.examples[i]


def default_mesh() -> jax.sharding.Mesh:
  """1-D mesh over every device (all hosts) with axis name "data" (`jaxdrift.distributed`)."""
  return distributed.data_mesh()


def _eval_positions(n, batch_size, process_index, process_count):
  """This process's rows of every padded global batch (-1 = padding)."""
  padded = np.full(max(1, math.ceil(n / batch_size)) * batch_size, _PAD, np.int64)
  padded[:n] = np.arange(n)
  local = batch_size // process_count
  rows = padded.reshape(-1, process_count, local)[:, process_index]
  return rows.reshape(-1)


def train_order(n: int, batch_size: int, seed: int, epoch: int, process_index: int = 0,
                process_count: int = 1) -> np.ndarray:
  """Record indices of this process's rows of every batch of (0-based) `epoch`.

  A permutation drawn from numpy's generator seeded with (seed, epoch), cut to whole global
  batches (the ragged rest is dropped); process p takes rows p*B/P .. (p+1)*B/P - 1 of each
  global batch, so the global batches do not depend on the process count. (grain's own
  index shuffle costs ~0.1 ms per example on a busy 2-core host: seconds per epoch.)

  Returns:
    int64 [n // batch_size, batch_size // process_count].
  """
  if n < batch_size:
    raise ValueError(f"the training split has {n} examples, fewer than one batch of "
                     f"{batch_size}; lower batch_size")
  local = batch_size // process_count
  order = np.random.default_rng([seed, epoch]).permutation(n)[:n // batch_size * batch_size]
  return order.reshape(-1, process_count, local)[:, process_index]


def steps_per_epoch(num_examples: int, batch_size: int, train: bool) -> int:
  """Batches per epoch: floor for training (ragged batch dropped), ceil for evaluation."""
  return num_examples // batch_size if train else math.ceil(num_examples / batch_size)


def host_batches(source, *, preprocess, image_size: int, batch_size: int, train: bool,
                 seed: int = 0, augment: Augment | bool | None = None,
                 num_epochs: int = 1, start_epoch: int = 0, worker_count: int = 0,
                 num_threads: int = 8, memo: Memo | None = None,
                 process_index: int | None = None, process_count: int | None = None):
  """grain `IterDataset` of this process's numpy batches (before device placement).

  Same arguments as `batches`; `batch_size` is global, each process gets
  batch_size / process_count rows per step.
  """
  if not callable(preprocess):
    raise TypeError(f"preprocess must be a function of float32 pixels [..., 3] in 0..255, got "
                    f"{preprocess!r}; pass e.g. functools.partial(jd.models.preprocess, arch)")
  size = int(image_size)
  if size < 1:
    raise ValueError(f"image_size must be a positive number of pixels, got {image_size!r}")
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  if batch_size % process_count:
    raise ValueError(f"batch_size {batch_size} must be divisible by the {process_count} "
                     "processes")
  local = batch_size // process_count
  if augment is None or augment is True:
    augment = Augment() if train else NO_AUGMENT
  elif augment is False:
    augment = NO_AUGMENT
  features = source.dataset_info.features
  id_key = "file_name" if "file_name" in features else "id"
  transform = _Transform(preprocess, size, augment, "lesion_mask" in features, id_key)
  if memo is not None and augment == NO_AUGMENT:
    memo.check(preprocess, size)
  else:
    memo = None

  def source_of(positions):
    """position j -> record positions[j]: read, or (with a memo) already model-ready."""
    if memo is None:
      return grain.MapDataset.source(_Indexed(source, positions)).seed(seed)
    return grain.MapDataset.source(_Prepared(source, positions, transform, memo)).seed(seed)

  # Without augmentation the transform ignores its rng, so the memo's examples are those of
  # the uncached pipeline.
  prepare = (lambda ds: ds) if memo is not None else (lambda ds: ds.random_map(transform))
  n = len(source)
  if train:
    if n < batch_size:
      raise ValueError(f"the training split has {n} examples, fewer than one batch of "
                       f"{batch_size}; lower batch_size")
    # Every epoch from 0 (cheap), so that element k of epoch e keeps its augmentation draw
    # (grain's per-element rng) whatever epoch a run resumes at.
    positions = np.concatenate([
        train_order(n, batch_size, seed, e, process_index, process_count).reshape(-1)
        for e in range(start_epoch + num_epochs)])
    ds = prepare(source_of(positions)).batch(local, drop_remainder=True)
    ds = ds[start_epoch * (n // batch_size):]
  else:
    positions = _eval_positions(n, batch_size, process_index, process_count)
    ds = prepare(source_of(positions)).batch(local, drop_remainder=False)
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads,
                                            prefetch_buffer_size=max(2, 2 * num_threads)))
  if worker_count > 0:
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
  return it


def to_device(batch: dict, mesh: jax.sharding.Mesh) -> dict:
  """Places the numeric arrays of a process-local batch on `mesh`, sharded along "data"."""
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  return {k: (v if v.dtype.kind in "USO" else
              jax.make_array_from_process_local_data(sharding, v))
          for k, v in batch.items()}


def batches(source, *, preprocess, image_size: int, batch_size: int, train: bool,
            seed: int = 0, augment: Augment | bool | None = None,
            num_epochs: int = 1, start_epoch: int = 0, mesh: jax.sharding.Mesh | None = None,
            worker_count: int = 0, num_threads: int = 8, prefetch: int = 2,
            memo: Memo | None = None):
  """Yields preprocessed, fixed-shape batches placed on the devices of `mesh`.

  Args:
    source: a random-access TFDS source (`jaxdrift.data.load` / `tfds.data_source`) with
      "image" and "label" (and optionally "lesion_mask", "file_name").
    preprocess: float32 pixels [..., H, W, 3] in 0..255 -> the model's input, float32 of
      the same shape (`functools.partial(jaxdrift.models.preprocess, arch)`); a picklable
      function when worker_count > 0.
    image_size: square input size in pixels (`jaxdrift.models.default_input_size(arch)`).
    batch_size: GLOBAL batch size; must be divisible by the number of devices in `mesh`.
    train: True shuffles, augments and drops the ragged batch; False keeps order, does not
      augment, and pads the last batch (see "mask").
    seed: shuffling and augmentation seed (epoch e uses a stream derived from seed and e).
    augment: `Augment`, True/None (default `Augment()` when training) or False.
    num_epochs: training epochs to yield (evaluation always yields one pass).
    start_epoch: first epoch (resume training with the same order as an unbroken run).
    mesh: device mesh with a "data" axis; default `default_mesh()`.
    worker_count: grain worker processes (0 = threads in this process). Needs absl flags
      parsed first (`absl.flags.FLAGS(sys.argv)` or `absl.app.run`).
    num_threads: grain reader threads per process.
    prefetch: batches transferred to the devices ahead of use.
    memo: a `Memo` of this source, preprocessing and size, shared by the passes over it: a pass
      without augmentation prepares each record once across them (None: every pass reads
      and preprocesses every record).

  Yields:
    dicts described in the module docstring.
  """
  mesh = mesh or default_mesh()
  if batch_size % mesh.shape["data"]:
    raise ValueError(f"batch_size {batch_size} must be divisible by the {mesh.shape['data']} "
                     "devices along the mesh's 'data' axis")
  it = host_batches(source, preprocess=preprocess, image_size=image_size,
                    batch_size=batch_size, train=train, seed=seed, augment=augment, num_epochs=num_epochs,
                    start_epoch=start_epoch, worker_count=worker_count,
                    num_threads=num_threads, memo=memo)
  queue = collections.deque()
  for batch in it:
    queue.append(to_device(batch, mesh))
    if len(queue) > prefetch:
      yield queue.popleft()
  while queue:
    yield queue.popleft()
