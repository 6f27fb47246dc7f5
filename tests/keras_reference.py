"""Keras Applications models as parity references, and weight files in both layouts.

The official keras.applications files cannot be downloaded here, so the tests build the
Keras models with `weights=None`, randomise every BatchNormalization's statistics (the
defaults 0 and 1 would hide swapped mean and variance), save them with Keras 3
(`model.save("x.h5")`, the `model_weights/` layout) and rewrite that file in the official
layout: root-level groups, bytes attributes, `:0` suffixes, `layer/layer/kernel:0` scopes,
a chunked `layer_names` attribute, 1-based InceptionV3 auto names and DenseNet's
`conv1/conv` names.
"""

import dataclasses
import re

import h5py
import numpy as np

CONSTRUCTORS = {"densenet201": "DenseNet201", "resnet50v2": "ResNet50V2",
                "inceptionv3": "InceptionV3"}


@dataclasses.dataclass
class Reference:
  model: object  # keras.Model with a logits head, any input size
  keras3_h5: str
  official_h5: str
  notop_h5: str


def build(arch: str, num_classes: int, seed: int = 0):
  """A Keras model of `arch` with a `num_classes` logits head that accepts any input size.

  `include_top=True` pins the input size, so the head is added by hand with the same layer
  names ('avg_pool', 'predictions') and `classifier_activation=None` semantics.
  """
  import keras

  keras.backend.clear_session()  # fresh auto names: conv2d, conv2d_1, ...
  base = getattr(keras.applications, CONSTRUCTORS[arch])(
      include_top=False, weights=None, input_shape=(None, None, 3))
  x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(base.output)
  x = keras.layers.Dense(num_classes, name="predictions")(x)
  model = keras.Model(base.input, x)
  rng = np.random.default_rng(seed)
  for layer in model.layers:
    if isinstance(layer, keras.layers.BatchNormalization):
      c = layer.moving_mean.shape
      layer.moving_mean.assign(rng.normal(0, 0.2, c).astype("float32"))
      layer.moving_variance.assign(rng.uniform(0.5, 2.0, c).astype("float32"))
      layer.beta.assign(rng.normal(0, 0.1, c).astype("float32"))
      if layer.gamma is not None:
        layer.gamma.assign(rng.uniform(0.5, 1.5, c).astype("float32"))
  return model, base


def official_name(arch: str, name: str) -> str:
  if arch == "inceptionv3":
    m = re.match(r"^(conv2d|batch_normalization)(?:_(\d+))?$", name)
    if m:
      return f"{m.group(1)}_{int(m.group(2) or 0) + 1}"
  if arch == "densenet201" and name in ("conv1_conv", "conv1_bn", "conv1_relu"):
    return name.replace("_", "/")
  return name


def write_official(keras3_path: str, out_path: str, arch: str, chunks: int = 3):
  """Rewrites a Keras 3 `model.save` .h5 file in the official keras.applications layout."""
  with h5py.File(keras3_path, "r") as src, h5py.File(out_path, "w") as dst:
    root = src["model_weights"]
    names = [official_name(arch, str(n)) for n in root.attrs["layer_names"]]
    encoded = np.array([n.encode("utf8") for n in names])
    for i, part in enumerate(np.array_split(encoded, chunks)):  # Keras chunks long lists
      dst.attrs[f"layer_names{i}"] = part
    dst.attrs["backend"] = b"tensorflow"
    dst.attrs["keras_version"] = b"2.1.6"
    for old, new in zip(root.attrs["layer_names"], names):
      group = dst.create_group(new)
      weight_names = []
      for w in root[str(old)].attrs["weight_names"]:
        role = str(w).split("/")[-1]
        scope = "predictions_1" if new == "predictions" else new  # seen in official files
        name = f"{scope}/{role}:0"
        group.create_dataset(name, data=np.asarray(root[str(old)][str(w)]))
        weight_names.append(name.encode("utf8"))
      group.attrs["weight_names"] = np.array(weight_names, dtype="S")


def make(arch: str, directory, num_classes: int = 7) -> Reference:
  model, base = build(arch, num_classes)
  keras3 = str(directory / f"{arch}_keras3.h5")
  official = str(directory / f"{arch}_official.h5")
  notop = str(directory / f"{arch}_notop.h5")
  model.save(keras3)
  write_official(keras3, official, arch)
  base.save(notop)
  return Reference(model, keras3, official, notop)
