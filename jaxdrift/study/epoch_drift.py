"""Drift across training: the maps of every per-epoch checkpoint against the TL checkpoint
and against the previous epoch (the drift stage's epochs.csv, and its summary).

Each epoch's checkpoint is restored in a background thread while the previous one is being
explained, and compared with the TL and FT checkpoints there (an epoch with their weights
reuses their maps). An epoch checkpoint saved together with the TL or FT checkpoint (the
same meta: phase, epoch, step, validation scores) is not restored at all. Per batch the
device computes the epoch's maps and their drift against both references
(`drift_device.drift_program`); the host keeps the native maps, the next epoch's
"previous".
"""

import concurrent.futures

import jax
import jax.numpy as jnp
import numpy as np

from jaxdrift import train
from jaxdrift.study import drift_device, results

REFERENCES = ("tl", "previous")


@jax.jit
def _same_variables_on_device(a, b):
  return jnp.all(jnp.stack([jnp.array_equal(x, y)
                            for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))]))


def _same_variables(a, b) -> bool:
  return (jax.tree.structure(a) == jax.tree.structure(b)
          and all(x.shape == y.shape for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
          and bool(_same_variables_on_device(a, b)))


def _restore(stage, manager, epoch, known, named_metas):
  """(variables placed on the mesh or None, index of the known checkpoint with the same
  weights or None); runs in the prefetch thread. `named_metas`: the metas of the known
  checkpoints (TL, FT); an epoch saved with one of them is that checkpoint."""
  meta = train.checkpoint.read_epoch_meta(manager, int(epoch))
  for i, named in enumerate(named_metas):
    if named is not None and meta == named:
      return None, i
  _, variables, _ = train.load_checkpoint(stage.workdir, int(epoch))
  same = next((i for i, v in enumerate(known) if _same_variables(v, variables)), None)
  return stage.attribution.place(variables), same


def table(stage, samples: dict, maps: dict) -> dict:
  """Drift of every per-epoch checkpoint against TL and against the previous epoch.

  Args:
    stage: the drift stage (`drift_stage.open_stage`).
    samples: the samples table (its first method and layer give the split's order).
    maps: {(method, layer): {"tl": [N, h, w], "ft": [N, h, w]}}, the main pass's maps in
      the split's order. The TL and FT checkpoints are per-epoch checkpoints too: an epoch
      with the same weights reuses their maps instead of recomputing them.

  Returns:
    the epochs table: every drift metric per (epoch, reference, method, layer, image).
  """
  clock = stage.clock
  manager = train.checkpoint.epochs_manager(stage.workdir)
  epochs = sorted(int(e) for e in manager.all_steps())
  method, layer = stage.keys[0]
  first = (samples["method"] == method) & (samples["layer"] == layer)
  index, labels = samples["image"][first], samples["label"][first]  # the main pass's order
  tl_maps = {k: v["tl"] for k, v in maps.items()}
  known = [tl_maps, {k: v["ft"] for k, v in maps.items()}]
  columns, previous = [], None
  named_metas = [train.checkpoint.read_named_meta(stage.workdir, n) for n in ("tl", "ft")]
  with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="jaxdrift-restore") as pool:
    restore = lambda e: pool.submit(_restore, stage, manager, e,
                                    (stage.tl_vars, stage.ft_vars), named_metas)
    ahead = restore(epochs[0]) if epochs else None
    for i, epoch in enumerate(epochs):
      with clock.part("input"):
        variables, same = ahead.result()
      ahead = restore(epochs[i + 1]) if i + 1 < len(epochs) else None
      # First epoch: "previous" is computed against TL and dropped (one program shape).
      refs = {"tl": tl_maps, "previous": tl_maps if previous is None else previous}
      if same is not None:
        epoch_maps, drift = _drift_of_known(stage, known[same], refs)
      else:
        epoch_maps, drift = _maps_and_drift(stage, variables, refs, index)
      del variables
      for reference in REFERENCES[:1 if previous is None else 2]:
        for key in stage.keys:
          row = dict(drift[reference][key])
          n = len(labels)
          method, layer = key
          row.update(image=index, label=labels, epoch=np.full(n, epoch),
                     reference=np.full(n, reference, object),
                     method=np.full(n, method, object), layer=np.full(n, layer, object))
          columns.append(row)
      previous = epoch_maps
  with clock.part("host"):
    return results.concat(columns)


def _against(stage, layer, maps, references, mask):
  """{method: {"map": maps, reference: drift dict}}: the drift of each reference's maps
  (a) against `maps` (b), all [B, h, w], dispatched to the stage's one drift program."""
  drift = drift_device.drift_program(stage.placement[layer], stage.mesh)
  return {m: {"map": maps[m], **{name: drift(ref[m], maps[m], mask)
                                 for name, ref in references.items()}}
          for m in stage.methods_at(layer)}


def _gather(stage, parts):
  """Per-batch {layer: {method: {...}}} host results -> (maps {(m, l): [N, h, w]},
  {reference: {(m, l): drift table}})."""
  maps = {key: np.concatenate([p[key[1]][key[0]]["map"] for p in parts]) for key in stage.keys}
  drift = {r: {key: results.concat([p[key[1]][key[0]][r] for p in parts])
               for key in stage.keys} for r in REFERENCES}
  return maps, drift


def _rows(refs, key, rows, keep):
  """The references' maps of `rows` at the batch's real positions (`keep` [B] bool),
  zeros at its padding."""
  method, layer = key
  out = {}
  for name, maps in refs.items():
    chunk = np.zeros((len(keep),) + maps[key].shape[1:], np.float32)
    chunk[keep] = maps[key][rows]
    out.setdefault(name, {})[method] = chunk
  return out


def _refs_of_batch(stage, refs, rows, keep):
  """{layer: {reference: {method: [B, h, w]}}} for the split's rows of one batch."""
  out = {}
  for layer in stage.layers:
    merged = {}
    for method in stage.methods_at(layer):
      for name, part in _rows(refs, (method, layer), rows, keep).items():
        merged.setdefault(name, {}).update(part)
    out[layer] = merged
  return out


def _maps_and_drift(stage, variables, refs, index):
  """One epoch's maps over the split and their drift against `refs`, on the device."""
  parts, seen, finite = [], [], []
  offset = [0]

  def dispatch(host, batch):
    keep = np.asarray(host["mask"])
    rows = np.arange(offset[0], offset[0] + keep.sum())
    offset[0] += keep.sum()
    by_layer = _refs_of_batch(stage, refs, rows, keep)
    out = {}
    for layer in stage.layers:
      maps, flag = stage.attribution.single(layer, variables, batch)
      out[layer] = (_against(stage, layer, maps, by_layer[layer], batch["mask"]), flag)
    return out

  def consume(host, out):
    keep = np.asarray(host["mask"])
    seen.append(np.asarray(host["index"])[keep])
    part = {}
    for layer in stage.layers:
      by_method, flag = out[layer]
      finite.append(flag)
      part[layer] = {m: {k: (results.subset(v, keep) if isinstance(v, dict) else v[keep])
                         for k, v in cols.items()} for m, cols in by_method.items()}
    parts.append(part)

  drift_device.run_batches(stage.device_batches(), dispatch, consume, stage.clock)
  drift_device.check_finite(finite)
  if not np.array_equal(np.concatenate(seen), index):
    raise RuntimeError("the split's order changed between passes; rerun the drift stage")
  return _gather(stage, parts)


def _drift_of_known(stage, maps, refs):
  """Drift of maps already computed ({(m, l): [N, h, w]}) against `refs`, on the device,
  in batches of the stage's shape (the same program as `_maps_and_drift`)."""
  n = len(next(iter(maps.values())))
  parts = []
  for start in range(0, n, stage.batch_size):
    rows = np.arange(start, min(n, start + stage.batch_size))
    keep = np.arange(stage.batch_size) < len(rows)
    mine = _refs_of_batch(stage, {"maps": maps}, rows, keep)
    by_layer = _refs_of_batch(stage, refs, rows, keep)
    with stage.clock.part("device"):
      out = jax.device_get({layer: _against(stage, layer, mine[layer]["maps"],
                                            by_layer[layer], keep)
                            for layer in stage.layers})
    parts.append({layer: {m: {k: (results.subset(v, keep) if isinstance(v, dict) else v[keep])
                              for k, v in cols.items()} for m, cols in out[layer].items()}
                  for layer in stage.layers})
  return _gather(stage, parts)


def summarize(epoch_table, table, selected) -> list[dict]:
  """Mean of every metric per method, layer, epoch and reference, over the images that the
  final selection (`selected`, rows of `table`) keeps (the same images at every epoch)."""
  chosen = set(table["image"][selected].tolist())
  keep = np.isin(epoch_table["image"], list(chosen))
  out = []
  keys = sorted(set(zip(epoch_table["method"], epoch_table["layer"], epoch_table["epoch"],
                        epoch_table["reference"])))
  for method, layer, epoch, reference in keys:
    rows = keep & (epoch_table["method"] == method) & (epoch_table["layer"] == layer) & (
        epoch_table["epoch"] == epoch) & (epoch_table["reference"] == reference)
    row = dict(method=method, layer=layer, epoch=int(epoch), reference=reference,
               n=int(rows.sum()))
    for metric in results.metric_columns(epoch_table):
      values = epoch_table[metric][rows]
      row[metric] = float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
    out.append(row)
  return out
