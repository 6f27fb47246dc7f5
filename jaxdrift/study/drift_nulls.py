"""Null baselines of the drift stage, beside the real drift (aggregates.json "nulls").

perturbation: the FT checkpoint against itself on inputs with Gaussian noise of std
  `perturbation_sigma` (explanation noise); random_head: FT maps against maps of the FT
  backbone under a randomly re-initialised head; permutation: TL and FT maps of different
  images of the same class (shuffled pairing).

The first two run through the stage's own per-batch programs (fixed shapes, on the
device); the permutation null pairs the maps already on the host, in batches of the same
fixed shape.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxdrift import metrics
from jaxdrift.study import drift_device, results


def _random_head(ft_vars, key) -> dict:
  """FT variables with the 'predictions' layer re-initialised (flax Dense defaults)."""
  kernel = ft_vars["params"]["predictions"]["kernel"]
  head = nn.Dense(kernel.shape[1]).init(key, jnp.zeros((1, kernel.shape[0])))["params"]
  return {**ft_vars, "params": {**ft_vars["params"], "predictions": head}}


def nulls(stage, table, selected, collected) -> list[dict]:
  """Null baselines per method and layer, reported beside the real drift:

  perturbation: the FT checkpoint against itself on inputs with Gaussian noise of std
    `perturbation_sigma` (explanation noise); random_head: FT maps against maps of the FT
    backbone under a randomly re-initialised head; permutation: TL and FT maps of different
    images of the same class (shuffled pairing).

  The first two run through the stage's own per-batch programs (fixed shapes, on the
  device); the permutation null pairs the maps already on the host.
  """
  config, clock = stage.config, stage.clock
  perturb_key, permute_key, head_key = jax.random.split(jax.random.key(config.seed), 3)
  with clock.part("input"):
    random_head = stage.attribution.place(_random_head(stage.ft_vars, head_key))
  images, labels = collected.null_images, collected.null_labels
  arrays = {"image": images, "label": labels, "id": np.array([""] * len(labels)),
            "index": np.arange(len(labels))}
  if stage.lesion:  # no localisation is reported for the nulls; the program takes masks
    arrays["lesion_mask"] = np.zeros((len(labels), stage.size, stage.size), bool)
  head = {key: [] for key in stage.keys}
  ft_maps = {key: [] for key in stage.keys}
  finite = []

  def on_head(host, out):
    keep = host["mask"]
    for layer in stage.layers:
      by_method, flag = out[layer]
      finite.append(flag)
      for method in stage.methods_at(layer):
        head[method, layer].append(results.subset(by_method[method]["drift"], keep))
        ft_maps[method, layer].append(by_method[method]["maps"]["tl"][keep])

  chunks = drift_device.padded_chunks(arrays, stage.batch_size)
  drift_device.run_batches(stage.device_batches(chunks),
                           drift_device.pair_dispatch(stage, stage.ft_vars, random_head),
                           on_head, clock)
  ft_maps = {k: np.concatenate(v) for k, v in ft_maps.items()}
  with clock.part("device"):
    noisy = np.asarray(metrics.nulls.perturb(images, perturb_key, config.perturbation_sigma))
  perturbation = {key: [] for key in stage.keys}
  chunk_refs = {layer: drift_device.padded_chunks(
      {m: ft_maps[m, layer] for m in stage.methods_at(layer)}, stage.batch_size)
      for layer in stage.layers}

  def dispatch_noisy(host, batch):
    out = {}
    for layer in stage.layers:
      refs = next(chunk_refs[layer])
      maps, flag = stage.attribution.single(layer, stage.ft_vars, batch)
      drift = drift_device.drift_program(stage.placement[layer], stage.mesh)
      out[layer] = ({m: {"tl": drift(refs[m], maps[m], batch["mask"])}
                     for m in stage.methods_at(layer)}, flag)
    return out

  def on_noisy(host, out):
    for layer in stage.layers:
      by_method, flag = out[layer]
      finite.append(flag)
      for method in stage.methods_at(layer):
        perturbation[method, layer].append(results.subset(by_method[method]["tl"],
                                                          host["mask"]))

  drift_device.run_batches(
      stage.device_batches(drift_device.padded_chunks({**arrays, "image": noisy},
                                                      stage.batch_size)),
      dispatch_noisy, on_noisy, clock)
  drift_device.check_finite(finite)
  out = []
  with clock.part("host"):
    for method, layer in stage.keys:
      rows = (table["method"] == method) & (table["layer"] == layer)
      keep = selected[rows]
      maps = collected.maps[method, layer]
      nulls = {
          "perturbation": results.concat(perturbation[method, layer]),
          "random_head": results.concat(head[method, layer]),
          "permutation": metrics.permutation_null(
              maps["tl"][keep], maps["ft"][keep], permute_key,
              groups=table["label"][rows][keep], batch_size=stage.batch_size,
              **stage.placement[layer]),
      }
      real = {k: table[k][rows][keep] for k in results.metric_columns(table) + ["valid"]}
      for row in metrics.null_report(real, nulls, metrics=results.metric_columns(table),
                                     seed=config.seed):
        out.append(dict(method=method, layer=layer, **row))
  return out
