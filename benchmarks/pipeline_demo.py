"""Time per stage of the demo pipeline (all three architectures), against its 10-minute budget.

    python benchmarks/pipeline_demo.py [--root runs/bench-demo] [--budget 600]

Runs `experiments.pipeline --preset demo` from scratch in ROOT (deleted first unless
--keep) and prints the seconds of each stage per architecture and the whole run as a
fraction of the budget (target <= 1.0), plus the FT accuracy and the pointing game of the
FT maps on the lesion classes.
"""

import argparse
import json
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import jaxdrift as jd  # noqa: E402


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--root", default="runs/bench-demo")
  parser.add_argument("--data-dir", default=None, help="TFDS data directory")
  parser.add_argument("--budget", type=float, default=600.0, help="seconds")
  parser.add_argument("--keep", action="store_true", help="do not delete ROOT first")
  args = parser.parse_args()
  if not args.keep:
    shutil.rmtree(args.root, ignore_errors=True)
  start = time.perf_counter()
  out = jd.study.run_pipeline("demo", root=args.root, data_dir=args.data_dir, progress=False)
  total = time.perf_counter() - start
  print("\n| arch | train s | drift s | FT test acc | FT pointing game (lesion classes) |")
  print("|---|---|---|---|---|")
  for workdir in out["workdirs"]:
    arch = workdir.name
    summary = json.loads((workdir / "summary.json").read_text())
    agg = json.loads((workdir / "drift" / "aggregates.json").read_text())
    hits = {f"{r['method']}": [] for r in agg["localization"]}
    for r in agg["localization"]:
      if r["checkpoint"] == "ft" and r["pointing_game"] is not None:
        hits[r["method"]].append(r["pointing_game"])
    games = ", ".join(f"{m} {sum(v) / len(v):.2f}" for m, v in hits.items() if v)
    t = out["timings"][arch]
    print(f"| {arch} | {t['train']:.0f} | {t['drift']:.0f} | "
          f"{summary['ft']['test']['accuracy']:.3f} | {games} |")
  print(f"\nreport: {out['timings']['report']:.0f} s; whole demo {total:.0f} s = "
        f"{total / args.budget:.2f} of the {args.budget:.0f} s budget")


if __name__ == "__main__":
  main()
