"""Sanity checks of attribution maps (Adebayo et al., NeurIPS 2018).

A map that explains the model must change when the model does. Two checks:

- `parameter_randomization`: re-initialise the model's layers one at a time from the head
  down, in Keras layer order (the order the layers run in; the Dense 'predictions' head
  last), "cascading" (every layer above stays randomised) or "independent" (one layer at a
  time), and measure after each layer how similar the new maps are to the original ones:
  Spearman rank correlation of the absolute maps, and SSIM (`jd.metrics.spearman`,
  `jd.metrics.ssim`). A method that passes falls towards 0 quickly; one that stays near 1
  shows the input (edges), not the model.
- `random_logit`: maps for a random class other than the target; a faithful class-sensitive
  method gives a dissimilar map.

Re-initialising a layer draws all of its variables from the port's own initialisers (flax's
defaults: lecun-normal convolution kernels, zero biases; BatchNorm scale 1, bias 0, moving
mean 0 and variance 1), with one `key` for the whole model, so a layer's random values do
not depend on the order. Maps are compared at the attribution layer's resolution (raw maps,
as `jd.cam.compute` returns them).

On untrained networks and noise images, methods whose channel weights are non-negative at a
global-average-pooling head (LayerCAM, Grad-CAM++) stay correlated after every layer is
re-initialised: they follow the layer's activation energy sum_k A_k, whose pattern the zero
padding sets in any random network. Grad-CAM's signed weights cancel it. The measurements
and what they mean are in docs/faithfulness.md ("Sanity checks on untrained networks").
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxdrift import cam, metrics, models

ORDERS = ("cascading", "independent")


def layer_order(model, variables, image_shape) -> list:
  """Names of the layers that hold variables, in Keras (model) order.

  Tapped layers come in the order they run; variables of layers that are not tapped (the
  Dense 'predictions' head) follow, in the order of the variable tree.
  """
  ran = models.layer_shapes(model, (1,) + tuple(image_shape))
  owners = {}
  for collection in ("params", "batch_stats"):
    for name in variables.get(collection, {}):
      owners.setdefault(name, None)
  return [n for n in ran if n in owners] + [n for n in owners if n not in ran]


@functools.lru_cache(maxsize=16)
def _init_program(model):
  return jax.jit(functools.partial(model.init, train=False))


def init_variables(model, key, images):
  """Freshly initialised variables of `model` for inputs shaped like images [B, H, W, C]
  (one jitted init per model and shape, shared by every call)."""
  return _init_program(model)(key, jnp.asarray(images)[:1])


def reinitialize(variables, fresh, names):
  """`variables` with the named layers' variables taken from `fresh`.

  Every collection that holds the layer is replaced: a convolution's or Dense layer's
  kernel and bias, a BatchNorm's scale and bias ("params") AND its moving mean and variance
  ("batch_stats"). With every name of `layer_order` the result is `fresh` itself.

  Args:
    variables: {"params", "batch_stats"} of the model under test (not modified).
    fresh: freshly initialised variables of the same model (`init_variables`).
    names: layer names (top-level keys of the collections).

  Returns:
    A new variable dict; the leaves are shared with the inputs, nothing is copied.
  """
  out = dict(variables)
  for collection in ("params", "batch_stats"):
    held = [n for n in names if n in variables.get(collection, {})]
    if held:
      out[collection] = {**variables[collection], **{n: fresh[collection][n] for n in held}}
  return out


@jax.jit
def similarity(original, maps):
  """Per-image similarity of maps [B, h, w] to the original ones [B, h, w].

  Returns:
    {"spearman": [B] of the absolute maps, "ssim": [B]}; NaN where a map is all zero or
    constant (no ranking).
  """
  rho = jax.vmap(lambda a, b: metrics.spearman(jnp.abs(a), jnp.abs(b)))(original, maps)
  return {"spearman": rho, "ssim": jax.vmap(metrics.ssim)(original, maps)}


def parameter_randomization(model, variables, images, targets, method, *, key,
                            order="cascading", layer=None, layers=None, mesh=None,
                            **cam_options):
  """Similarity of the maps to the original ones as the layers are randomised, head down.

  Args:
    model: a port (`jd.models.create`).
    variables: {"params", "batch_stats"} of the checkpoint under test.
    images: [B, H, W, C] preprocessed; targets: int [B].
    method: a `jd.cam.compute` method, e.g. "layercam".
    key: typed PRNG key of the re-initialisation.
    order: "cascading" or "independent".
    layer: the attribution layer (default: the canonical one).
    layers: record the similarity only after these layer names (default: after every
      layer); the randomisation still walks every layer in order.
    mesh: passed to `jd.cam.compute`; **cam_options: its method options.

  Returns:
    {"layers": ["(none)", then the names randomised, head first] [L + 1],
    "spearman": [L + 1, B], "ssim": [L + 1, B], "original": maps [B, h, w], "settings":
    the choices, named}. Row 0 recomputes the maps with the original variables (1.0);
    row l > 0 holds the similarity after randomising layers[1..l] (cascading) or
    layers[l] alone (independent).
  """
  if order not in ORDERS:
    raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
  images = jnp.asarray(images)
  compute = functools.partial(cam.compute, model, images=images, targets=targets,
                              method=method, layer=layer, mesh=mesh, **cam_options)
  original = compute(variables)
  fresh = init_variables(model, key, images)
  head_down = layer_order(model, variables, images.shape[1:])[::-1]
  unknown = set(layers or ()) - set(head_down)
  if unknown:
    raise ValueError(f"layers {sorted(unknown)} hold no variables of this model; expected "
                     f"names from {head_down}")
  record = set(head_down if layers is None else layers)
  names, rows = ["(none)"], [similarity(original, compute(variables))]  # 1.0 unless the
  current = variables                                                  # maps are not repeatable
  for name in head_down:
    randomised = reinitialize(current if order == "cascading" else variables, fresh, [name])
    if order == "cascading":
      current = randomised
    if name in record:
      names.append(name)
      rows.append(similarity(original, compute(randomised)))
  stacked = {k: np.stack([np.asarray(r[k]) for r in rows]) for k in ("spearman", "ssim")}
  settings = {"order": order, "direction": "head down, Keras layer order", "method": method,
              "similarity": "spearman of absolute maps; ssim of max-normalised maps",
              "reinit": "the port's initialisers, BatchNorm statistics reset to 0 / 1"}
  return {"layers": names, **stacked, "original": original, "settings": settings}


def random_logit(model, variables, images, targets, method, *, key, layer=None, mesh=None,
                 **cam_options):
  """Similarity of the target's maps to the maps of a random other class.

  Args as in `parameter_randomization`; the other class of image b is
  (targets[b] + u_b) mod K with u_b uniform in 1..K-1 (drawn from `key`).

  Returns:
    {"random_targets": int [B], "spearman": [B], "ssim": [B]}.
  """
  images = jnp.asarray(images)
  targets = np.asarray(targets)
  num_classes = jax.eval_shape(functools.partial(model.apply, train=False), variables,
                               jax.ShapeDtypeStruct((1,) + images.shape[1:],
                                                    images.dtype)).shape[-1]
  if num_classes < 2:
    raise ValueError(f"random_logit needs at least 2 classes, the model has {num_classes}")
  shift = np.asarray(jax.random.randint(key, targets.shape, 1, num_classes))
  other = (targets + shift) % num_classes
  both = cam.compute(model, variables, jnp.concatenate([images, images]),
                     np.concatenate([targets, other]), method, layer, mesh=mesh, **cam_options)
  batch = images.shape[0]
  return {"random_targets": other, **similarity(both[:batch], both[batch:])}
