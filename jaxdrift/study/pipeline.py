"""The whole study in one call: data -> two-phase training -> drift -> report, per arch.

    jaxdrift.study.run_pipeline("demo", root="runs/demo")

Presets (training presets from `jaxdrift.train.preset`, drift options below):
  demo   the three architectures as reduced variants on 160-px phantoms, with a short proxy
         pretraining of each backbone (ImageNet weights cannot be had offline), LayerCAM and
         Grad-CAM++ at the canonical layer, drift across every epoch; minutes on a CPU.
  paper  the study: full DenseNet201, ResNet50V2, InceptionV3 at their default sizes on
         chest_xray5 with ImageNet backbones; for a GPU or TPU.
  smoke  the reduced variants, a few steps each, for tests.

Each stage skips work already done (a finished training run, a drift stage with the same
options, see `run_drift`), so an interrupted pipeline resumes where it stopped; stage times
are written to ROOT/timings.json.
"""

import json
import pathlib
import time

from jaxdrift import models, report, train
from jaxdrift.study.drift_stage import DriftConfig, run_drift

DRIFT_PRESETS = {
    "demo": DriftConfig(epochs="all", batch_size=50, null_samples=50),
    "paper": DriftConfig(epochs="all", batch_size=32, null_samples=128),
    "smoke": DriftConfig(epochs="all", batch_size=8, null_samples=8, selection="all"),
}


def _trained(workdir: pathlib.Path, config) -> bool:
  """A finished run of this configuration (summary.json is written last)."""
  path = workdir / "config.json"
  if not (workdir / "summary.json").exists() or not path.exists():
    return False
  saved = json.loads(path.read_text())
  return all(saved.get(k) == v for k, v in config.to_json().items() if k != "data_dir")


def run_pipeline(preset: str = "demo", *, archs=models.ARCHS, root=None, data=None,
                 data_dir=None, drift: DriftConfig | None = None, progress: bool = True,
                 **train_overrides) -> dict:
  """Runs every stage for each architecture and writes the combined report.

  Args:
    preset: "demo", "paper" or "smoke".
    archs: paper architecture names.
    root: output directory (default runs/<preset>); one workdir per arch, plus report/.
    data: dataset override ("chest_xray5", "phantoms", "folder:PATH").
    data_dir: TFDS data directory.
    drift: drift-stage options (default: the preset's, `DRIFT_PRESETS`).
    progress: show progress bars.
    **train_overrides: TrainConfig fields (e.g. epochs_ft=3).

  Returns:
    {"report": path of report.md, "workdirs": [...], "timings": {arch: {stage: seconds}}}.
  """
  root = pathlib.Path(root or f"runs/{preset}")
  drift = drift or DRIFT_PRESETS[preset]
  timings, workdirs = {}, []
  for i, arch in enumerate(archs):
    config = train.preset(preset, arch=arch, data=data, data_dir=data_dir, **train_overrides)
    workdir = root / arch
    workdirs.append(workdir)
    if progress:
      print(f"[{i + 1}/{len(archs)}] {arch} ({config.model_arch}) -> {workdir}", flush=True)
    timings[arch] = {}
    start = time.perf_counter()
    if not _trained(workdir, config):
      train.train(config, workdir, progress=progress)
    timings[arch]["train"] = time.perf_counter() - start
    start = time.perf_counter()
    run_drift(workdir, drift, data_dir=data_dir, progress=progress)
    timings[arch]["drift"] = time.perf_counter() - start
  start = time.perf_counter()
  paths = report.build_report(workdirs, root / "report")
  timings["report"] = time.perf_counter() - start
  (root / "timings.json").write_text(json.dumps(timings, indent=1))
  if progress:
    print(f"report: {paths['report']}")
  return {"report": paths["report"], "workdirs": workdirs, "timings": timings,
          "figures": paths["figures"]}



