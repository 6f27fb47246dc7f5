"""Which attribution methods the drift stage runs, where, with which options and at what cost.

    layers = drift_methods.layers_of("rise", ["post_relu"])          # ("input",)
    opts = drift_methods.options("occlusion", 224, {})                # size 32, stride 16, ...
    keys = drift_methods.image_keys(seed=0, index=batch_index)        # one key per image

Every `jd.cam` method that gives one map per image runs in the stage. CAM methods (gradient
ones and the gradient-free "scorecam", "ablationcam") give a map at each of the stage's CAM
layers; input-resolution methods ("occlusion", "rise", "integrated_gradients",
"smoothgrad") give ONE map per image at the input's resolution, under the single layer name
"input", whose cells are the pixels: placement grid (stride 1, offset 0), so upsampling to
the input is the identity and the metrics, localisation and figures read the map as is.
"expected_gradients" needs a reference sample of training images and is not run here.

Options (the stage's defaults, overridden per method by `DriftConfig.method_options`):
  occlusion: size = round(32 * S / 224) pixels, stride = size // 2 of that default
    (32 and 16 at S = 224 px, `jd.cam`'s own defaults: 13 x 13 windows; 12 to 14 per side
    at other sizes), baseline "zero" (0 in the model's input units), score "logit";
  rise: n_masks=4000, s=7, p=0.5 (the paper's for ResNet-50), score "logit";
  every other method: `jd.cam`'s defaults (e.g. scorecam over every channel).

Randomness: RISE's masks and SmoothGrad's noise of image i (its index in the split) come
from fold_in(fold_in(key(seed), MASK_STREAM), i): the same masks for both checkpoints,
every epoch and the nulls, whatever the batch an image falls in, so reruns are
byte-identical and the drift between two checkpoints is never the masks' doing.

Cost: `costs` gives `jd.cam.cost` of every (method, layer) of a stage, forward-pass
equivalents per image; `cost_line` the line `run_drift` prints before its long part
(`stage_costs`), on stdout like the pipeline's other lines: jaxdrift's own output, which
the quiet console (`jaxdrift._console`) leaves alone, shown with `progress`.
"""

import json
import math

import jax

from jaxdrift import cam

INPUT = "input"  # the layer name of input-resolution methods
INPUT_GRID = (1.0, 0.0)  # (stride, offset): cell i of an input-resolution map is pixel i
MASK_STREAM = 23  # the random stream of RISE's masks and SmoothGrad's noise
RANDOM_METHODS = ("smoothgrad", "rise")  # methods that draw from a key
NOT_RUN = {"expected_gradients": "it needs baselines, a reference sample of training images; "
                                 "compute it with jd.cam.compute instead"}
ARRAY_OPTIONS = ("key", "masks", "baselines", "baseline")  # run-time arrays: not options here


def is_input_method(method: str) -> bool:
  """True for a method whose map is at the input's resolution (layer "input")."""
  return method in cam.checks.PIXEL_METHODS


def layers_of(method: str, layers) -> tuple:
  """The stage layers a method gives maps at: ("input",) or the stage's CAM `layers`."""
  return (INPUT,) if is_input_method(method) else tuple(layers)


def study_defaults(method: str, input_size: int) -> dict:
  """The stage's own defaults for `method` at a square input of `input_size` pixels (module
  doc); {} where `jd.cam`'s defaults apply."""
  if method == "occlusion":
    size = max(1, round(32 * input_size / 224))
    return {"size": size, "stride": max(1, size // 2)}
  return {}


def _hashable(value):
  return tuple(_hashable(v) for v in value) if isinstance(value, (list, tuple)) else value


def options(method: str, input_size: int, method_options) -> dict:
  """Static options of `method` in the stage: its defaults, then the config's overrides."""
  out = study_defaults(method, input_size)
  out.update({k: _hashable(v) for k, v in (method_options or {}).get(method, {}).items()})
  return out


def check_methods(methods, method_options) -> None:
  """Raises ValueError for a method the stage does not run or a bad `method_options`.

  Args:
    methods: the config's method names (already known to `jd.cam`).
    method_options: {method: {option: value}}; each method must be one of `methods`,
      each option one that `jd.cam.compute` takes for it (no arrays: keys, masks and
      baselines are the stage's), each value valid and JSON-serialisable.
  """
  for method in methods:
    if method in NOT_RUN:
      raise ValueError(f"the drift stage does not run {method}: {NOT_RUN[method]}")
  if not isinstance(method_options, dict):
    raise ValueError(f"method_options must be a dict {{method: {{option: value}}}}, got "
                     f"{method_options!r}")
  for method, opts in method_options.items():
    if method not in methods:
      raise ValueError(f"method_options names {method!r}, which is not one of the methods "
                       f"{list(methods)}; add it to methods or drop its options")
    if not isinstance(opts, dict) or not all(isinstance(k, str) for k in opts):
      raise ValueError(f"method_options[{method!r}] must be a dict of option names, got "
                       f"{opts!r}")
    arrays = sorted(set(opts) & set(ARRAY_OPTIONS))
    if arrays and not (arrays == ["baseline"] and isinstance(opts["baseline"], str)):
      raise ValueError(f"method_options[{method!r}]: {', '.join(arrays)} cannot be set in "
                       "the drift stage (keys come from the seed; baselines must be named, "
                       "e.g. 'zero', 'mean' or 'blur')")
    try:
      json.dumps(opts, allow_nan=False)
    except (TypeError, ValueError):
      raise ValueError(f"method_options[{method!r}] must hold numbers, strings, None or "
                       f"lists of them, got {opts!r}") from None
    cam.checks.requests((method,), options(method, 224, method_options))  # raises


def image_keys(seed: int, index):
  """One typed key per image [B] from the images' indices in the split (module doc)."""
  base = jax.random.fold_in(jax.random.key(seed), MASK_STREAM)
  return _fold_in_each(base, index)


@jax.jit
def _fold_in_each(base, index):
  return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(base, index)


def costs(model, keys, input_size: int, method_options, images: int) -> dict:
  """`jd.cam.cost` of each (method, layer) of a stage.

  Args:
    model: the stage's model.
    keys: (method, layer) pairs (`Stage.keys`).
    input_size: the square input size in pixels.
    method_options: the config's overrides (`options`).
    images: images in the split.

  Returns:
    {method: {layer: {"forward_equivalents", "full_passes", "partial_passes",
    "partial_fraction", "backward_passes", "options", "checkpoints": 2, "images"}}}.
  """
  out = {}
  for method, layer in keys:
    opts = options(method, input_size, method_options)
    c = cam.cost(model, method, None if layer == INPUT else layer,
                 (input_size, input_size, 3), **opts)
    entry = {k: c[k] for k in ("forward_equivalents", "full_passes", "partial_passes",
                               "partial_fraction", "backward_passes")}
    entry.update(options=json.loads(json.dumps(opts)), checkpoints=2, images=int(images))
    out.setdefault(method, {})[layer] = entry
  return out


def cost_line(method: str, layer: str, entry: dict, several_layers: bool) -> str:
  """"rise: 4,001 forward passes per image x 2 checkpoints x 200 images" (with " at LAYER"
  after the method when the stage has several CAM layers)."""
  passes = entry["forward_equivalents"]
  shown = f"{passes:,.0f}" if math.isclose(passes, round(passes)) else f"{passes:,.2f}"
  where = f" at {layer}" if several_layers and layer != INPUT else ""
  return (f"{method}{where}: {shown} forward passes per image x {entry['checkpoints']} "
          f"checkpoints x {entry['images']:,} images")


def stage_costs(stage, show: bool = False) -> dict:
  """aggregates.json "cost" of a drift stage (`drift_stage.Stage`): `costs` of its (method,
  layer) pairs over its split; with `show`, one `cost_line` per pair on stdout, which
  `run_drift` prints before its long part. The nulls and, with epochs="all", every
  per-epoch checkpoint run the same methods on more images."""
  cost = costs(stage.model, stage.keys, stage.size, stage.config.method_options,
               len(stage.source))
  if show:
    several = sum(l != INPUT for l in stage.layers) > 1
    for method, layer in stage.keys:
      print(cost_line(method, layer, cost[method][layer], several), flush=True)
  return cost
