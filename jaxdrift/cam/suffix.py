"""The network after a layer, run on many ablations of the layer's output: Ablation-CAM's suffix.

Ablation-CAM needs the logits of c ablations of each image's activation A [h, w, K] at a
layer (channel k zeroed). The part of the network before the layer does not depend on the
ablation: one forward pass records every layer, and the suffix applies the model with the
layer and every earlier layer replaced by their recorded outputs (the ports'
`jaxdrift.models.layers.REPLACEMENTS`), which leaves the earlier layers dead code that XLA
removes (`plain_suffix`).

Where the port declares how the layer's output is read (`jaxdrift.models.readouts`: a map
P = f(A) per channel and position, then 1x1 convolutions of stride 1), the suffix also
replaces those convolutions' outputs (`rank1_suffix`). Zeroing channel k changes P only in
channel k, to f(0)_k, so

    conv(P') = conv(P) + (f(0) - P)[:, :, k] (outer) W[k, :]       W = kernel[0, 0]: [K, O]

from conv(P) and P recorded once, f(0) from one application with A = 0 and the kernel: h w O
multiplications per ablation instead of h w K O, and the per-channel map and the
convolutions become dead code too. Other readers of A (a residual shortcut, a
concatenation) read the ablated A as in the plain suffix, so the result is the plain
suffix's up to rounding. At ResNet50V2's conv4_block6_out this drops conv5_block1_0_conv
and conv5_block1_1_conv, 17.5% of the suffix's multiply-accumulates.

A declaration is checked on the traced program before it is used (`checked_readout`): the
jaxpr from A to P may hold only elementwise operations (each output element depends on the
same element of A), and each declared convolution's output must be a 1x1, stride-1,
ungrouped `conv_general_dilated` of P with the declared kernel, plus terms that do not depend
on A. A declaration that does not hold raises a ValueError rather than giving wrong maps.
"""

import functools

import jax
import jax.extend as jex
import jax.numpy as jnp

from jaxdrift.cam import checks
from jaxdrift.models.layers import REPLACEMENTS, TAPS

# Primitives whose every output element depends only on the same element of each operand.
ELEMENTWISE = frozenset({
    "abs", "add", "and", "ceil", "clamp", "convert_element_type", "copy", "copy_p", "cos",
    "div", "eq", "erf", "exp", "exp2", "expm1", "floor", "ge", "gt", "integer_pow",
    "is_finite", "le", "log", "log1p", "logistic", "lt", "max", "min", "mul", "ne", "neg",
    "not", "or", "pow", "round", "rsqrt", "select_n", "sign", "sin", "sqrt", "square", "sub",
    "tanh"})
NHWC, HWIO = (0, 3, 1, 2), (3, 2, 0, 1)  # flax's dimension numbers (lhs/out, rhs)
OTHER = "other"  # a value that depends on A in a way the declaration does not allow


def ablate_channels(acts, channels):
  """c ablations of each image's activation: [B, h, w, K], [B, c] -> [B, c, h, w, K]."""
  keep = jnp.arange(acts.shape[-1], dtype=jnp.int32)[None, None, :] != channels[:, :, None]
  return acts[:, None] * keep[:, :, None, None, :].astype(acts.dtype)


def _replayed(model, images, layer, taps, c):
  """Recorded outputs of every layer before `layer`, each repeated c times (image-major)."""
  _, shapes = checks.model_info(model, tuple(images.shape[1:]))
  order = list(shapes)
  return {n: jnp.repeat(taps[n], c, axis=0) for n in order[:order.index(layer)]}


def plain_suffix(model, variables, images, layer, taps):
  """The network after `layer` on c ablations of each image's activation (module doc).

  Args:
    model, variables, images: as in `jd.cam.compute` (variables without perturbations).
    layer: the layer's Keras name.
    taps: every layer's output {name: [B, ...]} of one forward pass of `images`.

  Returns:
    suffix: channels [B, c] int32 (the channel zeroed in each ablation) -> logits
      [B, c, classes], one pass of B x c inputs.
  """
  acts = taps[layer]

  def suffix(channels):
    b, c = channels.shape
    replaced = _replayed(model, images, layer, taps, c)
    replaced[layer] = ablate_channels(acts, channels).reshape((b * c,) + acts.shape[1:])
    logits = model.apply({**variables, REPLACEMENTS: replaced}, jnp.repeat(images, c, axis=0),
                         train=False)
    return logits.reshape(b, c, -1)

  return suffix


def rank1_suffix(model, variables, images, layer, taps, readout):
  """As `plain_suffix`, with the declared 1x1 convolutions updated by rank one (module doc).

  Args:
    model, variables, images, layer, taps: as in `plain_suffix`.
    readout: the layer's `jaxdrift.models.ChannelReadout`, checked (`checked_readout`).

  Returns:
    suffix: channels [B, c] int32 -> logits [B, c, classes].
  """
  acts = taps[layer]
  b, h, w = acts.shape[:3]
  _, state = model.apply(
      {**variables, REPLACEMENTS: {**_replayed(model, images, layer, taps, 1),
                                   layer: jnp.zeros_like(acts)}},
      images, train=False, mutable=[TAPS])
  f32 = jnp.float32
  # (f(0) - P) channels-first, [B, K, h, w]: the change of P when a channel is zeroed.
  change = jnp.moveaxis(state[TAPS]["layers"][readout.per_channel].astype(f32)
                        - taps[readout.per_channel].astype(f32), -1, 1)
  kernels = {n: variables["params"][n]["kernel"][0, 0].astype(f32) for n in readout.convs}

  def suffix(channels):
    c = channels.shape[1]
    replaced = _replayed(model, images, layer, taps, c)
    replaced[layer] = ablate_channels(acts, channels).reshape((b * c,) + acts.shape[1:])
    delta = jnp.take_along_axis(change, channels[:, :, None, None], axis=1)  # [B, c, h, w]
    for name, kernel in kernels.items():
      rows = kernel[channels]  # [B, c, O]
      out = (taps[name][:, None].astype(f32)
             + delta[..., None] * rows[:, :, None, None, :])  # [B, c, h, w, O]
      replaced[name] = out.reshape((b * c,) + out.shape[2:]).astype(taps[name].dtype)
    logits = model.apply({**variables, REPLACEMENTS: replaced}, jnp.repeat(images, c, axis=0),
                         train=False)
    return logits.reshape(b, c, -1)

  return suffix


def suffix_fn(model, variables, images, layer, taps):
  """The rank-one suffix where the port declares the layer's readout, else the plain one."""
  readout = checked_readout(model, layer, tuple(images.shape[1:]))
  if readout is None:
    return plain_suffix(model, variables, images, layer, taps)
  return rank1_suffix(model, variables, images, layer, taps, readout)


# ---------------------------------------------------------------------------- the check


def _nested(eqn):
  """The jaxpr a call-like equation (jit, custom_jvp_call, ...) runs on its operands."""
  for value in eqn.params.values():
    inner = value.jaxpr if isinstance(value, jex.core.ClosedJaxpr) else value
    if (isinstance(inner, jex.core.Jaxpr) and len(inner.invars) == len(eqn.invars)
        and len(inner.outvars) == len(eqn.outvars)):
      return inner
  return None


def _propagate(jaxpr, labels, transfer, override=None):
  """Labels of `jaxpr`'s outputs from its inputs', equation by equation.

  Args:
    jaxpr: a `jax.extend.core.Jaxpr`.
    labels: one per input variable; None marks a value the analysis ignores.
    transfer: (equation, input labels) -> output labels, for equations with a label.
    override: {variable: label} set where the variable is defined (top level only).
  """
  override = override or {}
  env = {v: override.get(v, l) for v, l in zip(jaxpr.invars, labels)}

  def read(v):
    return env.get(v) if isinstance(v, jex.core.Var) else None  # literals: None

  for eqn in jaxpr.eqns:
    ins = [read(v) for v in eqn.invars]
    if all(l is None for l in ins):
      outs = [None] * len(eqn.outvars)
    elif (inner := _nested(eqn)) is not None:
      outs = _propagate(inner, ins, transfer)
    else:
      outs = transfer(eqn, ins)
    for v, l in zip(eqn.outvars, outs):
      env[v] = override.get(v, l)
  return [read(v) for v in jaxpr.outvars]


def _per_channel_transfer(shape):
  """Label "elem": an array of A's shape whose element i depends only on A's element i."""

  def transfer(eqn, ins):
    ok = (eqn.primitive.name in ELEMENTWISE and all(l in (None, "elem") for l in ins)
          and all(v.aval.shape == shape for v in eqn.outvars))
    return ["elem" if ok else OTHER] * len(eqn.outvars)

  return transfer


def _plain_1x1(eqn) -> bool:
  p = eqn.params
  dims = p["dimension_numbers"]
  return (tuple(dims.lhs_spec) == NHWC and tuple(dims.out_spec) == NHWC
          and tuple(dims.rhs_spec) == HWIO and eqn.invars[1].aval.shape[:2] == (1, 1)
          and all(s == 1 for s in p["window_strides"]) and all(s == 1 for s in p["lhs_dilation"])
          and all(s == 1 for s in p["rhs_dilation"]) and p["feature_group_count"] == 1
          and p["batch_group_count"] == 1 and all(tuple(q) == (0, 0) for q in p["padding"]))


def _conv_transfer(eqn, ins):
  """Labels: ("kernel", n) a declared kernel; "src" P; ("conv", n) a 1x1 convolution of P
  with kernel n plus A-independent terms; OTHER any other dependence on A."""
  name = eqn.primitive.name
  kind = [l[0] if isinstance(l, tuple) else l for l in ins]
  if all(k in (None, "kernel") for k in kind):  # does not depend on A
    return [ins[0]] if name == "convert_element_type" else [None] * len(eqn.outvars)
  if (name == "conv_general_dilated" and kind == ["src", "kernel"] and _plain_1x1(eqn)):
    return [("conv", ins[1][1])]
  if name == "convert_element_type" and kind[0] == "conv":
    return [ins[0]]
  if name in ("add", "sub") and kind == ["conv", None]:  # a bias or another offset
    return [ins[0]]
  if name == "add" and kind == [None, "conv"]:
    return [ins[1]]
  return [OTHER] * len(eqn.outvars)


def _fail(model, layer, message):
  raise ValueError(f"{type(model).__name__}.channel_readouts() declares a readout of layer "
                   f"{layer!r} that does not hold: {message}. Fix the declaration or remove "
                   "the layer from it (the plain suffix then runs there).")


def check_readout(model, layer: str, readout, image_shape: tuple) -> None:
  """Raises a ValueError unless the traced model has the declared readout (module doc).

  Shapes only: the model is traced (`jax.make_jaxpr`) on abstract values of batch 1.

  Args:
    model: a port.
    layer: the layer's Keras name.
    readout: its declared `jaxdrift.models.ChannelReadout`.
    image_shape: (H, W, C) of one input.
  """
  _, shapes = checks.model_info(model, image_shape)
  missing = [n for n in (layer, readout.per_channel) + tuple(readout.convs) if n not in shapes]
  if missing:
    _fail(model, layer, f"the model has no layer {', '.join(map(repr, missing))}")
  act = shapes[layer].shape
  if shapes[readout.per_channel].shape != act:
    _fail(model, layer, f"{readout.per_channel!r} has shape {shapes[readout.per_channel].shape}, "
          f"the layer {act}; a per-channel map keeps the shape")
  x = jax.ShapeDtypeStruct((1,) + image_shape, jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
  for n in readout.convs:
    kernel = variables["params"].get(n, {}).get("kernel")
    out = shapes[n].shape
    if kernel is None or kernel.shape != (1, 1, act[-1], out[-1]) or out[:2] != act[:2]:
      found = "no params[name]['kernel']" if kernel is None else f"kernel {kernel.shape}"
      _fail(model, layer, f"convolution {n!r} ({found}, output {out}) is not a 1x1, stride-1 "
            f"convolution of {act[-1]} channels at {act[0]} x {act[1]}")

  def run(variables, images, acts):
    _, state = model.apply({**variables, REPLACEMENTS: {layer: acts}}, images, train=False,
                           mutable=[TAPS])
    taps = state[TAPS]["layers"]
    return [taps[readout.per_channel]] + [taps[n] for n in readout.convs]

  acts = jax.ShapeDtypeStruct((1,) + act, shapes[layer].dtype)
  closed = jax.make_jaxpr(run)(variables, x, acts)
  jaxpr = closed.jaxpr
  n_vars = len(jax.tree.leaves(variables))
  (p_label,) = _propagate(jaxpr, [None] * (len(jaxpr.invars) - 1) + ["elem"],
                          _per_channel_transfer((1,) + act))[:1]
  if p_label != "elem":
    _fail(model, layer, f"{readout.per_channel!r} is not computed from the layer's output "
          "element by element (an operation other than an elementwise one lies between them)")
  paths = [tuple(getattr(k, "key", k) for k in path)
           for path, _ in jax.tree_util.tree_flatten_with_path(variables)[0]]
  labels = [("kernel", path[1]) if path[0] == "params" and path[1:] in
            [(n, "kernel") for n in readout.convs] else None for path in paths[:n_vars]]
  labels += [None] * (len(jaxpr.invars) - n_vars - 1) + [OTHER]
  p_var = jaxpr.outvars[0]
  got = _propagate(jaxpr, labels, _conv_transfer, override={p_var: "src"})[1:]
  for n, label in zip(readout.convs, got):
    if label != ("conv", n):
      _fail(model, layer, f"{n!r} is not a 1x1, stride-1 convolution of "
            f"{readout.per_channel!r} with the kernel params[{n!r}]['kernel'] (plus terms "
            "that do not depend on the layer)")


@functools.lru_cache(maxsize=128)
def checked_readout(model, layer: str, image_shape: tuple):
  """The port's declared readout of `layer` (`jaxdrift.models.readouts`), checked, or None.

  Args:
    model: a port; models without a `channel_readouts` method declare nothing.
    layer: a Keras layer name.
    image_shape: (H, W, C) of one input.

  Raises:
    ValueError: the declaration does not hold (`check_readout`).
  """
  declare = getattr(model, "channel_readouts", None)
  readout = declare().get(layer) if callable(declare) else None
  if readout is not None:
    check_readout(model, layer, readout, tuple(image_shape))
  return readout
