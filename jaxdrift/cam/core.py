"""The attribution pipeline: checks, one forward + one backward, weightings, both checkpoints.

Gradients come from `jax.vjp` of the weighted LOGITS with respect to a zero perturbation
added to the named layer's output (`jaxdrift.models.layers.tap`): no hooks, no state. With
BatchNorm in inference mode images do not interact, so one backward pass of
sum_b sum_c weights_bc * logits_bc gives every image its own gradient; only the layers after
the target layer are crossed by that backward pass.

Everything a call needs is checked on the host before anything is traced (layer names,
target shapes and ranges, finite inputs, keys), then one jitted program per (model, layers,
methods, options) runs, compiled once per input shape. The batch is sharded along the
"data" axis of a mesh over every device; a batch that does not divide evenly is padded by
repeating its last image and the padding is cut from the results.
"""

import functools
import math
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from jaxdrift import distributed
from jaxdrift.cam import (checks, gradfree, input_grads, methods as weightings, occlusion, rise,
                          suffix)
from jaxdrift.cam.checks import (CAM_METHODS, GRADFREE_METHODS, INPUT_METHODS, LAYER_METHODS,
                                 PIXEL_METHODS)
from jaxdrift.models.layers import PERTURBATIONS, REPLACEMENTS, TAPS


@flax.struct.dataclass
class CamResult:
  """Maps of one method and what they were computed from.

  Attributes:
    maps: raw non-negative maps [B, h, w] float32 (at the layer's resolution; at the finest
      layer's for multi-layer LayerCAM; at the input's for input-resolution methods).
    pre_relu: the map before the final ReLU [B, h, w] (a dict layer -> [B, h_l, w_l] for
      multi-layer LayerCAM; the signed channel sum of the attributions for input methods).
    logits: [B, num_classes] of the same forward pass.
    all_zero: [B] bool, True where a map is zero everywhere (e.g. no positive evidence
      after the ReLU). Such maps are returned as zeros, never NaN; report them.
    attributions: [B, H, W, C] per-channel attributions of input methods, else None.
    method: the method as requested, e.g. "gradcam++/official".
    layer: the layer name, a tuple of names (multi-layer), or "input".
  With `compute_pair` every array has a leading checkpoint axis of size 2 (TL, FT).
  """

  maps: jax.Array
  pre_relu: Any
  logits: jax.Array
  all_zero: jax.Array
  attributions: Any = None
  method: str = flax.struct.field(pytree_node=False, default="")
  layer: Any = flax.struct.field(pytree_node=False, default=None)


# ---------------------------------------------------------------------------- traced parts


def _activations_and_gradients(model, variables, images, weights, layers):
  """Traced core: logits [B, C], {layer: A [B, h, w, K]}, {layer: dscore/dA [B, h, w, K]}."""
  _, shapes = checks.model_info(model, tuple(images.shape[1:]))
  variables = {k: v for k, v in variables.items() if k != PERTURBATIONS}
  zeros = {n: jnp.zeros((images.shape[0],) + shapes[n].shape, shapes[n].dtype)
           for n in layers}

  def forward(deltas):
    logits, state = model.apply({**variables, PERTURBATIONS: deltas}, images, train=False,
                                mutable=[TAPS])
    taps = state[TAPS]["layers"]
    return logits, {n: taps[n] for n in layers}

  logits, vjp, acts = jax.vjp(forward, zeros, has_aux=True)
  (grads,) = vjp(weights.astype(logits.dtype))
  return logits, acts, grads


def _cam_result(request, layers, logits, acts, grads):
  opts = dict(request.static)
  key = (f"gradcam++/{opts['variant']}" if request.method == "gradcam++" else request.method)
  fn = jax.vmap(weightings.WEIGHTINGS[key])
  f32 = jnp.float32
  pre = {n: fn(acts[n].astype(f32), grads[n].astype(f32)) for n in layers}
  if len(layers) == 1:
    pre, layer = pre[layers[0]], layers[0]
    maps = jax.nn.relu(pre)
  else:
    size = max((p.shape[1:] for p in pre.values()), key=math.prod)
    cams = [jax.nn.relu(pre[n]) for n in layers]
    maps = jax.vmap(lambda cs: weightings.fuse_layers(cs, size, opts["gamma"]))(cams)
    layer = layers
  return CamResult(maps, pre, logits.astype(f32), ~jnp.any(maps > 0, axis=(1, 2)),
                   method=request.name, layer=layer)


def _input_result(request, model, variables, images, weights, logits, dynamic):
  opts = dict(request.static)
  reduction = opts.pop("reduction")
  fn = getattr(input_grads, request.method)
  if request.method == "integrated_gradients":
    attr = fn(model, variables, images, weights, dynamic["baseline"], **opts)
  elif request.method == "smoothgrad":
    attr = fn(model, variables, images, weights, dynamic["keys"], **opts)
  else:
    attr = fn(model, variables, images, weights, dynamic["keys"], dynamic["baselines"], **opts)
  pre = jnp.sum(attr, axis=-1)
  maps = jax.nn.relu(pre) if reduction == "relu" else jnp.sum(jnp.abs(attr), axis=-1)
  return CamResult(maps, pre, logits.astype(jnp.float32), ~jnp.any(maps > 0, axis=(1, 2)),
                   attr, method=request.name, layer="input")


def _capture(model, variables, images):
  """Logits [B, K] and every tapped layer's output {name: [B, ...]} of one forward pass."""
  logits, state = model.apply(variables, images, train=False, mutable=[TAPS])
  return logits, state.get(TAPS, {}).get("layers", {})  # none: a model without taps


def _gradfree_name(method, opts):
  name = f"{method}/{opts['score']}" if "score" in opts else method
  return name + (f"/top{opts['top_k']}" if opts.get("top_k") is not None else "")


def _gradfree_result(request, model, variables, images, weights, layers, logits, taps,
                     dynamic):
  opts = dict(request.static)
  logits_fn = functools.partial(model.apply, variables, train=False)
  if request.method == "scorecam":
    layer = layers[0]
    grid = checks.mask_grid(model, layer, tuple(images.shape[1:]), opts["grid"])
    pre, _, _ = gradfree.scorecam(logits_fn, images, taps[layer], weights, score=opts["score"],
                                  top_k=opts["top_k"], chunk=opts["chunk"], grid=grid)
  elif request.method == "ablationcam":
    layer = layers[0]
    fn = suffix.suffix_fn(model, variables, images, layer, taps)
    pre, _, _ = gradfree.ablationcam(fn, taps[layer], logits, weights, top_k=opts["top_k"],
                                     chunk=opts["chunk"])
  elif request.method == "occlusion":
    layer = "input"
    base = occlusion.baseline_images(images, opts["baseline"], opts["blur_sigma"],
                                     dynamic.get("baseline"))
    clean = gradfree.target_scores(logits, weights, opts["score"])
    pre, _ = occlusion.occlusion(logits_fn, images, weights, clean, base, size=opts["size"],
                                 stride=opts["stride"], score=opts["score"],
                                 chunk=opts["chunk"])
  else:
    layer = "input"
    pre = rise.rise(logits_fn, images, weights, dynamic.get("keys"), dynamic.get("masks"),
                    n_masks=opts["n_masks"], s=opts["s"], p=opts["p"], score=opts["score"],
                    chunk=opts["chunk"])
  maps = jax.nn.relu(pre)
  return CamResult(maps, pre, logits.astype(jnp.float32), ~jnp.any(maps > 0, axis=(1, 2)),
                   method=_gradfree_name(request.method, opts), layer=layer)


def _attribute(model, layers, requests, variables, images, weights, dynamic):
  """Every requested method for one checkpoint; CAM methods share one forward + backward,
  gradient-free methods one forward pass that records every layer."""
  results = {}
  logits = None
  cam = [r for r in requests if r.method in CAM_METHODS]
  if cam:
    logits, acts, grads = _activations_and_gradients(model, variables, images, weights, layers)
    results.update({r.name: _cam_result(r, layers, logits, acts, grads) for r in cam})
  free = [r for r in requests if r.method in GRADFREE_METHODS]
  if free:
    plain = {k: v for k, v in variables.items() if k not in (PERTURBATIONS, REPLACEMENTS)}
    clean_logits, taps = _capture(model, plain, images)
    for r in free:
      results[r.name] = _gradfree_result(r, model, plain, images, weights, layers, clean_logits,
                                         taps, dynamic[r.name])
    logits = clean_logits if logits is None else logits
  if logits is None:
    logits = model.apply(variables, images, train=False)
  for r in requests:
    if r.method in INPUT_METHODS:
      results[r.name] = _input_result(r, model, variables, images, weights, logits,
                                      dynamic[r.name])
  return {r.name: results[r.name] for r in requests}


@functools.lru_cache(maxsize=64)
def program(model, layers: tuple, requests: tuple, pair: bool, checkpoint_map: str):
  """One jitted program; jax.jit then compiles it once per input shape (`jd.cam.program`).

  `layers` and `requests` are the checked tuples that `compute_many` builds; with `pair` the
  program takes (tl_variables, ft_variables, images, weights, dynamic), else (variables,
  images, weights, dynamic); `checkpoint_map` ("unroll", "map" or "vmap") maps the
  checkpoint axis as in `compute_pair`.

  It returns (results, all_finite): the images' finiteness is checked in the same launch,
  and the host raises on it afterwards (`checks.check_finite`).
  """
  attribute = functools.partial(_attribute, model, layers, requests)

  def one(variables, images, weights, dynamic):
    return attribute(variables, images, weights, dynamic), jnp.all(jnp.isfinite(images))

  if not pair:
    return jax.jit(one)

  def both(tl_variables, ft_variables, images, weights, dynamic):
    # At trace time only: jit traces again for every new pair of tree structures.
    if jax.tree.structure(tl_variables) != jax.tree.structure(ft_variables):
      raise ValueError("tl_variables and ft_variables must have the same tree structure")
    if checkpoint_map == "unroll":
      pair = [attribute(v, images, weights, dynamic) for v in (tl_variables, ft_variables)]
      out = jax.tree.map(lambda a, b: jnp.stack([a, b]), *pair)
    else:
      stacked = jax.tree.map(lambda a, b: jnp.stack([a, b]), tl_variables, ft_variables)
      if checkpoint_map == "vmap":
        out = jax.vmap(attribute, in_axes=(0, None, None, None))(stacked, images, weights,
                                                                 dynamic)
      else:
        out = jax.lax.map(lambda v: attribute(v, images, weights, dynamic), stacked)
    return out, jnp.all(jnp.isfinite(images))

  return jax.jit(both)


# ---------------------------------------------------------------------------- entry points


def _run(model, variables_list, images, targets, methods, layer, mesh, checkpoint_map,
         options):
  # Everything here runs on every call: keep it cheap (see benchmarks/cam.py). The values of
  # the images are checked in the program itself, not in a launch and round trip of their own.
  checks.check_images(images, finite=False)
  image_shape = tuple(images.shape[1:])
  num_classes, _ = checks.model_info(model, image_shape)
  requests = checks.requests(methods, options)
  has_cam = any(r.method in LAYER_METHODS for r in requests)
  if not has_cam and layer is not None:
    raise ValueError("layer is only used by CAM methods; input-resolution methods "
                     "attribute to the input pixels")
  layers = checks.layers(model, layer, image_shape) if has_cam else ()
  if len(layers) > 1 and any(r.method not in ("layercam",) + PIXEL_METHODS for r in requests):
    raise ValueError("several layers (multi-layer fusion) are defined for layercam only; "
                     "compute other methods with one layer")
  batch = images.shape[0]
  weights = checks.target_weights(targets, batch, num_classes)
  dynamic = checks.dynamic_options(requests, options, images)

  # Automatic axes: the program relies on sharding propagation (batch in, batch out);
  # explicit axis types would make every vmap over the batch a sharding-typed operation.
  mesh = distributed.auto_mesh(mesh)
  n = mesh.shape[distributed.DATA_AXIS]
  padded = -(-batch // n) * n
  rows = np.minimum(np.arange(padded), batch - 1)
  pad = (lambda a: a[rows]) if padded != batch else (lambda a: a)
  shard = distributed.batch_sharding(mesh)
  replicated = distributed.replicated(mesh)
  images = jax.device_put(pad(jnp.asarray(images)), shard)
  weights = jax.device_put(pad(weights), shard)
  dynamic = {name: {k: jax.device_put(v, replicated) if k in ("baselines", "masks")
                    else jax.device_put(pad(v), shard) for k, v in d.items()}
             for name, d in dynamic.items()}
  if jax.device_count() > 1:  # with one device jit takes the arrays where they are
    variables_list = [distributed.place(v, replicated) for v in variables_list]
  pair = len(variables_list) == 2
  compiled = program(model, layers, requests, pair, checkpoint_map)
  out, finite = compiled(*variables_list, images, weights, dynamic)
  checks.check_finite(finite)
  if padded != batch:
    axis = 1 if pair else 0
    out = jax.tree.map(lambda a: jax.lax.slice_in_dim(a, 0, batch, axis=axis), out)
  return out


def compute(model, variables, images, targets, method: str = "layercam", layer=None, *,
            with_aux: bool = False, mesh=None, **options):
  """Attribution maps of one checkpoint for the given target classes.

  Args:
    model: a Flax module whose `apply(variables, x, train=False)` returns logits [B, K]
      and that taps its layers with `jaxdrift.models.layers.tap` (every jaxdrift port does).
    variables: {"params", "batch_stats"}.
    images: preprocessed float images [B, H, W, C]; must be finite.
    targets: int class ids [B] (one per image; a scalar is an error, never broadcast) or
      float logit weights [B, K]. The score is sum_c weight_c * logit_c: the class LOGIT.
    method: "gradcam", "gradcam++" (see `variant`), "gradcam++/eq19",
      "gradcam++/official", "layercam", "hirescam", "xgradcam", "integrated_gradients",
      "smoothgrad", "expected_gradients", and the gradient-free "scorecam", "ablationcam"
      (at the layer), "occlusion", "rise" (at the input); "scorecam/probability" (and
      "/logit", also for occlusion and rise) names the score. The result's `method` names
      the variant, e.g. "scorecam/logit", "ablationcam/top64".
    layer: a Keras layer name with a 4-D output (default: the architecture's canonical last
      feature map, `jd.models.default_cam_layer`), or a list of names for multi-layer
      LayerCAM. Not used by input-resolution methods.
    with_aux: return a `CamResult` (maps, pre-ReLU maps, logits, all-zero flags) instead
      of the maps alone.
    mesh: a `jax.sharding.Mesh` with a "data" axis (default: all devices).
    **options: per method -- gradcam++: variant="eq19" | "official"; layercam: gamma=2.0
      (multi-layer tanh scaling); integrated_gradients: baseline=0.0 (scalar, [H, W, C] or
      [B, H, W, C]), steps=64, rule="trapezoid" | "midpoint" | "gausslegendre";
      smoothgrad: key, n_samples=25, noise_level=0.15; expected_gradients: key,
      baselines [M, H, W, C], n_samples=32; input methods: batch_points=8 (points per
      batched pass), reduction ("relu": ReLU of the channel sum, default for integrated
      and expected gradients; "abs": sum of absolute values, default for smoothgrad).
      `key` is a typed key (jax.random.key) or one key per image [B].
      Gradient-free (see docs/gradient_free.md): chunk=16 (changed inputs per image in one
      batched forward pass; memory grows with it); scorecam: score="logit" |
      "probability", top_k=None (keep the k channels of largest spatial std),
      grid="network" | "half_pixel" | (stride, offset) (mask upsampling);
      ablationcam: top_k=None; occlusion: size=32, stride=16 (pixels), baseline="zero" |
      "mean" | "blur" | an image [H, W, C] or [B, H, W, C], blur_sigma=5.0, score="logit";
      rise: key (or masks [N, H, W]), n_masks=4000, s=7, p=0.5, score="logit".

  Returns:
    Raw non-negative maps [B, h, w] float32 at the layer's resolution (the input's for
    input-resolution methods), or a `CamResult` when `with_aux`.

  Raises:
    ValueError: unknown method, option or layer (the message lists the valid layer
      names), targets of the wrong shape or out of range, non-finite images.
  """
  out = _run(model, [variables], images, targets, (method,), layer, mesh, "unroll", options)
  return out[method] if with_aux else out[method].maps


def compute_many(model, variables, images, targets, methods=("layercam", "gradcam++"),
                 layer=None, *, mesh=None, **options) -> dict:
  """Several methods of one checkpoint from ONE forward and backward pass.

  Args and options as in `compute`; `methods` is a sequence of method names (use
  "gradcam++/eq19" and "gradcam++/official" to get both variants).

  Returns:
    {method: CamResult}.
  """
  return _run(model, [variables], images, targets, tuple(methods), layer, mesh, "unroll",
              options)


def compute_pair(model, tl_variables, ft_variables, images, targets,
                 methods=("layercam", "gradcam++"), layer=None, *, mesh=None,
                 checkpoint_map: str = "unroll", **options) -> dict:
  """Maps of the TL and the FT checkpoint, several methods, in one compiled program.

  One jitted program computes, per checkpoint, one forward and one backward pass shared by
  every CAM method, and returns both checkpoints' results stacked along a leading axis.
  How the checkpoint axis is mapped (`checkpoint_map`, measured on CPU for ResNet50V2 at
  batch 8, relative to the two forward passes alone):
    "unroll" (default): the per-checkpoint function is applied to each variable tree in
      the same program; XLA sees two ordinary forward passes (ratio 0.99 for the forward
      part). Compile time grows with the two copies.
    "map": the trees are stacked and `lax.map` runs one compiled body twice; weights are
      sliced out of the stack in a loop (+21% on the forward part).
    "vmap": the stacked trees are batched, which turns every convolution into a grouped
      one (about 3x slower on CPU; it may pay off on accelerators).
  Random options (keys, baselines) are shared by both checkpoints, so their maps differ
  only through the weights.

  Args and options as in `compute_many`; both variable trees must have the same structure.

  Returns:
    {method: CamResult} whose arrays have a leading axis of size 2 (0: TL, 1: FT), e.g.
    `tl_maps, ft_maps = out["layercam"].maps`.
  """
  if checkpoint_map not in ("unroll", "map", "vmap"):
    raise ValueError(f"checkpoint_map must be 'unroll', 'map' or 'vmap', got "
                     f"{checkpoint_map!r}")
  return _run(model, [tl_variables, ft_variables], images, targets, tuple(methods), layer,
              mesh, checkpoint_map, options)


@functools.lru_cache(maxsize=32)
def _gradients_program(model, layers):
  return jax.jit(functools.partial(_activations_and_gradients, model, layers=layers))


def activations_and_gradients(model, variables, images, targets, layers):
  """Activations of named layers and the gradients of the target score with respect to them.

  Args:
    model, variables, images, targets: as in `compute`.
    layers: a layer name or a list of names (4-D outputs).

  Returns:
    (logits [B, K], {layer: A [B, h, w, K]}, {layer: d score / d A [B, h, w, K]}), where
    score_b = sum_c weights_bc logits_bc, one gradient per image.
  """
  checks.check_images(images)
  image_shape = tuple(images.shape[1:])
  num_classes, _ = checks.model_info(model, image_shape)
  names = checks.layers(model, layers, image_shape)
  weights = checks.target_weights(targets, images.shape[0], num_classes)
  return _gradients_program(model, names)(variables, jnp.asarray(images), weights)
