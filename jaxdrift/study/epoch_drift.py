"""Drift across training: the maps of every per-epoch checkpoint against the TL checkpoint
and against the previous epoch (the drift stage's epochs.csv, and its summary)."""

import jax
import numpy as np

from jaxdrift import cam, metrics, train
from jaxdrift.study import results


def _same_variables(a, b) -> bool:
  return jax.tree.structure(a) == jax.tree.structure(b) and all(
      np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def table(workdir, model, samples, layers, config, placement, known, split_batches) -> dict:
  """Drift of every per-epoch checkpoint against TL and against the previous epoch.

  `split_batches()` yields the split's batches in the main pass's order. `known` holds the
  (variables, maps) of the TL and the FT checkpoint, in that order: they are per-epoch
  checkpoints too, and an epoch with the same weights reuses their maps.
  """
  epochs = train.checkpoint.epochs_manager(workdir).all_steps()
  known = [(v, {k: np.concatenate(parts) for k, parts in maps.items()}) for v, maps in known]
  tl_maps = known[0][1]  # the reference of every epoch
  first = (samples["method"] == config.methods[0]) & (samples["layer"] == layers[0])
  index, labels = samples["image"][first], samples["label"][first]  # the main pass's order
  columns, previous = [], None
  for epoch in sorted(epochs):
    _, variables, _ = train.load_checkpoint(workdir, int(epoch))
    maps = next((m for v, m in known if _same_variables(v, variables)), None)
    if maps is None:
      maps = _maps_of(model, variables, split_batches(), config, layers, index)
    references = {"tl": tl_maps}
    if previous is not None:
      references["previous"] = previous
    for reference, ref_maps in references.items():
      for (method, layer), m in maps.items():
        row = {k: np.asarray(v) for k, v in metrics.drift(
            ref_maps[method, layer], m, **placement[layer]).items()}
        n = len(labels)
        row.update(image=index, label=labels, epoch=np.full(n, int(epoch)),
                   reference=np.full(n, reference, object),
                   method=np.full(n, method, object), layer=np.full(n, layer, object))
        columns.append(row)
    previous = maps
  return results.concat(columns)


def _maps_of(model, variables, batches, config, layers, index) -> dict:
  """{(method, layer): maps [N, h, w]} of one checkpoint over the split, in `index` order."""
  maps = {(m, l): [] for m in config.methods for l in layers}
  seen = []
  for batch in batches:
    keep = np.asarray(batch["mask"])
    seen.append(np.asarray(batch["index"])[keep])
    for layer in layers:
      many = cam.compute_many(model, variables, batch["image"], batch["label"],
                              methods=config.methods, layer=layer)
      for method, res in many.items():
        maps[method, layer].append(np.asarray(res.maps)[keep])
  if not np.array_equal(np.concatenate(seen), index):
    raise RuntimeError("the split's order changed between passes; rerun the drift stage")
  return {k: np.concatenate(v) for k, v in maps.items()}


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
