"""InceptionV3, a port of keras.applications.InceptionV3.

Keras builds InceptionV3 from unnamed layers, so its names are generated: conv2d, conv2d_1,
..., batch_normalization_k, activation_k, max_pooling2d_k, average_pooling2d_k,
concatenate_k, numbered per prefix in creation order. The port generates the same names in
the same order as a Keras 3 model built in a fresh session, so layer lookup by Keras name
works; files with other numberings (the official 1-based file, a second build in one
process) are mapped by the order of their numbers (see keras_h5.py). The named blocks keep
their Keras names: mixed0 .. mixed10, mixed9_0, mixed9_1.
"""

import collections
import functools

import flax.linen as nn

from jaxdrift.models import layers as L

_EPS = 1e-3  # Keras BatchNormalization default; conv2d_bn uses BN(scale=False)


class InceptionV3(L.KerasApplication):
  """Inception v3, as keras.applications.inception_v3.

  Also takes the `KerasApplication` attributes: num_classes, include_top, pooling,
  dropout_rate, dtype.

  Attributes:
    width: multiplier on every convolution's channel count (1.0 is InceptionV3).
  """

  width: float = 1.0

  @nn.compact
  def __call__(self, x, train: bool = False):
    L.check_input(x, "inceptionv3")
    counts = collections.Counter()

    def auto(prefix):
      k = counts[prefix]
      counts[prefix] += 1
      return prefix if k == 0 else f"{prefix}_{k}"

    def cbr(y, filters, rows, cols, padding="SAME", strides=1):
      filters = max(1, int(filters * self.width))
      y = L.conv(self, y, filters, (rows, cols), auto("conv2d"), strides=strides,
                 padding=padding, use_bias=False, dtype=self.dtype)
      y = L.batch_norm(self, y, auto("batch_normalization"), train=train, epsilon=_EPS,
                       use_scale=False, dtype=self.dtype)
      return L.relu(self, y, auto("activation"))

    def max_pool(y):
      return L.max_pool(self, y, 3, 2, auto("max_pooling2d"))

    def avg_pool(y):
      return L.avg_pool(self, y, 3, 1, auto("average_pooling2d"), padding="SAME")

    def concat(ys, name=None):
      return L.concat(self, ys, name or auto("concatenate"))

    x = x.astype(self.dtype)
    x = cbr(x, 32, 3, 3, strides=2, padding="VALID")
    x = cbr(x, 32, 3, 3, padding="VALID")
    x = cbr(x, 64, 3, 3)
    x = max_pool(x)
    x = cbr(x, 80, 1, 1, padding="VALID")
    x = cbr(x, 192, 3, 3, padding="VALID")
    x = max_pool(x)

    # mixed0..mixed2: 35 x 35
    for i, pool_filters in enumerate((32, 64, 64)):
      b1 = cbr(x, 64, 1, 1)
      b5 = cbr(cbr(x, 48, 1, 1), 64, 5, 5)
      b3 = cbr(cbr(cbr(x, 64, 1, 1), 96, 3, 3), 96, 3, 3)
      bp = cbr(avg_pool(x), pool_filters, 1, 1)
      x = concat([b1, b5, b3, bp], f"mixed{i}")

    # mixed3: 17 x 17
    b3 = cbr(x, 384, 3, 3, strides=2, padding="VALID")
    b3d = cbr(cbr(cbr(x, 64, 1, 1), 96, 3, 3), 96, 3, 3, strides=2, padding="VALID")
    x = concat([b3, b3d, max_pool(x)], "mixed3")

    # mixed4..mixed7: 17 x 17
    for i, c in enumerate((128, 160, 160, 192)):
      b1 = cbr(x, 192, 1, 1)
      b7 = cbr(cbr(cbr(x, c, 1, 1), c, 1, 7), 192, 7, 1)
      b7d = cbr(x, c, 1, 1)
      b7d = cbr(cbr(cbr(cbr(b7d, c, 7, 1), c, 1, 7), c, 7, 1), 192, 1, 7)
      bp = cbr(avg_pool(x), 192, 1, 1)
      x = concat([b1, b7, b7d, bp], f"mixed{4 + i}")

    # mixed8: 8 x 8
    b3 = cbr(cbr(x, 192, 1, 1), 320, 3, 3, strides=2, padding="VALID")
    b7 = cbr(cbr(cbr(x, 192, 1, 1), 192, 1, 7), 192, 7, 1)
    b7 = cbr(b7, 192, 3, 3, strides=2, padding="VALID")
    x = concat([b3, b7, max_pool(x)], "mixed8")

    # mixed9, mixed10: 8 x 8
    for i in range(2):
      b1 = cbr(x, 320, 1, 1)
      b3 = cbr(x, 384, 1, 1)
      b3 = concat([cbr(b3, 384, 1, 3), cbr(b3, 384, 3, 1)], f"mixed9_{i}")
      b3d = cbr(cbr(x, 448, 1, 1), 384, 3, 3)
      b3d = concat([cbr(b3d, 384, 1, 3), cbr(b3d, 384, 3, 1)])
      bp = cbr(avg_pool(x), 192, 1, 1)
      x = concat([b1, b3, b3d, bp], f"mixed{9 + i}")

    return self.top(x, train)


# Reduced variant for tests and CPU demos: all 94 conv layers and their names, 1/8 channels.
InceptionV3Tiny = functools.partial(InceptionV3, width=0.125)
