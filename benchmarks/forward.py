"""Forward throughput of the Flax ports vs Keras 3 (JAX backend), same batch, same process.

    python benchmarks/forward.py [--archs resnet50v2,densenet201,inceptionv3] [--batch 8]

Prints images/s of both and the ratio port / Keras (target >= 1.0 at batch 8, default size).
Both run compiled (jax.jit for the port, Keras's own jitted predict_on_batch) on identical
weights (the Keras model's, converted through load_keras_h5) and identical inputs.
"""

import argparse
import os
import sys
import tempfile

os.environ.setdefault("KERAS_BACKEND", "jax")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import jax  # noqa: E402
import numpy as np  # noqa: E402

import jaxdrift as jd  # noqa: E402
from benchmarks.common import interleaved  # noqa: E402


def keras_model(arch):
  import keras

  ctor = {"densenet201": keras.applications.DenseNet201,
          "resnet50v2": keras.applications.ResNet50V2,
          "inceptionv3": keras.applications.InceptionV3}[arch]
  return ctor(weights=None, classifier_activation=None)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--archs", default=",".join(jd.models.ARCHS))
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--rounds", type=int, default=5)
  args = parser.parse_args()
  rows = []
  for arch in args.archs.split(","):
    size = jd.models.default_input_size(arch)
    reference = keras_model(arch)
    with tempfile.TemporaryDirectory() as tmp:
      reference.save(os.path.join(tmp, "w.h5"))
      variables = jd.models.load_keras_h5(arch, os.path.join(tmp, "w.h5"))
    model = jd.models.create(arch)
    forward = jax.jit(model.apply)
    x = np.random.default_rng(0).uniform(-1, 1, (args.batch, size, size, 3)).astype("f4")
    port_out = forward(variables, x)
    keras_out = reference.predict_on_batch(x)  # compiles
    err = float(np.abs(np.asarray(port_out) - keras_out).max() / np.abs(keras_out).max())
    t = interleaved({"port": lambda: forward(variables, x),
                     "keras": lambda: reference.predict_on_batch(x)}, rounds=args.rounds)
    rows.append((arch, size, args.batch / t["port"], args.batch / t["keras"],
                 t["keras"] / t["port"], err))
    print(f"{arch}: port {rows[-1][2]:.1f} img/s, keras {rows[-1][3]:.1f} img/s, "
          f"ratio {rows[-1][4]:.2f}", flush=True)
  print(f"\nforward, batch {args.batch}, {jax.devices()[0].platform}, median of {args.rounds} "
        "interleaved rounds")
  print("| arch | size | port img/s | Keras img/s | port / Keras | max rel. diff |")
  print("|---|---|---|---|---|---|")
  for arch, size, port, keras_ips, ratio, err in rows:
    print(f"| {arch} | {size} | {port:.1f} | {keras_ips:.1f} | {ratio:.2f} | {err:.1e} |")


if __name__ == "__main__":
  main()
