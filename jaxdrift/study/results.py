"""The study's result files: `jaxdrift.results` (the CSV and JSON I/O, in the lowest layers,
shared with the report), with the drift table's metric columns typed as numbers.

Kept so that `jaxdrift.study.results` still names everything it named before the file I/O
moved below the study and the report.
"""

from jaxdrift import metrics
from jaxdrift.results import (AGGREGATE_KEYS, DEFAULT_FIX, SAMPLE_COLUMNS,  # noqa: F401
                              ResultFileError, concat, read_json, read_jsonl, subset,
                              write_json, write_table)
from jaxdrift.results import read_table as read_any_table


def read_table(path, required=(), fix: str = DEFAULT_FIX) -> dict:
  """`jaxdrift.results.read_table` of a drift table: every float output of
  `jaxdrift.metrics.drift` must hold numbers (or nan)."""
  return read_any_table(path, required, fix, numbers=metrics.FLOAT_OUTPUTS)


def metric_columns(table: dict) -> list[str]:
  """The drift metrics (`jaxdrift.metrics.PAIR_METRICS`) that `table` has, in their order."""
  return [k for k in metrics.PAIR_METRICS if k in table]
