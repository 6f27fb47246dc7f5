"""The shared engine of the perturbation scores: one jitted, sharded program per call.

A perturbation score evaluates the model on `S` perturbed copies of each of `B` images.
Every step of every image runs in ONE jitted program: the steps are split into `n_chunks`
chunks of `chunk` steps; a `lax.map` over the chunks builds each chunk's perturbed images
with a vmap over (images, steps), runs ONE forward pass on the B * chunk images and keeps
only the target's score. Memory is bounded by the chunk; the batch axis is sharded along
the "data" axis of a mesh over every device (a batch that does not divide evenly is padded
by repeating its last image; the padding is cut from the results).

`logits_fn` is split into what is traced and what is static, so that a second call with new
variables of the same structure does not recompile: for a `functools.partial` (e.g.
`functools.partial(model.apply, variables, train=False)`) the arrays among its arguments
are program arguments, the rest (the function, `train=False`) is static. Any other callable
is static by identity: arrays it closes over become compile-time constants, and a new
callable object compiles again.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxdrift import distributed, geometry

SCORES = ("probability", "logit")
# Perturbed images per device and forward pass that the automatic chunk aims at.
_IMAGES_PER_FORWARD = 256


def split_fn(logits_fn):
  """(static, dynamic): hashable static part, and the arrays of `logits_fn` as a list."""
  if type(logits_fn) is functools.partial:
    leaves, treedef = jax.tree.flatten((logits_fn.args, logits_fn.keywords))
    is_array = tuple(isinstance(x, (jax.Array, np.ndarray)) for x in leaves)
    static_leaves = tuple(None if a else x for x, a in zip(leaves, is_array))
    dynamic = [x for x, a in zip(leaves, is_array) if a]
    try:
      hash((logits_fn.func, treedef, static_leaves))
    except TypeError as e:
      raise ValueError(f"logits_fn's non-array arguments must be hashable (they are part of "
                       f"the compiled program): {e}") from None
    return ("partial", logits_fn.func, treedef, static_leaves, is_array), dynamic
  if not callable(logits_fn):
    raise ValueError(f"logits_fn must be callable (images [B, H, W, C] -> logits [B, K]), "
                     f"got {type(logits_fn).__name__}")
  return ("callable", logits_fn), []


def join_fn(static, dynamic):
  """Rebuilds the callable that `split_fn` took apart (inside the traced program)."""
  if static[0] == "callable":
    return static[1]
  _, func, treedef, static_leaves, is_array = static
  arrays = iter(dynamic)
  leaves = [next(arrays) if a else x for x, a in zip(static_leaves, is_array)]
  args, keywords = jax.tree.unflatten(treedef, leaves)
  return functools.partial(func, *args, **keywords)


def round_counts(fractions, n: int) -> np.ndarray:
  """round(f * n) for fractions given as exact ratios (num, den), halves rounded UP."""
  num, den = fractions
  num = np.asarray(num, np.int64)
  return ((2 * num * n + den) // (2 * den)).astype(np.int32)


def rank_positions(m):
  """Rank of every pixel of one map [H, W] -> int32 [H, W]; 0 is the most relevant.

  Pixels are ordered by value, descending; equal values (and +0.0 / -0.0) by flat
  row-major index, ascending.
  """
  flat = m.ravel()
  key = jnp.where(flat == 0, jnp.zeros_like(flat), -flat)
  order = jnp.argsort(key, stable=True)
  n = flat.size
  return jnp.zeros(n, jnp.int32).at[order].set(jnp.arange(n, dtype=jnp.int32)).reshape(m.shape)


def target_score(logits, target, score: str):
  """Score of one image's target class from logits [K]: softmax probability or logit."""
  logits = logits.astype(jnp.float32)
  if score == "probability":
    return jax.nn.softmax(logits)[target]
  return logits[target]


def plan_chunks(steps: int, per_device: int, chunk):
  """(chunk, n_chunks): steps per forward pass and how many forward passes."""
  if chunk is None:
    n_chunks = max(1, math.ceil(steps * per_device / _IMAGES_PER_FORWARD))
    chunk = math.ceil(steps / n_chunks)
  if not isinstance(chunk, (int, np.integer)) or chunk < 1:
    raise ValueError(f"chunk must be a positive int (steps per forward pass) or None, got "
                     f"{chunk!r}")
  chunk = min(int(chunk), steps)
  return chunk, math.ceil(steps / chunk)


@functools.lru_cache(maxsize=64)
def perturbation_program(static_fn, perturb, prepare, options, score, grid, chunk, n_chunks, sharding):
  """jit of the whole evaluation; jax.jit compiles it once per input shape."""
  perturb = functools.partial(perturb, **dict(options))
  prepare = functools.partial(prepare, **dict(options))

  def run(dynamic_fn, images, maps, targets, counts, extra):
    fn = join_fn(static_fn, dynamic_fn)
    batch, height, width, _ = images.shape
    big = geometry.upsample(maps.astype(jnp.float32), (height, width), grid)
    ranks = jax.vmap(rank_positions)(big)
    context = prepare(images, extra)  # per-image inputs of `perturb`, e.g. the baseline
    steps = jnp.arange(n_chunks * chunk, dtype=jnp.int32)

    def body(chunk_args):
      cs, idx = chunk_args  # [chunk] pixel counts and step indices
      per_step = jax.vmap(perturb, in_axes=(None, None, None, 0, 0))
      x = jax.vmap(per_step, in_axes=(0, 0, 0, None, None))(images, context, ranks, cs, idx)
      x = x.reshape((batch * chunk,) + images.shape[1:])
      if sharding is not None:
        x = jax.lax.with_sharding_constraint(x, sharding)
      logits = fn(x).reshape(batch, chunk, -1)
      return jax.vmap(jax.vmap(functools.partial(target_score, score=score),
                               in_axes=(0, None)))(logits, targets)

    out = jax.lax.map(body, (counts.reshape(n_chunks, chunk), steps.reshape(n_chunks, chunk)))
    curve = jnp.moveaxis(out, 0, 1).reshape(batch, n_chunks * chunk)
    ok = {"images": jnp.all(jnp.isfinite(images)), "maps": jnp.all(jnp.isfinite(maps)),
          "targets": jnp.all(targets >= 0) & jnp.all(targets < logits_classes(fn, images))}
    return curve, ok

  return jax.jit(run)


def logits_classes(fn, images):
  """Number of logits of `fn` (static: from shapes only)."""
  out = jax.eval_shape(fn, jax.ShapeDtypeStruct((1,) + images.shape[1:], images.dtype))
  if len(out.shape) != 2:
    raise ValueError(f"logits_fn must return logits [B, K]; it returns shape {out.shape}")
  return out.shape[1]


def check_inputs(images, maps, targets):
  """Host-side shape checks; returns (images, maps, targets) as arrays."""
  images = jnp.asarray(images)
  maps = jnp.asarray(maps)
  if images.ndim != 4 or not jnp.issubdtype(images.dtype, jnp.floating):
    raise ValueError(f"images must be float [B, H, W, C] as the model takes them, got "
                     f"{images.dtype} {images.shape}")
  batch = images.shape[0]
  if maps.ndim != 3 or maps.shape[0] != batch:
    raise ValueError(f"maps must be [B, h, w] with B = {batch} (one map per image), got "
                     f"{maps.shape}; add a batch axis for a single map")
  targets = np.asarray(targets)
  if targets.shape != (batch,) or not np.issubdtype(targets.dtype, np.integer):
    raise ValueError(f"targets must be int class ids [B] = [{batch}] (never broadcast), got "
                     f"{targets.dtype} {targets.shape}")
  return images, maps, jnp.asarray(targets, jnp.int32)


def evaluate(logits_fn, images, maps, targets, counts, *, perturb, prepare, options, extra,
             score, grid, chunk, mesh):
  """Scores [B, S] of the target class on S perturbed copies of each image.

  Args:
    logits_fn: images [b, H, W, C] -> logits [b, K].
    images: [B, H, W, C]; maps [B, h, w]; targets int [B].
    counts: int [S], the pixel count that `perturb` receives at each step.
    perturb: module-level function (image [H, W, C], context, rank [H, W] int32, count,
      step, **options) -> perturbed image [H, W, C].
    prepare: module-level function (images [B, H, W, C], extra, **options) -> per-image
      context pytree with a leading batch axis.
    options: hashable tuple of (name, value) pairs passed to `perturb` and `prepare`.
    extra: pytree of arrays with a leading batch axis, passed to `prepare`.
    score, grid, chunk, mesh: as in `deletion`.
  """
  if score not in SCORES:
    raise ValueError(f"score must be one of {SCORES}, got {score!r}")
  images, maps, targets = check_inputs(images, maps, targets)
  grid = None if grid is None else tuple(float(g) for g in grid)
  batch = images.shape[0]
  mesh = distributed.auto_mesh(mesh)
  n_dev = mesh.shape[distributed.DATA_AXIS]
  padded = -(-batch // n_dev) * n_dev
  steps = len(counts)
  chunk, n_chunks = plan_chunks(steps, padded // n_dev, chunk)
  counts = np.concatenate([counts, np.full(n_chunks * chunk - steps, counts[-1], np.int32)])

  rows = np.minimum(np.arange(padded), batch - 1)
  pad = (lambda a: a[rows]) if padded != batch else (lambda a: a)
  shard = distributed.batch_sharding(mesh)
  put = lambda a: jax.device_put(pad(a), shard)
  images, maps, targets = put(images), put(maps), put(targets)
  extra = jax.tree.map(put, extra)
  static_fn, dynamic_fn = split_fn(logits_fn)
  if jax.device_count() > 1:
    dynamic_fn = distributed.place(dynamic_fn, distributed.replicated(mesh))
  program = perturbation_program(static_fn, perturb, prepare, options, score, grid, chunk, n_chunks,
                     shard if n_dev > 1 else None)
  curve, ok = program(dynamic_fn, images, maps, targets, jnp.asarray(counts), extra)
  bad = [k for k, v in ok.items() if not bool(v)]
  if bad:
    raise ValueError(f"invalid inputs: {', '.join(bad)} (images and maps must be finite; "
                     f"targets must lie in [0, K) for the K logits of logits_fn)")
  return curve[:batch, :steps]
