"""Is attribution cheap? LayerCAM + Grad-CAM++ for both checkpoints vs two forward passes.

For each architecture, at batch 8 and the default input size, all in this process:

* forward: the TL and the FT forward passes alone (one jitted program with both; the
  faster of that and two separate jitted calls is the baseline);
* cam: `jd.cam.compute_pair(..., methods=("layercam", "gradcam++"))` end to end (host
  checks, stacking, one program: per checkpoint one forward and one backward from the logit
  to the layer, shared by both methods). Target: cam / forward <= 1.15 at the canonical
  layer, where the backward pass only crosses the pooling head;
* loops: a straightforward per-image loop, one image and one checkpoint at a time,
  `jax.grad` of the logit with respect to the layer's activation (activations as aux, so one
  pass), then both weightings: eager (no jit, as a first port would be; timed after a
  warm-up image, since eager ops compile on first use), and the same function jitted (a
  stronger baseline). Reported as images/s of the batched program over
  images/s of each loop. Target: >= 5x against the straightforward loop.

Timings are the minimum over --repeats runs after compiling, taken alternately so that both
sides see the same machine load.

Gradient-free methods (--gradfree_arch, full ResNet50V2 by default, batch --batch, same
process, one checkpoint):

* ablationcam at the canonical layer and at conv4_block6_out vs a per-channel loop of full
  jitted forward passes (channel k zeroed through the layer's perturbation tap), per
  channel. Target >= 5x: the network before the layer runs once, not once per channel, and
  at conv4_block6_out the 1x1 convolutions after it are updated by rank one
  (jaxdrift/cam/suffix.py); --ablation_plain also times the plain suffix there.
* scorecam vs n plain jitted forward passes of the same batch, n = the channels it scores
  (--scorecam_channels via top_k: a subset on a CPU; the rate per channel is what counts).
  Target <= 1.2x: every masked input needs a full forward pass, so that is the floor.
* occlusion and rise vs the same number of plain forward passes (no target).
--ablation_channels and --loop_channels subsample channels (0: all) so that a CPU run ends;
ratios are per channel.

    python -m benchmarks.cam [--archs densenet201,resnet50v2,inceptionv3] [--batch 8]
        [--size 0 (default per arch)] [--repeats 3] [--eager_images 1] [--layer NAME]
        [--gradfree_arch resnet50v2 | none] [--gradfree_methods ablationcam,scorecam,...]
        [--scorecam_channels 32]
        [--ablation_channels 0] [--ablation_plain] [--loop_channels 8] [--chunk 8]
        [--inner_layer conv4_block6_out]

The last line is JSON with every ratio.
"""

import argparse
import dataclasses
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

import jaxdrift as jd
from jaxdrift.models.layers import PERTURBATIONS, TAPS


def timed(fn, *args):
  start = time.perf_counter()
  jax.block_until_ready(fn(*args))
  return time.perf_counter() - start


def per_image_fn(model, layer):
  """LayerCAM + Grad-CAM++ (eq19) of ONE image [1, H, W, 3] for one class, via jax.grad."""

  def maps(variables, image, target, zeros):
    def score(delta):
      logits, state = model.apply({**variables, PERTURBATIONS: {layer: delta}}, image,
                                  train=False, mutable=[TAPS])
      return logits[0, target], state[TAPS]["layers"][layer]

    grads, acts = jax.grad(score, has_aux=True)(zeros)
    a, g = acts[0], grads[0]
    return (jax.nn.relu(jd.cam.layercam(a, g)), jax.nn.relu(jd.cam.gradcam_pp_eq19(a, g)))

  return maps


def bench(arch, args):
  size = args.size or jd.models.default_input_size(arch)
  layer = args.layer or jd.models.default_cam_layer(arch)
  model = jd.models.create(arch, num_classes=5)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.uniform(-1, 1, (args.batch, size, size, 3)), jnp.float32)
  targets = rng.integers(0, 5, args.batch)
  init = jax.jit(model.init, static_argnames="train")
  tl = init(jax.random.key(0), x[:1], train=False)
  ft = init(jax.random.key(1), x[:1], train=False)

  apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
  both = jax.jit(lambda a, b, x: (model.apply(a, x, train=False),
                                  model.apply(b, x, train=False)))
  separate = lambda a, b, x: (apply(a, x), apply(b, x))  # noqa: E731
  cam = lambda a, b, x: jd.cam.compute_pair(  # noqa: E731
      model, a, b, x, targets, methods=("layercam", "gradcam++"), layer=layer,
      checkpoint_map=args.checkpoint_map)

  compile_fwd = timed(both, tl, ft, x) + timed(separate, tl, ft, x)
  compile_cam = timed(cam, tl, ft, x)
  t_both, t_sep, t_cam = [], [], []
  for _ in range(args.repeats):
    t_both.append(timed(both, tl, ft, x))
    t_sep.append(timed(separate, tl, ft, x))
    t_cam.append(timed(cam, tl, ft, x))
  t_fwd = min(min(t_both), min(t_sep))
  ratio = min(t_cam) / t_fwd

  # Straightforward per-image loops (images/s for both checkpoints and both methods).
  maps = per_image_fn(model, layer)
  shape = jd.models.layer_shapes(model, (1, size, size, 3))[layer].shape
  zeros = jnp.zeros(shape, jnp.float32)

  def loop(fn, n):
    start = time.perf_counter()
    for i in range(n):
      for variables in (tl, ft):
        jax.block_until_ready(fn(variables, x[i:i + 1], int(targets[i]), zeros))
    return n / (time.perf_counter() - start)

  jitted = jax.jit(maps)
  compile_loop = timed(jitted, tl, x[:1], int(targets[0]), zeros)
  jit_rate = max(loop(jitted, args.batch) for _ in range(args.repeats))
  eager_rate = float("nan")
  if args.eager_images:
    maps(tl, x[:1], int(targets[0]), zeros)  # eager ops compile on first use: warm up
    eager_rate = loop(maps, args.eager_images)
  rate = args.batch / min(t_cam)

  # Check that the loop and the batched program agree (they compute the same maps).
  out = cam(tl, ft, x)
  lc, pp = jitted(ft, x[:1], int(targets[0]), zeros)
  err = max(float(jnp.max(jnp.abs(out["layercam"].maps[1, 0] - lc))) / float(jnp.max(lc)),
            float(jnp.max(jnp.abs(out["gradcam++"].maps[1, 0] - pp))) / float(jnp.max(pp)))

  print(f"{arch:12s} {size:4d} {layer:10s} fwd x2 {t_fwd * 1e3:7.0f} ms  "
        f"cam {min(t_cam) * 1e3:7.0f} ms"
        f"  ratio {ratio:5.3f}  | {rate:6.2f} img/s  vs jit loop {jit_rate:6.2f} "
        f"({rate / jit_rate:4.1f}x)  vs eager loop {eager_rate:6.3f} ({rate / eager_rate:5.1f}x)"
        f"  | compile fwd {compile_fwd:4.1f}s cam {compile_cam:4.1f}s loop {compile_loop:4.1f}s"
        f"  | max rel diff loop vs batched {err:.1e}", flush=True)
  return ratio, rate / jit_rate, rate / eager_rate


def undeclared(model):
  """The same port without `channel_readouts` declarations (Ablation-CAM's plain suffix)."""
  cls = type(model)
  plain = type(f"Undeclared{cls.__name__}", (cls,), {"channel_readouts": lambda self: {}})
  return plain(**{f.name: getattr(model, f.name) for f in dataclasses.fields(model)
                  if f.init and f.name not in ("parent", "name")})


def gradfree_bench(args):
  """Gradient-free methods of one checkpoint vs their baselines (module doc).

  Each repeat times the method and then its baseline right after it (one plain forward pass,
  or --loop_channels passes of the per-channel loop), so that both see the same load; the
  ratios use the minimum of each side over the repeats.
  """
  arch = args.gradfree_arch
  size = args.size or jd.models.default_input_size(arch)
  model = jd.models.create(arch, num_classes=5)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.uniform(-1, 1, (args.batch, size, size, 3)), jnp.float32)
  targets = rng.integers(0, 5, args.batch)
  variables = jax.jit(model.init, static_argnames="train")(jax.random.key(0), x[:1],
                                                           train=False)
  shapes = jd.models.layer_shapes(model, (1, size, size, 3))
  apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
  timed(apply, variables, x)
  out = {"arch": arch, "batch": args.batch, "size": size, "chunk": args.chunk}
  print(f"\ngradient-free, {arch} {size} px, batch {args.batch}, chunk {args.chunk}",
        flush=True)

  def run(method, baseline, layer=None, other=None, **options):
    """(min seconds of the method, min seconds of its baseline, compile seconds, min seconds
    of the method on the model `other` (None without one)); each round times all of them."""
    def fn(m=model):
      return jd.cam.compute(m, variables, x, targets, method, layer=layer, chunk=args.chunk,
                            **options)

    compile_s = timed(fn)
    if other is not None:
      timed(fn, other)
    ours, base, others = [], [], []
    for _ in range(args.repeats):
      ours.append(timed(fn))
      base.append(baseline())
      if other is not None:
        others.append(timed(fn, other))
    return min(ours), min(base), compile_s, min(others, default=None)

  def forward():
    return timed(apply, variables, x)

  methods = args.gradfree_methods.split(",")
  # Ablation-CAM vs a per-channel loop of full forward passes (channel k zeroed by a tap).
  for layer in (jd.models.default_cam_layer(arch), args.inner_layer):
    if "ablationcam" not in methods:
      break
    channels = shapes[layer].shape[-1]
    n = min(args.ablation_channels or channels, channels)
    loop_fn = jax.jit(lambda v, x, d, layer=layer: model.apply(
        {**v, PERTURBATIONS: {layer: d}}, x, train=False))
    _, acts = jd.models.capture(model, variables, x, [layer])
    a = acts[layer]
    deltas = [-a * jax.nn.one_hot(k, channels, dtype=a.dtype)
              for k in range(args.loop_channels)]
    timed(loop_fn, variables, x, deltas[0])

    def loop():
      start = time.perf_counter()
      for d in deltas:
        jax.block_until_ready(loop_fn(variables, x, d))
      return (time.perf_counter() - start) / args.loop_channels

    # With --ablation_plain, the same port without declarations (the plain suffix,
    # jaxdrift/cam/suffix.py) is timed in the same rounds.
    plain = (undeclared(model) if args.ablation_plain
             and layer in getattr(model, "channel_readouts", dict)() else None)
    t_abl, loop_per_channel, compile_s, t_plain = run(
        "ablationcam", loop, layer, other=plain, top_k=n if n < channels else None)
    ours = t_abl / n
    frac = jd.cam.cost(model, "ablationcam", layer, image_shape=(size, size, 3))
    ratio = loop_per_channel / ours
    print(f"ablationcam {layer:18s} {n:5d}/{channels} ch: {t_abl:7.2f} s = "
          f"{ours * 1e3:7.2f} ms/ch  vs loop {loop_per_channel * 1e3:7.1f} ms/ch "
          f"({args.loop_channels} ch)  speed-up {ratio:6.1f}x (target >= 5)  "
          f"suffix MACs {frac['partial_fraction']:.3f}  compile {compile_s:.1f} s", flush=True)
    out[f"ablationcam_{layer}"] = {"channels": n, "of": channels, "seconds": t_abl,
                                   "ms_per_channel": ours * 1e3,
                                   "loop_ms_per_channel": loop_per_channel * 1e3,
                                   "speedup_vs_loop": ratio,
                                   "suffix_mac_fraction": frac["partial_fraction"]}
    if t_plain is not None:
      plain_ratio = loop_per_channel / (t_plain / n)
      print(f"  plain suffix: {t_plain / n * 1e3:7.2f} ms/ch  speed-up {plain_ratio:6.1f}x; "
            f"rank-one / plain {t_abl / t_plain:5.3f}", flush=True)
      out[f"ablationcam_{layer}"].update(plain_ms_per_channel=t_plain / n * 1e3,
                                         plain_speedup_vs_loop=plain_ratio)

  # Score-CAM, occlusion and RISE vs the same number of plain forward passes.
  n = args.scorecam_channels
  window = size // 4
  for method, passes, options in (("scorecam", n, dict(top_k=n)),
                                  ("occlusion", 16, dict(size=window, stride=window)),
                                  ("rise", n, dict(n_masks=n, key=jax.random.key(0)))):
    if method not in methods:
      continue
    t, t_fwd, compile_s, _ = run(method, forward, **options)
    floor = passes * t_fwd
    print(f"{method:11s} {passes:4d} passes/image: {t:7.2f} s vs {passes} x forward "
          f"{t_fwd * 1e3:.0f} ms = {floor:7.2f} s  ratio {t / floor:5.3f}"
          f"{' (target <= 1.2)' if method == 'scorecam' else ''}  compile {compile_s:.1f} s",
          flush=True)
    out[method] = {"passes": passes, "seconds": t, "forward_s": t_fwd,
                   "ratio_to_forward": t / floor}
  return out


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--archs", default=",".join(jd.models.ARCHS))
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--size", type=int, default=0, help="0: the architecture's default")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--eager_images", type=int, default=1,
                      help="images for the eager per-image loop (0: skip; it is slow)")
  parser.add_argument("--layer", default=None, help="default: the canonical layer")
  parser.add_argument("--checkpoint_map", default="unroll", choices=("unroll", "map", "vmap"))
  parser.add_argument("--gradfree_arch", default="resnet50v2",
                      help="architecture of the gradient-free section ('none': skip it)")
  parser.add_argument("--gradfree_methods", default="ablationcam,scorecam,occlusion,rise",
                      help="the gradient-free methods to measure (comma-separated)")
  parser.add_argument("--inner_layer", default="conv4_block6_out",
                      help="the inner layer of the Ablation-CAM measurement")
  parser.add_argument("--scorecam_channels", type=int, default=32,
                      help="channels Score-CAM scores (top_k; also RISE's masks)")
  parser.add_argument("--ablation_channels", type=int, default=0,
                      help="channels Ablation-CAM ablates (top_k; 0: all)")
  parser.add_argument("--ablation_plain", action="store_true",
                      help="also time Ablation-CAM's plain suffix where the port declares a "
                           "rank-one readout (the port without its declarations)")
  parser.add_argument("--loop_channels", type=int, default=8,
                      help="channels of the per-channel baseline loop")
  parser.add_argument("--chunk", type=int, default=8,
                      help="changed inputs per image in one pass (jd.cam option chunk)")
  args = parser.parse_args(argv)
  print(f"jax {jax.__version__}, {jax.device_count()} x {jax.devices()[0].platform}, "
        f"batch {args.batch}, LayerCAM + Grad-CAM++ (eq19), TL + FT", flush=True)
  results = {arch: bench(arch, args) for arch in args.archs.split(",") if arch}
  if results:
    print("\narch          cam/forward (target <= 1.15)   speed-up vs jit loop   "
          "vs eager loop (target >= 5)")
  for arch, (ratio, vs_jit, vs_eager) in results.items():
    print(f"{arch:12s}  {ratio:10.3f}                     {vs_jit:8.1f}x            "
          f"{vs_eager:8.1f}x")
  summary = {"device": f"{jax.device_count()} x {jax.devices()[0].platform}",
             "gradient": {a: {"cam_over_forward": r[0], "vs_jit_loop": r[1],
                              "vs_eager_loop": r[2]} for a, r in results.items()}}
  if args.gradfree_arch != "none":
    summary["gradfree"] = gradfree_bench(args)
  print(json.dumps(summary))


if __name__ == "__main__":
  main()
