"""The whole study: data -> training (both phases) -> drift -> report, per architecture.

    jaxdrift pipeline --preset demo                    # phantoms, reduced models, CPU minutes
    jaxdrift pipeline --preset paper --data-dir ~/tfds  # chest_xray5, GPU/TPU
    jaxdrift pipeline --preset demo --faithfulness     # also deletion / insertion, sanity

Resumable: rerun the same command after an interruption.
"""

import dataclasses
import os

from jaxdrift.cli import drift as drift_cli

HELP = "the whole study over several architectures, then the report"
USES_DATA = True
ARCHS = ("densenet201", "resnet50v2", "inceptionv3")  # == jaxdrift.models.ARCHS (tested)


def add_arguments(p) -> None:
  p.add_argument("--preset", default="demo", choices=["demo", "paper", "smoke"],
                 help="demo: phantoms on a CPU; paper: the study on chest_xray5; smoke: tests "
                      "(default: %(default)s)")
  p.add_argument("--archs", default=",".join(ARCHS),
                 help="comma-separated paper architectures, each once (default: %(default)s)")
  p.add_argument("--data", default=None,
                 help="dataset override: chest_xray5, phantoms or folder:PATH")
  p.add_argument("--data-dir", default=None, help="TFDS data directory")
  p.add_argument("--root", default=None, help="output directory (default: runs/<preset>)")
  p.add_argument("--workers", type=int, default=None,
                 help="architectures trained at once, one process each, at least 1 "
                      "(default: one per CPU core on a CPU, 1 on an accelerator)")
  p.add_argument("--no-progress", action="store_true", help="no progress bars")
  drift_cli.add_faithfulness_arguments(p)


def run(args, usage_error) -> int:
  from jaxdrift import pipeline, study

  if args.root is not None and os.path.exists(args.root) and not os.path.isdir(args.root):
    raise usage_error(f"--root must be a directory, found a file at {args.root}; pass a "
                      "directory path (it is created)")
  drift = None
  if args.faithfulness:
    drift = dataclasses.replace(study.DRIFT_PRESETS[args.preset],
                                faithfulness=args.faithfulness,
                                faithfulness_steps=args.faithfulness_steps)
  out = pipeline.run_pipeline(args.preset, archs=args.archs.split(","), root=args.root,
                              data=args.data, data_dir=args.data_dir, workers=args.workers,
                              drift=drift, progress=not args.no_progress)
  if args.no_progress:  # with progress on, run_pipeline has said where the report is
    print(f"report: {out['report']}")
  return 0
