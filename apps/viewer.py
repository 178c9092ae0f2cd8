#!/usr/bin/env python
"""Standalone entry point of the run viewer: ``python apps/viewer.py RUN_DIR [--screenshot PNG] ...``.

Same options and behaviour as ``dro-sfm view`` (it runs that command).
"""

from __future__ import annotations

import sys

from dro_sfm.cli import main

if __name__ == "__main__":
    main(args=["view", *sys.argv[1:]], prog_name="apps/viewer.py view")
