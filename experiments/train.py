"""Two-phase training of one backbone: frozen-backbone transfer learning, then fine-tuning.

    python -m experiments.train --arch inceptionv3                       # paper preset
    python -m experiments.train --arch resnet50v2 --preset demo --workdir runs/rn-demo

Writes DIR/config.json, DIR/checkpoints/ (every epoch, plus tl and ft), DIR/metrics.jsonl
and DIR/summary.json (see jaxdrift.train.loop). Re-running the same command resumes.
"""

import argparse
import sys

ARCHS = ("densenet201", "resnet50v2", "inceptionv3")  # == jaxdrift.models.ARCHS (tested)
PRESETS = ("paper", "demo", "smoke")


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="python -m experiments.train", description=__doc__.split("\n\n")[0],
      epilog="Unset flags take the preset's value (see jaxdrift/train/config.py).")
  p.add_argument("--arch", required=True, choices=ARCHS,
                 help="backbone (demo/smoke presets train its reduced variant)")
  p.add_argument("--preset", default="paper", choices=PRESETS,
                 help="paper: default sizes, chest_xray5, ImageNet, 10+20 epochs; demo: "
                      "reduced model on 160 px phantoms (fed at 224 px to resnet50v2, 235 to "
                      "inceptionv3) with proxy pretraining (CPU, a few minutes); smoke: a few "
                      "steps, for tests (default: paper)")
  p.add_argument("--data", default=None,
                 help="chest_xray5 | phantoms[/128|/224|/small] | folder:PATH "
                      "(default: the preset's)")
  p.add_argument("--data-dir", default=None,
                 help="TFDS data directory where datasets are built/read (default: TFDS's)")
  p.add_argument("--weights", default=None,
                 help="backbone initialisation: imagenet | none | PATH to a Keras .h5 "
                      "(default: the preset's)")
  p.add_argument("--workdir", default=None,
                 help="run directory (default: runs/<arch>-<preset>); one per architecture")
  p.add_argument("--image-size", type=int, default=None,
                 help="square input size in pixels (default: the model's default size)")
  p.add_argument("--epochs-tl", type=int, default=None, help="phase-1 (frozen) epochs")
  p.add_argument("--epochs-ft", type=int, default=None, help="phase-2 (all layers) epochs")
  p.add_argument("--batch-size", type=int, default=None,
                 help="global batch size, divisible by the device count")
  p.add_argument("--lr-tl", type=float, default=None, help="phase-1 learning rate")
  p.add_argument("--lr-ft", type=float, default=None, help="phase-2 learning rate")
  p.add_argument("--seed", type=int, default=None,
                 help="seed of initialisation, data order, augmentation, dropout (default 0)")
  p.add_argument("--dtype", default=None, choices=("float32", "bfloat16"),
                 help="compute dtype; parameters stay float32 (bfloat16: accelerators)")
  p.add_argument("--train-bn", action="store_true", default=None,
                 help="run BatchNorm in training mode in phase 2 (default: inference mode, "
                      "as in the Keras transfer-learning recipe)")
  p.add_argument("--early-stopping", type=int, default=None, metavar="PATIENCE",
                 help="stop a phase after PATIENCE epochs without a better validation AUC; "
                      "tl/ft are then the best epochs (default: off)")
  p.add_argument("--max-steps-per-epoch", type=int, default=None,
                 help="cap on training steps per epoch (0: full epochs)")
  p.add_argument("--no-progress", action="store_true",
                 help="no progress bars or per-epoch lines")
  return p


def main(argv=None) -> dict:
  args = parser().parse_args(argv)
  import jaxdrift as jd  # after parsing: --help and usage errors stay instant

  jd.enable_compilation_cache()  # $JAXDRIFT_CACHE/xla; JAXDRIFT_XLA_CACHE=0 turns it off

  try:
    config = jd.train.preset(
        args.preset, arch=args.arch, data=args.data, data_dir=args.data_dir,
        weights=args.weights, image_size=args.image_size, epochs_tl=args.epochs_tl,
        epochs_ft=args.epochs_ft, batch_size=args.batch_size, lr_tl=args.lr_tl,
        lr_ft=args.lr_ft, seed=args.seed, dtype=args.dtype, ft_train_bn=args.train_bn,
        early_stopping=args.early_stopping, max_steps_per_epoch=args.max_steps_per_epoch)
  except ValueError as e:
    parser().error(str(e))
  workdir = args.workdir or f"runs/{args.arch}-{args.preset}"
  try:
    summary = jd.train.train(config, workdir, progress=not args.no_progress)
  except (jd.train.WorkdirError, jd.train.CheckpointError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    raise SystemExit(1) from None
  if args.no_progress:  # with progress on, train() has printed it already
    print(jd.train.summary_table(summary))
  return summary


if __name__ == "__main__":
  main()
