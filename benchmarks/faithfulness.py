"""Is a faithfulness score cheap? Deletion + insertion for both checkpoints vs forward passes.

In one process, for one architecture (default: full ResNet50V2, 64 images at 224 px, 50
steps, blur baseline, two random-init variable sets standing in for TL and FT):

* method: `jd.faithfulness.deletion` and `insertion` for the TL and the FT variables, end to
  end (4 calls, each one jitted program over every step of every image);
* floor: the same number of plain forward passes, 4 x (steps + 1) jitted calls at the same
  batch size (--images), on unperturbed images: every perturbed image needs one forward
  pass, so this is the compute floor. Target: method / floor <= 1.2;
* loop: what a careful user writes (as in Quantus #96): per image and per step, one jitted
  call that perturbs the image and runs the model on it; timed on --loop_images images and
  reported per image, as the speed-up of the method over the loop.

Timings are the minimum over --repeats runs after compiling, taken alternately.

    python -m benchmarks.faithfulness [--arch resnet50v2] [--images 64] [--size 224]
        [--steps 50] [--repeats 2] [--loop_images 2] [--chunk 0 (auto)]

The last line is JSON.
"""

import argparse
import functools
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

import jaxdrift as jd


def timed(fn):
  start = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - start


def make_loop(model):
  """A careful per-image, per-step loop: one jitted perturb + forward + softmax call per step."""

  @jax.jit
  def step(variables, image, base, rank, count, target, insert):
    first = (rank < count)[..., None]
    x = jnp.where(first == insert, image, base)[None]
    return jax.nn.softmax(model.apply(variables, x, train=False)[0])[target]

  def curves(variables, images, bases, maps, targets, steps):
    n = images.shape[1] * images.shape[2]
    out = []
    for b in range(images.shape[0]):
      big = jd.metrics.upsample(maps[b], images.shape[1:3])
      order = np.argsort(-np.asarray(big).ravel(), kind="stable")
      rank = jnp.asarray(np.argsort(order).reshape(images.shape[1:3]), jnp.int32)
      for insert in (False, True):
        out.append([step(variables, images[b], bases[b], rank, (2 * i * n + steps) // (2 * steps),
                         targets[b], insert) for i in range(steps + 1)])
    return jnp.asarray(out)

  return curves


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--arch", default="resnet50v2")
  parser.add_argument("--images", type=int, default=64)
  parser.add_argument("--size", type=int, default=224)
  parser.add_argument("--steps", type=int, default=50)
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--loop_images", type=int, default=2)
  parser.add_argument("--chunk", type=int, default=0, help="steps per forward pass; 0: auto")
  args = parser.parse_args(argv)
  chunk = args.chunk or None
  dev = jax.devices()[0]
  print(f"jax {jax.__version__}, {jax.device_count()} x {dev.platform} ({dev.device_kind}); "
        f"{args.arch}, {args.images} images at {args.size} px, {args.steps} steps, "
        f"deletion + insertion x TL + FT (blur baseline)", flush=True)

  model = jd.models.create(args.arch, num_classes=5)
  init = jax.jit(functools.partial(model.init, train=False))
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.uniform(-1, 1, (args.images, args.size, args.size, 3)), jnp.float32)
  both = [init(jax.random.key(k), images[:1]) for k in (0, 1)]
  h = args.size // 32
  maps = jnp.asarray(rng.random((args.images, h, h)), jnp.float32)
  targets = rng.integers(0, 5, args.images)

  def method():
    out = []
    for variables in both:
      fn = functools.partial(model.apply, variables, train=False)
      for score in (jd.faithfulness.deletion, jd.faithfulness.insertion):
        out.append(score(fn, images, maps, targets, steps=args.steps, chunk=chunk)["curve"])
    return out

  forward = jax.jit(functools.partial(model.apply, train=False))

  def floor():
    return [forward(both[k % 2], images) for k in range(4 * (args.steps + 1))]

  start = time.perf_counter()
  results = jax.block_until_ready(method())
  compile_method = time.perf_counter() - start
  start = time.perf_counter()
  jax.block_until_ready(floor())
  compile_floor = time.perf_counter() - start

  n_loop = max(1, min(args.loop_images, args.images))
  loop = make_loop(model)
  bases = jd.faithfulness.blur(images[:n_loop], 5.0)
  run_loop = lambda: [loop(v, images[:n_loop], bases, maps[:n_loop], targets[:n_loop],
                           args.steps) for v in both]
  start = time.perf_counter()
  loop_curves = jax.block_until_ready(run_loop())
  compile_loop = time.perf_counter() - start
  # The loop's curves, in (checkpoint, image, deletion / insertion) order, equal the method's.
  want = np.stack([np.stack([np.asarray(results[2 * c + m][b]) for b in range(n_loop)
                             for m in (0, 1)]) for c in (0, 1)])
  err = float(np.max(np.abs(np.asarray(loop_curves) - want)))

  t_method, t_floor, t_loop = [], [], []
  for _ in range(args.repeats):
    t_method.append(timed(method))
    t_floor.append(timed(floor))
    t_loop.append(timed(run_loop))
  t_method, t_floor, t_loop = min(t_method), min(t_floor), min(t_loop)
  forwards = 4 * (args.steps + 1) * args.images
  ratio = t_method / t_floor
  speedup = (t_loop / n_loop) / (t_method / args.images)
  print(f"method {t_method:8.3f} s  ({forwards / t_method:8.1f} perturbed images/s)")
  print(f"floor  {t_floor:8.3f} s  ({forwards / t_floor:8.1f} images/s, "
        f"{4 * (args.steps + 1)} forward passes of batch {args.images})")
  print(f"loop   {t_loop:8.3f} s for {n_loop} images ({t_loop / n_loop:.3f} s per image)")
  print(f"method / floor = {ratio:.3f} (target <= 1.2); speed-up over the per-image, "
        f"per-step loop = {speedup:.1f}x; loop vs method max abs diff {err:.1e}; compile "
        f"method {compile_method:.1f} s, floor {compile_floor:.1f} s, loop {compile_loop:.1f} s")
  print(json.dumps({"benchmark": "faithfulness", "arch": args.arch, "images": args.images,
                    "size": args.size, "steps": args.steps, "platform": dev.platform,
                    "device": dev.device_kind, "devices": jax.device_count(),
                    "method_s": t_method, "floor_s": t_floor, "loop_s_per_image":
                    t_loop / n_loop, "method_over_floor": ratio,
                    "speedup_over_loop": speedup, "max_abs_diff_loop": err}))


if __name__ == "__main__":
  main()
