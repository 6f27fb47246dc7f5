"""`python -m experiments.drift ARGS` is `jaxdrift drift ARGS` (see jaxdrift/cli/drift.py)."""

from jaxdrift import cli

main = cli.alias("drift")


if __name__ == "__main__":
  main()
