"""Pure training and evaluation steps, and their data-parallel jitted forms.

    phase = Phase(backbone=jd.models.create(arch, include_top=False), num_classes=5,
                  dropout_rate=0.2, train_bn=False)
    step = jit_train_step(phase, mesh)          # jitted once per phase
    state, metrics = step(state, batch, key)    # key: the phase's key; fold_in(step) inside

The model is split in two on purpose: the backbone (`create(arch, include_top=False)`, the
same parameter names as the full model without "predictions") and the head (global average
pooling -> dropout -> Dense "predictions"), so that BatchNorm can run in inference mode
while head dropout is active, which one `train` flag on the full model cannot express.
`forward(..., dropout_key=None)` equals `create(arch).apply(v, x, train=False)` exactly.

Phase 1 (every backbone parameter frozen): BatchNorm in inference mode and the backbone's
output wrapped in `stop_gradient`; gradients are taken with respect to the head only, so no
backward pass through the backbone is traced at all. Phase 2: gradients for every trainable
leaf; BatchNorm in inference mode unless `Phase.train_bn`.

Data parallelism: the batch arrives sharded along the mesh's "data" axis (as
`jaxdrift.data.batches` yields it), the state is replicated, and XLA inserts the gradient
all-reduce. With `dtype=jnp.bfloat16` the backbone and head compute in bfloat16 while the
parameters, the loss and the optimiser stay float32.
"""

import dataclasses
import functools
from collections.abc import Iterable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec

from jaxdrift.models import layers
from jaxdrift.train import state as state_lib

HEAD = "predictions"


@dataclasses.dataclass(frozen=True, eq=False)
class Phase:
  """Static settings of one phase's steps (bound with functools.partial before jit).

  Attributes:
    backbone: `jd.models.create(arch, include_top=False, dtype=...)`.
    num_classes: outputs of the head.
    dropout_rate: head dropout during training (0: none).
    train_bn: run BatchNorm in training mode (batch statistics, moving averages updated).
      Must be False when the backbone is frozen.
    label_smoothing: cross-entropy label smoothing.
    dtype: compute dtype of the head (the backbone carries its own).
  """

  backbone: nn.Module
  num_classes: int
  dropout_rate: float = 0.0
  train_bn: bool = False
  label_smoothing: float = 0.0
  dtype: Any = jnp.float32


def forward(phase: Phase, params, batch_stats, images, *, dropout_key=None,
            stop_backbone_gradient: bool = False):
  """Logits of the backbone + head.

  Args:
    phase: static settings.
    params: full parameter tree (backbone + "predictions").
    batch_stats: BatchNorm statistics.
    images: float32 [B, H, W, 3], preprocessed.
    dropout_key: PRNG key enabling head dropout (None: deterministic).
    stop_backbone_gradient: cut the graph after the backbone (frozen-backbone phase).

  Returns:
    (logits float32 [B, num_classes], batch_stats after the step).
  """
  variables = {"params": {k: v for k, v in params.items() if k != HEAD},
               "batch_stats": batch_stats}
  if phase.train_bn:
    features, updated = phase.backbone.apply(variables, images, train=True,
                                             mutable=["batch_stats"])
    batch_stats = updated["batch_stats"]
  else:
    features = phase.backbone.apply(variables, images, train=False)
  if stop_backbone_gradient:
    features = jax.lax.stop_gradient(features)
  pooled = jnp.mean(features, axis=(1, 2))
  rate = phase.dropout_rate
  if dropout_key is not None and rate > 0:
    # Same draws on any mesh (threefry is partitionable); placed like the batch.
    keep = jax.random.bernoulli(dropout_key, 1.0 - rate, pooled.shape,
                                out_sharding=jax.typeof(pooled).sharding)
    pooled = jnp.where(keep, pooled / (1.0 - rate), jnp.zeros_like(pooled))
  logits = nn.Dense(phase.num_classes, dtype=phase.dtype).apply(
      {"params": params[HEAD]}, pooled)
  return logits.astype(jnp.float32), batch_stats


def cross_entropy(logits, labels, mask, label_smoothing: float = 0.0):
  """Mean softmax cross-entropy over the examples where `mask` is True.

  Args:
    logits: float32 [B, C].
    labels: int [B].
    mask: bool [B].
    label_smoothing: mass spread uniformly over the C classes.
  """
  targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
  per_example = optax.softmax_cross_entropy(logits, targets)
  weights = mask.astype(jnp.float32)
  return jnp.sum(per_example * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def backbone_frozen(state: state_lib.TrainState) -> bool:
  """True when every non-head parameter is frozen (phase 1)."""
  return all(p in state.frozen for p in state_lib.flatten(state.params) if p[0] != HEAD)


def train_step(state: state_lib.TrainState, batch: dict, key: jax.Array, *, phase: Phase):
  """One optimiser step on one (global) batch.

  Args:
    state: the train state (replicated).
    batch: {"image": [B, H, W, 3], "label": [B], "mask": [B] (optional)}.
    key: the phase's PRNG key; the step's dropout key is `fold_in(key, state.step)`.
    phase: static settings.

  Returns:
    (new state, metrics): metrics hold sums over the batch, "loss_sum", "correct",
    "count", so that epoch means are exact whatever the batch split.
  """
  frozen_backbone = backbone_frozen(state)
  if frozen_backbone and phase.train_bn:
    raise ValueError("train_bn=True with a frozen backbone would change frozen statistics; "
                     "phase 1 runs BatchNorm in inference mode")
  mask = batch.get("mask", jnp.ones(batch["label"].shape, bool))
  dropout_key = jax.random.fold_in(key, state.step)
  trainable, frozen = state_lib.split_params(state.params, state.frozen)

  def loss_fn(trainable):
    params = state_lib.merge_params(trainable, frozen)
    logits, batch_stats = forward(phase, params, state.batch_stats, batch["image"],
                                  dropout_key=dropout_key,
                                  stop_backbone_gradient=frozen_backbone)
    loss = cross_entropy(logits, batch["label"], mask, phase.label_smoothing)
    return loss, (logits, batch_stats)

  (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
  state = state.apply_gradients(grads, batch_stats=batch_stats)
  weights = mask.astype(jnp.float32)
  correct = jnp.sum((jnp.argmax(logits, -1) == batch["label"]) * weights)
  count = jnp.sum(weights)
  return state, {"loss_sum": loss * count, "correct": correct, "count": count}


def zero_totals(mesh: jax.sharding.Mesh) -> dict:
  """Replicated float32 zeros {"loss_sum", "correct", "count"}: an epoch's running sums."""
  return replicate({k: jnp.zeros((), jnp.float32) for k in ("loss_sum", "correct", "count")},
                   mesh)


def input_train_step(state: state_lib.TrainState, totals: dict, inputs: dict, data: dict,
                     epoch, key: jax.Array, *, phase: Phase, prepare):
  """`train_step` on `prepare(inputs, data, epoch)`, its metrics added to `totals`.

  Everything stays on the device: the batch is gathered, augmented and preprocessed inside
  the same program (`jaxdrift.data.cache.make_prepare`), and the epoch's sums are read once
  at its end, so a loop of these steps never waits for the device.

  Args:
    state: the train state (replicated).
    totals: running sums {"loss_sum", "correct", "count"} (`zero_totals`).
    inputs: the step's inputs, sharded along "data" (indices, or uint8 images and labels,
      or a ready batch for an identity `prepare`).
    data: arrays the inputs refer to (the device-resident image cache), or {}.
    epoch: int32 scalar, the global (0-based) epoch (augmentation keys).
    key: the phase's PRNG key (dropout: `fold_in(key, state.step)`).
    phase: static settings.
    prepare: static `(inputs, data, epoch) -> {"image", "label", "mask"}`.

  Returns:
    (new state, new totals).
  """
  state, metrics = train_step(state, prepare(inputs, data, epoch), key, phase=phase)
  return state, jax.tree.map(jnp.add, totals, metrics)


def jit_input_train_step(phase: Phase, mesh: jax.sharding.Mesh, prepare,
                         donate: bool = True):
  """`input_train_step` bound to `phase` and `prepare`, jitted; state and totals donated."""
  return jax.jit(functools.partial(input_train_step, phase=phase, prepare=prepare),
                 out_shardings=NamedSharding(mesh, PartitionSpec()),
                 donate_argnums=(0, 1) if donate else ())


def eval_step(state, batch: dict, *, phase: Phase) -> dict:
  """Logits in inference mode (BatchNorm moving statistics, no dropout).

  Args:
    state: a TrainState, or variables {"params", "batch_stats"} (the same compiled step
      then serves both phases, whose states differ in their static optimiser).
    batch: {"image", "label", "mask" (optional)}.
    phase: static settings (its train_bn and dropout are ignored).

  Returns:
    {"logits": float32 [B, C], "label": [B], "mask": [B]} (padding has mask False).
  """
  if isinstance(state, dict):
    params, batch_stats = state["params"], state["batch_stats"]
  else:
    params, batch_stats = state.params, state.batch_stats
  logits, _ = forward(dataclasses.replace(phase, train_bn=False), params, batch_stats,
                      batch["image"])
  mask = batch.get("mask", jnp.ones(batch["label"].shape, bool))
  return {"logits": logits, "label": batch["label"], "mask": mask}


@functools.partial(jax.jit, static_argnums=0)
def _batch_statistics(backbone: nn.Module, params, batch_stats, images):
  """Every BatchNorm layer's mean and variance over `images` (training mode)."""
  # From zero moving statistics one update leaves exactly batch * (1 - momentum).
  zeros = jax.tree.map(jnp.zeros_like, batch_stats)
  _, updated = backbone.apply({"params": params, "batch_stats": zeros}, images, train=True,
                              mutable=["batch_stats"])
  keep = 1.0 - layers.BatchNorm.momentum
  return jax.tree.map(lambda u: u / keep, updated["batch_stats"])


# One dispatch per batch for the running sum, not one eager op per statistics leaf (an
# InceptionV3 has 188 of them; eagerly, the sums of a demo run cost seconds).
_tree_add = jax.jit(lambda a, b: jax.tree.map(jnp.add, a, b))
_tree_divide = jax.jit(lambda tree, n: jax.tree.map(lambda x: x / n, tree))


def precise_batch_stats(backbone: nn.Module, params, batch_stats, batches: Iterable):
  """Population BatchNorm statistics of `backbone` over `batches` ("precise BN").

  The exponential moving averages that training leaves in `batch_stats` lag behind the
  weights (momentum 0.99 remembers the last ~100 steps, and after a short run still holds
  ~e^(-steps/100) of the initial mean 0 / variance 1). Inference-mode BatchNorm with such
  statistics can wreck a backbone's features. This replaces every moving mean and variance
  by the average over `batches` of the per-batch means and variances, computed with the
  weights as they are now (Wu & Johnson, "Rethinking 'Batch' in BatchNorm", 2021).

  Args:
    backbone: a module whose BatchNorm layers update "batch_stats" in training mode as
      `moving * momentum + batch * (1 - momentum)` (`jd.models.layers.BatchNorm`).
    params: the backbone's parameters (a "predictions" head entry is ignored).
    batch_stats: the current statistics (for their structure).
    batches: iterable of preprocessed image batches [B, H, W, 3].

  Returns:
    batch_stats of the same structure.
  """
  params = {k: v for k, v in params.items() if k != HEAD}
  total, count = None, 0
  for images in batches:
    stats = _batch_statistics(backbone, params, batch_stats, images)
    total = stats if total is None else _tree_add(total, stats)
    count += 1
  if not count:
    raise ValueError("precise_batch_stats needs at least one batch")
  return _tree_divide(total, count)


def replicate(tree, mesh: jax.sharding.Mesh):
  """Copies every array of `tree` onto all devices of `mesh`, replicated.

  Always a copy (never an alias), so donating the result to a jitted step never deletes
  the caller's arrays.
  """
  return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()), may_alias=False)


def jit_train_step(phase: Phase, mesh: jax.sharding.Mesh, donate: bool = True):
  """`train_step` bound to `phase`, jitted with replicated outputs (compile once per phase)."""
  return jax.jit(functools.partial(train_step, phase=phase),
                 out_shardings=NamedSharding(mesh, PartitionSpec()),
                 donate_argnums=(0,) if donate else ())


def jit_eval_step(phase: Phase):
  """`eval_step` bound to `phase`, jitted (outputs stay sharded like the batch)."""
  return jax.jit(functools.partial(eval_step, phase=phase))
