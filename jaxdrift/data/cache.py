"""Training input at device speed: a uint8 image cache, batches gathered by index.

    images = cache.build(source, image_size=224, mesh=mesh)          # None: stream instead
    prepare = cache.make_prepare(functools.partial(jd.models.preprocess, arch), Augment(),
                                 cache.augment_key(seed), mesh)
    for inputs in cache.epoch_inputs(images, batch_size=32, seed=0, epoch=e, mesh=mesh):
      batch = prepare(inputs, images.device_data, epoch)   # inside the jitted train step

Every record is decoded and resized ONCE (the streaming pipeline's own resize, so the
pixels are the same) into a uint8 array [N, S, S, C] (C as stored: 1 for grayscale). The
array lives:

  "device"  on every device of the mesh (replicated): a step sends only the indices of its
            examples, and gathers, augments and preprocesses them inside the jitted step;
  "host"    in host memory: a step gathers its uint8 rows there (a copy of a few MB) and
            sends them ahead of use; augmentation and preprocessing still run on the device;
  "stream"  nowhere: the dataset is too large, and `jaxdrift.data.batches` streams it.

`choose_placement` picks the first that fits its budget (a quarter of the device's memory,
a quarter of the host's), or what `JAXDRIFT_TRAIN_INPUT` (device | host | stream) asks for.

The epoch's order is the streaming pipeline's (`jaxdrift.data.pipeline.train_order`: a
permutation of seed and epoch, the ragged batch dropped, this process's rows), so without
augmentation `batches` yields bitwise the batches of `jaxdrift.data.batches(..., train=True)`.
Augmentation is `jaxdrift.data.augment` with per-example keys
`fold_in(fold_in(augment_key(seed), epoch), index)`.
"""

import collections
import concurrent.futures
import dataclasses
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from jaxdrift.data import augment as augment_lib
from jaxdrift.data import pipeline

PLACEMENTS = ("device", "host", "stream")
ENV_PLACEMENT = "JAXDRIFT_TRAIN_INPUT"
BUDGET_FRACTION = 0.25
# Keeps the augmentation keys apart from the other streams derived from the run's seed.
_AUGMENT_STREAM = 0x6A617567


@dataclasses.dataclass(frozen=True)
class Images:
  """A split's decoded, resized images and labels.

  Attributes:
    images: uint8 [N, S, S, C] (numpy for "host"; a replicated jax array for "device").
    labels: int32 [N] (same placement).
    placement: "device" or "host".
    read_s: seconds spent decoding and resizing.
  """

  images: object
  labels: object
  placement: str
  read_s: float = 0.0

  @property
  def device_data(self) -> dict:
    """The jitted step's data argument: the arrays for "device", {} for "host"."""
    if self.placement == "device":
      return {"images": self.images, "labels": self.labels}
    return {}


def augment_key(seed: int) -> jax.Array:
  """The augmentation stream of a run with this seed."""
  return jax.random.fold_in(jax.random.key(seed), _AUGMENT_STREAM)


def _channels(source) -> int:
  shape = source.dataset_info.features["image"].shape
  return int(shape[-1]) if len(shape) == 3 and shape[-1] else 3


def cached_bytes(source, image_size: int) -> int:
  """Bytes of `source`'s uint8 cache at `image_size`."""
  return len(source) * image_size * image_size * _channels(source)


def _host_bytes() -> int:
  try:
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
  except (ValueError, OSError, AttributeError):
    return 8 << 30


def choose_placement(nbytes: int, mesh: jax.sharding.Mesh, placement: str = "auto") -> str:
  """"device", "host" or "stream" for a cache of `nbytes` (see the module docstring).

  Args:
    nbytes: the cache's size.
    mesh: its devices (each holds a copy on "device").
    placement: "auto" (the environment's `JAXDRIFT_TRAIN_INPUT`, else by budget) or one
      of `PLACEMENTS` (kept as asked).
  """
  if placement == "auto":
    placement = os.environ.get(ENV_PLACEMENT, "auto").strip().lower() or "auto"
  if placement != "auto":
    if placement not in PLACEMENTS:
      raise ValueError(f"training input placement {placement!r} is not one of "
                       f"{', '.join(PLACEMENTS)} or 'auto' (check ${ENV_PLACEMENT})")
    return placement
  host = BUDGET_FRACTION * _host_bytes()
  device = mesh.devices.flat[0]
  stats = device.memory_stats() if device.platform != "cpu" else None
  limit = (stats or {}).get("bytes_limit")
  device_budget = BUDGET_FRACTION * limit if limit else host
  if nbytes <= device_budget:
    return "device"
  return "host" if nbytes <= host else "stream"


def read_images(source, image_size: int, num_threads: int = 8) -> tuple:
  """Every record of `source` decoded and resized (threads): (uint8 [N,S,S,C], int32 [N])."""
  def one(i):
    example = source[i]
    pixels = np.asarray(pipeline.resize(example["image"], image_size))
    return pixels.reshape(image_size, image_size, -1), np.int32(example["label"])

  n = len(source)
  with concurrent.futures.ThreadPoolExecutor(max(1, num_threads)) as pool:
    rows = list(pool.map(one, range(n)))
  if not rows:
    raise ValueError("the training split is empty")
  return np.stack([r[0] for r in rows]), np.asarray([r[1] for r in rows], np.int32)


def build(source, *, image_size: int, mesh: jax.sharding.Mesh, placement: str = "auto",
          num_threads: int = 8) -> Images | None:
  """The cache of `source`, placed by `choose_placement`; None means "stream it".

  Logs the choice once (logger `jaxdrift.data.cache`).
  """
  import time

  nbytes = cached_bytes(source, image_size)
  where = choose_placement(nbytes, mesh, placement)
  logging.getLogger(__name__).info(
      "training input: %s (%d images at %d px, %.1f MB as uint8)", where, len(source),
      image_size, nbytes / 2**20)
  if where == "stream":
    return None
  start = time.perf_counter()
  images, labels = read_images(source, image_size, num_threads)
  if where == "device":
    replicated = NamedSharding(mesh, PartitionSpec())
    images = jax.make_array_from_process_local_data(replicated, images)
    labels = jax.make_array_from_process_local_data(replicated, labels)
  return Images(images, labels, where, time.perf_counter() - start)


def epoch_inputs(images: Images, *, batch_size: int, seed: int, epoch: int,
                 mesh: jax.sharding.Mesh, max_steps: int = 0, prefetch: int = 2):
  """Yields each step's inputs of (0-based) `epoch`, placed on `mesh` along "data".

  "device" caches: {"index": int32 [B]}; "host" caches: also {"image": uint8 [B, S, S, C],
  "label": int32 [B]}, gathered on the host and sent `prefetch` steps ahead.
  """
  n = len(images.labels)
  order = pipeline.train_order(n, batch_size, seed, epoch, jax.process_index(),
                              jax.process_count())
  if max_steps:
    order = order[:max_steps]

  def inputs(rows):
    out = {"index": rows.astype(np.int32)}
    if images.placement == "host":
      out.update(image=images.images[rows], label=images.labels[rows])
    return pipeline.to_device(out, mesh)

  queue = collections.deque()
  for rows in order:
    queue.append(inputs(rows))
    if len(queue) > prefetch:
      yield queue.popleft()
  while queue:
    yield queue.popleft()


def make_prepare(preprocess, aug: pipeline.Augment, key: jax.Array, mesh: jax.sharding.Mesh):
  """`prepare(inputs, data, epoch) -> batch`, to call inside a jitted train step.

  Args:
    preprocess: pixels [..., 3] in 0..255 -> the model's input, for numpy and jax arrays
      alike (`functools.partial(jaxdrift.models.preprocess, arch)`).
    aug: augmentation ranges (`NO_AUGMENT`: none).
    key: the run's augmentation key (`augment_key(seed)`).
    mesh: the batch's sharding ("data").

  The returned function maps the inputs of `epoch_inputs` and `Images.device_data` to
  {"image": float32 [B, S, S, 3] preprocessed, "label": int32 [B], "mask": bool [B]}.
  """
  batch_sharding = NamedSharding(mesh, PartitionSpec("data"))
  # Without augmentation the pixels are the 256 uint8 levels: a table of their preprocessed
  # values (computed by numpy, as the streaming pipeline computes them) gives bitwise its
  # batches; XLA would turn the division by 127.5 into a multiplication by its reciprocal.
  levels = np.repeat(np.arange(256, dtype=np.float32)[:, None], 3, axis=1)
  table = np.asarray(preprocess(levels), np.float32)  # [256, 3]

  def prepare(inputs: dict, data: dict, epoch) -> dict:
    index = inputs["index"]
    if "image" in inputs:
      images, labels = inputs["image"], inputs["label"]
    else:
      images = jax.lax.with_sharding_constraint(data["images"][index], batch_sharding)
      labels = jax.lax.with_sharding_constraint(data["labels"][index], batch_sharding)
    rgb = images.shape[:-1] + (3,)
    if aug == pipeline.NO_AUGMENT:
      levels = jnp.broadcast_to(images, rgb).astype(jnp.int32)
      pixels = jnp.asarray(table)[levels, jnp.arange(3)]
    else:
      augmented = augment_lib.augment_batch(key, epoch, index, images, aug)
      pixels = preprocess(jnp.broadcast_to(augmented, rgb))
    return {"image": pixels, "label": labels, "mask": jnp.ones(labels.shape, bool)}

  return prepare


def batches(images: Images, *, preprocess, batch_size: int, seed: int, epoch: int,
            mesh: jax.sharding.Mesh, augment: pipeline.Augment = pipeline.NO_AUGMENT,
            max_steps: int = 0):
  """Yields the model-ready training batches of (0-based) `epoch` from the cache.

  Each is {"image", "label", "mask", "index"} as `jaxdrift.data.batches(..., train=True)`
  yields them (bitwise equal without augmentation). The train loop does not use this: it
  runs `make_prepare` inside its jitted step.
  """
  prepare = jax.jit(make_prepare(preprocess, augment, augment_key(seed), mesh))
  for inputs in epoch_inputs(images, batch_size=batch_size, seed=seed, epoch=epoch,
                             mesh=mesh, max_steps=max_steps):
    yield {**prepare(inputs, images.device_data, epoch), "index": inputs["index"]}
