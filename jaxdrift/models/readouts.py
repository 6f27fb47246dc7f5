"""How a port reads a layer's output: declarations that let Ablation-CAM skip work, exactly.

A port may declare, for some of its layers, that the network reads the layer's output A
[B, h, w, K] first through a map that works per channel and position, P = f(A) (a BatchNorm
in inference mode followed by a ReLU, or the identity), whose output P is tapped under a
Keras name, and then through 1x1 convolutions of stride 1 (linear in P). Other readers of A
(a residual shortcut, a concatenation) are allowed and need not be declared.

Zeroing channel k of A then changes P only in channel k, to f(0)_k, so each declared
convolution's output changes by a rank-one term:

    conv(P') = conv(P) + (f(0) - P)[..., k] (outer) W[k, :]        W: the kernel [K, O]

which costs h x w x O multiplications per ablation instead of h x w x K x O
(`jaxdrift.cam.suffix`). Ports declare these readouts with a method

    def channel_readouts(self) -> dict[str, ChannelReadout]: ...   # {layer: readout}

that reads only the module's attributes (it is called on an unbound module). A layer that
is not declared runs the plain suffix. `jaxdrift.cam.suffix` checks every declaration it
uses on the traced program before using it and raises where the program does not have the
declared structure.
"""

import dataclasses


@dataclasses.dataclass(frozen=True)
class ChannelReadout:
  """The readers of one layer's output that Ablation-CAM may update by rank one.

  Attributes:
    per_channel: Keras name of the tapped output P = f(A) of the map applied per channel
      and position to the layer's output A (the layer's own name for the identity).
    convs: Keras names of the 1x1, stride-1 convolutions that read P (their parameters
      live under the same names: params[name]["kernel"] of shape [1, 1, K, O]).
  """

  per_channel: str
  convs: tuple[str, ...]
