"""Orbax checkpoints of a training run: one per epoch, plus named ones (pretrain, tl, ft).

Layout under the run's workdir:

  checkpoints/epochs/<n>/   n = 1, 2, ... counts epochs over BOTH phases (phase 1 first);
                            items params, batch_stats, opt_state (the phase's optimiser
                            state, as a flat list of leaves) and meta (JSON: phase, epoch of
                            the phase, global epoch, step, validation metrics, best so far)
  checkpoints/tl/           end of phase 1 (or its best epoch with early stopping):
  checkpoints/ft/           end of phase 2 (or its best epoch);
  checkpoints/pretrain/     the backbone after the demo's proxy-task pretraining;
                            named ones hold params, batch_stats and meta.

Saves are synchronous and atomic: orbax writes an epoch checkpoint under a temporary name
and renames it, and `save_named` does the same for the named ones, so a run killed at any
moment leaves each checkpoint whole or absent. The epoch checkpoints are the record of a
run: every named tl / ft checkpoint equals one of them (`phase_end` says which), so a
missing, damaged or stale named checkpoint is re-derived (see `jaxdrift.train.loop`).
Restores take an abstract target with shardings, so arrays come back replicated on the
mesh, and any failure to read becomes a `CheckpointError` that names the directory and what
to do.
"""

import functools
import os
import pathlib
import shutil

import jax
import orbax.checkpoint as ocp

from jaxdrift import models
from jaxdrift import workdir as workdir_lib

NAMED = ("pretrain", "tl", "ft")


class CheckpointError(RuntimeError):
  """A checkpoint is missing, unreadable or of another run."""


def _files(workdir) -> workdir_lib.Workdir:
  return workdir_lib.Workdir(pathlib.Path(workdir).absolute())


def _epochs_dir(workdir) -> pathlib.Path:
  return _files(workdir).epochs


def has_committed(workdir) -> bool:
  """Whether `workdir` holds a finished checkpoint (an epoch or a named one): from then on
  its config.json binds the directory to that run's settings."""
  epochs = _epochs_dir(workdir)
  if epochs.is_dir() and any(p.name.isdigit() for p in epochs.iterdir()):
    return True
  return any(named_path(workdir, name).is_dir() for name in NAMED)


def epochs_manager(workdir) -> ocp.CheckpointManager:
  """CheckpointManager of the per-epoch checkpoints (keeps all of them)."""
  return ocp.CheckpointManager(
      _epochs_dir(workdir),
      options=ocp.CheckpointManagerOptions(max_to_keep=None, create=True,
                                           enable_async_checkpointing=False,
                                           cleanup_tmp_directories=True))


def _pack_opt_state(opt_state) -> dict:
  return {f"{i:05d}": leaf for i, leaf in enumerate(jax.tree.leaves(opt_state))}


def _unpack_opt_state(packed: dict, abstract_opt_state):
  treedef = jax.tree.structure(abstract_opt_state)
  return jax.tree.unflatten(treedef, [packed[k] for k in sorted(packed)])


def save_epoch(manager: ocp.CheckpointManager, number: int, state, meta: dict) -> None:
  """Saves the full train state after global epoch `number` (1-based)."""
  manager.save(number, args=ocp.args.Composite(
      params=ocp.args.StandardSave(state.params),
      batch_stats=ocp.args.StandardSave(state.batch_stats),
      opt_state=ocp.args.StandardSave(_pack_opt_state(state.opt_state)),
      meta=ocp.args.JsonSave(meta)))
  manager.wait_until_finished()


def latest_epoch(manager: ocp.CheckpointManager) -> int | None:
  return manager.latest_step()


def _abstract(tree):
  default = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(
      x.shape, x.dtype, sharding=getattr(x, "sharding", None) or default), tree)


def _fail(where, error) -> CheckpointError:
  return CheckpointError(
      f"could not read the checkpoint at {where} ({type(error).__name__}: {error}). It is "
      "damaged or was written by another run/configuration. Delete that directory to resume "
      "from the checkpoint before it, or start again in a new --workdir.")


def read_epoch_meta(manager: ocp.CheckpointManager, number: int) -> dict:
  """The JSON meta of epoch checkpoint `number`."""
  try:
    return dict(manager.restore(number, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore()))["meta"])
  except Exception as e:  # orbax raises many types for damaged files
    raise _fail(manager.directory / str(number), e) from e


def restore_epoch(manager: ocp.CheckpointManager, number: int, state):
  """Restores params, batch_stats and opt_state of epoch `number` into `state`'s structure.

  Args:
    manager: `epochs_manager(workdir)`.
    number: global epoch.
    state: a TrainState of the SAME phase (its arrays give shapes, dtypes, shardings).

  Returns:
    (state with restored arrays and step, meta dict).
  """
  try:
    out = manager.restore(number, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(_abstract(state.params)),
        batch_stats=ocp.args.StandardRestore(_abstract(state.batch_stats)),
        opt_state=ocp.args.StandardRestore(_abstract(_pack_opt_state(state.opt_state))),
        meta=ocp.args.JsonRestore()))
  except Exception as e:
    raise _fail(manager.directory / str(number), e) from e
  meta = dict(out["meta"])
  opt_state = _unpack_opt_state(out["opt_state"], state.opt_state)
  step = jax.device_put(jax.numpy.asarray(meta["step"], jax.numpy.int32),
                        state.step.sharding)
  return state.replace(params=out["params"], batch_stats=out["batch_stats"],
                       opt_state=opt_state, step=step), meta


def named_path(workdir, name: str) -> pathlib.Path:
  if name not in NAMED:
    raise ValueError(f"named checkpoints are {NAMED}, got {name!r}")
  return _files(workdir).named(name)


def save_named(workdir, name: str, params, batch_stats, meta: dict) -> pathlib.Path:
  """Writes (or replaces) the named checkpoint `name` with the model variables.

  Atomic: the checkpoint is written beside its final name and renamed into place; an old
  one is renamed aside first and deleted last. A kill at any moment leaves the old
  checkpoint, the new one, or (between the two renames) none, never a partial one.
  """
  path = named_path(workdir, name)
  tmp, old = path.with_name(path.name + ".tmp"), path.with_name(path.name + ".old")
  for leftover in (tmp, old):
    if leftover.exists():
      shutil.rmtree(leftover)
  with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
    ckptr.save(tmp, args=ocp.args.Composite(
        params=ocp.args.StandardSave(params), batch_stats=ocp.args.StandardSave(batch_stats),
        meta=ocp.args.JsonSave(meta)))
  if path.exists():
    os.replace(path, old)
  os.replace(tmp, path)
  shutil.rmtree(old, ignore_errors=True)
  return path


def phase_end(manager: ocp.CheckpointManager, phase: str) -> tuple[int, dict] | None:
  """The epoch checkpoint that the named checkpoint of `phase` must equal.

  The named checkpoint is the best epoch of the phase with early stopping and its last
  epoch otherwise; both are recorded in the meta of the phase's last epoch checkpoint.

  Args:
    manager: `epochs_manager(workdir)`.
    phase: "tl" or "ft".

  Returns:
    (global epoch, meta of the phase's last epoch checkpoint), or None when no epoch of the
    phase was saved.

  Raises:
    CheckpointError: the phase has epoch checkpoints but has not finished.
  """
  for number in sorted(manager.all_steps(), reverse=True):
    meta = read_epoch_meta(manager, number)
    if meta["phase"] != phase:
      continue
    if not meta.get("phase_done"):
      raise CheckpointError(
          f"no {phase!r} checkpoint yet: phase {phase} stopped after its epoch "
          f"{meta['epoch']} (checkpoint {manager.directory / str(number)}); resume the run "
          "with the same command to finish it")
    return meta["global_epoch"] - meta["epoch"] + meta["best"]["epoch"], meta
  return None


def _variable_items(abstract_variables) -> dict:
  if abstract_variables is None:
    return {"params": ocp.args.StandardRestore(), "batch_stats": ocp.args.StandardRestore()}
  return {k: ocp.args.StandardRestore(_abstract(abstract_variables[k]))
          for k in ("params", "batch_stats")}


def restore_named(workdir, name: str, abstract_variables=None) -> tuple[dict, dict]:
  """Reads a named checkpoint.

  Args:
    workdir: the run's directory.
    name: "pretrain", "tl" or "ft".
    abstract_variables: optional {"params", "batch_stats"} of ShapeDtypeStructs (with
      shardings) to restore into; None returns host arrays in the stored structure.

  Returns:
    ({"params": ..., "batch_stats": ...}, meta).
  """
  path = named_path(workdir, name)
  if not path.is_dir():
    raise CheckpointError(f"no {name!r} checkpoint at {path}; the run has not reached it "
                          "(train it with `python -m experiments.train --workdir ...`)")
  items = _variable_items(abstract_variables)
  try:
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
      out = ckptr.restore(path, args=ocp.args.Composite(meta=ocp.args.JsonRestore(), **items))
  except Exception as e:
    raise _fail(path, e) from e
  return {"params": out["params"], "batch_stats": out["batch_stats"]}, dict(out["meta"])


def read_named_meta(workdir, name: str) -> dict | None:
  """The JSON meta of the named checkpoint `name` (the epoch meta it was saved with), or None
  when there is no such checkpoint."""
  path = named_path(workdir, name)
  if not path.is_dir():
    return None
  try:
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
      return dict(ckptr.restore(path, args=ocp.args.Composite(
          meta=ocp.args.JsonRestore()))["meta"])
  except Exception as e:
    raise _fail(path, e) from e


def restore_epoch_variables(workdir, number: int, abstract_variables=None
                            ) -> tuple[dict, dict]:
  """Model variables (no optimiser state) and meta of epoch checkpoint `number`."""
  manager = epochs_manager(workdir)
  if number not in manager.all_steps():
    raise CheckpointError(f"no checkpoint of epoch {number} under {manager.directory}; "
                          f"saved epochs: {sorted(manager.all_steps())}")
  items = _variable_items(abstract_variables)
  try:
    out = manager.restore(number, args=ocp.args.Composite(meta=ocp.args.JsonRestore(),
                                                          **items))
  except Exception as e:
    raise _fail(manager.directory / str(number), e) from e
  return {"params": out["params"], "batch_stats": out["batch_stats"]}, dict(out["meta"])


def read_config(workdir) -> dict:
  """The run's config.json (TrainConfig fields + model_arch, num_classes, class_names)."""
  try:
    config = workdir_lib.read_config(workdir)
  except workdir_lib.WorkdirError as e:
    raise CheckpointError(str(e)) from None
  if config is None:
    raise CheckpointError(f"{workdir} is not a jaxdrift training run: no config.json there "
                          "(train one with `python -m experiments.train --workdir DIR`)")
  return config


@functools.lru_cache(maxsize=16)
def abstract_variables(model_arch: str, num_classes: int, size: int) -> dict:
  """Shapes of a model's {"params", "batch_stats"}, traced once per architecture and size
  (tracing an InceptionV3 takes a second; the drift stage loads every epoch's checkpoint).
  Do not modify the returned tree: it is shared."""
  model = models.create(model_arch, num_classes)
  return models.abstract_model(model, (1, size, size, 3))[0]


def load_checkpoint(workdir, which="ft", *, arch: str | None = None):
  """Loads a trained model for the later stages (attribution, drift, report).

  Args:
    workdir: a training run's directory.
    which: "tl", "ft", "pretrain", or an int: the global epoch (1-based, phase 1 first).
    arch: optional expected architecture (paper name or the built variant); a run of
      another architecture raises.

  Returns:
    (model, variables, config): `model = jd.models.create(config["model_arch"],
    config["num_classes"])` (full model with the 'predictions' head, logits),
    variables {"params", "batch_stats"} on the default device, and the config.json dict
    (arch, model_arch, input_size, num_classes, class_names, preset, data, seed, ...).

  Raises:
    CheckpointError: no run, no such checkpoint, another architecture, or damaged files.
  """
  config = read_config(workdir)
  if arch is not None and arch not in (config["arch"], config["model_arch"]):
    raise CheckpointError(f"{workdir} holds a run of {config['model_arch']!r} "
                          f"(paper arch {config['arch']!r}), not {arch!r}")
  model = models.create(config["model_arch"], config["num_classes"],
                        dropout_rate=config.get("dropout_rate", 0.0))
  abstract = abstract_variables(config["model_arch"], config["num_classes"],
                                 config["input_size"])
  if isinstance(which, str):
    variables, _ = restore_named(workdir, which, abstract)
  elif isinstance(which, int):
    variables, _ = restore_epoch_variables(workdir, which, abstract)
  else:
    raise ValueError(f"which must be 'tl', 'ft', 'pretrain' or an epoch number, got {which!r}")
  return model, variables, config
