"""Keras-faithful building blocks shared by the ports, and named taps on layer outputs.

Every port calls `tap(module, keras_name, y)` on each layer output that Keras exposes as a
layer (conv, bn, relu, add, concat, pool, mixed blocks, ...). A tap does two things, both
stateless and both off unless asked for in `apply`:

* capture: when the "taps" collection is mutable, it records `y` under its Keras name in
  `state["taps"]["layers"][name]`;
* perturb: when the variables passed to `apply` hold `{"perturbations": {name: delta}}`, it
  returns `y + delta`. With `delta = 0`, `jax.grad` with respect to `delta` is the gradient
  with respect to the layer's activation: attribution needs no hooks.
* replace: when they hold `{"replacements": {name: value}}`, the layer's output is `value`
  instead of `y` (then captured and perturbed as usual). Replacing a layer and every layer
  before it with values computed once leaves the layers before it dead code that XLA
  removes: the network after the layer runs alone (Ablation-CAM's split apply).

Use `jaxdrift.models.capture` rather than the collections directly.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

from jaxdrift.models import registry

TAPS = "taps"
PERTURBATIONS = "perturbations"
REPLACEMENTS = "replacements"


def check_input(x, family: str) -> None:
  """Raises a ValueError unless x is a batch of RGB images [B, H, W, 3] at least as large as
  the architecture's minimum (`registry.spec(family).min_size`: 32, 32, 75 as in Keras).

  A shape check at trace time (free at run time). Without it a 1-channel batch fails deep in
  Flax (ScopeParamShapeError) and an input below the architecture's minimum silently gives
  1x1 feature maps.
  """
  min_size = registry.spec(family).min_size
  if x.ndim != 4 or x.shape[-1] != 3:
    raise ValueError(f"{family} expects preprocessed RGB images [B, H, W, 3], got shape "
                     f"{tuple(x.shape)}; convert grayscale images to RGB first (repeat the "
                     "channel 3 times) and add a batch axis for a single image.")
  if min(x.shape[1:3]) < min_size:
    raise ValueError(f"{family} needs inputs of at least {min_size}x{min_size} pixels (as "
                     f"Keras), got {x.shape[1]}x{x.shape[2]}; resize the images (e.g. "
                     "--image-size or jd.data.batches(image_size=...)).")


def _merge(layers: dict, new: dict) -> dict:
  return {**layers, **new}


def tap(module: nn.Module, name: str, y):
  """Replaces, records and/or perturbs the output `y` of the Keras layer `name` (module doc)."""
  if module.has_variable(REPLACEMENTS, name):
    value = module.get_variable(REPLACEMENTS, name)
    if value.shape != y.shape:
      raise ValueError(f"replacement of layer {name!r} has shape {value.shape}, the layer "
                       f"outputs {y.shape}; pass a value of the layer's shape")
    y = value.astype(y.dtype)
  if module.is_mutable_collection(TAPS) and not module.is_initializing():
    module.sow(TAPS, "layers", {name: y}, init_fn=dict, reduce_fn=_merge)
  if module.has_variable(PERTURBATIONS, name):
    y = y + module.get_variable(PERTURBATIONS, name)
  return y


def conv(module: nn.Module, y, features: int, kernel, name: str, *, strides=1,
         padding="VALID", use_bias=True, dtype: Any = jnp.float32):
  """Keras Conv2D (HWIO kernel, 'valid' or 'same' padding as in TF) followed by its tap."""
  kernel = (kernel, kernel) if isinstance(kernel, int) else tuple(kernel)
  strides = (strides, strides) if isinstance(strides, int) else tuple(strides)
  y = nn.Conv(features, kernel, strides=strides, padding=padding, use_bias=use_bias,
              dtype=dtype, name=name)(y)
  return tap(module, name, y)


class BatchNorm(nn.Module):
  """Keras BatchNormalization, arithmetic included.

  Statistics and normalisation run in float32 whatever the compute dtype (as Keras does), the
  batch variance is the two-pass `jnp.var`, the moving statistics update as
  `moving * momentum + batch * (1 - momentum)`, and the output is `x * inv + (beta - mean *
  inv)` with `inv = gamma / sqrt(var + epsilon)`, so that training-mode outputs match Keras
  to rounding. Variables use flax's names: params scale/bias, batch_stats mean/var.
  """

  epsilon: float
  use_scale: bool = True
  momentum: float = 0.99
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    c = x.shape[-1]
    f32 = jnp.float32
    scale = self.param("scale", nn.initializers.ones, (c,), f32) if self.use_scale else None
    bias = self.param("bias", nn.initializers.zeros, (c,), f32)
    moving_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), f32))
    moving_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), f32))
    x = x.astype(f32)
    if train:
      mean, var = jnp.mean(x, axis=(0, 1, 2)), jnp.var(x, axis=(0, 1, 2))
      if not self.is_initializing():
        m = self.momentum
        moving_mean.value = moving_mean.value * m + mean * (1.0 - m)
        moving_var.value = moving_var.value * m + var * (1.0 - m)
    else:
      mean, var = moving_mean.value, moving_var.value
    inv = lax.rsqrt(var + self.epsilon)
    if scale is not None:
      inv = inv * scale
    return (x * inv + (bias - mean * inv)).astype(self.dtype)


def batch_norm(module: nn.Module, y, name: str, *, train: bool, epsilon: float,
               use_scale: bool = True, dtype: Any = jnp.float32):
  """Keras BatchNormalization (momentum 0.99, explicit epsilon) followed by its tap."""
  y = BatchNorm(epsilon=epsilon, use_scale=use_scale, dtype=dtype, name=name)(y, train)
  return tap(module, name, y)


def relu(module: nn.Module, y, name: str):
  return tap(module, name, nn.relu(y))


def zero_pad(module: nn.Module, y, pad: int, name: str):
  """Keras ZeroPadding2D: pads height and width with zeros (also before a max pool)."""
  y = jnp.pad(y, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  return tap(module, name, y)


def max_pool(module: nn.Module, y, window: int, stride: int, name: str, padding="VALID"):
  y = nn.max_pool(y, (window, window), strides=(stride, stride), padding=padding)
  return tap(module, name, y)


def avg_pool(module: nn.Module, y, window: int, stride: int, name: str, padding="VALID"):
  """Keras AveragePooling2D: with 'same' padding, padded cells are not counted."""
  y = nn.avg_pool(y, (window, window), strides=(stride, stride), padding=padding,
                  count_include_pad=False)
  return tap(module, name, y)


def concat(module: nn.Module, ys, name: str):
  return tap(module, name, jnp.concatenate(ys, axis=-1))


class KerasApplication(nn.Module):
  """What every port shares: the Keras Applications top and the compute dtype.

  Attributes:
    num_classes: outputs of the 'predictions' layer (logits) when `include_top`.
    include_top: add global average pooling + Dense 'predictions'.
    pooling: without the top, None (4-D map), "avg" or "max".
    dropout_rate: dropout before 'predictions' in training mode (0: none, as in Keras).
    dtype: computation dtype (parameters stay float32).
  """

  num_classes: int = 1000
  include_top: bool = True
  pooling: str | None = None
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  def top(self, y, train: bool):
    return head(self, y, num_classes=self.num_classes, include_top=self.include_top,
                pooling=self.pooling, dropout_rate=self.dropout_rate, train=train,
                dtype=self.dtype)


def head(module: nn.Module, y, *, num_classes: int, include_top: bool, pooling,
         dropout_rate: float = 0.0, train: bool = False, dtype: Any = jnp.float32):
  """Keras Applications top: global average pooling + Dense 'predictions' (logits).

  With `dropout_rate > 0` (not in Keras Applications; for transfer learning) dropout sits
  between the pooling and the Dense layer and needs a "dropout" rng when `train`.
  Without the top, `pooling` selects "avg" / "max" global pooling or None (the 4-D map).
  """
  if include_top:
    y = jnp.mean(y, axis=(1, 2))
    if dropout_rate:
      y = nn.Dropout(dropout_rate, deterministic=not train, name="dropout")(y)
    return nn.Dense(num_classes, dtype=dtype, name="predictions")(y)
  if pooling == "avg":
    return jnp.mean(y, axis=(1, 2))
  if pooling == "max":
    return jnp.max(y, axis=(1, 2))
  if pooling is not None:
    raise ValueError(f"pooling must be None, 'avg' or 'max', got {pooling!r}")
  return y
