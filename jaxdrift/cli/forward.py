"""A real forward pass of the three ported backbones on a sample batch.

    jaxdrift forward [--batch 2] [--tiny]

Prints, per architecture: input size, parameter count (Keras's count: params + BatchNorm
statistics), the canonical feature map's shape, logits' shape, and the time of the compiled
forward pass. Weights are random (ImageNet weights need `jd.models.pretrained`).
"""

import time

HELP = "a forward pass of each backbone: shapes, parameter counts, time"
USES_DATA = False


def add_arguments(p) -> None:
  p.add_argument("--batch", type=int, default=2, help="images per batch, at least 1 "
                 "(default: %(default)s)")
  p.add_argument("--tiny", action="store_true",
                 help="use the reduced test variants instead of the full models")


def run(args, usage_error) -> int:
  if args.batch < 1:
    raise usage_error(f"--batch must be at least 1, found {args.batch}; pass e.g. --batch 2")
  import jax
  import numpy as np

  import jaxdrift as jd

  archs = [jd.models.TINY[a] for a in jd.models.ARCHS] if args.tiny else jd.models.ARCHS
  print(f"devices: {jax.devices()}")
  print(f"{'arch':<18}{'input':>14}{'parameters':>14}{'feature map':>22}{'logits':>12}"
        f"{'forward':>10}")
  for arch in archs:
    size = jd.models.default_input_size(arch)
    pixels = np.random.default_rng(0).integers(0, 256, (args.batch, size, size, 3), np.uint8)
    x = jd.models.preprocess(arch, pixels)
    model = jd.models.create(arch, num_classes=5)
    variables = jax.jit(model.init)(jax.random.key(0), x[:1])
    layer = jd.models.default_cam_layer(arch)
    forward = jax.jit(lambda v, x: jd.models.capture(model, v, x, [layer]))
    jax.block_until_ready(forward(variables, x))  # compile
    start = time.perf_counter()
    logits, acts = jax.block_until_ready(forward(variables, x))
    seconds = time.perf_counter() - start
    count = sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(variables))
    print(f"{arch:<18}{str(x.shape):>14}{count:>14,}{str(acts[layer].shape):>22}"
          f"{str(logits.shape):>12}{seconds * 1e3:>8.0f}ms")
  return 0
