"""jaxdrift: how fine-tuning moves a classifier's visual evidence, in JAX/Flax.

Subpackages are imported on first use, so ``import jaxdrift as jd`` is cheap and has no side
effects: ``jd.models``, ``jd.data``, ``jd.train``, ``jd.cam``, ``jd.metrics``, ``jd.study``,
``jd.report``. ``jd.enable_compilation_cache()`` turns on the persistent XLA compilation
cache (`jaxdrift.xla_cache`).
"""

import importlib

__version__ = "0.1.0"

_SUBMODULES = ("models", "data", "train", "cam", "metrics", "faithfulness", "study", "report",
               "geometry", "results", "pipeline")


def __getattr__(name):
  if name in _SUBMODULES:
    module = importlib.import_module(f"{__name__}.{name}")
    globals()[name] = module
    return module
  if name == "enable_compilation_cache":
    from jaxdrift.xla_cache import enable_compilation_cache
    return enable_compilation_cache
  raise AttributeError(f"module 'jaxdrift' has no attribute {name!r}")


def __dir__():
  return sorted(list(globals()) + list(_SUBMODULES) + ["enable_compilation_cache"])
