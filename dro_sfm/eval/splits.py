"""Where the benchmarks find their test lists: a file given directly, or a named list in a splits directory.

The standard lists (KITTI Eigen splits, the BA-Net/DeepV2D ScanNet pairs) are public but not shipped with
dro-sfm; a named list is looked up in ``--splits-dir`` or, without it, in ``$DRO_SFM_SPLITS``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from dro_sfm.errors import ConfigError, InputError

SPLITS_ENV = "DRO_SFM_SPLITS"


def resolve_test_list(
    value: str | os.PathLike,
    named: Mapping[str, Sequence[str]],
    what: str,
    help_text: str,
    splits_dir: str | os.PathLike | None = None,
) -> Path:
    """``value`` itself if it is a file, else the first existing of its ``named`` paths in the splits directory.

    ``what`` names the list in errors ("split", "pair list"); ``help_text`` says where to get the standard
    lists, with ``<DIR>`` standing for the splits directory.
    """
    value = str(value)
    if value not in named:
        path = Path(value)
        if not path.is_file():
            raise InputError(f"{what} {value!r} is neither a file nor one of {', '.join(named)}")
        return path
    base = splits_dir if splits_dir is not None else os.environ.get(SPLITS_ENV)
    if not base:
        raise ConfigError(f"{what} {value!r} needs a splits directory: {help_text}")
    base = Path(base)
    candidates = [base / relative for relative in named[value]]
    for path in candidates:
        if path.is_file():
            return path
    looked_for = " and ".join(str(path) for path in candidates)
    raise InputError(f"{what} {value!r} not found in {base} (looked for {looked_for}); "
                     + help_text.replace("<DIR>", str(base)))
