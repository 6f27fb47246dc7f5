"""ResNet50V2 (pre-activation ResNet), a port of keras.applications.ResNet50V2.

Layer names equal the Keras names (conv1_conv, conv2_block1_preact_bn, ..., post_relu), so
Keras weights map one to one and every Keras layer output can be tapped by name.
"""

import functools
from typing import Sequence

import flax.linen as nn

from jaxdrift.models import layers as L
from jaxdrift.models.readouts import ChannelReadout

_EPS = 1.001e-5


class ResNetV2(L.KerasApplication):
  """Pre-activation ResNet with bottleneck blocks, as keras.applications.resnet_v2.

  Also takes the `KerasApplication` attributes: num_classes, include_top, pooling,
  dropout_rate, dtype.

  Attributes:
    stack_sizes: blocks per stage (conv2..conv5).
    filters: bottleneck width per stage; block outputs have 4x as many channels.
    stem_filters: channels of the 7x7 stem convolution.
  """

  stack_sizes: Sequence[int] = (3, 4, 6, 3)
  filters: Sequence[int] = (64, 128, 256, 512)
  stem_filters: int = 64

  def _block(self, x, filters, name, *, train, stride=1, conv_shortcut=False, pool_name=""):
    bn = functools.partial(L.batch_norm, self, train=train, epsilon=_EPS, dtype=self.dtype)
    conv = functools.partial(L.conv, self, dtype=self.dtype)
    preact = L.relu(self, bn(x, f"{name}_preact_bn"), f"{name}_preact_relu")
    if conv_shortcut:
      shortcut = conv(preact, 4 * filters, 1, f"{name}_0_conv", strides=stride)
    elif stride > 1:
      # Keras: an unnamed MaxPooling2D(1, strides=stride). The same values as the strided
      # slice x[:, ::2, ::2], but XLA's CPU backend compiles the whole forward pass 15% slower
      # around that slice (ResNet50V2, batch 8: 0.85x Keras's forward; with the pool 1.02x).
      shortcut = L.max_pool(self, x, 1, stride, pool_name)
    else:
      shortcut = x
    y = conv(preact, filters, 1, f"{name}_1_conv", use_bias=False)
    y = L.relu(self, bn(y, f"{name}_1_bn"), f"{name}_1_relu")
    y = L.zero_pad(self, y, 1, f"{name}_2_pad")
    y = conv(y, filters, 3, f"{name}_2_conv", strides=stride, use_bias=False)
    y = L.relu(self, bn(y, f"{name}_2_bn"), f"{name}_2_relu")
    y = conv(y, 4 * filters, 1, f"{name}_3_conv")
    return L.tap(self, f"{name}_out", shortcut + y)

  def channel_readouts(self) -> dict[str, ChannelReadout]:
    """{layer: readout} of the outputs that feed a block (`jaxdrift.models.readouts`).

    Each block starts with preact_bn and preact_relu (per channel) read by its 1x1
    convolutions: `_1_conv`, and in the first block of a stage the shortcut `_0_conv`
    (stride 1: Keras puts the stride in a stage's last block). The block's input also feeds
    the shortcut of the other blocks directly, which the declaration allows. So pool1_pool
    and every block output but the last (read by post_bn, post_relu and the head) qualify.
    """
    blocks = [f"conv{stage + 2}_block{i + 1}"
              for stage, n in enumerate(self.stack_sizes) for i in range(n)]
    inputs = ["pool1_pool"] + [f"{name}_out" for name in blocks[:-1]]
    return {layer: ChannelReadout(
        f"{name}_preact_relu",
        (f"{name}_0_conv", f"{name}_1_conv") if name.endswith("_block1") else
        (f"{name}_1_conv",)) for layer, name in zip(inputs, blocks)}

  @nn.compact
  def __call__(self, x, train: bool = False):
    L.check_input(x, "resnet50v2")
    x = L.zero_pad(self, x.astype(self.dtype), 3, "conv1_pad")
    x = L.conv(self, x, self.stem_filters, 7, "conv1_conv", strides=2, dtype=self.dtype)
    x = L.zero_pad(self, x, 1, "pool1_pad")
    x = L.max_pool(self, x, 3, 2, "pool1_pool")
    last = len(self.stack_sizes) - 1
    for stage, (blocks, filters) in enumerate(zip(self.stack_sizes, self.filters)):
      name = f"conv{stage + 2}"
      x = self._block(x, filters, f"{name}_block1", train=train, conv_shortcut=True)
      for i in range(2, blocks):
        x = self._block(x, filters, f"{name}_block{i}", train=train)
      # Keras puts the stride in the LAST block of each stage but the final one.
      x = self._block(x, filters, f"{name}_block{blocks}", train=train,
                      stride=1 if stage == last else 2,
                      pool_name="max_pooling2d" + (f"_{stage}" if stage else ""))
    x = L.batch_norm(self, x, "post_bn", train=train, epsilon=_EPS, dtype=self.dtype)
    x = L.relu(self, x, "post_relu")
    return self.top(x, train)


ResNet50V2 = functools.partial(ResNetV2)
# Reduced variant for tests and CPU demos: same structure and names, 2 blocks per stage
# (the fewest Keras's stacking allows), 1/8 of the channels.
ResNetV2Tiny = functools.partial(ResNetV2, stack_sizes=(2, 2, 2, 2), filters=(8, 16, 32, 64),
                                 stem_filters=8)
