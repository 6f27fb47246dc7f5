"""Fast random variables for model tests.

`model.init` compiles a program as large as the model (20 s for InceptionV3 on a loaded
2-core CPU); tests only need plausible weights of the right shapes, drawn here with numpy:
fan-in scaled kernels and non-trivial BatchNorm statistics.
"""

import jax
import jax.numpy as jnp
import numpy as np


def random_variables(model, input_shape, seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  x = jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)
  shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)

  def draw(path, leaf):
    name = path[-1].key
    if name == "kernel":
      fan_in = int(np.prod(leaf.shape[:-1]))
      value = rng.normal(0, np.sqrt(2.0 / fan_in), leaf.shape)
    elif name in ("scale", "var"):
      value = rng.uniform(0.5, 1.5, leaf.shape)
    else:  # bias, mean
      value = rng.normal(0, 0.1, leaf.shape)
    return jnp.asarray(value, leaf.dtype)

  return jax.tree_util.tree_map_with_path(draw, shapes)
