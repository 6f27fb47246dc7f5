"""A fresh process's first attribution: seconds to the first maps, cold and warm cache.

Runs, twice, each time in a fresh subprocess sharing one persistent compilation cache (the
first starts it empty, so only the cache differs): create the model, initialise its
variables (weights "none"), and call `jd.cam.compute_pair` once for LayerCAM + Grad-CAM++ at
batch --batch. Prints per run the wall seconds from the start of the process to the maps,
split into import, initialisation, and the first call, with the XLA compile seconds (or
cache reads) and the tracing/lowering seconds inside them.

    python -m benchmarks.cold_start [--arch densenet201] [--batch 8] [--size 0]

The last line is JSON: {"arch": ..., "device": ..., "runs": [cold, warm]}.
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

_EVENTS = {"/jax/core/compile/backend_compile_duration": "compile",
           "/jax/core/compile/jaxpr_trace_duration": "trace",
           "/jax/core/compile/jaxpr_to_mlir_module_duration": "trace"}


def child(args) -> None:
  start = time.perf_counter()
  import jax
  import jaxdrift as jd
  jd.enable_compilation_cache(args.cache)
  seconds = {"compile": 0.0, "trace": 0.0}

  def listen(event, duration, **_):
    if event in _EVENTS:
      seconds[_EVENTS[event]] += duration

  jax.monitoring.register_event_duration_secs_listener(listen)
  imported = time.perf_counter()
  size = args.size or jd.models.default_input_size(args.arch)
  model = jd.models.create(args.arch, num_classes=5)
  variables = jd.models.pretrained(args.arch, 5, weights="none", key=jax.random.key(0),
                                   input_size=size)
  jax.block_until_ready(variables)
  initialised = time.perf_counter()
  images = jax.random.normal(jax.random.key(1), (args.batch, size, size, 3))
  out = jd.cam.compute_pair(model, variables, variables, images, [0] * args.batch,
                            methods=("layercam", "gradcam++"))
  jax.block_until_ready(out)
  done = time.perf_counter()
  result = {"import_s": imported - start, "init_s": initialised - imported,
            "first_call_s": done - initialised, "total_s": done - start,
            "compile_s": seconds["compile"], "trace_s": seconds["trace"],
            "device": f"{jax.devices()[0].platform} {jax.devices()[0].device_kind}"}
  pathlib.Path(args.out).write_text(json.dumps(result))


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--arch", default="densenet201")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--size", type=int, default=0, help="input size (0: the arch's own)")
  parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--cache", help=argparse.SUPPRESS)
  parser.add_argument("--out", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.child:
    child(args)
    return
  runs = []
  with tempfile.TemporaryDirectory(prefix="jaxdrift-cold-start-") as base:
    for i, name in enumerate(("cold", "warm")):
      out = pathlib.Path(base) / f"{name}.json"
      command = [sys.executable, "-m", "benchmarks.cold_start", "--child", "--arch",
                 args.arch, "--batch", str(args.batch), "--size", str(args.size), "--cache",
                 str(pathlib.Path(base) / "xla"), "--out", str(out)]
      subprocess.run(command, check=True, cwd=pathlib.Path(__file__).resolve().parents[1],
                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
      runs.append(json.loads(out.read_text()))
      r = runs[-1]
      print(f"{name} cache: {r['total_s']:6.1f} s to the first maps (import {r['import_s']:.1f}, "
            f"init {r['init_s']:.1f}, first call {r['first_call_s']:.1f}; XLA compile or "
            f"cache reads {r['compile_s']:.1f}, tracing and lowering {r['trace_s']:.1f})",
            flush=True)
  print(json.dumps({"arch": args.arch, "device": runs[0]["device"], "runs": runs}))


if __name__ == "__main__":
  main()
