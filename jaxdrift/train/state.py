"""Train state, freeze masks from parameter paths, and optimisers with a real freeze.

    frozen = frozen_paths(params, trainable=("predictions",))   # phase 1: head only
    tx = make_optimizer(1e-3, params=params, frozen=frozen, weight_decay=1e-4)
    state = TrainState.create(params=params, batch_stats=batch_stats, tx=tx, frozen=frozen)

A parameter path is the tuple of dict keys leading to a leaf, e.g.
("conv1_conv", "kernel") or ("predictions", "bias"). Freezing is done with
`optax.partition`: frozen leaves go to `optax.set_to_zero()`, which keeps NO optimiser state,
and `TrainState.apply_gradients` does not even add the (zero) update to them, so they stay
bit-identical. Gradients are only ever computed for trainable leaves (see `split_params`),
and weight decay lives inside the trainable branch, so it can never move a frozen leaf
(`optax.masked` alone would pass frozen updates through unchanged).
"""

from typing import Any, Callable, Iterable

import flax.struct
import jax
import jax.numpy as jnp
import optax

from jaxdrift.models.keras_h5 import flatten_tree, unflatten_tree

Path = tuple[str, ...]


# {path tuple: leaf} views of nested dicts, shared with the weight converter.
flatten = flatten_tree
unflatten = unflatten_tree


def frozen_paths(params, trainable: Iterable[str] | Callable[[Path], bool] | None
                 ) -> frozenset[Path]:
  """The static freeze mask: paths of the parameters that must not change.

  Args:
    params: parameter tree (arrays or ShapeDtypeStructs).
    trainable: None (everything trains), a collection of top-level module names (a leaf
      trains when its path starts with one of them, e.g. ("predictions",)), or a predicate
      on the path.

  Returns:
    frozenset of frozen paths (hashable, so it can sit in a jitted state's static fields).
  """
  paths = flatten(params)
  if trainable is None:
    return frozenset()
  if callable(trainable):
    keep = trainable
  else:
    names = frozenset(trainable)
    unknown = names - {p[0] for p in paths}
    if unknown:
      raise ValueError(f"trainable modules {sorted(unknown)} are not in the parameters; "
                       f"top-level modules are e.g. {sorted({p[0] for p in paths})[:8]}")
    keep = lambda path: path[0] in names  # noqa: E731
  return frozenset(p for p in paths if not keep(p))


def freeze_mask(params, frozen: frozenset[Path]):
  """Pytree of bools shaped like `params`: True where the leaf is frozen."""
  return unflatten({p: p in frozen for p in flatten(params)})


def split_params(params, frozen: frozenset[Path]) -> tuple[dict, dict]:
  """(trainable, frozen) flat dicts {path: leaf}; `merge_params` undoes it."""
  flat = flatten(params)
  return ({p: v for p, v in flat.items() if p not in frozen},
          {p: v for p, v in flat.items() if p in frozen})


def merge_params(trainable: dict, frozen: dict) -> dict:
  return unflatten({**trainable, **frozen})


def make_optimizer(learning_rate: float | optax.Schedule, *, params, frozen: frozenset[Path],
                   weight_decay: float = 0.0, clip_norm: float | None = None
                   ) -> optax.GradientTransformation:
  """Adam (AdamW with decoupled weight decay when `weight_decay > 0`) with a real freeze.

  Weight decay applies to trainable kernels only (leaves with ndim > 1: not biases, not
  BatchNorm scales), and only inside the trainable branch.

  Args:
    learning_rate: constant or optax schedule.
    params: parameter tree (to label the leaves).
    frozen: paths that must not change (`frozen_paths`).
    weight_decay: decoupled weight decay coefficient (0: plain Adam).
    clip_norm: optional global gradient-norm clipping of the trainable leaves.

  Returns:
    an `optax.partition` transformation; frozen leaves map to `set_to_zero()` (no state).
  """
  decay_mask = lambda p: jax.tree.map(lambda x: x.ndim > 1, p)  # noqa: E731
  inner = (optax.adamw(learning_rate, weight_decay=weight_decay, mask=decay_mask)
           if weight_decay else optax.adam(learning_rate))
  if clip_norm:
    inner = optax.chain(optax.clip_by_global_norm(clip_norm), inner)
  labels = unflatten({p: "frozen" if p in frozen else "trainable" for p in flatten(params)})
  return optax.partition({"trainable": inner, "frozen": optax.set_to_zero()}, labels)


class TrainState(flax.struct.PyTreeNode):
  """Everything a training step reads and writes, as one pytree.

  Attributes:
    step: int32 scalar, optimiser steps taken in the current phase.
    params: model parameters (float32).
    batch_stats: BatchNorm moving statistics.
    opt_state: optimiser state (frozen leaves have none).
    tx: the optimiser (static).
    frozen: paths of frozen parameters (static, hashable).
  """

  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)
  frozen: frozenset = flax.struct.field(pytree_node=False, default=frozenset())

  @classmethod
  def create(cls, *, params, batch_stats, tx, frozen=frozenset()) -> "TrainState":
    return cls(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
               opt_state=tx.init(params), tx=tx, frozen=frozenset(frozen))

  def apply_gradients(self, grads: dict[Path, jax.Array], batch_stats=None) -> "TrainState":
    """One optimiser update from gradients of the TRAINABLE leaves only.

    Args:
      grads: flat {path: gradient} for every trainable path (as `split_params` gives).
      batch_stats: new BatchNorm statistics (default: unchanged).
    """
    flat = flatten(self.params)
    # set_to_zero only needs the frozen leaves' structure; the zeros are dead code for XLA.
    full = unflatten({p: grads[p] if p not in self.frozen else jnp.zeros_like(v)
                      for p, v in flat.items()})
    updates, opt_state = self.tx.update(full, self.opt_state, self.params)
    new = flatten(updates)
    params = unflatten({p: v if p in self.frozen else (v + new[p]).astype(v.dtype)
                        for p, v in flat.items()})
    return self.replace(step=self.step + 1, params=params, opt_state=opt_state,
                        batch_stats=self.batch_stats if batch_stats is None else batch_stats)


def opt_state_size(opt_state) -> int:
  """Number of array elements the optimiser keeps (for freezing tests and logs)."""
  return sum(int(jnp.size(x)) for x in jax.tree.leaves(opt_state))
