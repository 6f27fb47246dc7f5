"""Timing helpers shared by the benchmarks: interleaved rounds, medians, ratios."""

import statistics
import time

import jax


def time_call(fn, *args, repeats: int = 3) -> float:
  """Median seconds of `fn(*args)` (blocking on the result) over `repeats` runs."""
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def interleaved(candidates: dict, rounds: int = 5, statistic=statistics.median) -> dict:
  """Seconds per call of each zero-argument callable (the `statistic` of its rounds, median
  by default), measured in alternation.

  Alternating A, B, A, B, ... spreads the load of a noisy machine over all candidates, so
  their ratio is meaningful even when absolute times are not.
  """
  times = {name: [] for name in candidates}
  for _ in range(rounds):
    for name, fn in candidates.items():
      start = time.perf_counter()
      jax.block_until_ready(fn())
      times[name].append(time.perf_counter() - start)
  return {name: statistic(t) for name, t in times.items()}
