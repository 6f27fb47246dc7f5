"""Deletion and ROAD sharded over 8 simulated CPU devices equal the same on one device."""

import json
import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
  import os
  flags = os.environ.get("XLA_FLAGS", "")  # the suite's own (conftest), plus 8 devices
  os.environ["XLA_FLAGS"] = flags + " --xla_force_host_platform_device_count=8"
  import functools
  import json
  import jax
  import jax.numpy as jnp
  import numpy as np
  import jaxdrift as jd

  F = jd.faithfulness
  assert len(jax.devices()) == 8, jax.devices()
  rng = np.random.default_rng(0)
  images = rng.standard_normal((8, 8, 8, 3)).astype(np.float32)
  weights = jnp.asarray(rng.standard_normal((8, 8, 3, 4)).astype(np.float32))
  maps = rng.random((8, 4, 4)).astype(np.float32)
  targets = np.array([0, 1, 2, 3, 3, 2, 1, 0])
  fn = functools.partial(lambda w, x: jnp.einsum("bhwc,hwck->bk", jnp.tanh(x), w), weights)
  one = jd.metrics.data_mesh(jax.devices()[:1])
  report = {}
  for name, call in (
      ("deletion", lambda mesh: F.deletion(fn, images, maps, targets, steps=6, chunk=4,
                                           mesh=mesh)),
      # 5 images: padded to 8 for the 8 devices, the padding cut again.
      ("road", lambda mesh: F.road(fn, images[:5], maps[:5], targets[:5], fractions=(0.3, 0.7),
                                   key=jax.random.split(jax.random.key(0), 5), mesh=mesh))):
    eight, single = call(None)["curve"], call(one)["curve"]
    report[name] = {"shape": list(eight.shape),
                    "devices": len(eight.sharding.device_set),
                    "diff": float(np.max(np.abs(np.asarray(eight) - np.asarray(single))))}
  print("RESULT " + json.dumps(report), flush=True)
  os._exit(0)
""")


def test_eight_simulated_devices_equal_one_device():
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join([os.getcwd(), env.get("PYTHONPATH", "")])
  proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                        env=env, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")][-1]
  report = json.loads(line[len("RESULT "):])
  assert report["deletion"]["shape"] == [8, 7] and report["road"]["shape"] == [5, 2]
  assert report["deletion"]["devices"] == 8  # the batch was split over every device
  assert report["deletion"]["diff"] <= 1e-6 and report["road"]["diff"] <= 1e-5, report
