"""Drift stage: maps of the TL and FT checkpoints, every drift metric, nulls, localisation.

    python -m experiments.drift --workdir runs/resnet50v2 [--methods layercam,gradcam++]
        [--layers canonical,last_conv|NAMES] [--select both|ft|tl|all] [--epochs final|all]
        [--split test]

Writes DIR/drift/ (see jaxdrift.study.drift_stage); a rerun with the same options does
nothing.
"""

import argparse
import sys

from jaxdrift import study, train, xla_cache


def parse(argv=None):
  defaults = study.DriftConfig()
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument("--workdir", required=True, help="a training run's directory")
  p.add_argument("--methods", default=",".join(defaults.methods),
                 help="comma-separated attribution methods (jaxdrift.cam.METHODS)")
  p.add_argument("--layers", default=",".join(defaults.layers),
                 help="comma-separated: canonical (last feature map), last_conv, or Keras "
                      "layer names")
  p.add_argument("--select", default=defaults.selection, choices=["both", "ft", "tl", "all"],
                 help="samples in the statistics: true class predicted by both checkpoints, "
                      "by FT, by TL, or all")
  p.add_argument("--epochs", default=defaults.epochs, choices=["final", "all"],
                 help="final: TL vs FT; all: also every per-epoch checkpoint")
  p.add_argument("--split", default=defaults.split, help="dataset split")
  p.add_argument("--batch-size", type=int, default=defaults.batch_size, help="images per batch")
  p.add_argument("--null-samples", type=int, default=defaults.null_samples,
                 help="images for the perturbation and random-head nulls")
  p.add_argument("--grid", default=defaults.grid, choices=["network", "half_pixel"],
                 help="where a map's cells sit on the image: at their receptive fields' "
                      "centres (network) or at half-pixel centres like cv2.resize")
  p.add_argument("--pointing-tolerance", type=float, default=defaults.pointing_tolerance,
                 help="pointing-game tolerance as a fraction of the image size (phantoms)")
  p.add_argument("--data-dir", default=None, help="TFDS data directory (default: the run's)")
  p.add_argument("--seed", type=int, default=defaults.seed, help="seed of nulls and bootstrap")
  return p.parse_args(argv)


def main(argv=None):
  args = parse(argv)
  xla_cache.enable_compilation_cache()  # $JAXDRIFT_CACHE/xla; JAXDRIFT_XLA_CACHE=0: off
  config = study.DriftConfig(
      methods=tuple(args.methods.split(",")), layers=tuple(args.layers.split(",")),
      selection=args.select, epochs=args.epochs, split=args.split,
      batch_size=args.batch_size, null_samples=args.null_samples, seed=args.seed,
      grid=args.grid, pointing_tolerance=args.pointing_tolerance)
  try:
    paths = study.run_drift(args.workdir, config, data_dir=args.data_dir)
  except (study.DriftStageError, train.CheckpointError, FileNotFoundError) as e:
    sys.exit(f"error: {e}")
  print(("already done: " if paths["skipped"] else "wrote ") + str(paths["samples"]))


if __name__ == "__main__":
  main()
