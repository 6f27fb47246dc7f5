"""Compile once, ever: JAX's persistent compilation cache under jaxdrift's cache root.

    import jaxdrift as jd
    jd.enable_compilation_cache()      # first thing in a script, CLI or notebook

Every program XLA compiles (train steps, attribution, metrics, initialisers) is written to
`$JAXDRIFT_CACHE/xla` (default `~/.cache/jaxdrift/xla`, next to the downloaded weights), and
a later process that builds the same program on the same machine and jax version loads it
instead of compiling it again. Nothing happens on import: the command lines, `run_pipeline`
and the notebooks call `enable_compilation_cache()`; a library user calls it or not.

Turned off by `JAXDRIFT_XLA_CACHE=0` in the environment or `enabled=False`. A cache that the
user configured already (`JAX_COMPILATION_CACHE_DIR` or `jax.config`'s
`jax_compilation_cache_dir`, as the test suite does) is kept as it is.
"""

import logging
import os
import pathlib

import jax
from jax.experimental.compilation_cache import compilation_cache

from jaxdrift.models.pretrained import cache_dir

ENV_SWITCH = "JAXDRIFT_XLA_CACHE"
# Programs that compile faster than this are not written (JAX's default floor is 1 s, which
# skips most of the small programs a run builds; together they cost seconds per process).
MIN_COMPILE_SECONDS = 0.0
_OFF = ("0", "false", "no", "off")


def default_dir() -> pathlib.Path:
  """`$JAXDRIFT_CACHE/xla`, else `~/.cache/jaxdrift/xla`."""
  return cache_dir() / "xla"


def enable_compilation_cache(path=None, *, enabled: bool | None = None) -> pathlib.Path | None:
  """Turns on JAX's persistent compilation cache for this process.

  Call it before the first jit compile (it also works later: the cache then serves the
  programs compiled from then on).

  Args:
    path: cache directory (default: an existing JAX setting, else `default_dir()`).
    enabled: False turns nothing on; None reads `$JAXDRIFT_XLA_CACHE` ("0", "false", "no",
      "off" turn it off; anything else or unset: on).

  Returns:
    the directory in use, or None when disabled.
  """
  if enabled is None:
    enabled = os.environ.get(ENV_SWITCH, "1").strip().lower() not in _OFF
  if not enabled:
    return None
  existing = (jax.config.jax_compilation_cache_dir
              or os.environ.get("JAX_COMPILATION_CACHE_DIR"))
  if path is None and existing:
    return pathlib.Path(existing)
  target = pathlib.Path(path).expanduser() if path is not None else default_dir()
  try:
    target.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    logging.getLogger(__name__).warning(
        "XLA compilation cache not enabled: cannot create %s (%s); set JAXDRIFT_CACHE to a "
        "writable folder or %s=0", target, e, ENV_SWITCH)
    return None
  if existing != str(target):
    jax.config.update("jax_compilation_cache_dir", str(target))
    # A compile before this call has already decided "no cache" for the process.
    compilation_cache.reset_cache()
  if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
  return target
