"""Flax ports of the Keras Applications backbones used by the study.

    model = create("resnet50v2", num_classes=5)
    variables = model.init(jax.random.key(0), x, train=False)   # {"params", "batch_stats"}
    logits = model.apply(variables, x, train=False)             # x: NHWC, preprocessed
    logits, acts = capture(model, variables, x, ["post_relu"])  # layer outputs by Keras name
"""

from jaxdrift.models.densenet import DenseNet, DenseNet201, DenseNetTiny
from jaxdrift.models.inception_v3 import InceptionV3, InceptionV3Tiny
from jaxdrift.models.keras_h5 import (WeightFileError, load_keras_h5, read_keras_h5,
                                      save_keras_h5)
from jaxdrift.models.pretrained import pretrained, weights_url
from jaxdrift.models.readouts import ChannelReadout
from jaxdrift.models.registry import (ARCHS, SPECS, TINY, ArchSpec, cam_grid,
                                      default_cam_layer, default_input_size, preprocess, spec)
from jaxdrift.models.resnet_v2 import ResNet50V2, ResNetV2, ResNetV2Tiny
from jaxdrift.models.taps import abstract_model, capture, layer_shapes

_CONSTRUCTORS = {
    "densenet201": DenseNet201,
    "resnet50v2": ResNet50V2,
    "inceptionv3": InceptionV3,
    "densenet_tiny": DenseNetTiny,
    "resnetv2_tiny": ResNetV2Tiny,
    "inceptionv3_tiny": InceptionV3Tiny,
}


def create(arch: str, num_classes: int = 1000, include_top: bool = True, pooling=None,
           dropout_rate: float = 0.0, dtype=None):
  """Builds the Flax port of a Keras Applications backbone.

  Args:
    arch: "densenet201", "resnet50v2", "inceptionv3", or a reduced variant
      ("densenet_tiny", "resnetv2_tiny", "inceptionv3_tiny").
    num_classes: outputs of the 'predictions' layer when `include_top`.
    include_top: add GlobalAveragePooling2D + Dense('predictions'), returning LOGITS
      (Keras's softmax is left out on purpose).
    pooling: without the top: None (the last 4-D feature map), "avg" or "max".
    dropout_rate: dropout between the pooling and 'predictions' when training (needs a
      "dropout" rng); 0 (the default) is Keras's architecture.
    dtype: computation dtype, e.g. jnp.bfloat16 on accelerators; parameters stay float32.

  Returns:
    A flax.linen Module: `model.init(key, x, train=False)` and
    `model.apply(variables, x, train=False)` with x [B, H, W, 3] preprocessed float32
    (see `preprocess`); with `train=True` pass `mutable=["batch_stats"]`.
  """
  spec(arch)  # validates the name
  if pooling not in (None, "avg", "max"):
    raise ValueError(f"pooling must be None, 'avg' or 'max', got {pooling!r}")
  kwargs = {} if dtype is None else {"dtype": dtype}
  return _CONSTRUCTORS[arch](num_classes=num_classes, include_top=include_top,
                             pooling=pooling, dropout_rate=dropout_rate, **kwargs)
