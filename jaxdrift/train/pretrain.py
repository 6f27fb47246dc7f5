"""Backbone pretraining on a proxy phantom task, standing in for ImageNet weights offline.

The study starts phase 1 from ImageNet features. Offline, the `demo` preset gives phase 1
useful features another way: the backbone is first trained, all layers with BatchNorm in
training mode, on a DIFFERENT task drawn from the phantom generator with another seed:

  label 0   no lesion pixels in the image
  label 1+q the image quadrant q (0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right)
            holding most lesion pixels

The proxy labels come from the lesion masks, not from the lesion TYPE, so the features know
where opacities are but were never told the five diagnostic classes. The proxy head is
discarded; phase 1 starts from the backbone with a fresh head. The backbone's BatchNorm
statistics are recomputed over the proxy images at the end (`steps.precise_batch_stats`):
after a few hundred steps the moving averages still hold part of their initial values, and
phase 1 normalises with them.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdrift import data as data_lib
from jaxdrift import models
from jaxdrift.train import state as state_lib
from jaxdrift.train import steps

NUM_PROXY_CLASSES = 5
PRECISE_BN_BATCHES = 16
_SEED_OFFSET = 1000


def proxy_labels(lesion_masks: np.ndarray) -> np.ndarray:
  """int32 [N] proxy labels (see module doc) from bool masks [N, S, S]."""
  n, s = lesion_masks.shape[0], lesion_masks.shape[1]
  h = s // 2
  quadrants = lesion_masks[:, :2 * h, :2 * h].reshape(n, 2, h, 2, h).sum(axis=(2, 4))
  counts = quadrants.reshape(n, 4)
  return np.where(counts.sum(1) > 0, 1 + counts.argmax(1), 0).astype(np.int32)


def proxy_dataset(num: int, arch: str, image_size: int, seed: int) -> dict:
  """Preprocessed proxy-task images and labels (numpy, in memory)."""
  raw = data_lib.generate_phantoms(num, image_size=image_size, seed=seed + _SEED_OFFSET)
  images = np.repeat(raw["image"][..., None], 3, axis=-1)
  return {"image": models.preprocess(arch, images),
          "label": proxy_labels(raw["lesion_mask"])}


def _ready_batch(inputs: dict, data: dict, epoch) -> dict:
  del data, epoch
  return inputs


def pretrain_backbone(variables: dict, *, arch: str, image_size: int, num_examples: int,
                      epochs: int, learning_rate: float, batch_size: int, key: jax.Array,
                      seed: int, mesh: jax.sharding.Mesh, dtype=jnp.float32,
                      on_epoch=None) -> dict:
  """Trains every layer of `variables`' backbone on the proxy task.

  Args:
    variables: {"params", "batch_stats"} of `create(arch, num_classes=...)`; only the
      backbone (everything but "predictions") is used and returned.
    arch: the architecture built (e.g. a reduced variant).
    image_size: square input size.
    num_examples: proxy training images.
    epochs: passes over them.
    learning_rate: Adam learning rate (cosine decay to 0).
    batch_size: global batch size.
    key: PRNG key (proxy head initialisation).
    seed: data seed (the images use seed + 1000: disjoint from the real phantom splits).
    mesh: device mesh with a "data" axis.
    dtype: compute dtype.
    on_epoch: optional callback(epoch, mean_loss, accuracy).

  Returns:
    {"params", "batch_stats"} with the pretrained backbone and the input's head.
  """
  ds = proxy_dataset(num_examples, arch, image_size, seed)
  backbone = models.create(arch, include_top=False, dtype=dtype)
  phase = steps.Phase(backbone=backbone, num_classes=NUM_PROXY_CLASSES, train_bn=True,
                      dtype=dtype)
  head_key, step_key = jax.random.split(key)
  features = variables["params"][steps.HEAD]["kernel"].shape[0]
  head = {"kernel": jax.nn.initializers.lecun_normal()(
      head_key, (features, NUM_PROXY_CLASSES)), "bias": jnp.zeros((NUM_PROXY_CLASSES,))}
  params = {**{k: v for k, v in variables["params"].items() if k != steps.HEAD},
            steps.HEAD: head}
  per_epoch = data_lib.steps_per_epoch(num_examples, batch_size, train=True)
  schedule = optax.cosine_decay_schedule(learning_rate, max(1, epochs * per_epoch))
  tx = state_lib.make_optimizer(schedule, params=params, frozen=frozenset())
  state = steps.replicate(state_lib.TrainState.create(
      params=params, batch_stats=variables["batch_stats"], tx=tx), mesh)
  train = steps.jit_input_train_step(phase, mesh, _ready_batch)
  rng = np.random.default_rng([seed, _SEED_OFFSET])
  for epoch in range(epochs):
    order = rng.permutation(num_examples)[:per_epoch * batch_size].reshape(per_epoch, -1)
    totals = steps.zero_totals(mesh)  # on the device; read once per epoch
    for rows in order:
      batch = data_lib.to_device({"image": ds["image"][rows], "label": ds["label"][rows]},
                                 mesh)
      state, totals = train(state, totals, batch, {}, 0, step_key)
    totals = jax.device_get(totals)
    if on_epoch is not None:
      on_epoch(epoch + 1, float(totals["loss_sum"] / totals["count"]),
               float(totals["correct"] / totals["count"]))
  # Phase 1 runs this backbone with BatchNorm in inference mode: give it population
  # statistics, not moving averages that still remember their initial values.
  rows = np.arange(min(per_epoch, PRECISE_BN_BATCHES) * batch_size).reshape(-1, batch_size)
  batch_stats = steps.precise_batch_stats(
      backbone, state.params, state.batch_stats,
      (data_lib.to_device({"image": ds["image"][r]}, mesh)["image"] for r in rows))
  params = {**state.params, steps.HEAD: variables["params"][steps.HEAD]}
  return {"params": params, "batch_stats": batch_stats}
