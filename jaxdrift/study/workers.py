"""Worker processes for the pipeline: one architecture's stages per spawned process.

    timings = run_workers({arch: (config, workdir, drift, data_dir)}, workers=2,
                          progress=True, stages=pipeline.train_and_drift)

Each worker is spawned (never forked: the parent may run JAX), enables the persistent XLA
cache, runs `stages` for its architecture and sends its progress and outcome to the parent
through one event queue. A worker ends itself when the parent dies, so no orphan goes on
writing a run's files; the first failure stops the other workers (their runs resume later)
and is raised in the parent with the worker's traceback.
"""

import multiprocessing
import os
import pickle
import queue as queue_lib
import resource
import threading
import time
import traceback

import tqdm

from jaxdrift import _console, train, xla_cache
from jaxdrift import workdir as workdir_lib


def _exit_with_parent(parent: int) -> None:
  """Ends this process when the parent process dies (killed, not interrupted: an interrupted
  parent stops its workers itself), so that no orphan goes on writing a run's files."""

  def watch():
    while os.getppid() == parent:
      time.sleep(1.0)
    os._exit(1)

  threading.Thread(target=watch, daemon=True, name="jaxdrift-parent-watch").start()


def _worker(arch, stages, config, workdir, drift, data_dir, events, parent) -> None:
  """A worker process: one architecture's stages; reports progress and the outcome."""
  _exit_with_parent(parent)
  _console.worker_setup()  # the parent's quiet setting; Ctrl-C is the parent's to handle
  import jax  # the parent may not have started JAX; each worker starts its own

  xla_cache.enable_compilation_cache()
  compile_s = [0.0]

  def on_duration(event, duration, **_):
    if event == "/jax/core/compile/backend_compile_duration":
      compile_s[0] += duration

  jax.monitoring.register_event_duration_secs_listener(on_duration)

  def hook(event):
    offset = config.epochs_tl if event["phase"] == "ft" else 0  # phase 2 follows phase 1
    per_epoch = event["steps_per_epoch"]
    events.put(("step", arch, {
        "label": f"{event['phase']} {event['epoch']}/{event['epochs']}",
        "done": (offset + event["epoch"] - 1) * per_epoch + event["step_in_epoch"],
        "total": (config.epochs_tl + config.epochs_ft) * per_epoch}))

  try:
    timings = stages(config, workdir, drift, data_dir, progress=False, hooks=(hook,),
                     on_stage=lambda stage: events.put(("stage", arch, stage)))
    # ru_maxrss is in KiB on Linux.
    timings.update(compile=compile_s[0],
                   max_rss_gb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
    events.put(("done", arch, timings))
  except BaseException as e:  # noqa: BLE001 -- every failure goes to the parent
    e.add_note(f"(in the {arch} worker process)\n{traceback.format_exc()}")
    try:
      pickle.dumps(e)
    except Exception:  # noqa: BLE001
      e = RuntimeError(f"{arch}: {type(e).__name__}: {e}\n{traceback.format_exc()}")
    events.put(("error", arch, e))


class _Display:
  """One progress bar per architecture, fed by the workers' events."""

  def __init__(self, archs, enabled: bool):
    self.bars = {arch: tqdm.tqdm(total=1, desc=f"{arch}: waiting", position=i, unit="step",
                                 leave=True, dynamic_ncols=True, disable=not enabled)
                 for i, arch in enumerate(archs)}

  def __call__(self, kind, arch, payload):
    bar = self.bars[arch]
    if kind == "stage":
      bar.set_description(f"{arch}: {payload}")
    elif kind == "step":
      bar.total, bar.n = payload["total"], payload["done"]
      bar.set_description(f"{arch}: {payload['label']}", refresh=False)
      bar.refresh()
    elif kind == "done":
      bar.n = bar.total
      bar.set_description(f"{arch}: done (train {payload['train']:.0f} s, drift "
                          f"{payload['drift']:.0f} s)")

  def close(self):
    for bar in self.bars.values():
      bar.close()


def run_workers(jobs: dict, workers: int, progress: bool, stages) -> dict:
  """Runs `jobs` {arch: (config, workdir, drift, data_dir)} in at most `workers` processes.

  Args:
    jobs: the arguments of `stages` for each architecture.
    workers: processes at once (>= 1).
    progress: one progress bar per architecture, and its TL / FT table when it is done.
    stages: a module-level (picklable) function `stages(config, workdir, drift, data_dir, *,
      progress, hooks, on_stage) -> {stage: seconds}`, e.g.
      `jaxdrift.study.pipeline.train_and_drift`.

  Returns:
    {arch: timings}, each with "compile" (XLA compile seconds) and "max_rss_gb" added. The
    first failure stops the other workers (their runs resume later) and is raised here,
    with the worker's traceback as a note.
  """
  context = multiprocessing.get_context("spawn")  # never fork a process that runs JAX
  events = context.Queue()
  waiting, running, timings, silent = list(jobs), {}, {}, set()
  display = _Display(list(jobs), progress)
  try:
    while waiting or running:
      while waiting and len(running) < workers:
        arch = waiting.pop(0)
        process = context.Process(target=_worker,
                                  args=(arch, stages, *jobs[arch], events, os.getpid()),
                                  name=f"jaxdrift-{arch}")
        process.start()
        running[arch] = process
      try:
        kind, arch, payload = events.get(timeout=0.5)
      except queue_lib.Empty:
        for arch, process in running.items():
          if not process.is_alive():
            if arch in silent:  # dead, and nothing came in a whole poll after it died
              raise RuntimeError(f"the {arch} worker process died (exit code "
                                 f"{process.exitcode}) without a result; rerun to resume")
            silent.add(arch)
        continue
      if kind == "error":
        raise payload
      display(kind, arch, payload)
      if kind == "done":
        timings[arch] = payload
        running.pop(arch).join()
        if progress:  # the TL / FT table that a run in this process prints
          summary = workdir_lib.read_json(workdir_lib.Workdir(jobs[arch][1]).summary,
                                          what="run summary")
          tqdm.tqdm.write(train.summary_table(summary))
  finally:
    display.close()
    for process in running.values():
      process.terminate()
      process.join()
  return timings
