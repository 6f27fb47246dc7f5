"""The study over several architectures: data -> two-phase training -> drift, per arch.

    out = jaxdrift.study.run_stages("demo", root="runs/demo")   # {"workdirs", "timings"}

The report over them is the layer above (`jaxdrift.pipeline.run_pipeline`, also named
`jaxdrift.study.run_pipeline`), so that the study never imports the report.

Presets (training presets from `jaxdrift.train.preset`, drift options below):
  demo   the three architectures as reduced variants on 160-px phantoms, with a short proxy
         pretraining of each backbone (ImageNet weights cannot be had offline), LayerCAM and
         Grad-CAM++ at the canonical layer, drift across every epoch; minutes on a CPU.
  paper  the study: full DenseNet201, ResNet50V2, InceptionV3 at their default sizes on
         chest_xray5 with ImageNet backbones; for a GPU or TPU.
  smoke  the reduced variants, a few steps each, for tests.

The datasets are prepared first, once. Then each architecture is trained and analysed; on a
CPU several architectures run at once, each in a worker process of its own (`workers`, one
per core by default, the largest inputs first; `jaxdrift.study.workers`): one process keeps
about 1.6 of 2 cores busy and XLA compiles on one core, so side by side they fill the
machine. Their results are those of a run one after the other, bit for bit (XLA on the CPU
computes the same whatever the load). On an accelerator they run one after the other in
this process, which holds the device.

Each stage skips work already done (a finished training run, a drift stage with the same
options, see `run_drift`), so an interrupted pipeline resumes where it stopped.
"""

import json
import os
import pathlib
import time

from jaxdrift import models, train
from jaxdrift import workdir as workdir_lib
from jaxdrift.study.drift_stage import DriftConfig, drift_done, run_drift
from jaxdrift.study.workers import run_workers

DRIFT_PRESETS = {
    "demo": DriftConfig(epochs="all", batch_size=50, null_samples=50),
    "paper": DriftConfig(epochs="all", batch_size=32, null_samples=128),
    "smoke": DriftConfig(epochs="all", batch_size=8, null_samples=8, selection="all"),
}


def trained(workdir: pathlib.Path, config) -> bool:
  """A finished run of this configuration: summary.json (written last) and both named
  checkpoints exist (a lost one is re-derived by `train`), and config.json matches."""
  files = workdir_lib.Workdir(workdir)
  if not files.summary.exists() or not all(files.named(n).is_dir() for n in ("tl", "ft")):
    return False
  stored = workdir_lib.read_config(workdir)
  return stored is not None and workdir_lib.same_config(stored, config.to_json())


def train_and_drift(config, workdir: pathlib.Path, drift: DriftConfig, data_dir, *,
                    progress: bool, hooks=(), on_stage=lambda stage: None) -> dict:
  """Trains (unless trained) and runs the drift stage of one architecture; their seconds."""
  timings = {}
  start = time.perf_counter()
  if not trained(workdir, config):
    on_stage("train")
    train.train(config, workdir, progress=progress, hooks=hooks)
  timings["train"] = time.perf_counter() - start
  start = time.perf_counter()
  on_stage("drift")
  out = run_drift(workdir, drift, data_dir=data_dir, progress=progress)
  timings["drift"] = time.perf_counter() - start
  timings["drift_split"] = out["timings"]  # compile, input, device, host, write seconds
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


def check_arguments(preset, archs, workers) -> tuple:
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


def run_stages(preset: str = "demo", *, archs=models.ARCHS, root=None, data=None,
               data_dir=None, drift: DriftConfig | None = None, progress: bool = True,
               workers: int | None = None, **train_overrides) -> dict:
  """Trains each architecture and runs its drift stage (the pipeline before its report).

  Args: those of `jaxdrift.pipeline.run_pipeline`.

  Returns:
    {"workdirs": {arch: ROOT/arch}, "timings": {arch: {stage: seconds, ...}, "data": s},
    "workers": the worker processes used (1: this process)}.
  """
  archs = check_arguments(preset, archs, workers)
  root = pathlib.Path(root or f"runs/{preset}")
  drift = drift or DRIFT_PRESETS[preset]
  configs = {arch: train.preset(preset, arch=arch, data=data, data_dir=data_dir,
                                **train_overrides) for arch in archs}
  workdirs = {arch: root / arch for arch in archs}
  pending = [a for a in archs
             if not (trained(workdirs[a], configs[a]) and drift_done(workdirs[a], drift))]
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
    timings.update(run_workers({a: (configs[a], workdirs[a], drift, data_dir)
                                for a in pending}, workers, progress, train_and_drift))
  for i, arch in enumerate(archs):
    if arch in timings:
      continue
    if progress:
      print(f"[{i + 1}/{len(archs)}] {arch} ({configs[arch].model_arch}) -> "
            f"{workdirs[arch]}", flush=True)
    timings[arch] = train_and_drift(configs[arch], workdirs[arch], drift, data_dir,
                                    progress=progress)
  return {"workdirs": workdirs, "timings": timings, "workers": workers}
