"""The two-phase training loop: frozen backbone (TL), then all layers (FT).

    summary = jaxdrift.train.train(jaxdrift.train.preset("demo", arch="resnet50v2"), "runs/rn")

Workdir layout (read by the drift and report stages):

  DIR/config.json       the TrainConfig plus model_arch, input_size, num_classes, class_names
  DIR/checkpoints/      orbax: epochs/<n> (every epoch of both phases), tl, ft, pretrain
                        (see `jaxdrift.train.checkpoint`)
  DIR/metrics.jsonl     one JSON object per line: {"kind": "pretrain"|"epoch"|"test", ...}
  DIR/summary.json      validation and test metrics of the tl and ft checkpoints

Running again on the same workdir resumes after the latest epoch checkpoint (the epoch in
progress is redone with the same data order and dropout keys, so the final parameters are
bit-identical to an uninterrupted run on the same machine). A finished run only recomputes
its test metrics. Before any work starts the loop checks that the workdir holds no run with
another configuration and that its latest checkpoint is readable.
"""

import dataclasses
import functools
import itertools
import json
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
from jaxdrift.train import checkpoint as ckpt
from jaxdrift.train import config as config_lib
from jaxdrift.train import evaluate as eval_lib
from jaxdrift.train import pretrain as pretrain_lib
from jaxdrift.train import state as state_lib
from jaxdrift.train import steps

# Fields that may differ when resuming a run (everything else must match config.json).
_RESUMABLE_FIELDS = ("data_dir",)


class WorkdirError(RuntimeError):
  """The workdir holds a run that this configuration cannot continue."""


def _read_json(path: pathlib.Path):
  return json.loads(path.read_text())


def check_workdir(workdir, config: config_lib.TrainConfig) -> dict | None:
  """Returns the stored config.json of `workdir` (None if new) or raises WorkdirError."""
  path = pathlib.Path(workdir) / "config.json"
  if not path.exists():
    return None
  try:
    stored = _read_json(path)
  except (OSError, ValueError) as e:
    raise WorkdirError(f"{path} is unreadable ({e}); use another --workdir") from e
  if stored.get("arch") != config.arch or stored.get("model_arch") != config.model_arch:
    raise WorkdirError(
        f"{workdir} holds a run of {stored.get('model_arch', stored.get('arch'))!r}, not "
        f"{config.model_arch!r}; pass another --workdir (one workdir per architecture).")
  mine = config.to_json()
  diff = sorted(k for k in mine if k not in _RESUMABLE_FIELDS and k in stored
                and stored[k] != mine[k])
  if diff:
    details = ", ".join(f"{k}: stored {stored[k]!r} vs now {mine[k]!r}" for k in diff)
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


def _jsonl_append(path: pathlib.Path, record: dict) -> None:
  with path.open("a") as f:
    f.write(json.dumps(record) + "\n")


def _truncate_log(path: pathlib.Path, last_epoch: int) -> None:
  """Keeps the log records of pretraining and of epochs <= last_epoch (before resuming)."""
  if not path.exists():
    return
  keep = []
  for line in path.read_text().splitlines():
    r = json.loads(line)
    if r["kind"] == "pretrain" or (r["kind"] == "epoch" and r["global_epoch"] <= last_epoch):
      keep.append(line)
  path.write_text("".join(line + "\n" for line in keep))


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

  def train_prepare(self):
    """The jitted step's `prepare`: gather, augment, preprocess (identity when streamed)."""
    c = self.config
    if self.train_images is None:
      return _streamed
    augment = data_lib.Augment() if c.augment else data_lib.NO_AUGMENT
    return cache_lib.make_prepare(c.model_arch, augment, cache_lib.augment_key(c.seed),
                                  self.mesh)

  def train_inputs(self, global_epoch: int):
    """The step inputs of (1-based) `global_epoch`, placed on the mesh ahead of use."""
    c = self.config
    if self.train_images is not None:
      return cache_lib.epoch_inputs(self.train_images, batch_size=c.batch_size, seed=c.seed,
                                    epoch=global_epoch - 1, mesh=self.mesh,
                                    max_steps=self.steps_per_epoch)
    batches = data_lib.batches(self.sources["train"], arch=c.model_arch,
                               batch_size=c.batch_size, train=True, seed=c.seed,
                               image_size=c.input_size, augment=c.augment, num_epochs=1,
                               start_epoch=global_epoch - 1, mesh=self.mesh)
    return ({k: b[k] for k in ("image", "label", "mask")} for b in batches)

  def eval_batches(self, split: str):
    c = self.config
    return data_lib.batches(self.sources[split], arch=c.model_arch,
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


def _initial_variables(run: _Run, init_key, pretrain_key) -> dict:
  """Backbone weights (+ proxy pretraining, resumable via the 'pretrain' checkpoint)."""
  c = run.config
  if c.pretrain_epochs and ckpt.named_path(run.workdir, "pretrain").exists():
    variables, _ = ckpt.restore_named(run.workdir, "pretrain", run.abstract_variables)
    return variables
  weights = c.weights
  if weights == "imagenet" and c.reduced:
    raise ValueError(f"the reduced variant {c.model_arch} has no ImageNet weights; use "
                     "--weights none (the demo preset pretrains on a proxy task instead)")
  variables = models.pretrained(c.model_arch, run.num_classes, weights=weights, key=init_key,
                                input_size=c.input_size)
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
        learning_rate=c.pretrain_lr, batch_size=c.batch_size, key=pretrain_key, seed=c.seed,
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
    if not c.early_stopping or val["auc"] > best["auc"]:
      best = {"auc": val["auc"], "epoch": epoch}
    stop = bool(c.early_stopping) and epoch - best["epoch"] >= c.early_stopping
    done = stop or epoch == epochs
    # The named checkpoint: the best epoch with early stopping, else the phase's last.
    save_named = best["epoch"] == epoch and (c.early_stopping or done)
    start_write = time.perf_counter()
    meta = {"phase": name, "epoch": epoch, "global_epoch": global_epoch,
            "step": int(state.step), "best": best, "phase_done": done,
            "val_accuracy": val["accuracy"], "val_auc": val["auc"]}
    ckpt.save_epoch(run.manager, global_epoch, state, meta)
    if save_named:
      ckpt.save_named(run.workdir, name, state.params, state.batch_stats,
                      {**meta, "val": val})
    _jsonl_append(run.log_path, record)
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
  """
  config = config.validate()
  workdir = pathlib.Path(workdir)
  check_workdir(workdir, config)
  mesh = mesh or data_lib.default_mesh()
  sources = load_sources(config)
  class_names = data_lib.class_names(sources["train"])
  workdir.mkdir(parents=True, exist_ok=True)
  manager = ckpt.epochs_manager(workdir)
  latest = ckpt.latest_epoch(manager)
  meta = ckpt.read_epoch_meta(manager, latest) if latest else None  # fails early if damaged
  (workdir / "config.json").write_text(json.dumps(
      {**config.to_json(), "num_classes": len(class_names), "class_names": class_names},
      indent=2))
  log_path = workdir / "metrics.jsonl"
  _truncate_log(log_path, latest or 0)
  init_key, pretrain_key, tl_key, ft_key = jax.random.split(jax.random.key(config.seed), 4)
  phase_tl = _phase(config, len(class_names), train_bn=False)
  phase_ft = _phase(config, len(class_names), train_bn=config.ft_train_bn)
  run = _Run(config=config, workdir=workdir, mesh=mesh, sources=sources,
             num_classes=len(class_names), manager=manager,
             eval_fn=steps.jit_eval_step(phase_tl), progress=progress, hooks=tuple(hooks),
             log_path=log_path)
  e_tl, e_ft = config.epochs_tl, config.epochs_ft
  tl_done = meta is not None and (meta["phase"] == "ft" or meta["phase_done"])
  ft_done = meta is not None and meta["phase"] == "ft" and meta["phase_done"]

  if not tl_done:
    if meta is None:
      variables = _initial_variables(run, init_key, pretrain_key)
    else:
      variables = run.abstract_variables
    _start_or_resume(run, "tl", variables, trainable=(steps.HEAD,), lr=config.lr_tl,
                     epochs=e_tl, offset=0, phase=phase_tl, key=tl_key, meta=meta,
                     latest=latest)

  if not ft_done:
    # Phase 2 resumes only from its own epoch checkpoints; a run killed in its first epoch
    # (latest checkpoint: phase 1's last) starts it afresh from the tl checkpoint.
    meta = meta if meta is not None and meta["phase"] == "ft" else None
    abstract = run.abstract_variables
    if meta is None:
      variables, _ = ckpt.restore_named(workdir, "tl", abstract)
    else:
      variables = abstract
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


def _summarise(run: _Run) -> dict:
  """Test metrics of tl and ft; writes summary.json and prints a table."""
  abstract = run.abstract_variables
  summary = {"arch": run.config.arch, "model_arch": run.config.model_arch,
             "preset": run.config.preset, "data": run.config.data}
  for name in ("tl", "ft"):
    variables, meta = ckpt.restore_named(run.workdir, name, abstract)
    test = run.evaluate(variables, "test")
    _jsonl_append(run.log_path, {"kind": "test", "checkpoint": name,
                                 "global_epoch": meta.get("global_epoch"),
                                 **{f"test_{k}": v for k, v in test.items()}})
    summary[name] = {"epoch": meta.get("epoch"), "global_epoch": meta.get("global_epoch"),
                     "val": meta.get("val", {}), "test": test}
  summary["timings"] = dict(run.timings)
  (run.workdir / "summary.json").write_text(json.dumps(summary, indent=2))
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
  return "\n".join(lines)
