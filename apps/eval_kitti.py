#!/usr/bin/env python
"""Standalone entry point of the KITTI evaluation: ``python apps/eval_kitti.py --data ROOT ... --out results.json``.

Same options and behaviour as ``dro-sfm eval kitti`` (it runs that command). Under
``torchrun --nproc_per_node N apps/eval_kitti.py ...`` the test set is sharded across the N processes.
"""

from __future__ import annotations

import sys

from dro_sfm.cli import main

if __name__ == "__main__":
    main(args=["eval", "kitti", *sys.argv[1:]], prog_name="apps/eval_kitti.py")
