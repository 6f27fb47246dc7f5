"""Per-sample result tables on disk: CSV with typed columns, JSON aggregates.

Beside `jaxdrift.workdir` in the lowest layers (it imports nothing from jaxdrift), so that
the stages that write result files (`jaxdrift.study`) and those that read them
(`jaxdrift.report`) share it without depending on each other.

A table is a dict of equal-length 1-D numpy arrays (the format of `jaxdrift.metrics.stats`).
CSV keeps it readable by any tool; `read_table` restores numbers, booleans and NaN.

Reading checks what it reads: a file that is empty, not UTF-8 text, cut off mid-row, without
rows, holding text where a number belongs, or not valid JSON raises `ResultFileError`, which
names the file, what was expected, what was found and what to do, before anything uses it.
"""

import csv
import io
import json
import math
import pathlib

import numpy as np

_BOOL = {"True": True, "False": False}
# The type of every column of a drift table whose name says it (others are inferred; the
# drift metrics' columns are the caller's `numbers`, e.g. `jaxdrift.metrics.FLOAT_OUTPUTS`).
_FLOAT_COLUMNS = frozenset({
    "pointing_chance", *(f"{c}_{k}" for c in ("tl", "ft")
                         for k in ("pointing_game", "energy_inside", "mask_iou"))})
_INT_COLUMNS = frozenset({"image", "label", "tl_pred", "ft_pred"})
_BOOL_COLUMNS = frozenset({"valid", "valid_a", "valid_b", "tl_all_zero", "ft_all_zero",
                           "selected_both", "selected_tl", "selected_ft"})
# What the report needs of DIR/drift/samples.csv and DIR/drift/aggregates.json.
SAMPLE_COLUMNS = ("arch", "method", "layer", "layer_spec", "image", "label", "tl_pred",
                  "ft_pred", "valid", "valid_a", "valid_b")
AGGREGATE_KEYS = ("arch", "model_arch", "config", "class_names", "layers")


class ResultFileError(ValueError):
  """A result file (CSV table or JSON) that is missing a part, damaged, or not jaxdrift's."""


def _fail(path, expected: str, found: str, fix: str):
  raise ResultFileError(f"{path}: expected {expected}, found {found}. {fix}")


DEFAULT_FIX = "Write it again with the stage that made it."


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


def _typed_column(path, name: str, values: list[str], fix: str,
                  numbers: frozenset) -> np.ndarray:
  """`_column`, with a ResultFileError when a column of known type holds something else."""
  column = _column(values)
  if name in _BOOL_COLUMNS:
    kind, ok = "True / False", column.dtype == bool
  elif name in _INT_COLUMNS:
    kind, ok = "an integer", column.dtype.kind == "i"
  elif name in _FLOAT_COLUMNS or name in numbers:
    kind, ok = "a number (or nan)", column.dtype.kind in "if"
    column = column.astype(np.float64) if ok else column
  else:
    return column
  if not ok:
    parse = {"True / False": lambda v: _BOOL[v], "an integer": int}.get(kind, float)
    for i, v in enumerate(values):
      try:
        parse(v)
      except (KeyError, ValueError):
        _fail(path, f"{kind} in column {name!r}", f"{v[:40]!r} in row {i + 2}", fix)
  return column


def read_table(path, required=(), fix: str = DEFAULT_FIX, numbers=()) -> dict:
  """Reads a table written by `write_table` (types restored per column).

  Args:
    path: the CSV file.
    required: columns the caller needs.
    fix: what the user should do when the file is unusable (the end of the error message).
    numbers: columns that must hold numbers (or nan), read as float64 (for a drift table:
      `jaxdrift.metrics.FLOAT_OUTPUTS`); the image, label, prediction, validity and
      localisation columns are typed without it.

  Raises:
    ResultFileError: the file is empty, not UTF-8 text, cut off mid-row, has a header but no
      rows, lacks a required column, or holds text where a known column has numbers.
  """
  path = pathlib.Path(path)
  try:
    text = path.read_bytes().decode("utf-8")
  except UnicodeDecodeError as e:
    _fail(path, "a UTF-8 CSV table", f"binary data (byte {e.start} is not UTF-8 text)", fix)
  if not text.strip():
    _fail(path, "a CSV table with a header and one row per sample", "an empty file", fix)
  try:
    rows = list(csv.reader(io.StringIO(text, newline="")))
  except csv.Error as e:
    _fail(path, "a CSV table", f"malformed CSV ({e})", fix)
  header, body = rows[0], [r for r in rows[1:] if r]
  if not body:
    _fail(path, "one row per sample below the header", "a header and no rows", fix)
  for i, row in enumerate(body):
    if len(row) != len(header):
      _fail(path, f"{len(header)} fields per row (the header's)",
            f"{len(row)} in row {i + 2}{' (the file is cut off)' if i == len(body) - 1 else ''}",
            fix)
  if not text.endswith("\n"):
    _fail(path, "a table that ends with a line break", "a file cut off mid-row", fix)
  missing = [c for c in required if c not in header]
  if missing:
    _fail(path, f"the columns {', '.join(required)}", f"no {', '.join(missing)}", fix)
  numbers = frozenset(numbers)
  return {name: _typed_column(path, name, [r[i] for r in body], fix, numbers)
          for i, name in enumerate(header)}


def concat(tables: list[dict]) -> dict:
  """Stacks tables with the same columns."""
  tables = [t for t in tables if t]
  if not tables:
    return {}
  return {k: np.concatenate([np.asarray(t[k]) for t in tables]) for k in tables[0]}


def subset(table: dict, rows) -> dict:
  """The rows `rows` (indices or a boolean mask) of every column of `table`."""
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


def read_json(path, required=(), fix: str = DEFAULT_FIX):
  """Reads a JSON file; with `required`, a JSON object that has those keys.

  Raises:
    ResultFileError: the file is empty, not UTF-8 text, not valid JSON, or lacks a key.
  """
  path = pathlib.Path(path)
  try:
    value = json.loads(path.read_bytes().decode("utf-8"))
  except UnicodeDecodeError as e:
    _fail(path, "UTF-8 JSON", f"binary data (byte {e.start} is not UTF-8 text)", fix)
  except json.JSONDecodeError as e:
    found = "an empty file" if not e.doc.strip() else f"invalid JSON ({e.msg} at line {e.lineno})"
    _fail(path, "a JSON document", found, fix)
  if required:
    if not isinstance(value, dict):
      _fail(path, "a JSON object", f"a JSON {type(value).__name__}", fix)
    missing = [k for k in required if k not in value]
    if missing:
      _fail(path, f"the keys {', '.join(required)}", f"no {', '.join(missing)}", fix)
  return value


def read_jsonl(path, fix: str = DEFAULT_FIX) -> list:
  """Reads a JSON-lines file (one JSON value per line; blank lines skipped).

  Raises:
    ResultFileError: the file is not UTF-8 text or a line is not valid JSON (a line cut off
      by a kill is reported with its number).
  """
  path = pathlib.Path(path)
  try:
    lines = path.read_bytes().decode("utf-8").splitlines()
  except UnicodeDecodeError as e:
    _fail(path, "UTF-8 JSON lines", f"binary data (byte {e.start} is not UTF-8 text)", fix)
  out = []
  for i, line in enumerate(lines):
    if line.strip():
      try:
        out.append(json.loads(line))
      except json.JSONDecodeError as e:
        _fail(path, "one JSON value per line", f"invalid JSON on line {i + 1} ({e.msg})", fix)
  return out
