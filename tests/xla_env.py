"""XLA helpers for tests: subprocess flags, and counting compiles under the suite's cache."""

import contextlib
import os

import jax

_BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"
_CACHED_COMPILE = "/jax/compilation_cache/compile_requests_use_cache"


def flags(*extra: str) -> str:
  """XLA_FLAGS for a subprocess: the suite's own (conftest) plus `extra`."""
  return " ".join([os.environ.get("XLA_FLAGS", ""), *extra]).strip()


@contextlib.contextmanager
def count_compiles():
  """Yields a list that stays empty unless a program is compiled inside the block.

  With the persistent compilation cache on (conftest), a program compiled again may be
  read from the cache and never reach XLA's compiler: such requests are listed as well.
  """
  compiles = []

  def on_duration(event, duration, **kwargs):
    if event == _BACKEND_COMPILE:
      compiles.append(event)

  def on_event(event, **kwargs):
    if event == _CACHED_COMPILE:
      compiles.append(event)

  jax.monitoring.register_event_duration_secs_listener(on_duration)
  jax.monitoring.register_event_listener(on_event)
  try:
    yield compiles
  finally:
    jax.monitoring.unregister_event_duration_listener(on_duration)
    jax.monitoring.unregister_event_listener(on_event)
