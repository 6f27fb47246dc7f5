"""Is training as cheap as it should be? Step time / forward time, and images/s vs Keras.

For each architecture, in this process on this machine, at batch 8 and the default size,
every step timed in interleaved rounds (medians), so that all of them see the same load:

  forward   jitted inference forward pass (the baseline)
  phase 1   jaxdrift train step with the backbone frozen (BN inference, no backward
            through the backbone): target <= 1.3x forward
  phase 2   jaxdrift train step on all layers (BN inference, as the Keras recipe)
  keras 1/2 Keras 3 (JAX backend) `train_on_batch` of the same model and phases: base model
            called with training=False, one model with `base.trainable = False` and one
            with True, Adam; target: jaxdrift images/s >= Keras in both phases

    python -m benchmarks.train_step [--archs resnet50v2,inceptionv3] [--batch-size 8]
                                    [--steps 5] [--no-keras] [--reduced] [--dtype bfloat16]

With --dtype bfloat16 both sides compute in bfloat16 with float32 parameters (jaxdrift's
dtype argument; Keras's "mixed_bfloat16" policy): for accelerators.

--loop measures the training input path instead: per architecture and phase, the images/s
of the train loop's epoch (uint8 cache -> gather, augmentation and preprocessing inside the
jitted step, metrics summed on the device and read once at the end; `train_images_per_s`)
over the images/s of the bare train step on a ready, device-resident batch
(`bare_step_images_per_s`), interleaved in the same process. Target >= 0.9 on a CPU.

    python -m benchmarks.train_step --loop --reduced [--batch-size 16] [--steps 8]
        [--rounds 3] [--no-augment]

The last line is JSON: {"device", "batch_size", "archs": {arch: {"tl": r, "ft": r}}, ...}.
"""

import argparse
import functools
import json
import os
import types

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import common  # noqa: E402
import jaxdrift as jd  # noqa: E402
from jaxdrift.data import cache  # noqa: E402
from jaxdrift.train import state as state_lib  # noqa: E402
from jaxdrift.train import steps  # noqa: E402

NUM_CLASSES = 5


def jaxdrift_steps(arch: str, batch_size: int, size: int, dtype=jnp.float32) -> dict:
  """Zero-argument callables: the forward pass and one train step of each phase."""
  mesh = jd.data.default_mesh()
  rng = np.random.default_rng(0)
  batch = jd.data.to_device({
      "image": rng.normal(size=(batch_size, size, size, 3)).astype(np.float32),
      "label": (np.arange(batch_size) % NUM_CLASSES).astype(np.int32),
      "mask": np.ones(batch_size, bool)}, mesh)
  variables = jd.models.pretrained(arch, NUM_CLASSES, weights="none", key=jax.random.key(0),
                                   input_size=size)
  model = jd.models.create(arch, NUM_CLASSES, dtype=dtype)
  forward = jax.jit(lambda v, x: model.apply(v, x, train=False))
  out = {"forward": lambda: forward(variables, batch["image"])}
  phase = steps.Phase(backbone=jd.models.create(arch, include_top=False, dtype=dtype),
                      num_classes=NUM_CLASSES, dtype=dtype)
  key = jax.random.key(0)
  for name, trainable in (("phase1", ("predictions",)), ("phase2", None)):
    params = variables["params"]
    frozen = state_lib.frozen_paths(params, trainable)
    tx = state_lib.make_optimizer(1e-4, params=params, frozen=frozen)
    holder = [steps.replicate(state_lib.TrainState.create(
        params=params, batch_stats=variables["batch_stats"], tx=tx, frozen=frozen), mesh)]
    step = steps.jit_train_step(phase, mesh)

    def run(holder=holder, step=step):
      holder[0], metrics = step(holder[0], batch, key)
      return metrics
    out[name] = run
  return out


class ArraySource:
  """An in-memory random-access source (the fields `jaxdrift.data.cache` reads)."""

  def __init__(self, images, labels):
    self.images, self.labels = images, labels
    self.dataset_info = types.SimpleNamespace(
        features={"image": types.SimpleNamespace(shape=images.shape[1:])})

  def __len__(self):
    return len(self.images)

  def __getitem__(self, i):
    return {"image": self.images[i], "label": self.labels[i]}


def phantom_source(num: int, size: int, seed: int = 0) -> ArraySource:
  """`num` phantoms drawn at `size` px, uint8 [num, size, size, 1]."""
  raw = jd.data.generate_phantoms(num, image_size=size, seed=seed)
  return ArraySource(raw["image"][..., None], raw["label"].astype(np.int32))


def loop_and_step(arch: str, batch_size: int, size: int, steps_per_epoch: int,
                  augment: bool = True, placement: str = "auto",
                  dtype=jnp.float32) -> dict:
  """Zero-argument callables per phase: one training epoch as the loop runs it, and the
  same number of bare train steps on a ready batch (each ends by waiting for the device).

  Returns:
    {"tl": {"train": fn, "step": fn}, "ft": {...}} and "placement" (the cache's).
  """
  mesh = jd.data.default_mesh()
  source = phantom_source(steps_per_epoch * batch_size, size)
  images = cache.build(source, image_size=size, mesh=mesh, placement=placement)
  aug = jd.data.Augment() if augment else jd.data.NO_AUGMENT
  prepare = cache.make_prepare(functools.partial(jd.models.preprocess, arch), aug,
                               cache.augment_key(0), mesh)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  rng = np.random.default_rng(0)
  ready = jd.data.to_device({
      "image": jd.models.preprocess(arch, rng.integers(
          0, 256, (batch_size, size, size, 3)).astype(np.float32)),
      "label": (np.arange(batch_size) % NUM_CLASSES).astype(np.int32),
      "mask": np.ones(batch_size, bool)}, mesh)
  variables = jd.models.pretrained(arch, NUM_CLASSES, weights="none", key=jax.random.key(0),
                                   input_size=size)
  phase = steps.Phase(backbone=jd.models.create(arch, include_top=False, dtype=dtype),
                      num_classes=NUM_CLASSES, dropout_rate=0.2, dtype=dtype)
  key = jax.random.key(0)
  out = {"placement": images.placement}
  for name, trainable in (("tl", ("predictions",)), ("ft", None)):
    params = variables["params"]
    frozen = state_lib.frozen_paths(params, trainable)
    tx = state_lib.make_optimizer(1e-4, params=params, frozen=frozen)
    create = lambda: state_lib.TrainState.create(  # noqa: E731
        params=params, batch_stats=variables["batch_stats"], tx=tx, frozen=frozen)
    holders = {"train": [steps.replicate(create(), mesh)],
               "step": [steps.replicate(create(), mesh)]}
    train_fn = steps.jit_input_train_step(phase, mesh, prepare)
    step_fn = steps.jit_train_step(phase, mesh)
    epochs = iter(range(1 << 30))

    def train_epoch(holder=holders["train"], train_fn=train_fn):
      epoch = next(epochs)
      epoch_index = jax.device_put(np.int32(epoch), replicated)
      totals = steps.zero_totals(mesh)
      state = holder[0]
      with jax.transfer_guard_device_to_host("disallow"):
        for inputs in cache.epoch_inputs(images, batch_size=batch_size, seed=0, epoch=epoch,
                                         mesh=mesh):
          state, totals = train_fn(state, totals, inputs, images.device_data, epoch_index,
                                   key)
      holder[0] = state
      return jax.device_get(totals)  # the loop's one read per epoch

    def bare_steps(holder=holders["step"], step_fn=step_fn):
      state = holder[0]
      for _ in range(steps_per_epoch):
        state, metrics = step_fn(state, ready, key)
      holder[0] = state
      return metrics

    out[name] = {"train": train_epoch, "step": bare_steps}
  return out


def loop_main(args) -> None:
  """--loop: training images/s over bare train-step images/s, per arch and phase."""
  b, n = args.batch_size, args.steps
  print(f"devices: {jax.devices()}, batch {b}, {n} steps per epoch, augmentation "
        f"{'off' if args.no_augment else 'on'}, {args.dtype}")
  print(f"{'arch':<18}{'size':>5}{'input':>8}{'phase':>6}{'train img/s':>13}"
        f"{'step img/s':>12}{'ratio':>7}", flush=True)
  result = {}
  for arch in args.archs.split(","):
    name = jd.models.TINY[arch] if args.reduced else arch
    size = args.image_size or jd.models.default_input_size(name)
    fns = loop_and_step(name, b, size, n, augment=not args.no_augment,
                        dtype=jnp.dtype(args.dtype))
    result[name] = {}
    for phase in ("tl", "ft"):
      for fn in fns[phase].values():  # compile and warm up
        jax.block_until_ready(fn())
      t = common.interleaved(fns[phase], rounds=args.rounds)
      train, step = n * b / t["train"], n * b / t["step"]
      result[name][phase] = round(train / step, 3)
      result[name][f"{phase}_images_per_s"] = {"train": round(train, 1),
                                               "bare_step": round(step, 1)}
      print(f"{name:<18}{size:>5}{fns['placement']:>8}{phase:>6}{train:>13.1f}{step:>12.1f}"
            f"{train / step:>7.2f}", flush=True)
  print("\nratio: training images/s (cached input, on-device augmentation, no host sync) "
        "over the bare train step on a ready batch (target >= 0.9 on a CPU)")
  print(json.dumps({"device": str(jax.devices()[0].device_kind), "batch_size": b,
                    "steps_per_epoch": n, "augment": not args.no_augment,
                    "archs": result}))


_KERAS = {"densenet201": "DenseNet201", "resnet50v2": "ResNet50V2",
          "inceptionv3": "InceptionV3"}


def keras_steps(arch: str, batch_size: int, size: int, dtype: str) -> dict:
  """`train_on_batch` of two compiled Keras models: backbone frozen, and all layers."""
  import keras

  keras.backend.clear_session()
  keras.mixed_precision.set_global_policy("mixed_bfloat16" if dtype == "bfloat16" else "float32")
  rng = np.random.default_rng(0)
  x = rng.normal(size=(batch_size, size, size, 3)).astype(np.float32)
  y = (np.arange(batch_size) % NUM_CLASSES).astype(np.int32)
  out = {}
  for name, trainable in (("keras phase1", False), ("keras phase2", True)):
    base = getattr(keras.applications, _KERAS[arch])(weights=None, include_top=False,
                                                     input_shape=(size, size, 3))
    base.trainable = trainable
    inputs = keras.Input((size, size, 3))
    features = base(inputs, training=False)  # BN in inference mode in both phases (recipe)
    features = keras.layers.GlobalAveragePooling2D()(features)
    model = keras.Model(inputs, keras.layers.Dense(NUM_CLASSES, dtype="float32")(features))
    model.compile(optimizer=keras.optimizers.Adam(1e-4),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    out[name] = lambda model=model: model.train_on_batch(x, y)
  return out


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--archs", default=",".join(jd.models.ARCHS),
                      help="comma-separated architectures (default: all three)")
  parser.add_argument("--batch-size", type=int, default=8, help="batch size (default 8)")
  parser.add_argument("--steps", type=int, default=5,
                      help="timed rounds after warm-up (each round runs every step once)")
  parser.add_argument("--no-keras", action="store_true", help="skip the Keras baseline")
  parser.add_argument("--reduced", action="store_true",
                      help="time the reduced variants (no Keras baseline for those)")
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                      help="compute dtype of both sides (parameters stay float32)")
  parser.add_argument("--loop", action="store_true",
                      help="training loop images/s over bare train-step images/s instead")
  parser.add_argument("--rounds", type=int, default=3, help="--loop: timed epochs")
  parser.add_argument("--image-size", type=int, default=None,
                      help="--loop: input size (default: the model's)")
  parser.add_argument("--no-augment", action="store_true",
                      help="--loop: train without augmentation (as the demo preset)")
  args = parser.parse_args(argv)
  if args.loop:
    loop_main(args)
    return
  print(f"devices: {jax.devices()}, batch {args.batch_size}, {args.dtype}")
  header = (f"{'arch':<18}{'size':>5}{'fwd ms':>9}{'p1/fwd':>8}{'p2/fwd':>8}"
            f"{'p1 img/s':>10}{'keras':>8}{'ratio':>7}{'p2 img/s':>10}{'keras':>8}{'ratio':>7}")
  print(header, flush=True)
  for arch in args.archs.split(","):
    name = jd.models.TINY[arch] if args.reduced else arch
    size = jd.models.default_input_size(name)
    candidates = jaxdrift_steps(name, args.batch_size, size, jnp.dtype(args.dtype))
    if not (args.no_keras or args.reduced):
      candidates.update(keras_steps(arch, args.batch_size, size, args.dtype))
    for fn in candidates.values():  # compile
      jax.block_until_ready(fn())
    t = common.interleaved(candidates, rounds=args.steps)
    k = {p: t[f"keras {p}"] for p in ("phase1", "phase2") if f"keras {p}" in t}
    b = args.batch_size
    cells = [f"{name:<18}{size:>5}{1000 * t['forward']:>9.1f}"
             f"{t['phase1'] / t['forward']:>8.2f}{t['phase2'] / t['forward']:>8.2f}"]
    for phase in ("phase1", "phase2"):
      mine = b / t[phase]
      if phase in k:
        theirs = b / k[phase]
        cells.append(f"{mine:>10.1f}{theirs:>8.1f}{mine / theirs:>7.2f}")
      else:
        cells.append(f"{mine:>10.1f}{'-':>8}{'-':>7}")
    print("".join(cells), flush=True)
  print("\np1/fwd, p2/fwd: train step time over forward time (target p1 <= 1.3); ratio: "
        "jaxdrift images/s over Keras train_on_batch images/s (target >= 1)")


if __name__ == "__main__":
  main()
