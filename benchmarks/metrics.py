"""Benchmark: all drift metrics for N pairs, jaxdrift vs a per-pair numpy/scipy loop.

Both run in this process on the same maps; values must agree within 1e-5. Prints pairs/s and
the ratio at feature resolution (7x7) and input resolution (224x224). Timings are the best of
`--repeats` runs after one warm-up (compile time is printed separately); the baseline runs
between the jaxdrift runs so that both see the same machine load, which is printed too
(the development machine is a shared 2-core CPU).

  python benchmarks/metrics.py [--pairs 2000] [--sizes 7,224] [--repeats 3] [--sorts numpy,xla]
                               [--breakdown]
"""

import argparse
import os
import time

import jax
import numpy as np

import jaxdrift as jd
from jaxdrift.metrics import reference

TOLERANCE = 1e-5


def cam_like_maps(rng, pairs, feature_size, size):
  """Pairs of non-negative CAM-like maps [pairs, size, size]: a random blob plus noise at
  feature resolution, ReLU'd (exact zeros and ties), FT = TL moved and perturbed,
  bilinearly upsampled to `size`. One pair in 100 has an all-zero FT map (invalid)."""
  h = feature_size
  rows, cols = np.mgrid[0:h, 0:h].astype(np.float32)
  def blobs(centre):
    d2 = (rows[None] - centre[:, :1, None]) ** 2 + (cols[None] - centre[:, 1:, None]) ** 2
    return np.exp(-d2 / (2 * (0.15 * h) ** 2))
  centre = rng.uniform(0, h - 1, (pairs, 2)).astype(np.float32)
  tl = blobs(centre) + 0.3 * rng.standard_normal((pairs, h, h)) - 0.1
  ft = blobs(centre + rng.normal(0, 0.1 * h, (pairs, 2))) + 0.3 * rng.standard_normal(
      (pairs, h, h)) - 0.1
  tl, ft = np.maximum(tl, 0).astype(np.float32), np.maximum(ft, 0).astype(np.float32)
  ft[::100] = 0.0
  if size != h:
    up = jax.jit(jax.vmap(lambda m: jd.metrics.upsample(m, (size, size))))
    tl = np.concatenate([np.asarray(up(c)) for c in np.array_split(tl, 8)])
    ft = np.concatenate([np.asarray(up(c)) for c in np.array_split(ft, 8)])
  return tl, ft


def best_of(fn, repeats):
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    out = fn()
    times.append(time.perf_counter() - start)
  return min(times), out


def compare(ours, ref):
  """Max |difference| over valid values per metric; raises if NaN patterns differ."""
  worst = {}
  for name, expected in ref.items():
    got = np.asarray(ours[name])
    if got.dtype == bool:
      if not np.array_equal(got, expected):
        raise AssertionError(f"{name}: flags differ from the reference")
      continue
    nan = np.isnan(expected)
    if not np.array_equal(np.isnan(got), nan):
      raise AssertionError(f"{name}: NaN pattern differs from the reference")
    worst[name] = float(np.max(np.abs(got[~nan] - expected[~nan]), initial=0.0))
  return worst


def baseline_breakdown(tl, ft, pairs=100):
  """Share of the numpy/scipy loop's time per metric (on the first `pairs` pairs)."""
  a = [m.astype(np.float64) for m in tl[:pairs]]
  b = [m.astype(np.float64) for m in ft[:pairs]]
  fns = dict(displacement=reference.displacement,
             peak_displacement=reference.peak_displacement, iou=reference.iou,
             iou_auc=reference.iou_auc, soft_iou=reference.soft_iou,
             pearson=reference.pearson, spearman=reference.spearman, ssim=reference.ssim,
             concentration=lambda x, y: (reference.concentration(x),
                                         reference.concentration(y)),
             entropy=lambda x, y: (reference.entropy(x), reference.entropy(y)),
             gini=lambda x, y: (reference.gini(x), reference.gini(y)))
  times = {}
  for name, fn in fns.items():
    start = time.perf_counter()
    for x, y in zip(a, b):
      fn(x, y)
    times[name] = time.perf_counter() - start
  total = sum(times.values())
  return ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in times.items())


def run(size, pairs, repeats, sorts, breakdown):
  rng = np.random.default_rng(size)
  tl, ft = cam_like_maps(rng, pairs, 7, size)
  load = os.getloadavg()[0]
  run_jax = lambda sort="auto": jax.block_until_ready(jd.metrics.drift(tl, ft, sort=sort))
  start = time.perf_counter()
  run_jax()
  compile_s = time.perf_counter() - start
  t_jax1, ours = best_of(run_jax, repeats)
  t_ref, ref = best_of(lambda: reference.drift(tl, ft), 1 if size > 64 else repeats)
  t_jax2, _ = best_of(run_jax, repeats)
  t_jax = min(t_jax1, t_jax2)
  worst = compare(ours, ref)
  print(f"\n{size}x{size} maps, {pairs} pairs ({int((~ref['valid']).sum())} invalid), "
        f"load average {load:.2f} -> {os.getloadavg()[0]:.2f}")
  print(f"  numpy/scipy loop : {pairs / t_ref:12.0f} pairs/s  ({t_ref:.3f} s)")
  print(f"  jaxdrift.drift   : {pairs / t_jax:12.0f} pairs/s  ({t_jax:.3f} s; first call "
        f"with compile {compile_s:.2f} s)")
  print(f"  ratio            : {t_ref / t_jax:12.1f} x")
  for sort in sorts:  # the other implementations of the order statistics (metrics.order)
    run_jax(sort)
    t_other, _ = best_of(lambda: run_jax(sort), repeats)
    print(f"  sort={sort:<11}: {pairs / t_other:12.0f} pairs/s  (ratio {t_ref / t_other:.1f} x)")
  print(f"  max |difference| : {max(worst.values()):.2e} over {len(worst)} metrics "
        f"({max(worst, key=worst.get)}); tolerance {TOLERANCE:g}")
  if breakdown:
    print(f"  baseline by metric: {baseline_breakdown(tl[ref['valid']], ft[ref['valid']])}")
  if max(worst.values()) > TOLERANCE:
    raise SystemExit(f"values differ by more than {TOLERANCE}: {worst}")
  return t_ref / t_jax


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--pairs", type=int, default=2000)
  parser.add_argument("--sizes", default="7,224")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--sorts", default="",
                      help="also time these sort implementations (comma-separated: packed, "
                      "numpy, xla; the default is sort='auto')")
  parser.add_argument("--breakdown", action="store_true",
                      help="also print the baseline's time share per metric")
  args = parser.parse_args()
  print(f"jax {jax.__version__} on {jax.devices()[0].platform} ({len(jax.devices())} "
        f"device(s)), numpy {np.__version__}, {os.cpu_count()} CPU(s)")
  sorts = [x for x in args.sorts.split(",") if x]
  ratios = {s: run(s, args.pairs, args.repeats, sorts, args.breakdown)
            for s in (int(v) for v in args.sizes.split(","))}
  print("\nsummary: " + ", ".join(f"{s}x{s}: {r:.1f}x" for s, r in ratios.items()))


if __name__ == "__main__":
  main()
