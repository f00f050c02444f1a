"""``python -m rankops``: the command line (rankops.train.cli)."""

import sys

from rankops.train.cli import main

if __name__ == "__main__":
    sys.exit(main())
