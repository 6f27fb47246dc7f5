"""What an attribution method costs per image, in passes of the network, before running it.

    jd.cam.cost(model, "scorecam", image_shape=(224, 224, 3))["forward_equivalents"]  # 2049.0

Counts come from the method's definition and options, and the share of the network that runs
after a layer from the multiply-accumulates (MACs) of its convolutions and its Dense layer,
read from shapes only (`jax.eval_shape`, nothing is computed). A backward pass is counted as
two forward passes of the part it crosses. Ablation-CAM's suffix counts the 1x1 convolutions
that it updates by rank one (`jaxdrift.cam.suffix`, where the port declares them) at their
rank-one cost.
"""

import math

import jax
import jax.numpy as jnp

from jaxdrift.cam import checks, occlusion, suffix


def _macs(model, image_shape):
  """({layer: MACs per image} of every conv (by Keras name) and Dense, model order)."""
  _, shapes = checks.model_info(model, image_shape)
  x = jax.ShapeDtypeStruct((1,) + tuple(image_shape), jnp.float32)
  params = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)["params"]
  out = {}
  for name in list(shapes) + [n for n in params if n not in shapes]:
    kernel = params.get(name, {}).get("kernel") if isinstance(params.get(name), dict) else None
    if kernel is None:
      continue
    if kernel.ndim == 4 and name in shapes:  # conv: output h x w x out, kernel kh kw in out
      out[name] = math.prod(shapes[name].shape[:2]) * math.prod(kernel.shape)
    elif kernel.ndim == 2:  # Dense
      out[name] = math.prod(kernel.shape)
  return out


def suffix_fraction(model, layer: str, image_shape, rank1=()) -> float:
  """Share of the network's MACs in the layers after `layer` (model order): the part that
  Ablation-CAM runs once per channel and a CAM's backward pass crosses.

  Args:
    model, layer, image_shape: as in `cost`.
    rank1: names of 1x1 convolutions after the layer that are replaced by a rank-one update
      (`jaxdrift.cam.suffix`): each counts h x w x O multiply-adds instead of h x w x K x O.
  """
  image_shape = tuple(image_shape)
  _, shapes = checks.model_info(model, image_shape)
  order = list(shapes)
  macs = _macs(model, image_shape)
  after = {n for n in order[order.index(layer) + 1:]} | {n for n in macs if n not in shapes}
  macs_after = {n: (math.prod(shapes[n].shape) if n in rank1 else v)
                for n, v in macs.items() if n in after}
  total = sum(macs.values())
  return sum(macs_after.values()) / total if total else 0.0


def cost(model, method: str, layer=None, image_shape=(224, 224, 3), **options) -> dict:
  """Network passes per image of one attribution method, as `compute` would run it.

  Args:
    model: a Flax port (or any model `compute` accepts).
    method: a method name as in `compute` ("scorecam", "ablationcam", "occlusion", "rise",
      "layercam", "integrated_gradients", ...).
    layer: the layer for CAM methods (default: the canonical one).
    image_shape: (H, W, C) of one input.
    **options: the method's options (top_k, size, stride, n_masks, steps, n_samples, ...).

  Returns:
    {"method", "layer", "full_passes": forward passes of the whole network,
     "partial_passes": passes of the network after the layer (Ablation-CAM),
     "partial_fraction": that part's share of the MACs (0 where unused; for Ablation-CAM
       with the rank-one updates of `jaxdrift.cam.suffix` counted as such),
     "backward_passes": backward passes through the whole network (input methods),
     "forward_equivalents": all of it in forward passes of the whole network}.
  """
  image_shape = tuple(image_shape)
  (request,) = checks.requests((method,), {k: v for k, v in options.items()
                                           if k not in ("key", "masks", "baselines")})
  opts = dict(request.static)
  name = request.method
  layers = checks.layers(model, layer, image_shape) if name in checks.LAYER_METHODS else ()
  _, shapes = checks.model_info(model, image_shape)
  channels = shapes[layers[0]].shape[-1] if layers else 0
  if opts.get("top_k") is not None:
    channels = min(channels, opts["top_k"])
  full, partial, backward, fraction = 1, 0, 0, 0.0
  if name == "scorecam":
    full += channels
  elif name == "ablationcam":
    readout = suffix.checked_readout(model, layers[0], image_shape)
    partial = channels
    fraction = suffix_fraction(model, layers[0], image_shape,
                               readout.convs if readout is not None else ())
  elif name == "occlusion":
    full += occlusion.n_windows(image_shape, opts["size"], opts["stride"])
  elif name == "rise":
    full += options["masks"].shape[0] if options.get("masks") is not None else opts["n_masks"]
  elif name in checks.CAM_METHODS:
    fraction = max(suffix_fraction(model, l, image_shape) for l in layers)
    return dict(method=method, layer=layers if len(layers) > 1 else layers[0], full_passes=1,
                partial_passes=0, partial_fraction=fraction, backward_passes=0,
                forward_equivalents=1.0 + 2.0 * fraction)
  else:  # input-gradient methods: a forward and a backward pass per point
    points = opts.get("steps", opts.get("n_samples"))
    full, backward = 1 + points, points
  return dict(method=method, layer=layers[0] if layers else "input", full_passes=full,
              partial_passes=partial, partial_fraction=fraction, backward_passes=backward,
              forward_equivalents=full + 2.0 * backward + partial * fraction)
