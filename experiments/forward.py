"""`python -m experiments.forward ARGS` is `jaxdrift forward ARGS` (see jaxdrift/cli/forward.py)."""

from jaxdrift import cli

main = cli.alias("forward")


if __name__ == "__main__":
  main()
