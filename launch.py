#!/usr/bin/env python
"""threedgen entry point; see ``python launch.py --help``."""

import sys

from threedgen.cli import main

if __name__ == "__main__":
    sys.exit(main())
