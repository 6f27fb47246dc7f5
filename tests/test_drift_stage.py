"""The drift stage's device side: per-batch programs equal the library's functions, the
host reads results one batch behind, nothing recompiles, the clock's split adds up.

The stage end to end on a smoke run (byte-identical reruns, timings.json): test_pipeline.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdrift as jd
from jaxdrift.study import drift_device
from tests.test_cam_pipeline import images, small

METHODS = ("layercam", "gradcam++")
PLACEMENT = {"resolution": (16, 16), "grid": None}


def test_clock_moves_compile_seconds_out_of_the_part_they_happened_in():
  clock = drift_device.StageClock()
  clock.seconds.update(input=2.0, device=5.0, host=1.0, write=0.5)
  clock._active = "device"
  clock._on_duration("/jax/core/compile/backend_compile_duration", 3.0)
  clock._on_duration("/jax/core/compile/jaxpr_trace_duration", 0.5)
  clock._on_duration("/jax/some/other_event", 9.0)  # not a compile
  clock._active = "host"
  clock._on_duration("/jax/core/compile/backend_compile_duration", 4.0)  # > host: clamped
  clock._active = None
  split = clock.split()
  assert split == {"compile": 3.5 + 1.0, "input": 2.0, "device": 1.5, "host": 0.0,
                   "write": 0.5, "total": 8.5}


def test_clock_parts_nest_without_double_counting():
  clock = drift_device.StageClock()
  with clock.part("host"):
    with clock.part("write"):
      pass
  assert clock.split()["total"] == pytest.approx(clock.seconds["host"]
                                                 + clock.seconds["write"], abs=1e-3)
  assert min(clock.seconds.values()) >= 0
  with pytest.raises(ValueError, match="part must be one of"):
    with clock.part("compile"):
      pass


def test_results_reach_the_host_one_batch_behind_the_device():
  clock, events = drift_device.StageClock(), []
  double = jax.jit(lambda x: 2 * x)

  def dispatch(host, batch):
    events.append(("dispatch", host))
    return {"y": double(batch)}

  def consume(host, out):
    events.append(("consume", host))
    assert isinstance(out["y"], np.ndarray)  # fetched, as numpy
    np.testing.assert_array_equal(out["y"], 2 * np.full(3, host))

  batches = ((i, jnp.full(3, i)) for i in range(3))
  assert drift_device.run_batches(batches, dispatch, consume, clock) == 3
  assert events == [("dispatch", 0), ("dispatch", 1), ("consume", 0), ("dispatch", 2),
                    ("consume", 1), ("consume", 2)]


def test_padded_chunks_have_the_fixed_shape_and_mask_the_padding():
  arrays = {"x": np.arange(5, dtype=np.float32), "id": np.array(list("abcde"))}
  chunks = list(drift_device.padded_chunks(arrays, 2))
  assert [c["x"].tolist() for c in chunks] == [[0, 1], [2, 3], [4, 0]]
  assert [c["mask"].tolist() for c in chunks] == [[True, True], [True, True], [True, False]]
  assert chunks[-1]["id"].tolist() == ["e", ""]


def test_drift_program_compiles_once_for_host_and_device_inputs():
  step = drift_device.drift_program(PLACEMENT, jd.metrics.data_mesh())
  rng = np.random.default_rng(0)
  a, b = (rng.uniform(size=(4, 4, 4)).astype(np.float32) for _ in range(2))
  mask = np.array([True, True, True, False])
  on_device = jax.jit(lambda x: x + 0.0)  # a program's output (single-device sharding)
  outs = [step(a, b, mask), step(on_device(a), on_device(b), jnp.asarray(mask)),
          step(a, on_device(b), mask)]
  assert step.jitted._cache_size() == 1
  want = jd.metrics.drift(a[:3], b[:3], **PLACEMENT)
  for out in outs:
    np.testing.assert_allclose(out["iou"][:3], want["iou"], rtol=1e-6)
    assert np.isnan(out["iou"][3]) and not out["valid"][3]


def test_pair_programs_equal_compute_pair_drift_and_localize():
  """One batch through the stage's programs == the public functions on the same batch;
  a second batch with other values compiles nothing new."""
  model, tl = small(0)
  _, ft = small(1)
  mesh = jd.metrics.data_mesh()
  attribution = drift_device.Attribution(model, ["relu2"], METHODS, 4, mesh)
  pair = drift_device.pair_program(METHODS, drift_device.hashable(PLACEMENT), 2.0, True)
  step = drift_device.drift_program(PLACEMENT, mesh)
  x, labels = np.asarray(images(4, seed=7)), np.array([0, 1, 2, 3])
  lesion = np.zeros((4, 16, 16), bool)
  lesion[:, 2:7, 9:14] = True
  host = {"image": x, "label": labels, "mask": np.array([True, True, True, False]),
          "lesion_mask": lesion, "index": np.arange(4)}
  clock = drift_device.StageClock()
  (_, batch), = drift_device.device_batches([host], mesh, 4, clock)
  maps, finite = attribution.pair("relu2", tl, ft, batch)
  cols = pair(maps, batch["lesion_mask"])
  out = jax.device_get({m: {**c, "drift": step(c["maps"]["tl"], c["maps"]["ft"],
                                                batch["mask"])} for m, c in cols.items()})
  assert bool(finite)
  want = jd.cam.compute_pair(model, tl, ft, x, labels, methods=METHODS, layer="relu2")
  for method in METHODS:
    tl_maps, ft_maps = want[method].maps
    np.testing.assert_allclose(out[method]["maps"]["tl"], tl_maps, rtol=1e-6, atol=1e-8)
    np.testing.assert_array_equal(out[method]["extra"]["ft_pred"],
                                  np.argmax(want[method].logits[1], -1))
    drift = jd.metrics.drift(tl_maps, ft_maps, **PLACEMENT)
    for k in ("iou", "displacement", "spearman", "valid"):
      np.testing.assert_allclose(out[method]["drift"][k][:3], drift[k][:3], rtol=1e-5)
    assert np.isnan(out[method]["drift"]["iou"][3])  # padding
    loc = jd.metrics.localize(ft_maps, lesion, tolerance=2.0, **PLACEMENT)
    for k in ("pointing_game", "energy_inside", "mask_iou"):
      np.testing.assert_allclose(out[method]["localization"][f"ft_{k}"], loc[k], rtol=1e-5)
  program = attribution.program("relu2", True)
  assert program is jd.cam.program(model, ("relu2",), jd.cam.checks.requests(METHODS, {}),
                                   True, "unroll")
  sizes = (program._cache_size(), pair._cache_size(), step.jitted._cache_size())
  (_, batch), = drift_device.device_batches([{**host, "image": -x}], mesh, 4, clock)
  maps, _ = attribution.pair("relu2", tl, ft, batch)
  cols = pair(maps, batch["lesion_mask"])
  step(cols["layercam"]["maps"]["tl"], cols["layercam"]["maps"]["ft"], batch["mask"])
  assert (program._cache_size(), pair._cache_size(), step.jitted._cache_size()) == sizes
  assert sizes == (1, 1, 1)


def test_permutation_null_in_fixed_batches_equals_the_whole_set():
  rng = np.random.default_rng(3)
  a, b = (rng.uniform(size=(3, 4, 4)).astype(np.float32) for _ in range(2))
  key = jax.random.key(5)
  whole = jd.metrics.permutation_null(a, b, key, **PLACEMENT)
  batched = jd.metrics.permutation_null(a, b, key, batch_size=4, **PLACEMENT)
  np.testing.assert_array_equal(batched["partner"], whole["partner"])
  for k in ("iou", "displacement", "pearson", "valid"):
    np.testing.assert_allclose(batched[k], whole[k], rtol=1e-6, err_msg=k)
