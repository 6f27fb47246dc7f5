"""The drift stage's device side: per-batch programs, the batch stream, the stage's clock.

Per batch the host hands the device a padded, fixed-shape batch (images, one-hot targets,
mask, lesion masks) and dispatches jitted programs back to back without waiting:

  attribution  `jaxdrift.cam`'s program of every method at one layer (both checkpoints, or
               one), the program `jd.cam.compute_pair` / `compute_many` run;
  pair         the predictions, the all-zero flags, the native maps and (on phantoms) the
               localisation against the lesion masks (`pair_program`);
  drift        every drift metric of the upsampled maps (`drift_program`): ONE program for
               every comparison of the stage (TL/FT, epochs, nulls).

Every program is plain XLA (no host callback), so the persistent compilation cache keeps all
of them across runs.

The host then reads the PREVIOUS batch's results in one `jax.device_get` (a dict of
per-image arrays, native-resolution maps included), so the device always has a batch queued
while the host tabulates. Every batch has the same shape (the eval path pads the last one
and marks it in "mask"), so each program compiles once per run.

A pair program returns {method: {"extra": ..., "maps": ..., ...}}: further per-image
columns are further entries of the same dict; `pair_dispatch` adds "drift" and, with the
stage's `faithfulness`, "faithfulness" (deletion / insertion AUC of both checkpoints, one
more program per layer: `faithfulness_stage.device_program`).
"""

import collections
import contextlib
import functools
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxdrift import cam, distributed, metrics
from jaxdrift.study import drift_methods, faithfulness_stage

# Where the compile time of a program goes: tracing, lowering, XLA (or the cache's read).
_COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
                   "/jax/core/compile/jaxpr_to_mlir_module_duration",
                   "/jax/core/compile/backend_compile_duration")
LOCALIZATION = ("pointing_game", "energy_inside", "mask_iou")


class StageClock:
  """Wall-clock seconds of a stage, split into what a user can act on.

  Parts: "input" (reading checkpoints and batches, waiting for them), "device" (dispatching
  programs and waiting for their results), "host" (tables, statistics, bootstrap),
  "write" (files), and "compile" (tracing, lowering and XLA compiles, taken out of the
  part during which they happened). Parts do not overlap; their sum is the stage's time.
  """

  PARTS = ("compile", "input", "device", "host", "write")

  def __init__(self):
    self.seconds = dict.fromkeys(self.PARTS, 0.0)
    self._compiled = collections.defaultdict(float)
    self._active = None
    self._lock = threading.Lock()

  @contextlib.contextmanager
  def part(self, name: str):
    """Counts the block's seconds to `name` (nested blocks count to the innermost)."""
    if name not in self.PARTS[1:]:
      raise ValueError(f"part must be one of {self.PARTS[1:]}, got {name!r}")
    outer, self._active = self._active, name
    start = time.perf_counter()
    try:
      yield
    finally:
      elapsed = time.perf_counter() - start
      self._active = outer
      self.seconds[name] += elapsed
      if outer is not None:
        self.seconds[outer] -= elapsed

  def _on_duration(self, event, duration, **_):
    if event in _COMPILE_EVENTS:
      with self._lock:
        self._compiled[self._active] += duration

  @contextlib.contextmanager
  def watching_compiles(self):
    """Listens to JAX's compile events inside the block."""
    jax.monitoring.register_event_duration_secs_listener(self._on_duration)
    try:
      yield self
    finally:
      jax.monitoring.unregister_event_duration_listener(self._on_duration)

  def split(self) -> dict:
    """{part: seconds} with the compile seconds moved out of the parts they happened in."""
    out = dict(self.seconds)
    for part, seconds in self._compiled.items():
      if part is not None:
        taken = min(seconds, out[part])
        out[part] -= taken
        out["compile"] += taken
      else:  # outside any part (a background thread between parts): still a compile
        out["compile"] += seconds
    out["total"] = sum(out[p] for p in self.PARTS)
    return {k: round(v, 3) for k, v in out.items()}


def hashable(placement: dict) -> tuple:
  """A placement dict (`metrics.drift` keywords) as a hashable program key."""
  return tuple(sorted(placement.items()))


@functools.lru_cache(maxsize=32)
def pair_program(methods: tuple, placement: tuple, tolerance: float, lesion: bool):
  """Jitted `(results, lesion_mask) -> {method: columns}` for the maps of both checkpoints.

  `results[method]` = (maps [2, B, h, w], logits [2, B, K], all_zero [2, B]); lesion_mask
  [B, H, W] bool or None. Columns per method: "extra" (tl_pred, ft_pred, tl_all_zero,
  ft_all_zero), "maps" (tl, ft native maps) and, with `lesion`, "localization" (tl_/ft_
  pointing game, energy inside, mask IoU and the pointing chance). The drift metrics are
  `drift_program`'s, the one program shared by every comparison of the stage.
  """
  placement = dict(placement)

  def program(results, lesion_mask):
    out = {}
    for method in methods:
      maps, logits, all_zero = results[method]
      preds = jnp.argmax(logits, axis=-1)
      cols = {"extra": {"tl_pred": preds[0], "ft_pred": preds[1],
                        "tl_all_zero": all_zero[0], "ft_all_zero": all_zero[1]},
              "maps": {"tl": maps[0], "ft": maps[1]}}
      if lesion:
        loc = {}
        for name, m in (("tl", maps[0]), ("ft", maps[1])):
          scores = metrics.localize(m, lesion_mask, tolerance=tolerance, **placement)
          loc.update({f"{name}_{k}": scores[k] for k in LOCALIZATION})
        loc["pointing_chance"] = scores["pointing_chance"]  # the mask's and grid's
        cols["localization"] = loc
      out[method] = cols
    return out

  return jax.jit(program)


def drift_program(placement: dict, mesh):
  """`(maps_a, maps_b, mask) -> drift dict` of [B] arrays (padding NaN / False): the
  sharded `jd.metrics.drift_step`, one compiled program per run for every comparison
  (TL/FT, epochs, nulls)."""
  return metrics.drift_step(metrics.make_params(**placement), mesh)


class Attribution:
  """The attribution programs of a stage, per layer, with their fixed inputs.

  Args:
    model: the Flax model.
    layers: the stage's layers: resolved CAM layer names and/or "input"
      (`drift_methods.INPUT`), where the input-resolution methods run.
    methods: method names (`jd.cam.METHODS`); each runs at `drift_methods.layers_of`.
    num_classes: logits of the model.
    mesh: the stage's mesh ("data" axis).
    options: {method: static `jd.cam.compute` options} (`drift_methods.options`).
    seed: the stage's seed; RISE and SmoothGrad draw image i's masks or noise from
      `drift_methods.image_keys(seed, i)`, i its index in the split (batch "index").
  """

  def __init__(self, model, layers, methods, num_classes, mesh, options=None, seed=0):
    self.model, self.layers, self.methods = model, tuple(layers), tuple(methods)
    self.num_classes, self.mesh, self.seed = num_classes, mesh, seed
    options = options or {}
    cam_layers = [l for l in self.layers if l != drift_methods.INPUT]
    self.requests = {
        layer: tuple(r for m in self.methods if layer in drift_methods.layers_of(m, cam_layers)
                     for r in cam.checks.requests((m,), options.get(m, {})))
        for layer in self.layers}
    self._dynamic = {}

  def place(self, variables):
    """Variables replicated over the mesh's devices (a no-op on one device)."""
    if jax.device_count() > 1:
      return distributed.place(variables, distributed.replicated(self.mesh))
    return variables

  def program(self, layer, pair: bool):
    """`jd.cam.program` of every method at `layer` (one checkpoint or both)."""
    layers = () if layer == drift_methods.INPUT else (layer,)
    return cam.program(self.model, layers, self.requests[layer], pair, "unroll")

  def dynamic(self, layer, batch):
    """The run-time options of the methods at `layer` for a device batch: fixed arrays
    (computed once) and, for the random methods, the keys of the batch's images."""
    if layer not in self._dynamic:
      fixed = [r for r in self.requests[layer] if r.method not in drift_methods.RANDOM_METHODS]
      self._dynamic[layer] = cam.checks.dynamic_options(fixed, {}, batch["image"])
    out = dict(self._dynamic[layer])
    random = [r for r in self.requests[layer] if r.method in drift_methods.RANDOM_METHODS]
    if random:
      keys = drift_methods.image_keys(self.seed, batch["index"])
      out.update({r.name: {"keys": keys} for r in random})
    return out

  def pair(self, layer, tl_vars, ft_vars, batch):
    """Dispatches both checkpoints' maps at `layer` -> ({method: (maps, logits, all_zero)},
    all_finite). Nothing is waited for."""
    out, finite = self.program(layer, True)(tl_vars, ft_vars, batch["image"],
                                            batch["weights"], self.dynamic(layer, batch))
    return {m: (r.maps, r.logits, r.all_zero) for m, r in out.items()}, finite

  def single(self, layer, variables, batch):
    """Dispatches one checkpoint's maps at `layer` -> ({method: maps [B, h, w]}, finite)."""
    out, finite = self.program(layer, False)(variables, batch["image"], batch["weights"],
                                             self.dynamic(layer, batch))
    return {m: r.maps for m, r in out.items()}, finite


def pair_dispatch(stage, tl_vars, ft_vars, faithfulness: bool = False):
  """The per-batch device function of a pair of checkpoints: (host, device batch) ->
  {layer: ({method: columns}, all_finite)} of device arrays, nothing waited for. Columns:
  `pair_program`'s, plus "drift" (the `jd.metrics.drift` dict) and, with `faithfulness`,
  "faithfulness" (`faithfulness_stage.COLUMNS`: each checkpoint's maps scored on its own
  model, upsampled on the layer's placement grid, against the true class)."""
  programs = {layer: pair_program(
      stage.methods_at(layer), hashable(stage.placement[layer]),
      float(stage.config.pointing_tolerance * stage.size), stage.lesion)
      for layer in stage.layers}
  drifts = {layer: drift_program(stage.placement[layer], stage.mesh)
            for layer in stage.layers}
  scores = {}
  if faithfulness:
    scores = {layer: faithfulness_stage.device_program(
        stage.model, tl_vars, stage.config.faithfulness_steps,
        stage.placement[layer]["grid"], stage.batch_size, stage.mesh)
        for layer in stage.layers}

  def dispatch(host, batch):
    out = {}
    for layer in stage.layers:
      maps, finite = stage.attribution.pair(layer, tl_vars, ft_vars, batch)
      cols = programs[layer](maps, batch.get("lesion_mask"))
      for c in cols.values():
        c["drift"] = drifts[layer](c["maps"]["tl"], c["maps"]["ft"], batch["mask"])
      if layer in scores:
        aucs = scores[layer](tl_vars, ft_vars, batch["image"],
                             {m: r[0] for m, r in maps.items()},
                             jnp.argmax(batch["weights"], axis=-1))
        for method, c in cols.items():
          c["faithfulness"] = aucs[method]
      out[layer] = (cols, finite)
    return out

  return dispatch


def device_batches(host_batches, mesh, num_classes: int, clock: StageClock, prefetch: int = 2):
  """Yields (host batch, device batch) pairs, `prefetch` batches placed ahead.

  The device batch holds "image", "weights" (one-hot targets [B, K]), "mask", "index"
  (int32 [B], the images' indices in the split: the random methods' keys) and
  "lesion_mask" when the split has one; ids and labels stay on the host.
  """
  sharding = distributed.batch_sharding(mesh)
  queue = collections.deque()
  it = iter(host_batches)
  while True:
    with clock.part("input"):
      while len(queue) <= prefetch:
        host = next(it, None)
        if host is None:
          break
        weights = cam.checks.target_weights(host["label"], len(host["label"]), num_classes)
        placed = {"image": host["image"], "weights": weights, "mask": host["mask"],
                  "index": np.asarray(host["index"], np.int32)}
        if "lesion_mask" in host:
          placed["lesion_mask"] = host["lesion_mask"]
        queue.append((host, jax.device_put(placed, sharding)))
    if not queue:
      return
    yield queue.popleft()


def run_batches(batches, dispatch, consume, clock: StageClock) -> int:
  """Dispatches every batch and hands its results to the host one batch behind.

  Args:
    batches: iterable of (host batch, device batch).
    dispatch: (host, device batch) -> a pytree of device arrays (not waited for).
    consume: (host batch, the pytree as numpy) -> None.
    clock: counts "device" for dispatching and waiting, "host" for consuming.

  Returns:
    the number of batches.
  """
  pending, count = None, 0
  for host, placed in batches:
    with clock.part("device"):
      out = dispatch(host, placed)
      if pending is not None:
        fetched = jax.device_get(pending[1])
    if pending is not None:
      with clock.part("host"):
        consume(pending[0], fetched)
    pending, count = (host, out), count + 1
  if pending is not None:
    with clock.part("device"):
      fetched = jax.device_get(pending[1])
    with clock.part("host"):
      consume(pending[0], fetched)
  return count


def padded_chunks(arrays: dict, batch_size: int):
  """Host batches of `arrays` ({name: [n, ...]}) of exactly `batch_size` rows, the last
  padded with zeros, each with "mask" [batch_size] bool (True on real rows)."""
  n = len(next(iter(arrays.values())))
  for start in range(0, n, batch_size):
    rows = min(batch_size, n - start)
    chunk = {k: np.concatenate([v[start:start + rows],
                                np.zeros((batch_size - rows,) + v.shape[1:], v.dtype)])
             for k, v in arrays.items()}
    chunk["mask"] = np.arange(batch_size) < rows
    yield chunk


def check_finite(flags) -> None:
  """Raises when any attribution program saw a non-finite image (`flags`: host bools)."""
  for flag in flags:
    cam.checks.check_finite(flag)

