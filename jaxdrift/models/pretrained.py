"""ImageNet backbones for transfer learning: download (md5-checked), cache, convert.

The official notop files of keras.applications are fetched once into a cache directory,
`$JAXDRIFT_CACHE` or `~/.cache/jaxdrift`; a file that Keras already downloaded into
`~/.keras/models` is used as it is. Files are verified against the md5 that Keras pins in
its source. Nothing is unpickled.
"""

import hashlib
import os
import pathlib
import shutil
import tempfile
import urllib.error
import urllib.request

import flax.linen as nn
import jax

from jaxdrift.models import registry
from jaxdrift.models.keras_h5 import (flatten_tree, keras_to_flat, read_keras_h5, strict_merge,
                                      unflatten_tree)

_BASE = "https://storage.googleapis.com/tensorflow/keras-applications/"
# (folder, file stem, md5 with top, md5 without top), from keras/src/applications/*.py.
_FILES = {
    "densenet201": ("densenet", "densenet201_weights_tf_dim_ordering_tf_kernels",
                    "1ceb130c1ea1b78c3bf6114dbdfd8807", "c13680b51ded0fb44dff2d8f86ac8bb1"),
    "resnet50v2": ("resnet", "resnet50v2_weights_tf_dim_ordering_tf_kernels",
                   "3ef43a0b657b3be2300d5770ece849e0", "fac2f116257151a9d068a22e544a4917"),
    "inceptionv3": ("inception_v3", "inception_v3_weights_tf_dim_ordering_tf_kernels",
                    "9a0d58056eeedaa3f26cb7ebd46da564", "bcbd6486424b2319ff4ef7d526e38f63"),
}


def weights_url(arch: str, include_top: bool = False) -> tuple[str, str, str]:
  """(url, file name, md5) of the official ImageNet weight file of `arch`."""
  if arch not in _FILES:
    raise ValueError(f"no ImageNet weights for {arch!r}; they exist for {', '.join(_FILES)} "
                     "(the reduced variants have none: use weights='none' or a file).")
  folder, stem, md5_top, md5_notop = _FILES[arch]
  name = f"{stem}.h5" if include_top else f"{stem}_notop.h5"
  return f"{_BASE}{folder}/{name}", name, md5_top if include_top else md5_notop


def cache_dir() -> pathlib.Path:
  """Where downloaded weight files live: $JAXDRIFT_CACHE, else ~/.cache/jaxdrift."""
  return pathlib.Path(os.environ.get("JAXDRIFT_CACHE", "~/.cache/jaxdrift")).expanduser()


def md5sum(path) -> str:
  digest = hashlib.md5()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


def fetch_weights(arch: str, include_top: bool = False, *, timeout: float = 30.0) -> pathlib.Path:
  """Returns the path of the verified official weight file, downloading it if needed.

  Raises:
    RuntimeError: the download failed (offline, say), saying where to put the file by hand;
      or a file is there but its md5 is not the one Keras pins.
  """
  url, name, md5 = weights_url(arch, include_top)
  target = cache_dir() / name
  for candidate in (target, pathlib.Path("~/.keras/models").expanduser() / name):
    if candidate.is_file():
      found = md5sum(candidate)
      if found != md5:
        raise RuntimeError(f"{candidate} has md5 {found}, expected {md5}: the file is damaged "
                           "or not the official one. Delete it and download it again.")
      return candidate
  target.parent.mkdir(parents=True, exist_ok=True)
  try:
    with urllib.request.urlopen(url, timeout=timeout) as response, tempfile.NamedTemporaryFile(
        dir=target.parent, delete=False) as tmp:
      shutil.copyfileobj(response, tmp)
  except (urllib.error.URLError, OSError) as e:
    raise RuntimeError(
        f"could not download {url} ({e}). Without internet, download that file elsewhere and "
        f"put it at {target} (or set JAXDRIFT_CACHE to its folder), or pass a local file with "
        "weights=PATH.") from e
  found = md5sum(tmp.name)
  if found != md5:
    os.unlink(tmp.name)
    raise RuntimeError(f"downloaded {url} has md5 {found}, expected {md5}; try again.")
  os.replace(tmp.name, target)
  return target


def pretrained(arch: str, num_classes: int, weights="imagenet", *, key, input_size=None):
  """Variables for `create(arch, num_classes)`: a converted backbone and a fresh head.

  Args:
    arch: architecture name.
    num_classes: outputs of the new 'predictions' head.
    weights: "imagenet" (official notop file: downloaded once, md5-checked), "none" (random
      initialisation), or the path of a Keras .h5 file of this architecture, with or
      without a top (its top, if any, is replaced by the new head).
    key: PRNG key for the head (and for the whole model with "none").
    input_size: square input size used for initialisation (default: the arch's default).

  Returns:
    {"params": ..., "batch_stats": ...}.
  """
  from jaxdrift.models import abstract_model, create

  model = create(arch, num_classes=num_classes)
  size = input_size or registry.spec(arch).input_size
  x = jax.numpy.zeros((1, size, size, 3), jax.numpy.float32)
  if isinstance(weights, str) and weights == "none":
    # At XLA's optimisation level 0: the initialiser (mostly a threefry hash per parameter)
    # runs once and compiles 3x faster (inceptionv3_tiny: 12 s instead of 30 s on a 2-core CPU).
    init = jax.jit(lambda key: model.init(key, x, train=False)).lower(key).compile(
        compiler_options={"xla_backend_optimization_level": 0})
    return init(key)
  path = fetch_weights(arch) if isinstance(weights, str) and weights == "imagenet" else weights
  file_backbone = {p: a for p, a in keras_to_flat(read_keras_h5(path), arch).items()
                   if p[1] != "predictions"}
  shapes = flatten_tree(abstract_model(model, x.shape)[0])  # one cached trace per process
  backbone = unflatten_tree({p: s for p, s in shapes.items() if p[1] != "predictions"})
  loaded = flatten_tree(strict_merge(backbone, file_backbone, source=os.fspath(path)))
  # The head exactly as model.init would make it (flax Dense defaults), without tracing the
  # whole backbone again.
  features = shapes["params", "predictions", "kernel"].shape[0]
  head = nn.Dense(num_classes).init(key, jax.numpy.zeros((1, features)))["params"]
  return unflatten_tree({**loaded, **{("params", "predictions", k): v for k, v in head.items()}})
