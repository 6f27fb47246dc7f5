"""Process-wide XLA settings for jaxdrift's command lines, benchmarks and test suite.

    from jaxdrift import runtime
    runtime.fast_cpu_compiles()   # before the first JAX computation of the process

XLA reads `XLA_FLAGS` once, when JAX starts its backends (the first computation or
`jax.devices()`); calling this later changes nothing. `import jaxdrift` never calls it: a
library should not change its importer's compiler, so the `experiments` command lines do.
"""

import importlib.metadata
import importlib.util
import os

# XLA's CPU backend compiles at LLVM optimisation level 3 by default. Level 1 compiles the
# reduced models' train steps 1.3x to 1.6x faster (InceptionV3 tiny at 235 px: 45 s -> 28 s
# on a 2-core CPU) and runs them as fast; level 0 halves compile time again but runs 2.2x
# slower. Results are float32 all the same, but not always bitwise the same as level 3's:
# after two steps the train states of ResNet50V2 and InceptionV3 (reduced) were bitwise
# equal; DenseNet201's (reduced) differed in 21% of its elements, by a few roundings (the
# median leaf's largest relative difference 8e-7).
CPU_OPTIMIZATION_FLAG = "--xla_backend_optimization_level=1"


def _accelerator_plugins() -> bool:
  """Whether JAX may find a GPU or TPU backend (a PJRT plugin or libtpu is installed)."""
  if importlib.util.find_spec("libtpu") is not None:
    return True
  if importlib.metadata.entry_points(group="jax_plugins"):
    return True
  return importlib.util.find_spec("jax_plugins") is not None


def cpu_only() -> bool:
  """Whether this process's JAX can only run on the CPU (`JAX_PLATFORMS`, else plugins)."""
  platforms = os.environ.get("JAX_PLATFORMS", "").strip()
  if platforms:
    return {p.strip() for p in platforms.split(",") if p.strip()} == {"cpu"}
  return not _accelerator_plugins()


def fast_cpu_compiles() -> bool:
  """Adds `CPU_OPTIMIZATION_FLAG` to `XLA_FLAGS` on a CPU-only JAX; returns whether it did.

  Leaves `XLA_FLAGS` alone when it already sets the optimisation level, and on machines
  with an accelerator (the flag also applies to GPU code generation, where it was not
  measured).
  """
  flags = os.environ.get("XLA_FLAGS", "")
  if "xla_backend_optimization_level" in flags or not cpu_only():
    return False
  os.environ["XLA_FLAGS"] = f"{flags} {CPU_OPTIMIZATION_FLAG}".strip()
  return True
