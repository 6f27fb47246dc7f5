"""Drift stage: maps of the TL and FT checkpoints, every drift metric, nulls, localisation.

    jaxdrift drift --workdir runs/resnet50v2 [--methods layercam,gradcam++]
        [--method-options rise.n_masks=1000,occlusion.size=16]
        [--layers canonical,last_conv|NAMES] [--select both|ft|tl|all] [--epochs final|all]
        [--split test] [--faithfulness [--faithfulness-steps 50]]

Methods: every jaxdrift.cam method with one map per image: CAM methods at each of --layers,
occlusion, rise, integrated_gradients and smoothgrad at the input's resolution (layer
"input"). Before the long part, one line per method gives its cost per image
(jd.cam.cost). Writes DIR/drift/ (see jaxdrift.study.drift_stage); a rerun with the same
options does nothing. Every option is checked (`jaxdrift.study.DriftConfig`) before
anything is read or written.
"""

import os

HELP = "attribution maps of both checkpoints and their drift metrics"
USES_DATA = True


def add_arguments(p) -> None:
  # The defaults equal DriftConfig()'s (tested), written out so that --help stays instant.
  p.add_argument("--workdir", required=True, help="a training run's directory")
  p.add_argument("--methods", default="layercam,gradcam++",
                 help="comma-separated attribution methods (jaxdrift.cam.METHODS, e.g. "
                      "layercam,gradcam++,scorecam,occlusion,rise) (default: %(default)s)")
  p.add_argument("--method-options", default="",
                 help="comma-separated METHOD.OPTION=VALUE over the stage's defaults, e.g. "
                      "rise.n_masks=1000,occlusion.size=16 (see docs/gradient_free.md)")
  p.add_argument("--layers", default="canonical",
                 help="comma-separated: canonical (last feature map), last_conv, or Keras "
                      "layer names (default: %(default)s)")
  p.add_argument("--select", default="both", choices=["both", "ft", "tl", "all"],
                 help="samples in the statistics: true class predicted by both checkpoints, "
                      "by FT, by TL, or all (default: %(default)s)")
  p.add_argument("--epochs", default="final", choices=["final", "all"],
                 help="final: TL vs FT; all: also every per-epoch checkpoint "
                      "(default: %(default)s)")
  p.add_argument("--split", default="test",
                 help="dataset split: train, validation or test, optionally sliced as in "
                      "TFDS, e.g. test[:50] (default: %(default)s)")
  p.add_argument("--batch-size", type=int, default=16,
                 help="images per batch (default: %(default)s)")
  p.add_argument("--null-samples", type=int, default=64,
                 help="images for the perturbation and random-head nulls "
                      "(default: %(default)s)")
  p.add_argument("--grid", default="network", choices=["network", "half_pixel"],
                 help="where a map's cells sit on the image: at their receptive fields' "
                      "centres (network) or at half-pixel centres like cv2.resize "
                      "(default: %(default)s)")
  p.add_argument("--pointing-tolerance", type=float, default=15 / 224,
                 help="pointing-game tolerance as a fraction of the image size, in [0, 1] "
                      "(phantoms; default: 15/224)")
  p.add_argument("--data-dir", default=None, help="TFDS data directory (default: the run's)")
  p.add_argument("--seed", type=int, default=0,
                 help="seed of nulls and bootstrap (default: %(default)s)")
  add_faithfulness_arguments(p)


def add_faithfulness_arguments(p) -> None:
  """--faithfulness and --faithfulness-steps (also `jaxdrift pipeline`'s)."""
  p.add_argument("--faithfulness", action="store_true",
                 help="also score each checkpoint's maps on its own model (deletion and "
                      "insertion AUC per image) and run the sanity checks on FT; see "
                      "docs/faithfulness.md")
  p.add_argument("--faithfulness-steps", type=int, default=50,
                 help="perturbation steps of each deletion / insertion curve "
                      "(default: %(default)s)")


def _value(text: str):
  """An option's value: an int, a float, None ("none"), or the text itself."""
  if text.lower() in ("none", "null"):
    return None
  for kind in (int, float):
    try:
      return kind(text)
    except ValueError:
      pass
  return text


def method_options(text: str) -> dict:
  """{method: {option: value}} of "rise.n_masks=1000,occlusion.size=16" (raises ValueError
  naming the malformed entry)."""
  out = {}
  for item in filter(None, (part.strip() for part in text.split(","))):
    name, eq, value = item.partition("=")
    method, dot, option = name.partition(".")
    if not (eq and dot and method and option and value):
      raise ValueError(f"--method-options entries are METHOD.OPTION=VALUE, got {item!r}; "
                       "e.g. rise.n_masks=1000")
    out.setdefault(method.strip(), {})[option.strip()] = _value(value.strip())
  return out


def config(args):
  """The DriftConfig of parsed arguments (raises ValueError for a bad option)."""
  from jaxdrift import study

  return study.DriftConfig(
      methods=tuple(args.methods.split(",")), layers=tuple(args.layers.split(",")),
      method_options=method_options(args.method_options),
      selection=args.select, epochs=args.epochs, split=args.split,
      batch_size=args.batch_size, null_samples=args.null_samples, seed=args.seed,
      grid=args.grid, pointing_tolerance=args.pointing_tolerance,
      faithfulness=args.faithfulness, faithfulness_steps=args.faithfulness_steps)


def run(args, usage_error) -> int:
  from jaxdrift import study

  drift_config = config(args)
  if not os.path.isdir(args.workdir):
    raise usage_error(f"--workdir must be a training run's directory, found "
                      f"{'a file' if os.path.exists(args.workdir) else 'nothing'} at "
                      f"{args.workdir}; run `jaxdrift train` first or fix the path")
  paths = study.run_drift(args.workdir, drift_config, data_dir=args.data_dir)
  print(("already done: " if paths["skipped"] else "wrote ") + str(paths["samples"]))
  return 0
