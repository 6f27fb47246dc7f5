"""DenseNet201, a port of keras.applications.DenseNet201.

Layer names equal the Keras names (conv1_conv, conv2_block1_0_bn, pool2_conv, bn, relu, ...)
so Keras weights map one to one and every Keras layer output can be tapped by name.
"""

import functools
from typing import Sequence

import flax.linen as nn

from jaxdrift.models import layers as L
from jaxdrift.models.readouts import ChannelReadout

_EPS = 1.001e-5


class DenseNet(L.KerasApplication):
  """Densely connected network, as keras.applications.densenet.

  Also takes the `KerasApplication` attributes: num_classes, include_top, pooling,
  dropout_rate, dtype.

  Attributes:
    blocks: conv blocks per dense block (conv2..conv5).
    growth_rate: channels each conv block adds; its bottleneck has 4x as many.
    stem_filters: channels of the 7x7 stem convolution.
  """

  blocks: Sequence[int] = (6, 12, 48, 32)
  growth_rate: int = 32
  stem_filters: int = 64

  def _bn_relu(self, x, name, train):
    x = L.batch_norm(self, x, f"{name}_bn", train=train, epsilon=_EPS, dtype=self.dtype)
    return L.relu(self, x, f"{name}_relu")

  def _conv_block(self, x, name, train):
    y = self._bn_relu(x, f"{name}_0", train)
    y = L.conv(self, y, 4 * self.growth_rate, 1, f"{name}_1_conv", use_bias=False,
               dtype=self.dtype)
    y = self._bn_relu(y, f"{name}_1", train)
    y = L.conv(self, y, self.growth_rate, 3, f"{name}_2_conv", padding="SAME",
               use_bias=False, dtype=self.dtype)
    return L.concat(self, [x, y], f"{name}_concat")

  def _transition(self, x, name, train):
    x = self._bn_relu(x, name, train)
    x = L.conv(self, x, x.shape[-1] // 2, 1, f"{name}_conv", use_bias=False, dtype=self.dtype)
    return L.avg_pool(self, x, 2, 2, f"{name}_pool")

  def channel_readouts(self) -> dict[str, ChannelReadout]:
    """{layer: readout} of the outputs that feed a conv block or a transition
    (`jaxdrift.models.readouts`).

    A conv block and a transition both start with BN and ReLU (per channel) read by one 1x1
    convolution (`_1_conv`, `poolN_conv`); a conv block's input also feeds its concatenation
    directly, which the declaration allows. So pool1, every transition's pool and every
    concatenation but the last (read by bn, relu and the head) qualify.
    """
    out = {}
    layer = "pool1"
    for stage, blocks in enumerate(self.blocks):
      for i in range(blocks):
        name = f"conv{stage + 2}_block{i + 1}"
        out[layer] = ChannelReadout(f"{name}_0_relu", (f"{name}_1_conv",))
        layer = f"{name}_concat"
      if stage < len(self.blocks) - 1:
        out[layer] = ChannelReadout(f"pool{stage + 2}_relu", (f"pool{stage + 2}_conv",))
        layer = f"pool{stage + 2}_pool"
    return out

  @nn.compact
  def __call__(self, x, train: bool = False):
    L.check_input(x, "densenet201")
    x = L.zero_pad(self, x.astype(self.dtype), 3, "zero_padding2d")
    x = L.conv(self, x, self.stem_filters, 7, "conv1_conv", strides=2, use_bias=False,
               dtype=self.dtype)
    x = self._bn_relu(x, "conv1", train)
    x = L.zero_pad(self, x, 1, "zero_padding2d_1")
    x = L.max_pool(self, x, 3, 2, "pool1")
    for stage, blocks in enumerate(self.blocks):
      for i in range(blocks):
        x = self._conv_block(x, f"conv{stage + 2}_block{i + 1}", train)
      if stage < len(self.blocks) - 1:
        x = self._transition(x, f"pool{stage + 2}", train)
    x = L.batch_norm(self, x, "bn", train=train, epsilon=_EPS, dtype=self.dtype)
    x = L.relu(self, x, "relu")
    return self.top(x, train)


DenseNet201 = functools.partial(DenseNet)
# Reduced variant for tests and CPU demos: same structure and names, fewer blocks, growth 8.
DenseNetTiny = functools.partial(DenseNet, blocks=(2, 2, 2, 2), growth_rate=8, stem_filters=16)
