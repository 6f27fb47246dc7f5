"""Host-side checks of an attribution request, run before anything is traced.

Layer names (with the list of valid ones on error), target shapes and ranges, finite
inputs, method names and options, PRNG keys. Model shapes come from `jax.eval_shape`
(nothing is computed) and are cached per (model, image shape).
"""

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxdrift import models
from jaxdrift.cam import gradfree, input_grads, methods as weightings, occlusion

CAM_METHODS = ("gradcam", "gradcam++", "layercam", "hirescam", "xgradcam")
INPUT_METHODS = ("integrated_gradients", "smoothgrad", "expected_gradients")
# Gradient-free methods: at a layer (a forward pass per channel), or at the input pixels.
GRADFREE_CAM_METHODS = ("scorecam", "ablationcam")
GRADFREE_INPUT_METHODS = ("occlusion", "rise")
GRADFREE_METHODS = GRADFREE_CAM_METHODS + GRADFREE_INPUT_METHODS
LAYER_METHODS = CAM_METHODS + GRADFREE_CAM_METHODS  # attribute to a named layer
PIXEL_METHODS = INPUT_METHODS + GRADFREE_INPUT_METHODS  # attribute to the input pixels
METHODS = CAM_METHODS + INPUT_METHODS + GRADFREE_METHODS
# Methods whose score can be named as a variant: "scorecam/probability", "rise/logit", ...
SCORE_METHODS = ("scorecam", "occlusion", "rise")

# Options each method accepts: static ones (part of the compiled program) with defaults, and
# array-valued ones passed to the program at run time.
_STATIC = {
    "gradcam": {}, "hirescam": {}, "xgradcam": {},
    "layercam": {"gamma": 2.0},
    "gradcam++": {"variant": "eq19"},
    "integrated_gradients": {"steps": 64, "rule": "trapezoid", "batch_points": 8,
                             "reduction": "relu"},
    "smoothgrad": {"n_samples": 25, "noise_level": 0.15, "batch_points": 8,
                   "reduction": "abs"},
    "expected_gradients": {"n_samples": 32, "batch_points": 8, "reduction": "relu"},
    "scorecam": {"score": "logit", "top_k": None, "chunk": 16, "grid": "network"},
    "ablationcam": {"top_k": None, "chunk": 16},
    # baseline: a name here; an array passed as baseline= becomes "image" (a run-time option).
    "occlusion": {"size": 32, "stride": 16, "baseline": "zero", "blur_sigma": 5.0,
                  "score": "logit", "chunk": 16},
    "rise": {"n_masks": 4000, "s": 7, "p": 0.5, "score": "logit", "chunk": 16},
}
_DYNAMIC = {"integrated_gradients": ("baseline",), "smoothgrad": ("key",),
            "expected_gradients": ("key", "baselines"), "rise": ("key", "masks")}


@dataclasses.dataclass(frozen=True)
class Request:
  name: str  # the key of the result, as the user wrote the method
  method: str  # one of METHODS
  static: tuple  # sorted (option, value) pairs


def model_info(model, image_shape: tuple):
  """(number of logits, {layer: per-image output shape} in model order), shapes only (one
  cached trace, `jd.models.abstract_model`)."""
  _, logits, layers = models.abstract_model(model, (1,) + tuple(image_shape))
  if logits.ndim != 2:
    raise ValueError(f"attribution needs a model that returns logits [B, classes]; "
                     f"{type(model).__name__} returns shape {logits.shape} (include_top?)")
  return logits.shape[-1], {n: jax.ShapeDtypeStruct(a.shape[1:], a.dtype)
                            for n, a in layers.items()}


@functools.cache
def _default_layers():
  return {type(models.create(a)): models.default_cam_layer(a) for a in models.SPECS}


def layers(model, layer, image_shape) -> tuple:
  """Validated tuple of layer names (default: the architecture's canonical feature map)."""
  if layer is None:
    try:
      layer = _default_layers()[type(model)]
    except KeyError:
      raise ValueError(f"no default attribution layer for {type(model).__name__}; pass "
                       f"layer=<name>") from None
  names = (layer,) if isinstance(layer, str) else tuple(layer)
  if not names:
    raise ValueError("layer is an empty list; pass at least one layer name")
  _, shapes = model_info(model, image_shape)
  valid = [n for n, s in shapes.items() if len(s.shape) == 3]
  unknown = [n for n in names if n not in valid]
  if unknown:
    raise ValueError(
        f"{', '.join(map(repr, unknown))}: not a layer of {type(model).__name__} with a 4-D "
        f"output at input {image_shape}; valid names (model order): {', '.join(valid)}")
  return names


@functools.cache
def _all_finite_fn():
  return jax.jit(lambda x: jnp.all(jnp.isfinite(x)))


def check_images(images, finite: bool = True):
  """Shape and dtype of a batch of images; with `finite`, also that no value is NaN or inf.

  `finite=False` leaves the values to the caller: the attribution program checks them on the
  device in the same launch (see `check_finite`), so that a call costs no extra round trip.
  """
  if not hasattr(images, "ndim") or images.ndim != 4:
    raise ValueError(f"images must be an array [B, H, W, C], got shape "
                     f"{getattr(images, 'shape', type(images))}")
  if images.shape[0] < 1:
    raise ValueError("images is an empty batch [0, H, W, C]")
  if not jnp.issubdtype(images.dtype, jnp.floating):
    raise ValueError(f"images must be floating point and preprocessed "
                     f"(jd.models.preprocess), got dtype {images.dtype}")
  if finite:
    check_finite(_all_finite_fn()(images))


def check_finite(all_finite):
  """Raises unless `all_finite` (a boolean, possibly a device scalar) is true."""
  if not bool(all_finite):
    raise ValueError("images contain NaN or infinite values; fix the inputs (attribution "
                     "maps of non-finite inputs are meaningless)")


def target_weights(targets, batch: int, num_classes: int) -> np.ndarray:
  """Validated logit weights [B, num_classes], numpy float32, from ids [B] or weights [B, K].

  Raises:
    ValueError: a scalar or a length other than B (never broadcast), ids out of range,
      weights of the wrong shape or not finite.
  """
  t = np.asarray(targets)
  if t.dtype == bool or not (np.issubdtype(t.dtype, np.integer)
                             or np.issubdtype(t.dtype, np.floating)):
    raise ValueError(f"targets must be int class ids [B] or float logit weights [B, K], "
                     f"got dtype {t.dtype}")
  if np.issubdtype(t.dtype, np.integer):
    if t.shape != (batch,):
      raise ValueError(f"integer targets must have shape [B] = ({batch},), one class per "
                       f"image, got shape {t.shape}; a single class is not broadcast, pass "
                       f"np.full({batch}, c)")
    bad = (t < 0) | (t >= num_classes)
    if bad.any():
      raise ValueError(f"targets out of range [0, {num_classes}): {t[bad][:10].tolist()} at "
                       f"images {np.flatnonzero(bad)[:10].tolist()}")
    return np.eye(num_classes, dtype=np.float32)[t]
  if t.shape != (batch, num_classes):
    raise ValueError(f"float targets are logit weights of shape [B, K] = ({batch}, "
                     f"{num_classes}), got shape {t.shape}; for class ids use integers")
  if not np.isfinite(t).all():
    raise ValueError("float targets (logit weights) contain NaN or infinite values")
  return t.astype(np.float32)


def requests(methods: Sequence[str], options: dict) -> tuple:
  """Validated requests, one per method, and the options each takes (unknown ones raise)."""
  out, used = [], set()
  for name in methods:
    method, _, variant = name.partition("/")
    if method not in METHODS or (variant and method not in ("gradcam++",) + SCORE_METHODS):
      raise ValueError(f"unknown method {name!r}; expected one of {', '.join(METHODS)} "
                       f"(or 'gradcam++/eq19', 'gradcam++/official', or a score variant "
                       f"such as 'scorecam/probability')")
    static = dict(_STATIC[method])
    for opt in static:
      if opt in options:
        static[opt] = options[opt]
        used.add(opt)
    if variant:
      static["variant" if method == "gradcam++" else "score"] = variant
    if method == "occlusion" and not isinstance(static["baseline"], str):
      static["baseline"] = "image"  # the array itself is a run-time option
    if isinstance(static.get("grid"), list):
      static["grid"] = tuple(static["grid"])
    used.update(o for o in _DYNAMIC.get(method, ()) if o in options)
    _check_static(method, static)
    out.append(Request(name, method, tuple(sorted(static.items()))))
  unknown = sorted(set(options) - used)
  if unknown:
    raise ValueError(f"option(s) {', '.join(unknown)} not used by method(s) "
                     f"{', '.join(methods)}")
  return tuple(out)


def _check_static(method, opts):
  if method == "gradcam++" and opts["variant"] not in weightings.GRADCAM_PP_VARIANTS:
    raise ValueError(f"gradcam++ variant must be one of "
                     f"{weightings.GRADCAM_PP_VARIANTS}, got {opts['variant']!r}")
  if "reduction" in opts and opts["reduction"] not in ("relu", "abs"):
    raise ValueError(f"reduction must be 'relu' or 'abs', got {opts['reduction']!r}")
  if method == "integrated_gradients":
    input_grads.quadrature(opts["steps"], opts["rule"])  # raises on bad values
  for opt in ("n_samples", "batch_points", "chunk", "n_masks", "s"):
    if opt in opts and (not isinstance(opts[opt], int) or opts[opt] < 1):
      raise ValueError(f"{opt} must be a positive int, got {opts[opt]!r}")
  if method in GRADFREE_METHODS:
    _check_gradfree(method, opts)


def _check_gradfree(method, opts):
  if "score" in opts and opts["score"] not in gradfree.SCORES:
    raise ValueError(f"{method} score must be one of {gradfree.SCORES}, got {opts['score']!r}")
  top_k = opts.get("top_k")
  if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
    raise ValueError(f"top_k must be None (every channel) or a positive int, got {top_k!r}")
  grid = opts.get("grid", "network")
  if not (grid in ("network", "half_pixel") or (isinstance(grid, tuple) and len(grid) == 2)):
    raise ValueError(f"grid must be 'network', 'half_pixel' or (stride, offset), got {grid!r}")
  if method == "occlusion":
    occlusion.pair(opts["size"], "size")
    occlusion.pair(opts["stride"], "stride")
    if opts["baseline"] not in occlusion.BASELINES + ("image",):
      raise ValueError(f"occlusion baseline must be one of {occlusion.BASELINES} or an image "
                       f"array, got {opts['baseline']!r}")
    if not opts["blur_sigma"] > 0:
      raise ValueError(f"blur_sigma must be > 0 pixels, got {opts['blur_sigma']!r}")
  if method == "rise" and not 0 < opts["p"] <= 1:
    raise ValueError(f"rise keep probability p must be in (0, 1], got {opts['p']!r}")


@functools.cache
def _arch_grids():
  return {type(models.create(a)): models.spec(a).cam_grid for a in models.SPECS}


def mask_grid(model, layer: str, image_shape: tuple, grid):
  """Where Score-CAM puts a layer's cells when it upsamples them to the input.

  "network": the architecture's cell centres (`jd.models.cam_grid`) for a jaxdrift port at a
  layer on the canonical feature map's grid, half-pixel centres otherwise (the drift stage's
  rule); "half_pixel": None; or an explicit (stride, offset).
  """
  if grid == "half_pixel":
    return None
  if grid != "network":
    return tuple(float(g) for g in grid)
  cell_grid = _arch_grids().get(type(model))
  if cell_grid is None:
    return None
  _, shapes = model_info(model, image_shape)
  canonical = layers(model, None, image_shape)[0]
  on_grid = shapes[layer].shape[:2] == shapes[canonical].shape[:2]
  return tuple(float(g) for g in cell_grid) if on_grid else None


def _per_image_keys(key, batch: int):
  if key is None:
    raise ValueError("smoothgrad, expected_gradients and rise need key=jax.random.key(seed) "
                     "(or one key per image, [B]; rise: or masks=[N, H, W])")
  key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
  if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    raise ValueError(f"key must be a typed key from jax.random.key(seed), got dtype "
                     f"{key.dtype}")
  if key.shape == ():
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, jnp.arange(batch))
  if key.shape != (batch,):
    raise ValueError(f"key must be one key or one key per image [{batch}], got {key.shape}")
  return key


def dynamic_options(requests, options, images):
  """Run-time array options per request: {name: {option: array}}; batch arrays first."""
  batch, image_shape = images.shape[0], images.shape[1:]
  out = {}
  for r in requests:
    d = {}
    if r.method == "integrated_gradients":
      base = jnp.asarray(options.get("baseline", 0.0), jnp.float32)
      try:
        d["baseline"] = jnp.broadcast_to(base, images.shape)
      except ValueError:
        raise ValueError(f"baseline of shape {base.shape} does not broadcast to the images "
                         f"{images.shape}") from None
      if not bool(_all_finite_fn()(d["baseline"])):
        raise ValueError("baseline contains NaN or infinite values")
    if r.method in ("smoothgrad", "expected_gradients"):
      d["keys"] = _per_image_keys(options.get("key"), batch)
    if r.method == "expected_gradients":
      if "baselines" not in options:
        raise ValueError("expected_gradients needs baselines=[M, H, W, C], a reference "
                         "sample of preprocessed images (e.g. training images)")
      bases = jnp.asarray(options["baselines"], jnp.float32)
      if bases.ndim != 4 or bases.shape[1:] != image_shape or bases.shape[0] < 1:
        raise ValueError(f"baselines must have shape [M, {', '.join(map(str, image_shape))}], "
                         f"got {bases.shape}")
      check_images(bases)
      d["baselines"] = bases
    opts = dict(r.static)
    if r.method == "occlusion":
      for size, n in zip(occlusion.pair(opts["size"], "size"), image_shape):
        if size > n:
          raise ValueError(f"occlusion size {opts['size']} does not fit in images of "
                           f"{image_shape[0]} x {image_shape[1]} pixels; pass a smaller size")
      if opts["baseline"] == "image":
        base = jnp.asarray(options["baseline"], jnp.float32)
        try:
          d["baseline"] = jnp.broadcast_to(base, images.shape)
        except ValueError:
          raise ValueError(f"occlusion baseline image of shape {base.shape} does not "
                           f"broadcast to the images {images.shape}") from None
        check_images(d["baseline"])
    if r.method == "rise":
      if options.get("masks") is None:
        d["keys"] = _per_image_keys(options.get("key"), batch)
      else:
        masks = jnp.asarray(options["masks"], jnp.float32)
        if masks.ndim != 3 or masks.shape[1:] != image_shape[:2] or masks.shape[0] < 1:
          raise ValueError(f"rise masks must have shape [N, {image_shape[0]}, "
                           f"{image_shape[1]}], got {masks.shape}")
        d["masks"] = masks
    out[r.name] = d
  return out
