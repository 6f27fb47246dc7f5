"""Drift over a whole test set: fixed-shape padded batches with a mask, sharded over every
device along the "data" axis of a `jax.sharding.Mesh`.

Each device computes the metrics of its own shard (`jax.shard_map`): the sorts run on
local data and nothing is gathered; results come back per sample and are
accumulated on the host. Every batch has the same shape, so nothing recompiles; the last,
ragged batch is padded and its padding dropped by the mask.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from jaxdrift import distributed
from jaxdrift.metrics.drift import as_map_batch, drift_batch, make_params

DATA_AXIS = distributed.DATA_AXIS


data_mesh = distributed.data_mesh


def _masked_metrics(maps_a, maps_b, mask, params):
  """Per-sample metrics of a local batch [b, h, w]; padded entries are NaN / invalid."""
  out = drift_batch(maps_a, maps_b, params)
  return {k: (v & mask) if v.dtype == jnp.bool_ else jnp.where(mask, v, jnp.nan)
          for k, v in out.items()}


@functools.lru_cache(maxsize=16)
def drift_step(params, mesh):
  """The jitted, sharded step `(maps_a, maps_b, mask) -> dict of [B] arrays`.

  Args:
    params: a `DriftParams` (hashable; one compiled step per params, mesh and shape).
    mesh: a `Mesh` with a "data" axis; batches are split along it.

  Returns:
    A function of maps_a, maps_b [B, h, w] float32 and mask [B] bool (numpy or jax), B
    divisible by the size of the "data" axis, returning the `drift` dict with padded
    entries NaN/False. It places its inputs on the mesh and calls one jitted program
    (its `.jitted`), so that host and device inputs share one compile per shape.
  """
  spec = P(DATA_AXIS)
  # check_vma=False: sort='numpy' is a pure_callback, whose outputs carry no varying-axis
  # annotation; the computation is per-sample, so nothing mixes across shards.
  sharded = jax.shard_map(functools.partial(_masked_metrics, params=params), mesh=mesh,
                          in_specs=(spec, spec, spec), out_specs=spec, check_vma=False)
  sharding = distributed.batch_sharding(mesh)
  step = jax.jit(sharded, in_shardings=(sharding,) * 3, out_shardings=sharding)

  def placed(maps_a, maps_b, mask):
    # Host arrays, other programs' outputs (single-device) and arrays already on the mesh
    # are distinct cache entries for jit even where they are equivalent: placing every
    # input first keeps it at one compile per shape.
    return step(*jax.device_put((maps_a, maps_b, mask), sharding))

  placed.jitted = step
  return placed


def pad_batch(maps_a, maps_b, batch_size, mask=None):
  """Pads a batch [b, h, w] with zero maps to [batch_size, h, w]; returns (a, b, mask)."""
  maps_a = np.asarray(maps_a, np.float32)
  maps_b = np.asarray(maps_b, np.float32)
  n = maps_a.shape[0]
  if maps_b.shape != maps_a.shape:
    raise ValueError(f"maps_a and maps_b must have the same shape, got {maps_a.shape} and "
                     f"{maps_b.shape}")
  if n > batch_size:
    raise ValueError(f"a batch of {n} pairs does not fit batch_size={batch_size}")
  mask = np.ones((n,), bool) if mask is None else np.asarray(mask, bool)
  pad = [(0, batch_size - n)] + [(0, 0)] * (maps_a.ndim - 1)
  return np.pad(maps_a, pad), np.pad(maps_b, pad), np.pad(mask, (0, batch_size - n))


def drift_stream(batches, batch_size, mesh=None, resolution=None, **params):
  """Drift metrics of every pair of a test set, batch by batch, sharded over `mesh`.

  Args:
    batches: iterable of (maps_a, maps_b) or (maps_a, maps_b, mask), maps [b, h, w] with
      b <= batch_size (numpy or jax; a shorter batch is padded). mask [b] bool marks real
      samples (e.g. padding of an evaluation loader); unmasked samples are not returned.
    batch_size: the fixed batch shape; a multiple of the mesh's "data" size.
    mesh: a `Mesh` with a "data" axis; default: all devices (`data_mesh()`).
    resolution, **params: as for `jd.metrics.drift`.

  Returns:
    dict of [n] numpy arrays over the n masked-in samples in input order: the metrics of
    `drift`, "valid", "valid_a", "valid_b".
  """
  params = make_params(resolution, **params)
  mesh = data_mesh() if mesh is None else mesh
  shards = mesh.shape[DATA_AXIS]
  if batch_size % shards:
    raise ValueError(f"batch_size={batch_size} must be a multiple of the {shards} devices "
                     f"on the mesh's '{DATA_AXIS}' axis")
  step = drift_step(params, mesh)
  parts = []
  for batch in batches:
    maps_a, maps_b, *rest = batch
    maps_a, maps_b, mask = pad_batch(as_map_batch(maps_a, "maps_a"),
                                     as_map_batch(maps_b, "maps_b"), batch_size,
                                     rest[0] if rest else None)
    out = step(maps_a, maps_b, mask)
    parts.append((mask, out))
  if not parts:
    raise ValueError("drift_stream got no batches")
  return {k: np.concatenate([np.asarray(out[k])[mask] for mask, out in parts])
          for k in parts[0][1]}
