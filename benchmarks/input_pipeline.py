"""Is the input pipeline fast enough? Training pipeline images/s vs a ResNet50V2 forward pass.

Both are measured in this process on this machine: the grain training pipeline (decode
PNG, resize to 224, random affine + brightness/contrast, preprocess, shard onto the devices)
alone, then the jitted ResNet50V2 forward pass alone on batches of the same shape. The
pipeline is not the bottleneck when the ratio is >= 2. Optionally also times phantom
generation (10,000 images at 128 px; target: under 60 s). Without augmentation (the demo) a
`jd.data.Memo` prepares each record once: it times one such epoch read from the source
against one read from a filled memo.

    python -m benchmarks.input_pipeline [--batch_size 32] [--worker_count 0] [--phantoms]
"""

import argparse
import functools
import sys
import tempfile
import time

import jax
import numpy as np

import jaxdrift as jd

PREPROCESS = functools.partial(jd.models.preprocess, "resnet50v2")


def pipeline_rate(source, args) -> float:
  """Images/s of the training pipeline (after one warm-up batch)."""
  it = jd.data.batches(source, preprocess=PREPROCESS, batch_size=args.batch_size, train=True,
                       seed=0, image_size=224, num_epochs=1000,
                       worker_count=args.worker_count, num_threads=args.num_threads)
  jax.block_until_ready(next(it)["image"])
  start = time.perf_counter()
  for _ in range(args.pipeline_steps):
    jax.block_until_ready(next(it)["image"])
  return args.pipeline_steps * args.batch_size / (time.perf_counter() - start)


def no_augment_epoch_rates(source, args) -> tuple[float, float]:
  """Images/s of one training epoch without augmentation: uncached, and from a filled Memo."""
  def epoch(memo):
    start, n = time.perf_counter(), 0
    for batch in jd.data.batches(source, preprocess=PREPROCESS, batch_size=args.batch_size,
                                 train=True, seed=0, image_size=224, augment=False,
                                 memo=memo, num_threads=args.num_threads):
      n += jax.block_until_ready(batch["image"]).shape[0]
    return n / (time.perf_counter() - start)
  memo = jd.data.Memo()
  epoch(memo)  # fills it
  return epoch(None), epoch(memo)


def model_rate(args) -> float:
  """Images/s of the jitted ResNet50V2 forward pass (5 classes) at 224 px, after compiling."""
  model = jd.models.create("resnet50v2", num_classes=5)
  x = jax.device_put(np.zeros((args.batch_size, 224, 224, 3), np.float32),
                     jax.sharding.NamedSharding(jd.data.default_mesh(),
                                                jax.sharding.PartitionSpec("data")))
  variables = jax.jit(model.init, static_argnames="train")(jax.random.key(0), x[:1],
                                                           train=False)
  forward = jax.jit(lambda v, x: model.apply(v, x, train=False))
  jax.block_until_ready(forward(variables, x))
  start = time.perf_counter()
  for _ in range(args.model_steps):
    jax.block_until_ready(forward(variables, x))
  return args.model_steps * args.batch_size / (time.perf_counter() - start)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--pipeline_steps", type=int, default=20)
  parser.add_argument("--model_steps", type=int, default=3)
  parser.add_argument("--worker_count", type=int, default=0)
  parser.add_argument("--num_threads", type=int, default=8)
  parser.add_argument("--stored_size", type=int, default=256,
                      help="side of the stored phantom images (resized to 224)")
  parser.add_argument("--data_dir", default=None, help="TFDS data dir (default: a temp dir)")
  parser.add_argument("--phantoms", action="store_true",
                      help="also time generating 10,000 phantoms at 128 px")
  args = parser.parse_args(argv)
  if args.worker_count > 0:
    from absl import flags  # grain worker processes read absl flags.
    flags.FLAGS(sys.argv[:1])
  with tempfile.TemporaryDirectory() as tmp:
    source = jd.data.load("phantoms", "train", data_dir=args.data_dir or tmp,
                          image_size=args.stored_size, num_train=512, num_validation=0,
                          num_test=0, seed=0)
    data = pipeline_rate(source, args)
    uncached, memoized = no_augment_epoch_rates(source, args)
  model = model_rate(args)
  print(f"devices: {jax.device_count()} x {jax.devices()[0].device_kind}; batch "
        f"{args.batch_size}; stored {args.stored_size} px -> 224 px; grain workers "
        f"{args.worker_count}, threads {args.num_threads}")
  print(f"training input pipeline : {data:8.1f} images/s")
  print(f"ResNet50V2 forward      : {model:8.1f} images/s")
  print(f"ratio pipeline / forward: {data / model:8.2f}  (target >= 2: "
        f"{'met' if data / model >= 2 else 'NOT met'})")
  print(f"no augmentation, epoch   : {uncached:8.1f} images/s read, {memoized:8.1f} from a "
        f"Memo ({memoized / uncached:.1f}x)")
  if args.phantoms:
    start = time.perf_counter()
    jd.data.generate_phantoms(10_000, image_size=128, seed=0)
    seconds = time.perf_counter() - start
    print(f"phantoms: 10,000 at 128 px in {seconds:.1f} s; 60 s target / actual = "
          f"{60 / seconds:.2f}")


if __name__ == "__main__":
  main()
