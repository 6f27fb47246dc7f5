"""Per-architecture facts shared by the ports, the converter and the pipeline.

Every architecture name (the three paper backbones and their reduced test variants) maps to
one `ArchSpec`: its Keras preprocessing mode, default input size, minimum input size and the
layer that attribution uses by default (the canonical last feature map, see docs/attribution.md).
"""

import dataclasses

import jax.numpy as jnp
import numpy as np

ARCHS = ("densenet201", "resnet50v2", "inceptionv3")

_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class ArchSpec:
  """What the rest of jaxdrift needs to know about an architecture.

  Attributes:
    family: the paper backbone this is (or is a reduced variant of).
    preprocess_mode: Keras `preprocess_input` mode, "tf" (x / 127.5 - 1) or "torch".
    input_size: default square input size in pixels.
    min_size: smallest input size the architecture accepts.
    cam_layer: Keras name of the canonical last feature map.
    cam_grid: (stride, offset) in input pixels: cell i of the canonical feature map (and of
      every later layer of the same size) is centred on input pixel offset + stride * i, the
      centre of its receptive field, for every input size. From the Keras padding and
      strides: ResNet50V2 pads explicitly before each stride-2 layer (2i each time: 32i);
      DenseNet201's three 2x2 average pools add half a pixel each (32i + 14); InceptionV3's
      valid convolutions and pools add one pixel each (32i + 37).
  """

  family: str
  preprocess_mode: str
  input_size: int
  min_size: int
  cam_layer: str
  cam_grid: tuple


SPECS = {
    "densenet201": ArchSpec("densenet201", "torch", 224, 32, "relu", (32, 14)),
    "resnet50v2": ArchSpec("resnet50v2", "tf", 224, 32, "post_relu", (32, 0)),
    "inceptionv3": ArchSpec("inceptionv3", "tf", 299, 75, "mixed10", (32, 37)),
    # Reduced variants: same block structure and layer names, fewer blocks and channels, for
    # tests and CPU demos. Their default sizes are small on purpose.
    "densenet_tiny": ArchSpec("densenet201", "torch", 64, 32, "relu", (32, 14)),
    "resnetv2_tiny": ArchSpec("resnet50v2", "tf", 64, 32, "post_relu", (32, 0)),
    "inceptionv3_tiny": ArchSpec("inceptionv3", "tf", 75, 75, "mixed10", (32, 37)),
}

TINY = {"densenet201": "densenet_tiny", "resnet50v2": "resnetv2_tiny",
        "inceptionv3": "inceptionv3_tiny"}


def spec(arch: str) -> ArchSpec:
  """Returns the `ArchSpec` of `arch`, or raises a ValueError listing the known names."""
  try:
    return SPECS[arch]
  except KeyError:
    raise ValueError(
        f"unknown architecture {arch!r}; expected one of {', '.join(SPECS)}") from None


def default_input_size(arch: str) -> int:
  """Default square input size: 224 (DenseNet201, ResNet50V2), 299 (InceptionV3)."""
  return spec(arch).input_size


def default_cam_layer(arch: str) -> str:
  """Keras name of the canonical last feature map: "relu", "post_relu" or "mixed10"."""
  return spec(arch).cam_layer


def cam_grid(arch: str, input_size: int, resolution: int | None = None):
  """Where the canonical feature map's cells sit in the image: (stride, offset) such that
  cell i is centred on pixel offset + stride * i (rows and columns alike).

  Pass it as `grid` to `jd.metrics.upsample`, `localize`, `pointing_game` and `drift` to
  place the map where the network computed it, instead of half-pixel centres (which put
  ResNet50V2's cells half a cell too far down and right, and spread InceptionV3's 32-pixel
  grid over the whole image). It holds for every layer after the network's last stride,
  i.e. every layer with the canonical layer's spatial size.

  Args:
    arch: architecture name.
    input_size: the model's square input size in pixels.
    resolution: the size of the image the map is placed on (a mask or display image
      resized from the input); default `input_size`.
  """
  stride, offset = spec(arch).cam_grid
  scale = (resolution or input_size) / input_size
  return stride * scale, (offset + 0.5) * scale - 0.5


def preprocess(arch: str, images):
  """Maps pixel values in 0..255 to the input range the architecture was trained with.

  Follows `keras.applications.<arch>.preprocess_input`: mode "tf" (ResNet50V2, InceptionV3)
  gives x / 127.5 - 1; mode "torch" (DenseNet201) gives (x / 255 - mean) / std per RGB
  channel. Unlike Keras's numpy path, the input is never modified in place.

  Args:
    arch: architecture name.
    images: uint8 or float array [..., H, W, 3] with values in 0..255 (numpy or jax).

  Returns:
    float32 array of the same shape (a jax array for jax input, numpy for numpy input).
  """
  xp = np if isinstance(images, np.ndarray) else jnp
  x = xp.asarray(images).astype(xp.float32)
  if x.shape[-1] != 3:
    raise ValueError(f"expected RGB images with 3 channels last, got shape {x.shape}")
  if spec(arch).preprocess_mode == "tf":
    return x / 127.5 - 1.0
  mean = xp.asarray(_TORCH_MEAN, xp.float32)
  std = xp.asarray(_TORCH_STD, xp.float32)
  return (x / 255.0 - mean) / std
