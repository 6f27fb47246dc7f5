"""`python -m experiments.pipeline ARGS` is `jaxdrift pipeline ARGS` (see jaxdrift/cli/pipeline.py)."""

from jaxdrift import cli

main = cli.alias("pipeline")


if __name__ == "__main__":
  main()
