"""Entry point of `python -m bench` (guarded: the photo floor's process pool re-imports __main__)."""

import sys

from bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
