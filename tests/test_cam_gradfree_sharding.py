"""Gradient-free methods sharded over 8 simulated CPU devices equal one device."""

import os
import subprocess
import sys
import textwrap

from tests import xla_env

SCRIPT = textwrap.dedent("""
  import jax, numpy as np
  import jaxdrift as jd
  from tests.test_cam_pipeline import images, small
  assert jax.device_count() == 8
  model, v = small()
  one = jax.make_mesh((1,), ("data",), devices=jax.devices()[:1])
  methods = ("scorecam", "ablationcam", "occlusion", "rise")
  options = dict(layer="relu2", size=4, stride=2, n_masks=6, s=2, chunk=4,
                 key=jax.random.key(2))
  x, t = images(3, seed=11), np.array([0, 3, 1])  # 3 images: padded to 8 and cut back
  out = jd.cam.compute_pair(model, v, v, x, t, methods=methods, **options)
  ref = jd.cam.compute_pair(model, v, v, x, t, methods=methods, mesh=one, **options)
  for m in methods:
    assert out[m].maps.shape[:2] == (2, 3), (m, out[m].maps.shape)
    assert np.abs(np.asarray(ref[m].pre_relu)).max() > 0, m
    np.testing.assert_allclose(out[m].pre_relu, ref[m].pre_relu, rtol=1e-5, atol=1e-6,
                               err_msg=m)
  print("ok")
""")


def test_gradient_free_methods_on_eight_devices_equal_one_device():
  env = {**os.environ, "XLA_FLAGS": xla_env.flags("--xla_force_host_platform_device_count=8"),
         "JAX_PLATFORMS": "cpu"}
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  run = subprocess.run([sys.executable, "-c", SCRIPT], env=env, cwd=root, capture_output=True,
                       text=True, timeout=600)
  assert run.returncode == 0 and "ok" in run.stdout, run.stderr[-3000:]
