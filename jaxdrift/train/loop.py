"""The two-phase training loop: frozen backbone (TL), then all layers (FT).

    summary = jaxdrift.train.train(jaxdrift.train.preset("demo", arch="resnet50v2"), "runs/rn")

Workdir layout (`jaxdrift.workdir`; read by the drift and report stages):

  DIR/config.json       the TrainConfig plus model_arch, input_size, num_classes, class_names
  DIR/checkpoints/      orbax: epochs/<n> (every epoch of both phases), tl, ft, pretrain
                        (see `jaxdrift.train.checkpoint`)
  DIR/metrics.jsonl     one JSON object per line: {"kind": "pretrain"|"epoch"|"test", ...}
  DIR/summary.json      validation and test metrics of the tl and ft checkpoints

A run is a small state machine whose state is its files, and every state resumes with the
same command:
  - fresh: no checkpoint. A start checks the settings and loads the backbone weights before
    it writes anything; config.json binds the directory only once a checkpoint exists, so a
    start that failed (bad weights file, bad option, Ctrl-C) never blocks a corrected one.
  - per epoch, in this order: the log record (metrics.jsonl), then the epoch checkpoint
    (the commit: a rerun continues after the latest one and drops log records after it),
    then the named tl / ft checkpoint when the epoch is the phase's.
  - the named checkpoints are copies of epoch checkpoints: when one is missing, unreadable
    or not the epoch the phase's last meta names (a kill between the two saves, a deleted
    or truncated checkpoints/ft), it is re-derived from that epoch checkpoint.
  - finished: summary.json, written last (atomically); a rerun recomputes the test metrics.
Resuming redoes the epoch in progress with the same data order and dropout keys, so the
final parameters are bit-identical to an uninterrupted run on the same machine. Before any
work starts the loop checks that the workdir holds no run with another configuration and
that its latest checkpoint is readable.
"""

import dataclasses
import functools
import itertools
import logging
import math
import pathlib
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm

from jaxdrift import data as data_lib
from jaxdrift.data import cache as cache_lib
from jaxdrift import models
from jaxdrift import workdir as workdir_lib
from jaxdrift.train import checkpoint as ckpt
from jaxdrift.train import config as config_lib
from jaxdrift.train import evaluate as eval_lib
from jaxdrift.train import pretrain as pretrain_lib
from jaxdrift.train import state as state_lib
from jaxdrift.train import steps

_LOG = logging.getLogger(__name__)

WorkdirError = workdir_lib.WorkdirError  # the workdir holds a run this config cannot continue


def check_workdir(workdir, config: config_lib.TrainConfig) -> dict | None:
  """Returns the stored config.json of `workdir`, or None when nothing binds the directory.

  A config.json binds the directory once a checkpoint exists; before that (a start that
  failed before its first epoch) it is replaced by the next start's.

  Raises:
    WorkdirError: the workdir holds a run of another architecture or with other settings,
      or its config.json is unreadable.
  """
  try:
    stored = workdir_lib.read_config(workdir)
  except WorkdirError:
    if not ckpt.has_committed(workdir):
      return None
    raise
  if stored is None or not ckpt.has_committed(workdir):
    return None
  if stored.get("arch") != config.arch or stored.get("model_arch") != config.model_arch:
    raise WorkdirError(
        f"{workdir} holds a run of {stored.get('model_arch', stored.get('arch'))!r}, not "
        f"{config.model_arch!r}; pass another --workdir (one workdir per architecture).")
  diff = workdir_lib.config_diff(stored, config.to_json())
  if diff:
    details = ", ".join(f"{k}: stored {a!r} vs now {b!r}" for k, (a, b) in diff.items())
    raise WorkdirError(f"{workdir} holds a run with other settings ({details}); resume it "
                       "with the same flags or pass another --workdir.")
  return stored


def load_sources(config: config_lib.TrainConfig) -> dict:
  """train / validation / test sources of the configured dataset, with clear errors."""
  sources = {}
  for split in ("train", "validation", "test"):
    try:
      sources[split] = data_lib.load(config.data, split, data_dir=config.data_dir,
                                     **config.data_options)
    except FileNotFoundError as e:
      raise FileNotFoundError(
          f"dataset {config.data!r} is not available ({e}). For chest_xray5 put the Kaggle "
          "archive where the message says, or use --data phantoms / --data folder:PATH."
      ) from e
  return sources


_jsonl_append = workdir_lib.append_jsonl


def _truncate_log(path: pathlib.Path, last_epoch: int, pretrained: bool) -> None:
  """Keeps the log records of epochs <= last_epoch and, when the pretrain checkpoint
  exists (`pretrained`), of pretraining: what the checkpoints hold (before resuming).
  Rewritten atomically; a torn last line (a kill while appending) is dropped."""
  if not path.exists():
    return
  keep = [r for r in workdir_lib.read_jsonl(path)
          if (r["kind"] == "pretrain" and pretrained)
          or (r["kind"] == "epoch" and r["global_epoch"] <= last_epoch)]
  workdir_lib.write_jsonl(path, keep)


@dataclasses.dataclass
class _Run:
  """What the phases share (built once per call of `train`)."""

  config: config_lib.TrainConfig
  workdir: pathlib.Path
  mesh: jax.sharding.Mesh
  sources: dict
  num_classes: int
  manager: object
  eval_fn: Callable
  progress: bool
  hooks: Sequence[Callable[[dict], None]]
  log_path: pathlib.Path
  init_key: jax.Array | None = None  # of the backbone's initialisation (weights "none")
  pretrain_key: jax.Array | None = None
  # Runs without augmentation (the demo, smoke) read and preprocess each evaluation record
  # once: every validation and precise-BN pass then takes its examples from memory. (Training
  # reads each record once in any case: `train_images`.)
  memos: dict = dataclasses.field(default_factory=dict)
  # Seconds of this call of `train`, by kind (see `_summarise`).
  timings: dict = dataclasses.field(default_factory=lambda: dict.fromkeys(
      ("compile_s", "input_s", "compute_s", "eval_s", "write_s"), 0.0))

  def memo(self, split: str) -> data_lib.Memo | None:
    if self.config.augment:
      return None
    return self.memos.setdefault(split, data_lib.Memo())

  @functools.cached_property
  def abstract_variables(self) -> dict:
    """Shapes of {"params", "batch_stats"}, replicated on the mesh (restore template)."""
    c = self.config
    shapes = ckpt.abstract_variables(c.model_arch, self.num_classes, c.input_size)
    sharding = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
                        dict(shapes))

  @property
  def steps_per_epoch(self) -> int:
    n = data_lib.steps_per_epoch(len(self.sources["train"]), self.config.batch_size, True)
    cap = self.config.max_steps_per_epoch
    return min(n, cap) if cap else n

  @functools.cached_property
  def train_images(self) -> cache_lib.Images | None:
    """The training split decoded and resized once (uint8; None: streamed every epoch)."""
    c = self.config
    images = cache_lib.build(self.sources["train"], image_size=c.input_size, mesh=self.mesh)
    self.timings["input_s"] += images.read_s if images is not None else 0.0
    self.timings["train_input"] = images.placement if images is not None else "stream"
    return images

  @property
  def preprocess(self):
    """The architecture's input preprocessing, for the data pipeline (picklable)."""
    return functools.partial(models.preprocess, self.config.model_arch)

  def train_prepare(self):
    """The jitted step's `prepare`: gather, augment, preprocess (identity when streamed)."""
    c = self.config
    if self.train_images is None:
      return _streamed
    augment = data_lib.Augment() if c.augment else data_lib.NO_AUGMENT
    return cache_lib.make_prepare(self.preprocess, augment, cache_lib.augment_key(c.seed),
                                  self.mesh)

  def train_inputs(self, global_epoch: int):
    """The step inputs of (1-based) `global_epoch`, placed on the mesh ahead of use."""
    c = self.config
    if self.train_images is not None:
      return cache_lib.epoch_inputs(self.train_images, batch_size=c.batch_size, seed=c.seed,
                                    epoch=global_epoch - 1, mesh=self.mesh,
                                    max_steps=self.steps_per_epoch)
    batches = data_lib.batches(self.sources["train"], preprocess=self.preprocess,
                               batch_size=c.batch_size, train=True, seed=c.seed,
                               image_size=c.input_size, augment=c.augment, num_epochs=1,
                               start_epoch=global_epoch - 1, mesh=self.mesh)
    return ({k: b[k] for k in ("image", "label", "mask")} for b in batches)

  def eval_batches(self, split: str):
    c = self.config
    return data_lib.batches(self.sources[split], preprocess=self.preprocess,
                            batch_size=c.eval_batch_size or c.batch_size, train=False,
                            seed=c.seed, image_size=c.input_size, mesh=self.mesh,
                            memo=self.memo(split))

  def evaluate(self, variables: dict, split: str) -> dict:
    return eval_lib.evaluate(self.eval_fn, variables, self.eval_batches(split))


def _streamed(inputs: dict, data: dict, epoch) -> dict:
  """`prepare` of streamed batches: they arrive augmented and preprocessed."""
  del data, epoch
  return inputs


def _phase(config, num_classes, train_bn) -> steps.Phase:
  dtype = jnp.bfloat16 if config.dtype == "bfloat16" else jnp.float32
  backbone = models.create(config.model_arch, include_top=False, dtype=dtype)
  return steps.Phase(backbone=backbone, num_classes=num_classes,
                     dropout_rate=config.dropout_rate, train_bn=train_bn,
                     label_smoothing=config.label_smoothing, dtype=dtype)


def _make_state(run: _Run, variables, *, trainable, lr: float, epochs: int):
  c = run.config
  params = variables["params"]
  frozen = state_lib.frozen_paths(params, trainable)
  total = max(1, epochs * run.steps_per_epoch)
  schedule = optax.cosine_decay_schedule(lr, total) if c.schedule == "cosine" else lr
  tx = state_lib.make_optimizer(schedule, params=params, frozen=frozen,
                                weight_decay=c.weight_decay)
  create = lambda: state_lib.TrainState.create(  # noqa: E731
      params=params, batch_stats=variables["batch_stats"], tx=tx, frozen=frozen)
  if any(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(params)):
    # Resuming: only the structure is needed, the arrays come from the checkpoint.
    sharding = jax.sharding.NamedSharding(run.mesh, jax.sharding.PartitionSpec())
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
                        jax.eval_shape(create))
  return steps.replicate(create(), run.mesh)


def _variables(state) -> dict:
  return {"params": state.params, "batch_stats": state.batch_stats}


def _pretrained(config: config_lib.TrainConfig, workdir) -> bool:
  """Whether the run's proxy pretraining is done (its checkpoint exists)."""
  return bool(config.pretrain_epochs) and ckpt.named_path(workdir, "pretrain").is_dir()


def _load_weights(config: config_lib.TrainConfig, num_classes: int, init_key) -> dict:
  """The backbone's initial weights (ImageNet, a Keras .h5 file, or a seeded init).

  Raises:
    ValueError: ImageNet weights asked for a reduced variant.
    WeightFileError: the .h5 file is missing, damaged or of another architecture.
  """
  c = config
  if c.weights == "imagenet" and c.reduced:
    raise ValueError(f"the reduced variant {c.model_arch} has no ImageNet weights; use "
                     "--weights none (the demo preset pretrains on a proxy task instead)")
  return models.pretrained(c.model_arch, num_classes, weights=c.weights, key=init_key,
                           input_size=c.input_size)


def _initial_variables(run: _Run, variables: dict | None = None) -> dict:
  """Backbone weights (+ proxy pretraining, resumable via the 'pretrain' checkpoint).

  Args:
    run: the run.
    variables: the weights `_load_weights` returned, when already loaded.
  """
  c = run.config
  if _pretrained(c, run.workdir):
    variables, _ = ckpt.restore_named(run.workdir, "pretrain", run.abstract_variables)
    return variables
  if variables is None:
    variables = _load_weights(c, run.num_classes, run.init_key)
  if c.pretrain_epochs:
    start = time.perf_counter()

    def on_epoch(epoch, loss, accuracy):
      record = {"kind": "pretrain", "epoch": epoch, "loss": loss, "accuracy": accuracy,
                "time_s": time.perf_counter() - start}
      _jsonl_append(run.log_path, record)
      if run.progress:
        tqdm.tqdm.write(f"pretrain {epoch}/{c.pretrain_epochs}: proxy loss {loss:.4f} "
                        f"accuracy {accuracy:.3f}")

    dtype = jnp.bfloat16 if c.dtype == "bfloat16" else jnp.float32
    variables = pretrain_lib.pretrain_backbone(
        variables, arch=c.model_arch, image_size=c.pretrain_image_size or c.input_size,
        num_examples=c.pretrain_examples, epochs=c.pretrain_epochs,
        learning_rate=c.pretrain_lr, batch_size=c.batch_size, key=run.pretrain_key,
        seed=c.seed,
        mesh=run.mesh, dtype=dtype, on_epoch=on_epoch)
    ckpt.save_named(run.workdir, "pretrain", variables["params"], variables["batch_stats"],
                    {"epochs": c.pretrain_epochs})
  return variables  # placed on the mesh with the train state (`_make_state`)


def _precise_batch_stats(run: _Run, phase: steps.Phase, state) -> dict:
  """Population statistics over the first full training batches in file order."""
  full = (b["image"] for b in run.eval_batches("train") if bool(jnp.all(b["mask"])))
  stats = steps.precise_batch_stats(phase.backbone, state.params, state.batch_stats,
                                    itertools.islice(full, run.config.precise_bn_batches))
  return steps.replicate(stats, run.mesh)


def _run_phase(run: _Run, name: str, state, *, phase: steps.Phase, key, first_epoch: int,
               epochs: int, offset: int, best: dict | None):
  """Trains epochs first_epoch..epochs of phase `name`; saves every epoch and the named one.

  Returns the final state.
  """
  c = run.config
  images = run.train_images
  train_fn = steps.jit_input_train_step(phase, run.mesh, run.train_prepare())
  data = images.device_data if images is not None else {}
  replicated = jax.sharding.NamedSharding(run.mesh, jax.sharding.PartitionSpec())
  per_epoch = run.steps_per_epoch
  best = best or {"auc": -math.inf, "epoch": 0}
  compiled = False
  for epoch in range(first_epoch, epochs + 1):
    global_epoch = offset + epoch
    bar = tqdm.tqdm(total=per_epoch, desc=f"{name} {epoch}/{epochs}", unit="step",
                    disable=not run.progress, leave=True, dynamic_ncols=True)
    start = time.perf_counter()
    inputs = iter(run.train_inputs(global_epoch))
    totals = steps.zero_totals(run.mesh)
    epoch_index = jax.device_put(np.int32(global_epoch - 1), replicated)
    input_s = compile_s = 0.0
    # The steps only dispatch: metrics stay on the device until the epoch's end, and the
    # guard makes any read-back an error (on accelerators; a CPU's reads are not guarded).
    # A hook that needs a value reads it under `jax.transfer_guard_device_to_host("allow")`.
    with jax.transfer_guard_device_to_host("disallow"):
      for i in range(per_epoch):
        t = time.perf_counter()
        batch = next(inputs, None)
        input_s += time.perf_counter() - t
        if batch is None:
          break
        state, totals = train_fn(state, totals, batch, data, epoch_index, key)
        if not compiled:  # the first step compiles: timed apart (not a transfer)
          jax.block_until_ready(totals)
          compile_s, compiled = time.perf_counter() - start - input_s, True
        bar.update(1)
        for hook in run.hooks:
          hook({"phase": name, "epoch": epoch, "epochs": epochs, "step_in_epoch": i + 1,
                "steps_per_epoch": per_epoch, "state": state})
    totals = {k: float(v) for k, v in jax.device_get(totals).items()}  # one read per epoch
    bar.close()
    train_time = time.perf_counter() - start
    steady_images = totals["count"] - (c.batch_size if compile_s else 0)
    steady_time = train_time - compile_s
    run.timings["compile_s"] += compile_s
    run.timings["input_s"] += input_s
    run.timings["compute_s"] += train_time - compile_s - input_s
    start_eval = time.perf_counter()
    if phase.train_bn and c.precise_bn_batches:
      state = state.replace(batch_stats=_precise_batch_stats(run, phase, state))
    val = run.evaluate(_variables(state), "validation")
    run.timings["eval_s"] += time.perf_counter() - start_eval
    # images/s without the first step (its compile), input waits included.
    record = {"kind": "epoch", "phase": name, "epoch": epoch, "global_epoch": global_epoch,
              "step": int(state.step), "train_loss": totals["loss_sum"] / totals["count"],
              "train_accuracy": totals["correct"] / totals["count"],
              "images_per_s": steady_images / steady_time if steady_images > 0 else None,
              "compile_s": compile_s, "input_s": input_s, "time_s": train_time,
              "train_input": run.timings["train_input"],
              **{f"val_{k}": v for k, v in val.items()}}
    # A non-finite AUC (a diverged model) is never better, but a phase always has a best
    # epoch, so that its named checkpoint exists and the run reports the divergence.
    auc = val["auc"] if math.isfinite(val["auc"]) else -math.inf
    if not c.early_stopping or auc > best["auc"] or best["epoch"] == 0:
      best = {"auc": auc, "epoch": epoch}
    stop = bool(c.early_stopping) and epoch - best["epoch"] >= c.early_stopping
    done = stop or epoch == epochs
    # The named checkpoint: the best epoch with early stopping, else the phase's last.
    save_named = best["epoch"] == epoch and (c.early_stopping or done)
    start_write = time.perf_counter()
    meta = {"phase": name, "epoch": epoch, "global_epoch": global_epoch,
            "step": int(state.step), "best": best, "phase_done": done,
            "val_accuracy": val["accuracy"], "val_auc": val["auc"], "val": val}
    # Write order (see the module docstring): log record, epoch checkpoint (the commit),
    # then the named checkpoint, which `_named_variables` re-derives when it is lost.
    _jsonl_append(run.log_path, record)
    ckpt.save_epoch(run.manager, global_epoch, state, meta)
    if save_named:
      ckpt.save_named(run.workdir, name, state.params, state.batch_stats, meta)
    run.timings["write_s"] += time.perf_counter() - start_write
    if run.progress:
      tqdm.tqdm.write(f"{name} {epoch}/{epochs}: train loss {record['train_loss']:.4f} "
                      f"acc {record['train_accuracy']:.3f} | val loss {val['loss']:.4f} "
                      f"acc {val['accuracy']:.3f} auc {val['auc']:.4f} | "
                      f"{record['images_per_s'] or 0:.0f} img/s")
    if stop:
      break
  return state


def train(config: config_lib.TrainConfig, workdir, *, mesh=None, progress: bool = True,
          hooks: Sequence[Callable[[dict], None]] = ()) -> dict:
  """Runs (or resumes) both phases and evaluates the tl and ft checkpoints on the test set.

  Args:
    config: the run's configuration (`preset(...)`).
    workdir: run directory (created; see the module docstring for its layout).
    mesh: device mesh with a "data" axis (default: every device).
    progress: show progress bars and per-epoch lines.
    hooks: callables receiving {"phase", "epoch", "epochs", "step_in_epoch",
      "steps_per_epoch", "state"} after every training step (tests use one to interrupt a
      run, the pipeline's workers to report progress).

  Returns:
    the summary dict also written to DIR/summary.json.

  Raises:
    WorkdirError: the workdir holds a run of other settings (nothing is written).
    CheckpointError: the latest epoch checkpoint is unreadable (nothing is written).
    WeightFileError, ValueError: the backbone weights cannot be loaded (nothing is written).
  """
  config = config.validate()
  workdir = pathlib.Path(workdir)
  files = workdir_lib.Workdir(workdir)
  check_workdir(workdir, config)
  mesh = mesh or data_lib.default_mesh()
  sources = load_sources(config)
  class_names = data_lib.class_names(sources["train"])
  init_key, pretrain_key, tl_key, ft_key = jax.random.split(jax.random.key(config.seed), 4)
  weights = None
  if not ckpt.has_committed(workdir):
    # A fresh start: the weights are checked before anything is written.
    weights = _load_weights(config, len(class_names), init_key)
  workdir.mkdir(parents=True, exist_ok=True)
  manager = ckpt.epochs_manager(workdir)
  latest = ckpt.latest_epoch(manager)
  meta = ckpt.read_epoch_meta(manager, latest) if latest else None  # fails early if damaged
  workdir_lib.write_config(workdir, {**config.to_json(), "num_classes": len(class_names),
                                     "class_names": class_names})
  _truncate_log(files.metrics, latest or 0, _pretrained(config, workdir))
  phase_tl = _phase(config, len(class_names), train_bn=False)
  phase_ft = _phase(config, len(class_names), train_bn=config.ft_train_bn)
  run = _Run(config=config, workdir=workdir, mesh=mesh, sources=sources,
             num_classes=len(class_names), manager=manager,
             eval_fn=steps.jit_eval_step(phase_tl), progress=progress, hooks=tuple(hooks),
             log_path=files.metrics, init_key=init_key, pretrain_key=pretrain_key)
  e_tl, e_ft = config.epochs_tl, config.epochs_ft
  tl_done = meta is not None and (meta["phase"] == "ft" or meta["phase_done"])
  ft_done = meta is not None and meta["phase"] == "ft" and meta["phase_done"]
  if not ft_done:
    files.summary.unlink(missing_ok=True)  # summary.json marks a finished run

  if not tl_done:
    if meta is None:
      variables = _initial_variables(run, weights)
    else:
      variables = run.abstract_variables
    _start_or_resume(run, "tl", variables, trainable=(steps.HEAD,), lr=config.lr_tl,
                     epochs=e_tl, offset=0, phase=phase_tl, key=tl_key, meta=meta,
                     latest=latest)

  if not ft_done:
    # Phase 2 resumes only from its own epoch checkpoints; a run killed in its first epoch
    # (latest checkpoint: phase 1's last) starts it afresh from the tl checkpoint.
    meta = meta if meta is not None and meta["phase"] == "ft" else None
    if meta is None:
      variables, _ = _named_variables(run, "tl")
    else:
      variables = run.abstract_variables
    _start_or_resume(run, "ft", variables, trainable=None, lr=config.lr_ft, epochs=e_ft,
                     offset=e_tl, phase=phase_ft, key=ft_key, meta=meta, latest=latest)
  return _summarise(run)


def _start_or_resume(run: _Run, name, variables, *, trainable, lr, epochs, offset, phase,
                     key, meta, latest) -> None:
  """Builds a phase's state (restored from epoch checkpoint `latest` when `meta` says this
  phase was interrupted) and runs its remaining epochs; a phase of 0 epochs saves its named
  checkpoint as it is."""
  state = _make_state(run, variables, trainable=trainable, lr=lr, epochs=epochs)
  first, best = 1, None
  if meta is not None:
    state, meta = ckpt.restore_epoch(run.manager, latest, state)
    first, best = meta["epoch"] + 1, meta["best"]
  if epochs == 0:
    ckpt.save_named(run.workdir, name, state.params, state.batch_stats,
                    {"phase": name, "epoch": 0, "global_epoch": offset})
  else:
    _run_phase(run, name, state, phase=phase, key=key, first_epoch=first, epochs=epochs,
               offset=offset, best=best)


def _named_variables(run: _Run, name: str) -> tuple[dict, dict]:
  """Variables and meta of the named checkpoint `name` ("tl" or "ft") of a finished phase.

  A named checkpoint is a copy of an epoch checkpoint (`ckpt.phase_end`). When it is
  missing, unreadable, or holds another epoch (a kill between the epoch save and the named
  save, a deleted or truncated directory), it is re-derived from that epoch checkpoint, or
  for a phase of 0 epochs from what the phase started with, and saved again.
  """
  c = run.config
  abstract = run.abstract_variables
  end = ckpt.phase_end(run.manager, name)
  try:
    variables, meta = ckpt.restore_named(run.workdir, name, abstract)
    if end is None or meta.get("global_epoch") == end[0]:
      return variables, meta
    reason = f"it holds epoch {meta.get('global_epoch')}, the phase's is epoch {end[0]}"
  except ckpt.CheckpointError as e:
    reason = str(e)
  if end is not None:
    variables, meta = ckpt.restore_epoch_variables(run.workdir, end[0], abstract)
  elif name == "tl":  # a phase 1 of 0 epochs: the initial backbone
    variables = steps.replicate(_initial_variables(run), run.mesh)
    meta = {"phase": name, "epoch": 0, "global_epoch": 0}
  else:  # a phase 2 of 0 epochs: the tl checkpoint
    variables, _ = _named_variables(run, "tl")
    meta = {"phase": name, "epoch": 0, "global_epoch": c.epochs_tl}
  _LOG.warning("re-deriving the %r checkpoint of %s from epoch %s (%s)", name, run.workdir,
               meta.get("global_epoch"), reason)
  ckpt.save_named(run.workdir, name, variables["params"], variables["batch_stats"], meta)
  return variables, meta


def _summarise(run: _Run) -> dict:
  """Test metrics of tl and ft; writes summary.json (last, atomically) and prints a table."""
  summary = {"arch": run.config.arch, "model_arch": run.config.model_arch,
             "preset": run.config.preset, "data": run.config.data}
  for name in ("tl", "ft"):
    variables, meta = _named_variables(run, name)
    test = run.evaluate(variables, "test")
    _jsonl_append(run.log_path, {"kind": "test", "checkpoint": name,
                                 "global_epoch": meta.get("global_epoch"),
                                 **{f"test_{k}": v for k, v in test.items()}})
    summary[name] = {"epoch": meta.get("epoch"), "global_epoch": meta.get("global_epoch"),
                     "val": meta.get("val", {}), "test": test,
                     "diverged": eval_lib.diverged(test)}
  summary["timings"] = dict(run.timings)
  workdir_lib.write_json(workdir_lib.Workdir(run.workdir).summary, summary)
  if run.progress:
    print(summary_table(summary))
  return summary


def summary_table(summary: dict) -> str:
  """A short fixed-width table of the tl and ft checkpoints' metrics."""
  head = f"{'ckpt':<5}{'epoch':>6}{'val acc':>9}{'val auc':>9}{'test loss':>11}" \
         f"{'test acc':>10}{'test auc':>10}"
  lines = [f"{summary['model_arch']} ({summary['preset']}, {summary['data']})", head]
  for name in ("tl", "ft"):
    s = summary[name]
    val, test = s.get("val", {}), s["test"]
    lines.append(f"{name:<5}{s.get('epoch') or 0:>6}{val.get('accuracy', float('nan')):>9.3f}"
                 f"{val.get('auc', float('nan')):>9.4f}{test['loss']:>11.4f}"
                 f"{test['accuracy']:>10.3f}{test['auc']:>10.4f}")
  broken = [name for name in ("tl", "ft") if summary[name].get("diverged")]
  if broken:
    lines.append(f"training diverged ({' and '.join(broken)}: non-finite logits or loss); "
                 "these metrics are NaN, not results: lower the learning rate and rerun in "
                 "a new workdir")
  return "\n".join(lines)
