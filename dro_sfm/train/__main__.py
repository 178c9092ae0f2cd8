"""``python -m dro_sfm.train CONFIG.yaml [options]``: the ``dro-sfm train`` command, for launchers.

Distributed data-parallel training on N processes of one machine::

    torchrun --nproc_per_node N -m dro_sfm.train configs/kitti_supervised.yaml --data-root /data/kitti_raw
"""

from __future__ import annotations

import sys

from dro_sfm.cli import main

if __name__ == "__main__":
    main(args=["train", *sys.argv[1:]], prog_name="python -m dro_sfm.train")
