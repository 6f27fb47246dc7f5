"""Shared fixtures and the suite's XLA settings.

Keras (the parity reference) runs on its JAX backend, without TensorFlow. Compiling is most
of this suite's time on a 2-core CPU, so before JAX starts the suite (and every subprocess,
notebook kernel and pipeline it runs, through the environment):
- compiles at XLA's CPU optimisation level 1 (`jaxdrift.runtime`, as the command lines do);
- shares a persistent compilation cache, new and empty for each session, so that the
  programs several tests build (the smoke runs' train steps, the CAM programs) compile once.
  Set JAX_COMPILATION_CACHE_DIR to keep one across sessions instead.
"""

import os
import shutil
import tempfile

from jaxdrift import runtime

os.environ.setdefault("KERAS_BACKEND", "jax")
runtime.fast_cpu_compiles()
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

