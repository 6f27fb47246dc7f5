"""Layer outputs by Keras name, without hooks: see `jaxdrift.models.layers.tap`."""

import functools
from typing import Sequence

import jax
import jax.numpy as jnp

from jaxdrift.models.layers import TAPS


def layer_shapes(model, input_shape: Sequence[int]) -> dict[str, jax.ShapeDtypeStruct]:
  """Every tappable Keras layer of `model` and its output shape, in model order.

  Nothing is computed or allocated (`jax.eval_shape`); the shapes are traced once per model
  and input shape (`abstract_model`) and a new dict is returned.

  Args:
    model: a port from `jaxdrift.models.create`.
    input_shape: (B, H, W, 3).
  """
  return dict(abstract_model(model, tuple(input_shape))[2])


@functools.lru_cache(maxsize=32)
def abstract_model(model, input_shape: tuple) -> tuple:
  """(variables, logits, {layer: output}) of `model` on float32 inputs of `input_shape`, as
  ShapeDtypeStructs, layers in model order: ONE trace of init and apply (a full port takes
  about a second to trace), cached per model and shape. Do not modify the result: it is
  shared."""
  x = jax.ShapeDtypeStruct(input_shape, jnp.float32)
  order = []

  def run(x):
    variables = model.init(jax.random.key(0), x, train=False)
    logits, state = model.apply(variables, x, train=False, mutable=[TAPS])
    layers = state.get(TAPS, {}).get("layers", {})
    order.extend(layers)  # trace time: jax would return the keys sorted
    return variables, logits, layers

  variables, logits, layers = jax.eval_shape(run, x)
  return variables, logits, {name: layers[name] for name in order}


def capture(model, variables, x, names: Sequence[str], *, train: bool = False):
  """Runs the model and returns the outputs of the named Keras layers.

  Args:
    model: a port from `jaxdrift.models.create`.
    variables: {"params", "batch_stats"} (and optionally "perturbations").
    x: [B, H, W, 3] preprocessed input.
    names: Keras layer names, e.g. ["conv5_block3_out", "post_relu"].
    train: BatchNorm in training mode (batch statistics; the updated moving statistics
      are then returned as a third value).

  Returns:
    (outputs, {name: activation}) and, when `train`, the new batch_stats as a third item.
    Under `jit`, layers that are not asked for cost nothing extra.

  Raises:
    ValueError: a name is not a layer of this model; the message lists the valid names.
  """
  mutable = [TAPS, "batch_stats"] if train else [TAPS]
  out, state = model.apply(variables, x, train=train, mutable=mutable)
  layers = state[TAPS]["layers"]
  unknown = [n for n in names if n not in layers]
  if unknown:
    raise ValueError(
        f"{type(model).__name__} has no layer named {', '.join(map(repr, unknown))}; "
        f"valid names (model order): {', '.join(layers)}")
  acts = {n: layers[n] for n in names}
  return (out, acts, state["batch_stats"]) if train else (out, acts)
