"""Two-phase training of one backbone: frozen-backbone transfer learning, then fine-tuning.

    jaxdrift train --arch inceptionv3                       # paper preset
    jaxdrift train --arch resnet50v2 --preset demo --workdir runs/rn-demo

Writes DIR/config.json, DIR/checkpoints/ (every epoch, plus tl and ft), DIR/metrics.jsonl
and DIR/summary.json (see jaxdrift.train.loop). Re-running the same command resumes.
Unset flags take the preset's value (see jaxdrift/train/config.py).
"""

import os

HELP = "two-phase training (TL, then FT) of one backbone"
USES_DATA = True
ARCHS = ("densenet201", "resnet50v2", "inceptionv3")  # == jaxdrift.models.ARCHS (tested)
PRESETS = ("paper", "demo", "smoke")  # == jaxdrift.train.PRESETS (tested)


def add_arguments(p) -> None:
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


def check_weights_file(config) -> None:
  """A --weights PATH is read and matched to the backbone before anything is written.

  Raises:
    jaxdrift.models.keras_h5.WeightFileError: missing, truncated, not a Keras file, or of
      another architecture (the message lists what does not fit).
  """
  if config.weights in ("imagenet", "none"):
    return
  import jax

  from jaxdrift import models

  models.pretrained(config.model_arch, 2, weights=config.weights, key=jax.random.key(0),
                    input_size=config.input_size)


def check_workdir_path(workdir, usage_error) -> None:
  """The workdir is a directory or does not exist yet."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise usage_error(f"--workdir must be a directory, found a file at {workdir}; pass a "
                      "directory path (it is created)")


def run(args, usage_error) -> int:
  import jaxdrift as jd

  config = jd.train.preset(
      args.preset, arch=args.arch, data=args.data, data_dir=args.data_dir,
      weights=args.weights, image_size=args.image_size, epochs_tl=args.epochs_tl,
      epochs_ft=args.epochs_ft, batch_size=args.batch_size, lr_tl=args.lr_tl,
      lr_ft=args.lr_ft, seed=args.seed, dtype=args.dtype, ft_train_bn=args.train_bn,
      early_stopping=args.early_stopping, max_steps_per_epoch=args.max_steps_per_epoch)
  workdir = args.workdir or f"runs/{args.arch}-{args.preset}"
  check_workdir_path(workdir, usage_error)
  if not os.path.exists(os.path.join(workdir, "checkpoints")):  # a resumed run has its start
    check_weights_file(config)
  summary = jd.train.train(config, workdir, progress=not args.no_progress)
  if args.no_progress:  # with progress on, train() has printed it already
    print(jd.train.summary_table(summary))
  return 0
