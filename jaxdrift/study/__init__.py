"""The study end to end: the drift stage, result files and the stages over architectures.

`run_pipeline` (the stages, then the report) lives in the layer above the report,
`jaxdrift.pipeline`; it is also named here, resolved on first use (PEP 562), so that
`jd.study.run_pipeline(...)` keeps working while no module of the study imports the report.
"""

from jaxdrift.study.drift_stage import (DriftConfig, DriftStageError, drift_done, resolve_layer,
                                        run_drift)
from jaxdrift.study.pipeline import DRIFT_PRESETS, run_stages
from jaxdrift.study.results import ResultFileError


def __getattr__(name):
  if name == "run_pipeline":
    from jaxdrift.pipeline import run_pipeline  # layers: an alias, not a dependency
    return run_pipeline
  raise AttributeError(f"module 'jaxdrift.study' has no attribute {name!r}")
