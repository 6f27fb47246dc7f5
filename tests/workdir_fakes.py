"""A drift-stage workdir without training: two checkpoints of the tiny ResNet50V2 written
straight from two initialisations, for tests of the stage and the report."""

import pathlib

import jax
import numpy as np

import jaxdrift as jd

CLASSES = ["lobar_consolidation", "peripheral_ground_glass", "no_lesion",
           "upper_lobe_nodules", "diffuse_bilateral"]


def two_checkpoint_workdir(root: pathlib.Path, data_dir, size: int = 64) -> pathlib.Path:
  """ROOT/resnet50v2 with config.json and TL / FT checkpoints of resnetv2_tiny at `size` px
  on the small phantoms in `data_dir` (two random inits, the FT one a small step away from
  the TL one, so that the maps differ but stay related)."""
  model_arch = "resnetv2_tiny"
  model = jd.models.create(model_arch, len(CLASSES))
  shape = np.zeros((1, size, size, 3), np.float32)  # the init program the sanity checks use
  tl = jd.faithfulness.init_variables(model, jax.random.key(0), shape)
  noise = jd.faithfulness.init_variables(model, jax.random.key(1), shape)
  ft = jax.tree.map(lambda a, b: a + 0.3 * b, tl, noise)
  workdir = root / "resnet50v2"
  jd.workdir.write_config(workdir, {
      "arch": "resnet50v2", "model_arch": model_arch, "reduced": True, "preset": "smoke",
      "data": "phantoms/small", "data_options": {}, "data_dir": str(data_dir),
      "input_size": size, "num_classes": len(CLASSES), "class_names": CLASSES,
      "dropout_rate": 0.0, "seed": 0})
  for name, variables in (("tl", tl), ("ft", ft)):
    jd.train.checkpoint.save_named(workdir, name, variables["params"],
                                   variables["batch_stats"], {"phase": name})
  return workdir
