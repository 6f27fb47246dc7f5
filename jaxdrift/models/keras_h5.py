"""Keras .h5 weight files -> Flax variables, with a strict merge.

Reads both layouts Keras writes:

* the official keras.applications files (weights-only, legacy): root attribute `layer_names`
  (possibly chunked as layer_names0, layer_names1, ...), one group per layer with attribute
  `weight_names`, datasets such as `conv1_conv/conv1_conv/kernel:0`, bytes attributes;
* Keras 3 `model.save("x.h5")`: the same under a `model_weights/` group, str attributes and
  names without `:0`.

Weights are read through `weight_names`, never by building paths. Keras names map to the port
by the rules in `_flax_path`; InceptionV3's generated names (conv2d_k, batch_normalization_k)
are paired by the order of their numbers, which fits both 1-based official files and Keras 3
files whatever their numbering. The result must equal `jax.eval_shape(model.init, ...)` leaf
for leaf, or `WeightFileError` lists what is missing on each side and what has another shape.
Nothing is unpickled: h5py reads plain arrays.
"""

import dataclasses
import os
import re

import h5py
import jax
import jax.numpy as jnp
import numpy as np

from jaxdrift.models import registry

_WEIGHT_ROLES = {
    "kernel": ("params", "kernel"),
    "bias": ("params", "bias"),
    "gamma": ("params", "scale"),
    "beta": ("params", "bias"),
    "moving_mean": ("batch_stats", "mean"),
    "moving_variance": ("batch_stats", "var"),
}
_AUTO_NAME = re.compile(r"^(conv2d|batch_normalization)(?:_(\d+))?$")
# Layer names that only one of the three architectures has, to name a mismatched file.
_SIGNATURES = {"post_bn": "resnet50v2", "post_relu": "resnet50v2", "bn": "densenet201",
               "relu": "densenet201", "mixed10": "inceptionv3"}


class WeightFileError(ValueError):
  """A Keras weight file that cannot be read or does not fit the requested architecture."""


@dataclasses.dataclass
class KerasWeights:
  """The weights of a Keras .h5 file, in file order.

  Attributes:
    layers: layer name -> list of (weight name, array), for layers that hold weights.
    layer_names: every layer name the file lists (also weightless ones), in model order.
    layout: "official" (root-level legacy file) or "keras3" (`model.save` under model_weights).
    keras_version: as recorded in the file ("" when absent).
  """

  layers: dict[str, list[tuple[str, np.ndarray]]]
  layer_names: list[str]
  layout: str
  keras_version: str


def _text(value) -> str:
  return value.decode("utf8") if isinstance(value, bytes) else str(value)


def _attr_list(node, name: str) -> list[str] | None:
  """A list attribute, joining Keras's chunks `name0`, `name1`, ... when it was split."""
  if name in node.attrs:
    return [_text(v) for v in node.attrs[name]]
  chunks, i = [], 0
  while f"{name}{i}" in node.attrs:
    chunks.extend(_text(v) for v in node.attrs[f"{name}{i}"])
    i += 1
  return chunks if i else None


def read_keras_h5(path) -> KerasWeights:
  """Reads every weight of a Keras .h5 file (either layout) into numpy arrays.

  Raises:
    WeightFileError: not an HDF5 file, truncated, or not a Keras weight file.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise WeightFileError(f"{path}: no such file")
  if not h5py.is_hdf5(path):
    raise WeightFileError(f"{path} is not an HDF5 file; expected a Keras .h5 weight file "
                          "(keras.applications weights or Keras 3 model.save('x.h5')).")
  try:
    with h5py.File(path, "r") as f:
      layout, root = ("keras3", f["model_weights"]) if "model_weights" in f else ("official", f)
      layer_names = _attr_list(root, "layer_names")
      if layer_names is None and isinstance(f.get("layers"), h5py.Group):
        raise WeightFileError(
            f"{path} is a Keras 3 weights file (`model.save_weights('x.weights.h5')`: "
            "layers/<name>/vars/<i>, variables by position, no names), which jaxdrift does "
            "not read. Pass the keras.applications .h5 file instead, or in Keras load these "
            "weights into the model and write the legacy layout with model.save('x.h5').")
      if layer_names is None:
        raise WeightFileError(
            f"{path} is an HDF5 file but not a Keras weight file: it has no 'layer_names' "
            "attribute (at the root or under 'model_weights').")
      layers = {}
      for name in layer_names:
        if name not in root:
          raise WeightFileError(f"{path}: layer {name!r} is listed but has no group; the "
                                "file is incomplete.")
        weight_names = _attr_list(root[name], "weight_names") or []
        if weight_names:
          layers[name] = [(_text(w), _weight_array(path, root[name], w)) for w in weight_names]
      version = _text(root.attrs.get("keras_version", f.attrs.get("keras_version", "")))
  except WeightFileError:
    raise
  except (OSError, KeyError, ValueError) as e:
    raise WeightFileError(f"{path}: cannot read the weights ({type(e).__name__}: {e}); the "
                          "file is truncated or damaged. Download it again.") from e
  _check_finite(path, layers)
  return KerasWeights(layers, layer_names, layout, version)


def _weight_array(path, group, weight_name) -> np.ndarray:
  """One weight dataset as a numeric numpy array, or a WeightFileError naming it."""
  node = group[weight_name]
  if not isinstance(node, h5py.Dataset):
    raise WeightFileError(f"{path}: {node.name} should be a weight tensor (an HDF5 dataset), "
                          f"found a {type(node).__name__}; the file is damaged or not a "
                          "Keras weight file.")
  if node.dtype.kind not in "fiu":
    raise WeightFileError(f"{path}: dataset {node.name} holds {node.dtype} "
                          f"({'strings' if node.dtype.kind in 'SUO' else 'not numbers'}), "
                          "expected float weights; the file is damaged or not a Keras weight "
                          "file. Download or write it again.")
  return np.asarray(node)


def _check_finite(path, layers) -> None:
  """A WeightFileError naming every tensor with NaN or Inf values."""
  bad = [f"{layer}/{name} ({int(np.sum(~np.isfinite(a)))} of {a.size})"
         for layer, arrays in layers.items() for name, a in arrays
         if a.dtype.kind == "f" and not np.all(np.isfinite(a))]
  if bad:
    more = f" ... and {len(bad) - 12} more" if len(bad) > 12 else ""
    raise WeightFileError(f"{path}: {len(bad)} weight tensor(s) hold NaN or Inf values: "
                          f"{', '.join(bad[:12])}{more}. These weights come from a diverged "
                          "or damaged model; use another file.")


def _inception_renames(layer_names) -> dict[str, str]:
  """Maps a file's InceptionV3 auto names to the port's, pairing them by numeric order."""
  by_prefix = {}
  for name in layer_names:
    m = _AUTO_NAME.match(name)
    if m:
      by_prefix.setdefault(m.group(1), []).append((int(m.group(2) or 0), name))
  renames = {}
  for prefix, numbered in by_prefix.items():
    for rank, (_, name) in enumerate(sorted(numbered)):
      renames[name] = prefix if rank == 0 else f"{prefix}_{rank}"
  return renames


def _flax_path(layer: str, weight_name: str) -> tuple[str, str, str]:
  """(collection, module, leaf) of one Keras weight, e.g. ("params", "conv1_conv", "kernel")."""
  role = weight_name.split("/")[-1].split(":")[0]
  if role not in _WEIGHT_ROLES:
    raise WeightFileError(f"layer {layer!r} has a weight {weight_name!r} of unknown kind "
                          f"{role!r}; expected one of {', '.join(_WEIGHT_ROLES)}.")
  collection, leaf = _WEIGHT_ROLES[role]
  return collection, layer, leaf


def keras_to_flat(weights: KerasWeights, arch: str) -> dict[tuple[str, str, str], np.ndarray]:
  """Flat {(collection, module, leaf): array} in the port's naming."""
  renames = (_inception_renames(weights.layer_names)
             if registry.spec(arch).family == "inceptionv3" else {})
  flat = {}
  for layer, arrays in weights.layers.items():
    name = renames.get(layer, layer.replace("/", "_"))  # old DenseNet files: conv1/conv
    for weight_name, array in arrays:
      flat[_flax_path(name, weight_name)] = array
  return flat


def flatten_tree(tree) -> dict[tuple, object]:
  return {tuple(k.key for k in path): leaf
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def unflatten_tree(flat: dict[tuple, object]) -> dict:
  tree = {}
  for path, leaf in flat.items():
    node = tree
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = leaf
  return tree


def _guess_arch(layer_names) -> str | None:
  for name in layer_names:
    if name in _SIGNATURES:
      return _SIGNATURES[name]
  if any(_AUTO_NAME.match(name) for name in layer_names):
    return "inceptionv3"
  return None


def _listing(paths, limit=12) -> str:
  names = ["/".join(p) for p in sorted(paths)]
  more = f" ... and {len(names) - limit} more" if len(names) > limit else ""
  return ", ".join(names[:limit]) + more


def strict_merge(expected: dict, flat: dict, *, source: str, hint: str = "") -> dict:
  """Builds a variables tree from `flat` that matches `expected` (an eval_shape tree) exactly.

  Raises:
    WeightFileError: listing the names missing from the file, the names the model does not
      have, and the shape conflicts.
  """
  want = flatten_tree(expected)
  missing = set(want) - set(flat)
  unexpected = set(flat) - set(want)
  conflicts = [f"{'/'.join(p)}: file {tuple(flat[p].shape)} vs model {tuple(want[p].shape)}"
               for p in sorted(set(want) & set(flat)) if tuple(flat[p].shape) != want[p].shape]
  if missing or unexpected or conflicts:
    lines = [f"{source} does not fit the model{hint}:"]
    if missing:
      lines.append(f"  missing from the file ({len(missing)}): {_listing(missing)}")
    if unexpected:
      lines.append(f"  in the file but not in the model ({len(unexpected)}): "
                   f"{_listing(unexpected)}")
    if conflicts:
      more = f" ... and {len(conflicts) - 12} more" if len(conflicts) > 12 else ""
      lines.append(f"  shape conflicts ({len(conflicts)}): {'; '.join(conflicts[:12])}{more}")
    raise WeightFileError("\n".join(lines))
  return unflatten_tree({p: jnp.asarray(flat[p], want[p].dtype) for p in want})


def load_keras_h5(arch: str, path) -> dict:
  """Loads a Keras .h5 file into variables for `create(arch, ...)`.

  The file decides the head: with a 'predictions' layer the variables are for
  `create(arch, num_classes=<its units>, include_top=True)`, without one (a notop file) for
  `create(arch, include_top=False)`.

  Args:
    arch: architecture name (see `jaxdrift.models.ARCHS`).
    path: an official keras.applications file or a Keras 3 `model.save("x.h5")` file.

  Returns:
    {"params": ..., "batch_stats": ...} equal in structure and shapes to `model.init`.

  Raises:
    WeightFileError: the file is unreadable or does not fit the architecture exactly.
  """
  from jaxdrift.models import create  # the constructors import this module

  weights = read_keras_h5(path)
  flat = keras_to_flat(weights, arch)
  top = flat.get(("params", "predictions", "kernel"))
  include_top = top is not None
  model = create(arch, num_classes=top.shape[-1] if include_top else 1000,
                 include_top=include_top)
  size = registry.spec(arch).input_size
  x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  expected = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
  guess = _guess_arch(weights.layer_names)
  family = registry.spec(arch).family
  hint = f" (it looks like a {guess} file, not {arch})" if guess and guess != family else ""
  return strict_merge(expected, flat, source=os.fspath(path), hint=hint)



def save_keras_h5(variables: dict, path) -> None:
  """Writes variables as a legacy weights-only .h5 file in the official layout.

  Layer groups are named as the port names them (which are the Keras names), so the file
  loads back with `load_keras_h5` and with any reader that matches layers by name. Keras's
  own `load_weights` matches legacy files by layer order instead, which this file does not
  promise.
  """
  flat = flatten_tree(variables)
  roles = {("params", "kernel"): "kernel", ("params", "scale"): "gamma",
           ("params", "bias"): "bias", ("batch_stats", "mean"): "moving_mean",
           ("batch_stats", "var"): "moving_variance"}
  layers = {}
  for (collection, layer, leaf), value in flat.items():
    role = roles[collection, leaf]
    if role == "bias" and ("batch_stats", layer, "mean") in flat:
      role = "beta"
    layers.setdefault(layer, {})[role] = np.asarray(value)
  with h5py.File(os.fspath(path), "w") as f:
    f.attrs["layer_names"] = np.array([n.encode("utf8") for n in layers])
    f.attrs["backend"] = b"jax"
    f.attrs["keras_version"] = b"jaxdrift"
    for layer, weights in layers.items():
      group = f.create_group(layer)
      names = [f"{layer}/{role}:0" for role in _WEIGHT_ROLES if role in weights]
      for name, role in zip(names, [r for r in _WEIGHT_ROLES if r in weights]):
        group.create_dataset(name, data=weights[role])
      group.attrs["weight_names"] = np.array([n.encode("utf8") for n in names])
