"""A run directory's layout and files, in one place (imports nothing from jaxdrift).

    run = jaxdrift.workdir.Workdir("runs/resnet50v2")
    run.config, run.summary, run.named("ft"), run.drift_file("aggregates.json")
    stored = jaxdrift.workdir.read_config(run.root)       # None when there is none
    jaxdrift.workdir.write_json(run.summary, {"tl": ...})  # atomic: tmp, fsync, rename

Layout of one training run (DIR):

  DIR/config.json       the TrainConfig plus model_arch, input_size, num_classes, class_names
  DIR/checkpoints/      orbax: epochs/<n> (every epoch of both phases), tl, ft, pretrain
  DIR/metrics.jsonl     one JSON object per line: {"kind": "pretrain"|"epoch"|"test", ...}
  DIR/summary.json      validation and test metrics of tl and ft; written last
  DIR/drift/            the drift stage's samples.csv, aggregates.json, manifest.json, ...

and of a pipeline (ROOT): ROOT/<arch>/ (one run each), ROOT/report/, ROOT/timings.json.

Every JSON file is written atomically (a reader, or a run killed at any moment, sees the
old file or the new one, never a torn one), and every reader raises `WorkdirError` naming
the file and what to do instead of a bare JSONDecodeError.
"""

import dataclasses
import json
import os
import pathlib
import tempfile

CONFIG = "config.json"
CHECKPOINTS = "checkpoints"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
DRIFT = "drift"
REPORT = "report"
TIMINGS = "timings.json"

# config.json fields that may differ when a run is resumed (everything else must match).
RESUMABLE_FIELDS = ("data_dir",)


class WorkdirError(RuntimeError):
  """A run directory holds another run, or one of its files is missing or unreadable."""


@dataclasses.dataclass(frozen=True)
class Workdir:
  """Named paths of one training run's directory.

  Attributes:
    root: the run directory.
  """

  root: pathlib.Path

  def __init__(self, root):
    object.__setattr__(self, "root", pathlib.Path(root))

  @property
  def config(self) -> pathlib.Path:
    return self.root / CONFIG

  @property
  def checkpoints(self) -> pathlib.Path:
    return self.root / CHECKPOINTS

  @property
  def epochs(self) -> pathlib.Path:
    """Directory of the per-epoch orbax checkpoints."""
    return self.checkpoints / "epochs"

  def named(self, name: str) -> pathlib.Path:
    """Directory of a named checkpoint ("pretrain", "tl", "ft")."""
    return self.checkpoints / name

  @property
  def metrics(self) -> pathlib.Path:
    return self.root / METRICS

  @property
  def summary(self) -> pathlib.Path:
    return self.root / SUMMARY

  @property
  def drift(self) -> pathlib.Path:
    return self.root / DRIFT

  def drift_file(self, name: str) -> pathlib.Path:
    """A file of the drift stage, e.g. "samples.csv", "aggregates.json"."""
    return self.drift / name


def timings_path(root) -> pathlib.Path:
  """ROOT/timings.json of a pipeline (stage seconds per architecture)."""
  return pathlib.Path(root) / TIMINGS


def write_text(path, text: str) -> None:
  """Writes `text` to `path` atomically: a temporary file beside it, fsync, rename."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "w") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    pathlib.Path(tmp).unlink(missing_ok=True)
    raise


def write_json(path, value, *, indent: int = 2) -> None:
  """Writes `value` as JSON atomically (NaN stays NaN, as Python's json reads it back)."""
  write_text(path, json.dumps(value, indent=indent) + "\n")


def read_json(path, *, what: str = "file"):
  """The JSON value in `path`.

  Raises:
    WorkdirError: the file is missing, unreadable or not valid JSON; the message names the
      file and says what to do.
  """
  path = pathlib.Path(path)
  try:
    text = path.read_text()
  except FileNotFoundError:
    raise WorkdirError(f"{path}: no such {what}") from None
  except (OSError, UnicodeDecodeError) as e:
    raise WorkdirError(f"{path}: cannot read the {what} ({type(e).__name__}: {e}); "
                       "restore it or use another directory") from None
  try:
    return json.loads(text)
  except ValueError as e:
    raise WorkdirError(f"{path} is not valid JSON ({e}); expected the {what} a jaxdrift "
                       "run writes. Restore it or use another directory.") from None


def read_config(root) -> dict | None:
  """The run's config.json as a dict, or None when the directory has none.

  Raises:
    WorkdirError: config.json exists but is unreadable or not a JSON object.
  """
  path = Workdir(root).config
  if not path.exists():
    return None
  stored = read_json(path, what="run configuration")
  if not isinstance(stored, dict):
    raise WorkdirError(f"{path} holds a {type(stored).__name__}, expected a JSON object of "
                       "run settings; restore it or use another directory")
  return stored


def write_config(root, config: dict) -> None:
  """Writes config.json (atomically)."""
  write_json(Workdir(root).config, config)


def config_diff(stored: dict, current: dict) -> dict:
  """Settings that differ between a stored config.json and the current one.

  Fields in `RESUMABLE_FIELDS` and fields only one side has are ignored.

  Returns:
    field -> (stored value, current value), sorted by field.
  """
  return {k: (stored[k], current[k]) for k in sorted(current)
          if k not in RESUMABLE_FIELDS and k in stored and stored[k] != current[k]}


def same_config(stored: dict, current: dict) -> bool:
  """Whether a run stored with `stored` may be continued (or reused) with `current`."""
  return not config_diff(stored, current)


def read_jsonl(path) -> list:
  """The records of a JSON-lines file; a torn last line (a kill while appending) is dropped.

  Raises:
    WorkdirError: a line other than the last is not valid JSON.
  """
  path = pathlib.Path(path)
  if not path.exists():
    return []
  lines = path.read_text().splitlines()
  records = []
  for i, line in enumerate(lines):
    if not line.strip():
      continue
    try:
      records.append(json.loads(line))
    except ValueError as e:
      if i == len(lines) - 1:
        break
      raise WorkdirError(f"{path}, line {i + 1}, is not valid JSON ({e}); expected one JSON "
                         "object per line. Restore the file or use another directory.") from None
  return records


def append_jsonl(path, record: dict) -> None:
  """Appends one record as a line (flushed and synced before returning)."""
  with pathlib.Path(path).open("a") as f:
    f.write(json.dumps(record) + "\n")
    f.flush()
    os.fsync(f.fileno())


def write_jsonl(path, records) -> None:
  """Replaces a JSON-lines file with `records`, atomically."""
  write_text(path, "".join(json.dumps(r) + "\n" for r in records))
