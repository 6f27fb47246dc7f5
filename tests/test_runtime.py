"""`jaxdrift.runtime`: the CPU optimisation flag goes only where it was measured."""

import pytest

from jaxdrift import runtime

FLAG = runtime.CPU_OPTIMIZATION_FLAG


@pytest.fixture
def env(monkeypatch):
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  monkeypatch.delenv("JAX_PLATFORMS", raising=False)
  monkeypatch.setattr(runtime, "_accelerator_plugins", lambda: False)
  return monkeypatch


def test_cpu_only_jax_gets_the_flag_after_the_users_own(env):
  env.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
  assert runtime.fast_cpu_compiles()
  assert runtime.os.environ["XLA_FLAGS"] == f"--xla_force_host_platform_device_count=2 {FLAG}"
  assert not runtime.fast_cpu_compiles()  # once only
  assert runtime.os.environ["XLA_FLAGS"].count(FLAG) == 1


def test_a_level_set_by_the_user_is_kept(env):
  env.setenv("XLA_FLAGS", "--xla_backend_optimization_level=3")
  assert not runtime.fast_cpu_compiles()
  assert runtime.os.environ["XLA_FLAGS"] == "--xla_backend_optimization_level=3"


@pytest.mark.parametrize("platforms,plugins,expected", [
    ("cpu", True, True), ("cuda,cpu", False, False), ("tpu", False, False),
    ("", False, True), ("", True, False)])
def test_accelerators_are_left_alone(env, platforms, plugins, expected):
  env.setattr(runtime, "_accelerator_plugins", lambda: plugins)
  if platforms:
    env.setenv("JAX_PLATFORMS", platforms)
  assert runtime.cpu_only() is expected
  assert runtime.fast_cpu_compiles() is expected
  assert (FLAG in runtime.os.environ.get("XLA_FLAGS", "")) is expected
