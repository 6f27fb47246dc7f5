"""Time per stage of the demo pipeline (all three architectures), against its 10-minute budget.

    python benchmarks/pipeline_demo.py [--root runs/bench-demo] [--budget 600]

Runs `experiments.pipeline --preset demo` from scratch in ROOT (deleted first unless
--keep) and prints the seconds of each stage per architecture and the whole run as a
fraction of the budget (target <= 1.0), plus the FT accuracy, the pointing game of the FT
maps on each lesion class and their mean (with every class below the 0.7 bar named beside its
chance level), and how much of the run XLA spent compiling.

The 10-minute budget is an absolute time on a shared, noisy 2-core machine, so the script
also measures this machine's speed on a fixed reference workload (the full ResNet50V2
forward pass, batch 8 at 224 px, as in `benchmarks/forward.py`) before and after the run
and prints it against the machine on which the README's demo timings were taken.
"""

import argparse
import json
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import jaxdrift as jd  # noqa: E402
from benchmarks import common  # noqa: E402

# ResNet50V2 forward images/s (batch 8, 224 px, float32) on the machine of the README's
# demo timings (README, Models / Speed).
REFERENCE_FORWARD_IMG_S = 37.4
# The bar for the FT maps on the lesion classes.
POINTING_BAR = 0.7


def forward_speed_probe():
  """A callable giving ResNet50V2 forward images/s on this machine now (median of 5 calls);
  the model is built and compiled once, here."""
  model = jd.models.create("resnet50v2")
  x = jnp.zeros((8, 224, 224, 3), jnp.float32)
  variables = jax.jit(lambda k: model.init(k, x, train=False))(jax.random.key(0))
  fwd = jax.jit(lambda v, x: model.apply(v, x, train=False))
  jax.block_until_ready(fwd(variables, x))
  return lambda: 8 / common.time_call(fwd, variables, x, repeats=5)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--root", default="runs/bench-demo")
  parser.add_argument("--data-dir", default=None, help="TFDS data directory")
  parser.add_argument("--budget", type=float, default=600.0, help="seconds")
  parser.add_argument("--keep", action="store_true", help="do not delete ROOT first")
  parser.add_argument("--workers", type=int, default=None,
                      help="architectures at once (default: the pipeline's, one per core)")
  args = parser.parse_args()
  if not args.keep:
    shutil.rmtree(args.root, ignore_errors=True)
  forward_speed = forward_speed_probe()
  speed_before = forward_speed()
  compile_s = [0.0]

  def on_duration(event, duration, **_):
    if event == "/jax/core/compile/backend_compile_duration":
      compile_s[0] += duration

  jax.monitoring.register_event_duration_secs_listener(on_duration)
  start = time.perf_counter()
  out = jd.study.run_pipeline("demo", root=args.root, data_dir=args.data_dir, progress=False,
                              workers=args.workers)
  total = time.perf_counter() - start
  speed = (speed_before + forward_speed()) / 2
  workers = out["timings"]["workers"]
  print(f"\n{workers} architecture(s) at once" + (
      " (their stage seconds overlap)" if workers > 1 else ""))
  print("| arch | train s | drift s | peak memory GB | FT test acc | FT pointing game: mean "
        "over the lesion classes (per class) |")
  print("|---|---|---|---|---|---|")
  below = []
  for workdir in out["workdirs"]:
    arch = workdir.name
    summary = json.loads((workdir / "summary.json").read_text())
    agg = json.loads((workdir / "drift" / "aggregates.json").read_text())
    hits = {r["method"]: [] for r in agg["localization"]}
    for r in agg["localization"]:
      if r["checkpoint"] == "ft" and r["pointing_game"] is not None:
        hits[r["method"]].append(r["pointing_game"])
        if r["pointing_game"] < POINTING_BAR:
          below.append(f"{arch} {r['method']} {r['class_name']} {r['pointing_game']:.2f} "
                       f"(chance {r['pointing_chance']:.2f})")
    games = ", ".join(f"{m} {sum(v) / len(v):.2f} ({' / '.join(f'{x:.2f}' for x in v)})"
                      for m, v in hits.items() if v)
    t = out["timings"][arch]
    compile_s[0] += t.get("compile", 0.0)  # a worker process's compiles
    memory = f"{t['max_rss_gb']:.1f}" if "max_rss_gb" in t else "(this process)"
    print(f"| {arch} | {t['train']:.0f} | {t['drift']:.0f} | {memory} | "
          f"{summary['ft']['test']['accuracy']:.3f} | {games} |")
  print(f"\nFT pointing games below {POINTING_BAR}: " + ("; ".join(below) or "none"))
  print(f"\nreport: {out['timings']['report']:.0f} s; whole demo {total:.0f} s = "
        f"{total / args.budget:.2f} of the {args.budget:.0f} s budget; XLA compiled for "
        f"{compile_s[0]:.0f} s (summed over the processes)")
  print(f"machine speed: ResNet50V2 forward {speed:.1f} img/s (before {speed_before:.1f}), "
        f"{speed / REFERENCE_FORWARD_IMG_S:.2f}x the {REFERENCE_FORWARD_IMG_S} img/s of the "
        "machine of the README's demo timings")


if __name__ == "__main__":
  main()
