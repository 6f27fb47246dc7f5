"""Per-sample result tables on disk: CSV with typed columns, JSON aggregates.

A table is a dict of equal-length 1-D numpy arrays (the format of `jaxdrift.metrics.stats`).
CSV keeps it readable by any tool; `read_table` restores numbers, booleans and NaN.
"""

import csv
import json
import math
import pathlib

import numpy as np

from jaxdrift import metrics

_BOOL = {"True": True, "False": False}


def write_table(table: dict, path) -> None:
  """Writes a table as CSV, one row per sample; floats in repr precision, NaN as 'nan'."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  columns = list(table)
  n = len(next(iter(table.values()))) if table else 0
  tmp = path.with_suffix(path.suffix + ".tmp")
  with open(tmp, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(columns)
    for i in range(n):
      writer.writerow([_cell(table[c][i]) for c in columns])
  tmp.replace(path)  # a reader never sees half a file


def _cell(value):
  if isinstance(value, (bool, np.bool_)):
    return str(bool(value))
  if isinstance(value, (float, np.floating)):
    return repr(float(value))
  return str(value)


def _column(values: list[str]) -> np.ndarray:
  if values and all(v in _BOOL for v in values):
    return np.array([_BOOL[v] for v in values])
  try:
    ints = [int(v) for v in values]
    return np.array(ints, np.int64)
  except ValueError:
    pass
  try:
    return np.array([float(v) for v in values], np.float64)
  except ValueError:
    return np.array(values, object)


def read_table(path) -> dict:
  """Reads a table written by `write_table` (types restored per column)."""
  with open(path, newline="") as f:
    rows = list(csv.reader(f))
  header, body = rows[0], rows[1:]
  return {name: _column([r[i] for r in body]) for i, name in enumerate(header)}


def concat(tables: list[dict]) -> dict:
  """Stacks tables with the same columns."""
  tables = [t for t in tables if t]
  if not tables:
    return {}
  return {k: np.concatenate([np.asarray(t[k]) for t in tables]) for k in tables[0]}


def metric_columns(table: dict) -> list[str]:
  """The drift metrics (`jaxdrift.metrics.PAIR_METRICS`) that `table` has, in their order."""
  return [k for k in metrics.PAIR_METRICS if k in table]


def subset(table: dict, rows) -> dict:
  return {k: np.asarray(v)[rows] for k, v in table.items()}


def _plain(value):
  if isinstance(value, dict):
    return {str(k): _plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  if isinstance(value, np.ndarray):
    return _plain(value.tolist())
  if isinstance(value, (np.bool_, bool)):
    return bool(value)
  if isinstance(value, (np.integer,)):
    return int(value)
  if isinstance(value, (float, np.floating)):
    value = float(value)
    return None if math.isnan(value) or math.isinf(value) else value
  return value


def write_json(value, path) -> None:
  """JSON with numpy values made plain; NaN and Inf are written as null."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_suffix(path.suffix + ".tmp")
  tmp.write_text(json.dumps(_plain(value), indent=1))
  tmp.replace(path)


def read_json(path):
  return json.loads(pathlib.Path(path).read_text())
