"""Layer outputs by Keras name, without hooks: see `jaxdrift.models.layers.tap`."""

from typing import Sequence

import jax
import jax.numpy as jnp

from jaxdrift.models.layers import TAPS


def layer_shapes(model, input_shape: Sequence[int]) -> dict[str, jax.ShapeDtypeStruct]:
  """Every tappable Keras layer of `model` and its output shape, in model order.

  Nothing is computed or allocated (`jax.eval_shape`).

  Args:
    model: a port from `jaxdrift.models.create`.
    input_shape: (B, H, W, 3).
  """
  x = jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)

  order = []

  def run(x):
    variables = model.init(jax.random.key(0), x, train=False)
    _, state = model.apply(variables, x, train=False, mutable=[TAPS])
    order.extend(state[TAPS]["layers"])  # trace time: jax would return the keys sorted
    return state[TAPS]["layers"]

  shapes = jax.eval_shape(run, x)
  return {name: shapes[name] for name in order}


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
