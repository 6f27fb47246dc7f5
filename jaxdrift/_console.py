"""How a jaxdrift process talks to the terminal: quiet library output and a clean Ctrl-C.

Nothing here runs on import. The command line (`jaxdrift.cli`) enters `quiet()` and
`interrupts_exit()` around a command; worker processes of the pipeline call
`worker_setup()` first thing, which applies the parent command's quiet setting (passed in the
environment variable `JAXDRIFT_QUIET`) and leaves Ctrl-C to the parent.

Quiet means: TFDS's progress bars (dataset generation, "Shuffling ...") off, absl / TFDS /
JAX / orbax / grain log records below ERROR dropped (among them TFDS's "Using custom data
configuration" and "OpenCV is not installed"), XLA's C++ warnings off
(`TF_CPP_MIN_LOG_LEVEL=2`, unless the user set it), and Python warnings from libraries
ignored. jaxdrift's own warnings (a skipped file, a fallback) are still printed, once each,
as "jaxdrift: <message>".
"""

import contextlib
import logging
import os
import signal
import sys
import threading
import warnings

QUIET_ENV = "JAXDRIFT_QUIET"
_LIBRARY_LOGGERS = ("absl", "jax", "jaxlib", "orbax", "grain", "tensorflow_datasets", "etils",
                    "h5py", "matplotlib", "PIL", "urllib3", "fsspec")
INTERRUPTED = "interrupted; rerun the same command to resume"
_EXITING = threading.Lock()


class _Once(logging.Filter):
  """Lets each distinct message through once."""

  def __init__(self):
    super().__init__()
    self.seen = set()

  def filter(self, record):
    key = record.getMessage()
    if key in self.seen:
      return False
    self.seen.add(key)
    return True


def _set_tfds_progress(enable: bool | None) -> bool | None:
  """Turns TFDS's progress bars on or off; returns the previous setting (None: no TFDS)."""
  try:
    from tensorflow_datasets.core.utils import tqdm_utils
  except ImportError:
    return None
  previous = tqdm_utils._active  # noqa: SLF001 -- TFDS keeps the switch here, no getter
  if enable is not None:
    tqdm_utils.display_progress_bar(enable)
  return previous


def _apply_quiet() -> None:
  """The quiet settings, for a process that exits when its work ends (a worker)."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  for name in _LIBRARY_LOGGERS:
    logging.getLogger(name).setLevel(logging.ERROR)
  warnings.filterwarnings("ignore")
  warnings.filterwarnings("default", module=r"jaxdrift(\.|$)")
  _set_tfds_progress(False)


@contextlib.contextmanager
def quiet(verbose: bool = False, *, data: bool = True):
  """Within the block: library chatter filtered (unless `verbose`), jaxdrift's warnings shown.

  Args:
    verbose: let every library message through (only jaxdrift's own handler is added).
    data: also switch off TFDS's progress bars (imports tensorflow_datasets).

  Every setting is restored on exit, so a test may call the command line in-process.
  """
  saved_env = {k: os.environ.get(k) for k in (QUIET_ENV, "TF_CPP_MIN_LOG_LEVEL")}
  saved_levels = {n: logging.getLogger(n).level for n in _LIBRARY_LOGGERS}
  ours = logging.getLogger("jaxdrift")
  saved_ours = (ours.level, ours.propagate)
  handler = logging.StreamHandler(sys.stderr)
  handler.setFormatter(logging.Formatter("jaxdrift: %(message)s"))
  handler.addFilter(_Once())
  tfds_progress = None
  with warnings.catch_warnings():
    try:
      ours.addHandler(handler)
      ours.setLevel(logging.WARNING)
      ours.propagate = False
      if not verbose:
        os.environ[QUIET_ENV] = "1"
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        for name in _LIBRARY_LOGGERS:
          logging.getLogger(name).setLevel(logging.ERROR)
        warnings.filterwarnings("ignore")
        warnings.filterwarnings("default", module=r"jaxdrift(\.|$)")
        if data:
          tfds_progress = _set_tfds_progress(False)
      yield
    finally:
      if tfds_progress is not None:
        _set_tfds_progress(tfds_progress)
      for name, level in saved_levels.items():
        logging.getLogger(name).setLevel(level)
      ours.removeHandler(handler)
      ours.level, ours.propagate = saved_ours
      for key, value in saved_env.items():
        if value is None:
          os.environ.pop(key, None)
        else:
          os.environ[key] = value


def worker_setup() -> None:
  """First call in a worker process: the parent's quiet setting, and Ctrl-C left to the
  parent (which stops its workers; the terminal sends SIGINT to the whole process group)."""
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  if os.environ.get(QUIET_ENV) == "1":
    _apply_quiet()


def _exit_interrupted(prog: str) -> None:
  """Says so in one line and ends the process at once, with 130 (128 + SIGINT).

  os._exit: a normal interpreter exit while XLA's threads compile or run ends in a
  segfault; the run's files are left as a kill would leave them, which a rerun resumes.
  A second caller (the signal handler and the watching thread both see one Ctrl-C) waits
  here until the first has ended the process.
  """
  _EXITING.acquire()
  try:
    sys.stdout.flush()
  except Exception:  # noqa: BLE001 -- a closed or broken stdout must not stop the exit
    pass
  try:
    sys.stderr.write(f"\n{prog}: {INTERRUPTED}\n")
    sys.stderr.flush()
  finally:
    os._exit(130)


@contextlib.contextmanager
def interrupts_exit(prog: str):
  """Within the block, Ctrl-C (SIGINT) ends the process cleanly with exit code 130.

  The signal is noticed by a thread waiting on `signal.set_wakeup_fd`, so it takes effect
  even while the main thread is inside a long native call (an XLA compile), and again by
  the Python-level handler. Outside the main thread, or when SIGINT is ignored, this does
  nothing. The previous handlers are restored on exit.
  """
  if (threading.current_thread() is not threading.main_thread()
      or signal.getsignal(signal.SIGINT) is signal.SIG_IGN):
    yield
    return
  read_fd, write_fd = os.pipe()
  os.set_blocking(write_fd, False)
  stop = threading.Event()

  def watch():
    while True:  # each byte is the number of a signal that Python caught
      try:
        data = os.read(read_fd, 1)
      except OSError:
        return
      if not data or stop.is_set():
        return
      if data[0] == signal.SIGINT:
        _exit_interrupted(prog)

  previous_handler = signal.signal(signal.SIGINT, lambda *_: _exit_interrupted(prog))
  previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
  thread = threading.Thread(target=watch, daemon=True, name="jaxdrift-interrupt")
  thread.start()
  try:
    yield
  finally:
    stop.set()
    signal.set_wakeup_fd(previous_fd)
    signal.signal(signal.SIGINT, previous_handler)
    os.close(write_fd)  # wakes the thread with end-of-file
    thread.join(timeout=1.0)
    os.close(read_fd)
