"""The persistent XLA compilation cache that the command lines turn on."""

import os
import subprocess
import sys

_PROGRAM = """
import jax, jax.numpy as jnp
from jaxdrift import xla_cache
print(xla_cache.enable_compilation_cache())
jax.jit(lambda x: jnp.sin(x) * 2)(jnp.arange(4.0)).block_until_ready()
"""


def _run(env_extra, tmp_path):
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(("JAX_COMPILATION_CACHE", "JAX_PERSISTENT_CACHE", "JAXDRIFT_"))}
  env.update(env_extra, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  return subprocess.run([sys.executable, "-c", _PROGRAM], env=env, cwd=tmp_path,
                        capture_output=True, text=True, check=True).stdout.strip()


def test_default_cache_is_under_jaxdrift_cache_and_receives_programs(tmp_path):
  root = tmp_path / "cache root"
  printed = _run({"JAXDRIFT_CACHE": str(root)}, tmp_path)
  assert printed == str(root / "xla")
  assert any((root / "xla").iterdir()), "the compiled program was not written to the cache"


def test_the_switch_turns_it_off(tmp_path):
  root = tmp_path / "cache root"
  printed = _run({"JAXDRIFT_CACHE": str(root), "JAXDRIFT_XLA_CACHE": "0"}, tmp_path)
  assert printed == "None" and not root.exists()
