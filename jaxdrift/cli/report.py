"""Report: tables and figures over the drift stages of one or more runs.

    jaxdrift report --workdir runs/densenet201 runs/resnet50v2 [--out DIR]

Each workdir counts once: a directory named twice (also under two spellings or through a
symbolic link) is refused, since it would double every n and narrow every interval.
"""

import os

HELP = "tables and figures over the drift stages of one or more runs"
USES_DATA = False


def add_arguments(p) -> None:
  p.add_argument("--workdir", nargs="+", required=True,
                 help="training workdirs whose drift stage has run (one per architecture)")
  p.add_argument("--out", default=None,
                 help="output directory (default: <first workdir>/../report)")


def check_distinct(workdirs, usage_error) -> None:
  """Refuses a directory given twice, under any spelling."""
  seen = {}
  for workdir in workdirs:
    real = os.path.realpath(workdir)
    if real in seen:
      raise usage_error(f"--workdir takes each run once, found {seen[real]!r} and "
                        f"{workdir!r}, which are the same directory ({real}); drop one")
    seen[real] = workdir


def run(args, usage_error) -> int:
  check_distinct(args.workdir, usage_error)
  for workdir in args.workdir:
    if not os.path.isdir(workdir):
      raise usage_error(f"--workdir takes training run directories, found no directory at "
                        f"{workdir}; fix the path")
  if args.out is not None and os.path.exists(args.out) and not os.path.isdir(args.out):
    raise usage_error(f"--out must be a directory, found a file at {args.out}; pass a "
                      "directory path (it is created)")
  from jaxdrift import report

  paths = report.build_report(args.workdir, args.out)
  print(f"wrote {paths['report']} and {len(paths['figures'])} figures")
  return 0
