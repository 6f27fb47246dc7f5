"""Faithfulness columns of the drift stage: deletion and insertion AUC of both checkpoints.

For one batch and one attribution method, each checkpoint's maps are scored against THAT
checkpoint's model (`jd.faithfulness.deletion` / `insertion`), so the paired change
FT - TL says whether fine-tuning made the evidence more or less faithful to the model that
uses it. Lower deletion AUC and higher insertion AUC are better.

`device_program` is the drift stage's per-batch form (device arrays in, device arrays out,
compiled once); `faithfulness_columns` the same scores through the public functions, for
maps held anywhere; `sanity` the checks the stage runs once on the FT checkpoint.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxdrift import distributed, faithfulness
from jaxdrift.faithfulness import perturbation, runner

COLUMNS = ("tl_deletion_auc", "ft_deletion_auc", "tl_insertion_auc", "ft_insertion_auc")
BLUR_SIGMA = 5.0  # the "blur" baseline's sigma in pixels (`jd.faithfulness.deletion`'s default)


def faithfulness_columns(model, tl_variables, ft_variables, images, tl_maps, ft_maps, targets,
                         *, steps=50, baseline="blur", score="probability", grid=None,
                         keep=None, mesh=None) -> dict:
  """Per-image deletion and insertion AUC of the TL and FT maps, each on its own model.

  Args:
    model: a port; tl_variables, ft_variables: the two checkpoints' variables.
    images: [B, H, W, C] as the model takes them (preprocessed).
    tl_maps, ft_maps: [B, h, w] maps of the two checkpoints (raw or upsampled; upsampled to
      H x W inside with `grid`).
    targets: int [B], the class the maps explain.
    steps, baseline, score, grid, mesh: as in `jd.faithfulness.deletion`.
    keep: optional [B] bool; the columns keep only these rows (as the drift stage's rows).

  Returns:
    {name: float64 [n]} for `COLUMNS`, n = B or keep.sum().
  """
  out = {}
  kw = dict(steps=steps, baseline=baseline, score=score, grid=grid, mesh=mesh)
  for name, variables, maps in (("tl", tl_variables, tl_maps), ("ft", ft_variables, ft_maps)):
    fn = functools.partial(model.apply, variables, train=False)
    for kind, score_fn in (("deletion", faithfulness.deletion),
                           ("insertion", faithfulness.insertion)):
      auc = np.asarray(score_fn(fn, images, maps, targets, **kw)["auc"], np.float64)
      out[f"{name}_{kind}_auc"] = auc if keep is None else auc[np.asarray(keep, bool)]
  return {k: out[k] for k in COLUMNS}


def device_program(model, variables, steps: int, grid, batch_size: int, mesh):
  """The drift stage's per-batch faithfulness program: one jit, compiled once per stage.

  Deletion and insertion (blur baseline of `BLUR_SIGMA`, the target's probability) of both
  checkpoints and every method of one layer, on device arrays, nothing fetched: the host
  reads the AUCs with the batch's other columns. It runs the library's own perturbation
  program (`jd.faithfulness.runner`) ONCE per checkpoint, in a `lax.map` over the two
  checkpoints, so that XLA compiles the model's forward pass once, not four times:
  insertion of image x on blur(x) is deletion from blur(x) towards the baseline x, so both
  scores are one deletion call on the batch [x; blur(x)] with baselines [blur(x); x] and
  every method's maps side by side.

  Args:
    model: the port; variables: either checkpoint's variables (their structure only).
    steps: perturbation steps per curve.
    grid: the layer's placement grid (`models.cam_grid`) or None (half-pixel centres).
    batch_size: the stage's fixed batch size (sets the chunking of the forward passes).
    mesh: the stage's mesh ("data" axis).

  Returns:
    `(tl_vars, ft_vars, images [B, H, W, C], maps {method: [2, B, h, w]}, targets int [B])
    -> {method: {name: [B] float32}}` for `COLUMNS`.
  """
  static, _ = runner.split_fn(functools.partial(model.apply, variables, train=False))
  n_dev = mesh.shape[distributed.DATA_AXIS]
  sharding = distributed.batch_sharding(mesh) if n_dev > 1 else None

  def program(tl_vars, ft_vars, images, maps, targets):
    methods = list(maps)
    batch, height, width = images.shape[:3]
    rows = 2 * len(methods) * batch  # (method, deletion / insertion, image)
    chunk, n_chunks = runner.plan_chunks(steps + 1, -(-rows // n_dev), None)
    run = runner.perturbation_program(static, perturbation.perturb_one, perturbation.prepare_inputs,
                          (("baseline", "array"), ("blur_sigma", BLUR_SIGMA),
                           ("mode", "deletion")), "probability",
                          None if grid is None else tuple(float(g) for g in grid), chunk,
                          n_chunks, sharding)
    counts = runner.round_counts((np.arange(steps + 1), steps), height * width)
    counts = jnp.asarray(np.concatenate(
        [counts, np.full(n_chunks * chunk - steps - 1, counts[-1], np.int32)]))
    blurred = perturbation.blur(images, BLUR_SIGMA)
    tile = lambda a: jnp.concatenate([a] * len(methods))
    start = tile(jnp.concatenate([images, blurred]))
    base = tile(jnp.concatenate([blurred, images]))
    both = jnp.concatenate([targets, targets])
    stacked = jax.tree.map(lambda a, b: jnp.stack([a, b]), tl_vars, ft_vars)

    def one(args):  # one checkpoint: its maps of every method on its own model
      variables, ckpt_maps = args
      dynamic = runner.split_fn(functools.partial(model.apply, variables, train=False))[1]
      scored = jnp.concatenate([jnp.concatenate([m, m]) for m in ckpt_maps])
      curve, _ = run(dynamic, start, scored, tile(both), counts, base)
      return perturbation.trapezoid_auc(curve[:, :steps + 1]).reshape(len(methods), 2, batch)

    auc = jax.lax.map(one, (stacked, [maps[m] for m in methods]))  # [2, methods, 2, B]
    where = {f"{ckpt}_{kind}_auc": (c, k) for c, ckpt in enumerate(("tl", "ft"))
             for k, kind in enumerate(("deletion", "insertion"))}
    return {m: {name: auc[where[name][0], i, where[name][1]] for name in COLUMNS}
            for i, m in enumerate(methods)}

  return jax.jit(program)


def _mean(values) -> float:
  """Mean over the finite values; NaN when none is (all-zero maps have no ranking)."""
  values = np.asarray(values, np.float64)
  ok = np.isfinite(values)
  return float(values[ok].mean()) if ok.any() else float("nan")


SANITY_READING = (
    "Each row is for its own method and layer. Randomisation: mean similarity of the maps to "
    "the original ones after re-initialising every layer from the head down to the named "
    "one (the first entry, nothing randomised, is 1); maps that depend on the model fall "
    "towards 0. Random logit: similarity to the maps of another class; low is better. "
    "LayerCAM and Grad-CAM++ keep a mean Spearman of 0.26 to 0.60 even between two untrained "
    "tiny ports on noise images (they follow the activation energy, which zero padding "
    "shapes; docs/faithfulness.md): read their values against Grad-CAM's on the same "
    "checkpoint, not against 0.")


def sanity(model, variables, images, targets, methods, layers, *, key, mesh=None, keys=None,
           options=None) -> dict:
  """The sanity checks of one checkpoint (the drift stage runs them on FT), per method and
  attribution layer: cascading parameter randomisation and random-logit similarity.

  Args:
    model, variables: the port and the checkpoint's variables.
    images: [n, H, W, C] preprocessed; targets: int [n] (the true classes).
    methods: `jd.cam` methods; layers: resolved Keras layer names of the maps.
    key: PRNG key (split into the re-initialisation key and the random classes' key).
    mesh: passed to `jd.cam.compute`.
    keys: (method, layer) pairs to check instead of every method at every layer; layer
      "input" for input-resolution methods (computed without a layer).
    options: {method: `jd.cam.compute` options} (e.g. RISE's n_masks and key).

  Returns:
    {"images": n, "parameter_randomization": [{method, layer, randomised (["(none)", then
    the layers re-initialised, head first]), spearman, ssim (means over images, one per
    entry of randomised), n_finite (images with a defined similarity after every layer)}],
    "random_logit": [{method, layer, spearman, ssim, n_finite}], "settings": {..., "reading":
    `SANITY_READING`, how to read the numbers}}.
  """
  init_key, logit_key = jax.random.split(key)
  images, targets = np.asarray(images), np.asarray(targets)
  # Uncommitted copies, like the fresh variables of `init_variables`: jit's cache tells
  # committed arrays from uncommitted ones, so a mix of restored (committed) and fresh
  # layers would compile the attribution program again after every layer randomised.
  variables = jax.device_put(jax.device_get(variables))
  randomization, logit, settings = [], [], None
  keys = [(m, l) for m in methods for l in layers] if keys is None else list(keys)
  options = options or {}
  for method, layer in keys:
    opts = dict(options.get(method, {}))
    at = None if layer == "input" else layer
    out = faithfulness.parameter_randomization(model, variables, images, targets, method,
                                               key=init_key, layer=at, mesh=mesh, **opts)
    settings = out["settings"]
    both = np.isfinite(out["spearman"]) & np.isfinite(out["ssim"])
    randomization.append(dict(
        method=method, layer=layer, randomised=list(out["layers"]),
        spearman=[_mean(row) for row in out["spearman"]],
        ssim=[_mean(row) for row in out["ssim"]], n_finite=int(both.all(axis=0).sum())))
    other = faithfulness.random_logit(model, variables, images, targets, method,
                                      key=logit_key, layer=at, mesh=mesh, **opts)
    ok = np.isfinite(np.asarray(other["spearman"])) & np.isfinite(np.asarray(other["ssim"]))
    logit.append(dict(method=method, layer=layer, spearman=_mean(other["spearman"]),
                      ssim=_mean(other["ssim"]), n_finite=int(ok.sum())))
  return {"images": int(len(images)), "parameter_randomization": randomization,
          "random_logit": logit,
          "settings": {**(settings or {}), "method": list(methods), "checkpoint": "ft",
                       "random_logit": "maps of (target + u) mod K, u uniform in 1..K-1",
                       "mean": "over images with a finite similarity",
                       "reading": SANITY_READING}}
