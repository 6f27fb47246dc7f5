"""Shared fixtures and the suite's XLA settings.

Keras (the parity reference) runs on its JAX backend, without TensorFlow. Compiling is most
of this suite's time on a 2-core CPU, so before JAX starts the suite (and every subprocess,
notebook kernel and pipeline it runs, through the environment):
- compiles at XLA's optimisation level 1 instead of 3. On the reduced models' train steps
  that compiles 1.3x to 1.6x faster (InceptionV3's at 235 px: 45 s -> 28 s) and runs as
  fast, but it rounds some sums differently (DenseNet201's state after two steps differed in
  21% of its elements, by about 1e-6 relative), and over the demo's training those
  differences grow into another run. So the suite uses it and the command lines do not:
  the README's demo results are those of XLA's defaults.
- shares a persistent compilation cache, new and empty for each session, so that the
  programs several tests build (the smoke runs' train steps, the CAM programs) compile once.
  Set JAX_COMPILATION_CACHE_DIR to keep one across sessions instead.
"""

import os
import shutil
import tempfile

os.environ.setdefault("KERAS_BACKEND", "jax")
# (Not `xla_env.flags`: it imports jax, and JAX reads these variables when it is imported.)
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             " --xla_backend_optimization_level=1").strip()
_SESSION_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _SESSION_CACHE = tempfile.mkdtemp(prefix="jaxdrift-xla-cache-")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _SESSION_CACHE
  # Cache every program: the suite's are small, and most compile in under JAX's 1 s floor.
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"


def pytest_unconfigure(config):
  if _SESSION_CACHE is not None:
    shutil.rmtree(_SESSION_CACHE, ignore_errors=True)

