"""Freezing, the two phases' steps, a hand-written reference step, no recompilation."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxdrift as jd
from jaxdrift.train import state as state_lib
from jaxdrift.train import steps

ARCH, SIZE, CLASSES, BATCH = "resnetv2_tiny", 32, 5, 4


@pytest.fixture(scope="module")
def setup():
  mesh = jd.data.default_mesh()
  variables = jd.models.pretrained(ARCH, CLASSES, weights="none", key=jax.random.key(0),
                                   input_size=SIZE)
  # Non-trivial moving statistics, so that BN-mode mistakes show.
  leaves, treedef = jax.tree.flatten(variables["batch_stats"])
  keys = jax.random.split(jax.random.key(1), len(leaves))
  variables["batch_stats"] = jax.tree.unflatten(treedef, [
      x + 0.1 * jax.random.uniform(k, x.shape) for x, k in zip(leaves, keys)])
  rng = np.random.default_rng(0)
  batch = {"image": rng.normal(size=(BATCH, SIZE, SIZE, 3)).astype(np.float32),
           "label": np.arange(BATCH, dtype=np.int32) % CLASSES,
           "mask": np.ones(BATCH, bool)}
  return mesh, variables, jd.data.to_device(batch, mesh)


def _phase(train_bn=False, dropout=0.0, dtype=jnp.float32):
  return steps.Phase(backbone=jd.models.create(ARCH, include_top=False, dtype=dtype),
                     num_classes=CLASSES, dropout_rate=dropout, train_bn=train_bn, dtype=dtype)


def _state(mesh, variables, trainable, lr=1e-2, weight_decay=0.0):
  params = variables["params"]
  frozen = state_lib.frozen_paths(params, trainable)
  tx = state_lib.make_optimizer(lr, params=params, frozen=frozen, weight_decay=weight_decay)
  return steps.replicate(state_lib.TrainState.create(
      params=params, batch_stats=variables["batch_stats"], tx=tx, frozen=frozen), mesh)


def _host(tree):
  return jax.tree.map(np.asarray, jax.device_get(tree))


def test_forward_equals_full_model_in_inference_mode(setup):
  _, variables, batch = setup
  model = jd.models.create(ARCH, CLASSES)
  expected = model.apply(variables, batch["image"], train=False)
  logits, stats = steps.forward(_phase(), variables["params"], variables["batch_stats"],
                                batch["image"])
  np.testing.assert_array_equal(np.asarray(logits), np.asarray(expected))
  assert stats is variables["batch_stats"]


def test_frozen_leaves_keep_no_optimiser_state(setup):
  mesh, variables, _ = setup
  head = variables["params"]["predictions"]
  head_size = sum(x.size for x in jax.tree.leaves(head))
  total = sum(x.size for x in jax.tree.leaves(variables["params"]))
  tl = _state(mesh, variables, ("predictions",), weight_decay=1e-2)
  ft = _state(mesh, variables, None)
  # Adam: mu and nu per trainable element, plus one step count.
  assert state_lib.opt_state_size(tl.opt_state) == 2 * head_size + 1
  assert state_lib.opt_state_size(ft.opt_state) == 2 * total + 1
  assert len(tl.frozen) == len(jax.tree.leaves(variables["params"])) - 2
  assert all(p[0] != "predictions" for p in tl.frozen)
  mask = state_lib.freeze_mask(variables["params"], tl.frozen)
  assert mask["predictions"] == {"kernel": False, "bias": False}
  assert mask["conv1_conv"]["kernel"] is True


def test_phase1_step_changes_only_the_head(setup):
  mesh, variables, batch = setup
  state = _state(mesh, variables, ("predictions",), weight_decay=1e-2)  # decay must not leak
  before = _host({"params": state.params, "batch_stats": state.batch_stats})
  step = steps.jit_train_step(_phase(dropout=0.3), mesh)
  for _ in range(2):
    state, metrics = step(state, batch, jax.random.key(3))
  after = _host({"params": state.params, "batch_stats": state.batch_stats})
  assert int(state.step) == 2 and float(metrics["count"]) == BATCH
  flat_before, flat_after = state_lib.flatten(before), state_lib.flatten(after)
  for path, value in flat_before.items():
    if path[1] == "predictions":
      assert not np.array_equal(value, flat_after[path]), path
    else:  # every backbone parameter and every batch statistic, bit for bit
      assert np.array_equal(value, flat_after[path]), path


@pytest.mark.parametrize("train_bn", [False, True])
def test_phase2_step_changes_every_parameter(setup, train_bn):
  mesh, variables, batch = setup
  state = _state(mesh, variables, None, lr=1e-3)
  before = _host({"params": state.params, "batch_stats": state.batch_stats})
  state, _ = steps.jit_train_step(_phase(train_bn=train_bn), mesh)(state, batch,
                                                                   jax.random.key(3))
  after = _host({"params": state.params, "batch_stats": state.batch_stats})
  for path, value in state_lib.flatten(before["params"]).items():
    assert not np.array_equal(value, state_lib.flatten(after["params"])[path]), path
  stats_same = [np.array_equal(v, state_lib.flatten(after["batch_stats"])[p])
                for p, v in state_lib.flatten(before["batch_stats"]).items()]
  assert not any(stats_same) if train_bn else all(stats_same)


def _reference_adam_step(params, grads, lr, count, mu, nu, b1=0.9, b2=0.999, eps=1e-8):
  mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, mu, grads)
  nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, nu, grads)
  c = count + 1
  new = jax.tree.map(lambda p, m, v: p - lr * (m / (1 - b1**c)) / (jnp.sqrt(v / (1 - b2**c))
                                                                    + eps), params, mu, nu)
  return new, mu, nu


@pytest.mark.parametrize("phase_name", ["tl", "ft"])
def test_step_matches_hand_written_reference(setup, phase_name):
  """Two steps vs jax.grad of the full Keras-style model + Adam written out by hand."""
  mesh, variables, batch = setup
  lr = 1e-3
  model = jd.models.create(ARCH, CLASSES)
  trainable = ("predictions",) if phase_name == "tl" else None
  state = _state(mesh, variables, trainable, lr=lr)
  step = steps.jit_train_step(_phase(), mesh)
  x, y = np.asarray(batch["image"]), np.asarray(batch["label"])

  def loss(params, batch_stats):
    logits = model.apply({"params": params, "batch_stats": batch_stats}, x, train=False)
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1))

  params = variables["params"]
  sub = (lambda p: {"predictions": p["predictions"]}) if trainable else (lambda p: p)
  mu = nu = jax.tree.map(jnp.zeros_like, sub(params))
  grad_fn = jax.jit(jax.grad(loss))
  for count in range(2):
    grads = sub(grad_fn(params, variables["batch_stats"]))
    new, mu, nu = _reference_adam_step(sub(params), grads, lr, count, mu, nu)
    params = {**params, **new}
    state, metrics = step(state, batch, jax.random.key(0))
  expected_loss = loss(params, variables["batch_stats"])  # after the steps
  got = _host(state.params)
  for path, value in state_lib.flatten(params).items():
    # Adam divides by sqrt(v): where a gradient is near eps, float rounding of the gradient
    # moves the update by a visible fraction of lr, hence atol = lr / 100.
    np.testing.assert_allclose(state_lib.flatten(got)[path], value, rtol=1e-5, atol=lr / 100,
                               err_msg=str(path))
  logits, _ = steps.forward(_phase(), state.params, state.batch_stats, batch["image"])
  np.testing.assert_allclose(steps.cross_entropy(logits, batch["label"], batch["mask"]),
                             expected_loss, rtol=1e-5)


def test_second_call_does_not_recompile(setup):
  mesh, variables, batch = setup
  state = _state(mesh, variables, ("predictions",))
  step = steps.jit_train_step(_phase(dropout=0.2), mesh)
  eval_fn = steps.jit_eval_step(_phase())
  for i in range(3):
    state, _ = step(state, batch, jax.random.key(0))
    eval_fn({"params": state.params, "batch_stats": state.batch_stats}, batch)
  assert step._cache_size() == 1
  assert eval_fn._cache_size() == 1


def test_dropout_uses_fold_in_of_the_step(setup):
  mesh, variables, batch = setup
  phase = _phase(dropout=0.5)
  key = jax.random.key(7)
  a = steps.forward(phase, variables["params"], variables["batch_stats"], batch["image"],
                    dropout_key=jax.random.fold_in(key, 0))[0]
  b = steps.forward(phase, variables["params"], variables["batch_stats"], batch["image"],
                    dropout_key=jax.random.fold_in(key, 1))[0]
  c = steps.forward(phase, variables["params"], variables["batch_stats"], batch["image"],
                    dropout_key=jax.random.fold_in(key, 0))[0]
  assert not np.allclose(a, b) and np.array_equal(a, c)


def test_bfloat16_compute_keeps_float32_parameters(setup):
  mesh, variables, batch = setup
  state = _state(mesh, variables, ("predictions",))
  state, metrics = steps.jit_train_step(_phase(dtype=jnp.bfloat16), mesh)(
      state, batch, jax.random.key(0))
  assert {x.dtype for x in jax.tree.leaves(state.params)} == {jnp.dtype(jnp.float32)}
  assert np.isfinite(float(metrics["loss_sum"]))


def test_unknown_trainable_module_is_an_error(setup):
  _, variables, _ = setup
  with pytest.raises(ValueError, match="not in the parameters"):
    state_lib.frozen_paths(variables["params"], ("head",))


def test_optax_masked_would_not_freeze():
  """Why partition: optax.masked passes masked-out updates through unchanged."""
  params = {"a": jnp.ones(2), "b": jnp.ones(2)}
  grads = {"a": jnp.ones(2), "b": jnp.ones(2)}
  masked = optax.masked(optax.adam(1.0), {"a": True, "b": False})
  updates, _ = masked.update(grads, masked.init(params), params)
  assert np.all(np.asarray(updates["b"]) == 1.0)  # a raw gradient, not a freeze
  tx = state_lib.make_optimizer(1.0, params=params, frozen=frozenset({("b",)}))
  updates, _ = tx.update(grads, tx.init(params), params)
  assert np.all(np.asarray(updates["b"]) == 0.0)


def test_precise_batch_stats_are_the_batches_own_statistics(setup):
  _, variables, batch = setup
  backbone = jd.models.create(ARCH, include_top=False)
  images = batch["image"]
  params, stats = variables["params"], variables["batch_stats"]
  one = steps.precise_batch_stats(backbone, params, stats, [images])
  # With one batch's statistics, inference mode computes what training mode computes on it.
  train_mode, _ = backbone.apply({"params": params, "batch_stats": stats}, images, train=True,
                                 mutable=["batch_stats"])
  inference = backbone.apply({"params": params, "batch_stats": one}, images, train=False)
  # Up to rounding: a 1-ulp change of a mean is amplified where a tiny batch variance (4
  # images, 1x1 final maps) makes x * inv and mean * inv cancel.
  np.testing.assert_allclose(np.asarray(inference), np.asarray(train_mode), atol=5e-3)
  moving = backbone.apply({"params": params, "batch_stats": stats}, images, train=False)
  assert np.abs(np.asarray(moving) - np.asarray(train_mode)).max() > 0.1
  # Over several batches: the mean of the per-batch statistics.
  halves = [images[: BATCH // 2], images[BATCH // 2:]]
  both = steps.precise_batch_stats(backbone, params, stats, halves)
  each = [steps.precise_batch_stats(backbone, params, stats, [h]) for h in halves]
  jax.tree.map(lambda b, x, y: np.testing.assert_allclose(b, (x + y) / 2, rtol=1e-5,
                                                          atol=1e-6), both, *each)
  assert jax.tree.structure(both) == jax.tree.structure(stats)
  with pytest.raises(ValueError, match="at least one batch"):
    steps.precise_batch_stats(backbone, params, stats, [])
