"""`python -m experiments.train ARGS` is `jaxdrift train ARGS` (see jaxdrift/cli/train.py)."""

from jaxdrift import cli

main = cli.alias("train")
ARCHS = cli.train.ARCHS


def parser():
  """The `jaxdrift train` parser."""
  return cli.command_parser("train")


if __name__ == "__main__":
  main()
