"""`python -m convert SRC.pth OUT_DIR [--config FILE] [-v] [--force]` (see convert/cli.py)."""
import sys

from convert import cli

if __name__ == "__main__":
  sys.exit(cli.main())
