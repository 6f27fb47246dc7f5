"""Report: tables and figures over the drift stages of one or more runs.

    python -m experiments.report --workdir runs/densenet201 runs/resnet50v2 [--out DIR]
"""

import argparse
import sys

from jaxdrift import report


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--workdir", nargs="+", required=True,
                 help="training workdirs whose drift stage has run (one per architecture)")
  p.add_argument("--out", default=None,
                 help="output directory (default: <first workdir>/../report)")
  args = p.parse_args(argv)
  try:
    paths = report.build_report(args.workdir, args.out)
  except FileNotFoundError as e:
    sys.exit(f"error: {e}")
  print(f"wrote {paths['report']} and {len(paths['figures'])} figures")


if __name__ == "__main__":
  main()
