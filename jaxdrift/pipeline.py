"""The whole study in one call: data -> two-phase training -> drift -> report, per arch.

    jaxdrift.pipeline.run_pipeline("demo", root="runs/demo")   # also jaxdrift.study.run_pipeline

The layer above both the study and the report: `jaxdrift.study.run_stages` trains and
analyses each architecture, then `jaxdrift.report.build_report` writes the combined report
to ROOT/report/, and the stage times go to ROOT/timings.json. Presets, workers and resuming
are the study's (`jaxdrift.study.pipeline`).
"""

import pathlib
import time

from jaxdrift import models, report, xla_cache
from jaxdrift import workdir as workdir_lib
from jaxdrift.study import pipeline as study_pipeline
from jaxdrift.study.drift_stage import DriftConfig


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
    drift: drift-stage options (default: the preset's, `jaxdrift.study.DRIFT_PRESETS`).
    progress: show progress bars.
    workers: architectures trained at once, each in a worker process (default
      `jaxdrift.study.pipeline.default_workers`: one per CPU core on a CPU, 1 on an
      accelerator); 1 runs them one after the other in this process. Workers are spawned,
      and a spawned process imports the calling script: a script needs the
      `if __name__ == "__main__":` guard.
    **train_overrides: TrainConfig fields (e.g. epochs_ft=3).

  Returns:
    {"report": path of report.md, "workdirs": [...], "figures": {...}, "timings": {arch:
    {stage: seconds, ...}, "data": s, "report": s, "total": s, "workers": n}}.
  """
  archs = study_pipeline.check_arguments(preset, archs, workers)
  start_all = time.perf_counter()
  xla_cache.enable_compilation_cache()  # $JAXDRIFT_CACHE/xla; JAXDRIFT_XLA_CACHE=0: off
  root = pathlib.Path(root or f"runs/{preset}")
  out = study_pipeline.run_stages(preset, archs=archs, root=root, data=data,
                                  data_dir=data_dir, drift=drift, progress=progress,
                                  workers=workers, **train_overrides)
  workdirs, timings = out["workdirs"], out["timings"]
  start = time.perf_counter()
  paths = report.build_report([workdirs[a] for a in archs], root / "report")
  timings["report"] = time.perf_counter() - start
  timings.update(total=time.perf_counter() - start_all, workers=out["workers"])
  timings = {**{a: timings[a] for a in archs},
             **{k: v for k, v in timings.items() if k not in archs}}
  workdir_lib.write_json(workdir_lib.timings_path(root), timings, indent=1)
  if progress:
    print(f"report: {paths['report']}")
  return {"report": paths["report"], "workdirs": [workdirs[a] for a in archs],
          "timings": timings, "figures": paths["figures"]}
