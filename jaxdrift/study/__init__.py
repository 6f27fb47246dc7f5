"""The study end to end: the drift stage, result files and the pipeline over architectures."""

from jaxdrift.study.drift_stage import (DriftConfig, DriftStageError, drift_done, resolve_layer,
                                        run_drift)
from jaxdrift.study.pipeline import DRIFT_PRESETS, run_pipeline
from jaxdrift.study.results import ResultFileError
