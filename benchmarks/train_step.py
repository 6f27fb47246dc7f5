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
"""

import argparse
import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import common  # noqa: E402
import jaxdrift as jd  # noqa: E402
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
  args = parser.parse_args(argv)
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
