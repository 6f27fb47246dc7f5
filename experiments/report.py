"""`python -m experiments.report ARGS` is `jaxdrift report ARGS` (see jaxdrift/cli/report.py)."""

from jaxdrift import cli

main = cli.alias("report")


if __name__ == "__main__":
  main()
