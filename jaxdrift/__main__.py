"""`python -m jaxdrift ARGS` is the `jaxdrift ARGS` command (see jaxdrift.cli)."""

import sys

from jaxdrift.cli import main

if __name__ == "__main__":
  sys.exit(main())
