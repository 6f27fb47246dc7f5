"""The `jaxdrift` command: train | drift | report | pipeline | forward.

    jaxdrift pipeline --preset demo                 # the whole study on phantoms (CPU)
    jaxdrift train --arch resnet50v2 --preset demo --workdir runs/rn
    jaxdrift drift --workdir runs/rn
    jaxdrift report --workdir runs/densenet201 runs/resnet50v2
    jaxdrift forward --tiny

`python -m jaxdrift ...` and `python -m experiments.<command> ...` run the same code.

Exit codes: 0 done; 2 a usage or input mistake, said in one line on stderr
("jaxdrift train: error: ...") with nothing written (`--debug` adds the traceback);
130 interrupted (Ctrl-C; rerunning the same command resumes); 1 an internal error, with
its traceback. Library chatter (TFDS, absl, XLA) is filtered unless `--verbose`.
"""

import argparse
import linecache
import sys
import traceback

import jaxdrift
from jaxdrift import _console
from jaxdrift.cli import drift, forward, pipeline, report, train

COMMANDS = {"train": train, "drift": drift, "report": report, "pipeline": pipeline,
            "forward": forward}
# OSErrors that name a file or directory the user gave (or a place they cannot write).
_USER_OS_ERRORS = (FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError,
                   PermissionError)


class UsageError(Exception):
  """A command-line mistake found by the parser or by a command's own checks."""


class _Parser(argparse.ArgumentParser):
  """An ArgumentParser whose mistakes become `UsageError` (one line, exit 2, no usage dump)."""

  def error(self, message):
    raise UsageError(f"{message}; see `{self.prog} --help`")


def build_parser(prog: str = "jaxdrift") -> argparse.ArgumentParser:
  """The parser of every subcommand (each defined in jaxdrift/cli/<command>.py)."""
  p = _Parser(prog=prog, description=__doc__.split("\n\n")[0],
              formatter_class=argparse.RawDescriptionHelpFormatter,
              epilog="Run `jaxdrift <command> --help` for a command's options.")
  p.add_argument("--version", action="version", version=f"jaxdrift {jaxdrift.__version__}")
  _add_global_flags(p, False)
  sub = p.add_subparsers(dest="command", metavar="command", required=True)
  for name, module in COMMANDS.items():
    child = sub.add_parser(name, help=module.HELP, description=module.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_global_flags(child, argparse.SUPPRESS)
    module.add_arguments(child)
  return p


def command_parser(command: str) -> argparse.ArgumentParser:
  """The parser of one command alone (`jaxdrift <command>`), for help texts and tests."""
  module = COMMANDS[command]
  p = _Parser(prog=f"jaxdrift {command}", description=module.__doc__,
              formatter_class=argparse.RawDescriptionHelpFormatter)
  _add_global_flags(p, False)
  module.add_arguments(p)
  return p


def _add_global_flags(p, default) -> None:
  """--debug and --verbose, accepted before or after the command name."""
  p.add_argument("--debug", action="store_true", default=default,
                 help="on an error, also print the traceback")
  p.add_argument("--verbose", action="store_true", default=default,
                 help="let library warnings and logs (TFDS, absl, XLA) through")


def _raise_site_in_jaxdrift(e: BaseException) -> bool:
  """True when `e` was raised by a `raise` statement in jaxdrift's own code."""
  tb = e.__traceback__
  while tb is not None and tb.tb_next is not None:
    tb = tb.tb_next
  if tb is None:
    return False
  code = tb.tb_frame.f_code
  module = tb.tb_frame.f_globals.get("__name__", "")
  line = linecache.getline(code.co_filename, tb.tb_lineno).strip()
  return (module == "jaxdrift" or module.startswith("jaxdrift.")) and line.startswith("raise")


def is_user_error(e: BaseException) -> bool:
  """An error caused by the user's input: a jaxdrift error class (CheckpointError,
  WorkdirError, DriftStageError, WeightFileError, LayoutError, ...), an OSError naming a
  path, or a ValueError that jaxdrift raised on purpose. Anything else is a bug."""
  if isinstance(e, (UsageError, *_USER_OS_ERRORS)):
    return True
  module = type(e).__module__
  if module == "jaxdrift" or module.startswith("jaxdrift."):
    return True
  return isinstance(e, ValueError) and _raise_site_in_jaxdrift(e)


def one_line(message: str) -> str:
  """`message` on one line (multi-line library messages joined with '; ')."""
  parts = [part.strip() for part in str(message).splitlines() if part.strip()]
  return "; ".join(parts) or "(no message)"


def main(argv=None, *, prog: str = "jaxdrift") -> int:
  """Runs one command; returns its exit code (see the module docstring)."""
  argv = list(sys.argv[1:] if argv is None else argv)
  parser = build_parser(prog)
  command_prog = prog
  try:
    args = parser.parse_args(argv)
  except UsageError as e:
    command_prog = _command_prog(prog, argv)
    print(f"{command_prog}: error: {one_line(e)}", file=sys.stderr)
    return 2
  except SystemExit as e:  # --help, --version
    return e.code if isinstance(e.code, int) else 0
  command_prog = f"{prog} {args.command}"
  module = COMMANDS[args.command]
  with _console.interrupts_exit(command_prog), \
      _console.quiet(args.verbose, data=module.USES_DATA):
    try:
      from jaxdrift import xla_cache  # after parsing: --help and usage errors stay instant
      xla_cache.enable_compilation_cache()  # $JAXDRIFT_CACHE/xla; JAXDRIFT_XLA_CACHE=0: off
      return module.run(args, UsageError) or 0
    except KeyboardInterrupt:  # raised by code, not by Ctrl-C (that ends the process)
      print(f"{command_prog}: {_console.INTERRUPTED}", file=sys.stderr)
      return 130
    except Exception as e:  # noqa: BLE001 -- sorted into user mistakes and bugs
      if not is_user_error(e):
        raise
      if args.debug:
        traceback.print_exc()
      print(f"{command_prog}: error: {one_line(e)}", file=sys.stderr)
      return 2
  return 0


def _command_prog(prog: str, argv) -> str:
  """`prog <command>` when argv names a command, else `prog`."""
  command = next((a for a in argv if not a.startswith("-")), None)
  return f"{prog} {command}" if command in COMMANDS else prog


def alias(command: str):
  """A `main(argv=None)` for `python -m experiments.<command>`: runs `jaxdrift <command>`
  with those arguments and raises SystemExit with its exit code when it is not 0."""

  def run(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    code = main([command, *argv])
    if code:
      raise SystemExit(code)

  run.__doc__ = f"`python -m experiments.{command} ARGS` is `jaxdrift {command} ARGS`."
  return run
