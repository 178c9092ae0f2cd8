#!/usr/bin/env python
"""Standalone entry point of the ScanNet evaluation: ``python apps/eval_scannet.py --data ROOT ... --out results.json``.

Same options and behaviour as ``dro-sfm eval scannet`` (it runs that command). Under
``torchrun --nproc_per_node N apps/eval_scannet.py ...`` the test set is sharded across the N processes.
"""

from __future__ import annotations

import sys

from dro_sfm.cli import main

if __name__ == "__main__":
    main(args=["eval", "scannet", *sys.argv[1:]], prog_name="apps/eval_scannet.py")
