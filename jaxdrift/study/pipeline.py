"""The whole study in one call: data -> two-phase training -> drift -> report, per arch.

    jaxdrift.study.run_pipeline("demo", root="runs/demo")

Presets (training presets from `jaxdrift.train.preset`, drift options below):
  demo   the three architectures as reduced variants on 160-px phantoms, with a short proxy
         pretraining of each backbone (ImageNet weights cannot be had offline), LayerCAM and
         Grad-CAM++ at the canonical layer, drift across every epoch; minutes on a CPU.
  paper  the study: full DenseNet201, ResNet50V2, InceptionV3 at their default sizes on
         chest_xray5 with ImageNet backbones; for a GPU or TPU.
  smoke  the reduced variants, a few steps each, for tests.

The datasets are prepared first, once. Then each architecture is trained and analysed; on a
CPU several architectures run at once, each in a worker process of its own (`workers`, one
per core by default, the largest inputs first): one process keeps about 1.6 of 2 cores
busy and XLA compiles on one core, so side by side they fill the machine. Their results
are those of a run one after the other, bit for bit (XLA on the CPU computes the same
whatever the load). On an accelerator they run one after the other in this process, which
holds the device.

Each stage skips work already done (a finished training run, a drift stage with the same
options, see `run_drift`), so an interrupted pipeline resumes where it stopped; stage times
are written to ROOT/timings.json.
"""

import json
import multiprocessing
import os
import pathlib
import pickle
import queue as queue_lib
import resource
import threading
import time
import traceback

import tqdm

from jaxdrift import _console, models, report, train, xla_cache
from jaxdrift import workdir as workdir_lib
from jaxdrift.study.drift_stage import DriftConfig, drift_done, run_drift

DRIFT_PRESETS = {
    "demo": DriftConfig(epochs="all", batch_size=50, null_samples=50),
    "paper": DriftConfig(epochs="all", batch_size=32, null_samples=128),
    "smoke": DriftConfig(epochs="all", batch_size=8, null_samples=8, selection="all"),
}


def _trained(workdir: pathlib.Path, config) -> bool:
  """A finished run of this configuration: summary.json (written last) and both named
  checkpoints exist (a lost one is re-derived by `train`), and config.json matches."""
  files = workdir_lib.Workdir(workdir)
  if not files.summary.exists() or not all(files.named(n).is_dir() for n in ("tl", "ft")):
    return False
  stored = workdir_lib.read_config(workdir)
  return stored is not None and workdir_lib.same_config(stored, config.to_json())


def _stages(config, workdir: pathlib.Path, drift: DriftConfig, data_dir, *, progress: bool,
            hooks=(), on_stage=lambda stage: None) -> dict:
  """Trains (unless trained) and runs the drift stage of one architecture; their seconds."""
  timings = {}
  start = time.perf_counter()
  if not _trained(workdir, config):
    on_stage("train")
    train.train(config, workdir, progress=progress, hooks=hooks)
  timings["train"] = time.perf_counter() - start
  start = time.perf_counter()
  on_stage("drift")
  out = run_drift(workdir, drift, data_dir=data_dir, progress=progress)
  timings["drift"] = time.perf_counter() - start
  timings["drift_split"] = out["timings"]  # compile, input, device, host, write seconds
  return timings


def _exit_with_parent(parent: int) -> None:
  """Ends this process when the parent process dies (killed, not interrupted: an interrupted
  parent stops its workers itself), so that no orphan goes on writing a run's files."""

  def watch():
    while os.getppid() == parent:
      time.sleep(1.0)
    os._exit(1)

  threading.Thread(target=watch, daemon=True, name="jaxdrift-parent-watch").start()


def _worker(arch, config, workdir, drift, data_dir, events, parent) -> None:
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
    timings = _stages(config, workdir, drift, data_dir, progress=False, hooks=(hook,),
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


def _run_workers(jobs: dict, workers: int, progress: bool) -> dict:
  """Runs `jobs` {arch: (config, workdir, drift, data_dir)} in at most `workers` processes.

  Returns {arch: timings}. The first failure stops the other workers (their runs resume
  later) and is raised here, with the worker's traceback as a note.
  """
  context = multiprocessing.get_context("spawn")  # never fork a process that runs JAX
  events = context.Queue()
  waiting, running, timings, silent = list(jobs), {}, {}, set()
  display = _Display(list(jobs), progress)
  try:
    while waiting or running:
      while waiting and len(running) < workers:
        arch = waiting.pop(0)
        process = context.Process(target=_worker, args=(arch, *jobs[arch], events, os.getpid()),
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


def default_workers(pending: int) -> int:
  """Architectures to run at once: one per CPU core on a CPU (two workers already keep two
  cores busy, and each holds its datasets in memory: the demo's InceptionV3 worker peaks at
  5 GB), one on an accelerator."""
  import jax

  if jax.default_backend() != "cpu":
    return 1
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  return max(1, min(pending, cores or 1))


def _check_arguments(preset, archs, workers) -> tuple:
  """Raises ValueError for an unknown preset or architecture, an architecture named twice
  (it would be counted twice in the report) or fewer than one worker; returns the archs."""
  if preset not in DRIFT_PRESETS:
    raise ValueError(f"unknown preset {preset!r}; expected one of {', '.join(DRIFT_PRESETS)}")
  if isinstance(archs, str):
    archs = (archs,)
  archs = tuple(archs)
  unknown = [a for a in archs if a not in models.ARCHS]
  if not archs or unknown:
    raise ValueError(f"archs must name paper architectures ({', '.join(models.ARCHS)}), got "
                     f"{list(archs)}; fix or drop {unknown or 'nothing: name at least one'}")
  repeated = sorted({a for a in archs if archs.count(a) > 1})
  if repeated:
    raise ValueError(f"archs must name each architecture once, got {repeated} more than once "
                     f"in {list(archs)}; each would be counted twice in the report, drop the "
                     "repeats")
  if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)
                              or workers < 1):
    raise ValueError(f"workers must be an integer >= 1 (or None for the default), got "
                     f"{workers!r}; pass e.g. 1 to run the architectures one after the other")
  return archs


def run_pipeline(preset: str = "demo", *, archs=models.ARCHS, root=None, data=None,
                 data_dir=None, drift: DriftConfig | None = None, progress: bool = True,
                 workers: int | None = None, **train_overrides) -> dict:
  """Runs every stage for each architecture and writes the combined report.

  Args:
    preset: "demo", "paper" or "smoke".
    archs: paper architecture names.
    root: output directory (default runs/<preset>); one workdir per arch, plus report/.
    data: dataset override ("chest_xray5", "phantoms", "folder:PATH").
    data_dir: TFDS data directory.
    drift: drift-stage options (default: the preset's, `DRIFT_PRESETS`).
    progress: show progress bars.
    workers: architectures trained at once, each in a worker process (default
      `default_workers`: one per CPU core on a CPU, 1 on an accelerator); 1 runs them one
      after the other in this process. Workers are spawned, and a spawned process imports
      the calling script: a script needs the `if __name__ == "__main__":` guard.
    **train_overrides: TrainConfig fields (e.g. epochs_ft=3).

  Returns:
    {"report": path of report.md, "workdirs": [...], "figures": {...}, "timings": {arch:
    {stage: seconds, ...}, "data": s, "report": s, "total": s, "workers": n}}.
  """
  archs = _check_arguments(preset, archs, workers)
  start_all = time.perf_counter()
  xla_cache.enable_compilation_cache()  # $JAXDRIFT_CACHE/xla; JAXDRIFT_XLA_CACHE=0: off
  root = pathlib.Path(root or f"runs/{preset}")
  drift = drift or DRIFT_PRESETS[preset]
  configs = {arch: train.preset(preset, arch=arch, data=data, data_dir=data_dir,
                                **train_overrides) for arch in archs}
  workdirs = {arch: root / arch for arch in archs}
  pending = [a for a in archs
             if not (_trained(workdirs[a], configs[a]) and drift_done(workdirs[a], drift))]
  start = time.perf_counter()
  prepared = set()
  for arch in pending:  # each dataset once, before any worker reads it
    c = configs[arch]
    key = json.dumps([c.data, c.data_options, c.data_dir], sort_keys=True)
    if key not in prepared:
      train.loop.load_sources(c)
      prepared.add(key)
  timings = {"data": time.perf_counter() - start}
  workers = default_workers(len(pending)) if workers is None else max(1, workers)
  workers = min(workers, max(1, len(pending)))
  if workers > 1:
    if progress:
      print(f"{len(pending)} architectures, {workers} at once: "
            + ", ".join(f"{a} ({configs[a].model_arch}) -> {workdirs[a]}" for a in pending),
            flush=True)
    # The largest inputs first: the longest run starts at once and never waits for a worker.
    pending.sort(key=lambda a: -configs[a].input_size)
    timings.update(_run_workers({a: (configs[a], workdirs[a], drift, data_dir)
                                 for a in pending}, workers, progress))
  for i, arch in enumerate(archs):
    if arch in timings:
      continue
    if progress:
      print(f"[{i + 1}/{len(archs)}] {arch} ({configs[arch].model_arch}) -> "
            f"{workdirs[arch]}", flush=True)
    timings[arch] = _stages(configs[arch], workdirs[arch], drift, data_dir,
                            progress=progress)
  start = time.perf_counter()
  paths = report.build_report([workdirs[a] for a in archs], root / "report")
  timings["report"] = time.perf_counter() - start
  timings.update(total=time.perf_counter() - start_all, workers=workers)
  timings = {**{a: timings[a] for a in archs},
             **{k: v for k, v in timings.items() if k not in archs}}
  workdir_lib.write_json(workdir_lib.timings_path(root), timings, indent=1)
  if progress:
    print(f"report: {paths['report']}")
  return {"report": paths["report"], "workdirs": [workdirs[a] for a in archs],
          "timings": timings, "figures": paths["figures"]}
