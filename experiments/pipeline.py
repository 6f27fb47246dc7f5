"""The whole study: data -> training (both phases) -> drift -> report, per architecture.

    python -m experiments.pipeline --preset demo      # phantoms, reduced models, CPU minutes
    python -m experiments.pipeline --preset paper --data-dir ~/tfds   # chest_xray5, GPU/TPU

Resumable: rerun the same command after an interruption.
"""

import argparse
import sys

from jaxdrift import models, study, train


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument("--preset", default="demo", choices=["demo", "paper", "smoke"],
                 help="demo: phantoms on a CPU; paper: the study on chest_xray5; smoke: tests")
  p.add_argument("--archs", default=",".join(models.ARCHS),
                 help="comma-separated paper architectures")
  p.add_argument("--data", default=None,
                 help="dataset override: chest_xray5, phantoms or folder:PATH")
  p.add_argument("--data-dir", default=None, help="TFDS data directory")
  p.add_argument("--root", default=None, help="output directory (default runs/<preset>)")
  p.add_argument("--workers", type=int, default=None,
                 help="architectures trained at once, one process each (default: one per "
                      "CPU core on a CPU, 1 on an accelerator)")
  args = p.parse_args(argv)
  try:
    out = study.run_pipeline(args.preset, archs=args.archs.split(","), root=args.root,
                             data=args.data, data_dir=args.data_dir,
                             workers=args.workers)
  except (study.DriftStageError, train.CheckpointError, train.WorkdirError, FileNotFoundError,
          ValueError) as e:
    sys.exit(f"error: {e}")
  print(f"done: {out['report']}")


if __name__ == "__main__":
  main()
