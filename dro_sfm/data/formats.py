"""One entry point for every dataset layout: recognise a path, stream its frames, write frames to a layout.

Layouts: ``kitti`` (KITTI raw drive folder), ``scannet`` (exported ScanNet scene), ``tum`` (TUM RGB-D
sequence), ``7scenes`` (7-Scenes sequence folder), ``folder`` (plain images, optional ``intrinsics.txt``),
``video`` (a video file; read only).
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from dro_sfm.data.images import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, ImageFolder, VideoFile, write_image_folder
from dro_sfm.data.kitti import KittiDrive, write_kitti_drive
from dro_sfm.data.scannet import ScanNetScene, write_scannet_scene
from dro_sfm.data.sevenscenes import SevenScenesSequence, list_sevenscenes_frames, write_sevenscenes_sequence
from dro_sfm.data.tum import TumSequence, write_tum_sequence
from dro_sfm.data.types import Frame
from dro_sfm.errors import InputError

LAYOUTS = ("kitti", "scannet", "tum", "7scenes", "folder", "video")
WRITABLE_LAYOUTS = ("kitti", "scannet", "tum", "7scenes", "folder")

_READERS: dict[str, Any] = {
    "kitti": KittiDrive,
    "scannet": ScanNetScene,
    "tum": TumSequence,
    "7scenes": SevenScenesSequence,
    "folder": ImageFolder,
    "video": VideoFile,
}
_WRITERS: dict[str, Any] = {
    "kitti": write_kitti_drive,
    "scannet": write_scannet_scene,
    "tum": write_tum_sequence,
    "7scenes": write_sevenscenes_sequence,
    "folder": write_image_folder,
}


def detect_layout(path: str | os.PathLike) -> str:
    """The layout name of ``path`` (one of :data:`LAYOUTS`), or InputError saying what was expected."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: does not exist")
    if path.is_file():
        if path.suffix.lower() in VIDEO_EXTENSIONS:
            return "video"
        raise InputError(
            f"{path}: a single file is read only as a video ({', '.join(VIDEO_EXTENSIONS)}); "
            "pass the folder that holds the images"
        )
    if (path / "rgb.txt").is_file():
        return "tum"
    if (path / "color").is_dir() and ((path / "intrinsic").is_dir() or (path / "pose").is_dir()):
        return "scannet"
    if any((path / f"image_0{c}" / "data").is_dir() for c in range(4)):
        return "kitti"
    if (path / "calib_cam_to_cam.txt").is_file():
        drives = sorted(p.name for p in path.glob("*_drive_*_sync") if p.is_dir())
        raise InputError(
            f"{path}: this is a KITTI date folder; pass one drive folder inside it ({', '.join(drives[:3])})"
        )
    entries = [p for p in path.iterdir() if p.is_file()]
    if any(list_sevenscenes_frames(path)):
        return "7scenes"
    if any(p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") for p in entries):
        return "folder"
    raise InputError(
        f"{path}: not a recognised layout (KITTI drive, ScanNet scene, TUM sequence, 7-Scenes folder, "
        "image folder or video file); the folder holds no images"
    )


def open_sequence(path: str | os.PathLike, layout: str | None = None, **kwargs: Any) -> Iterable[Frame]:
    """The reader object of ``path`` (iterable over frames, decoding lazily); kwargs go to the reader."""
    layout = layout or detect_layout(path)
    if layout not in _READERS:
        raise InputError(f"unknown layout {layout!r}; use one of {', '.join(LAYOUTS)}")
    reader = _READERS[layout]
    try:
        inspect.signature(reader).bind(path, **kwargs)
    except TypeError as err:
        raise InputError(f"{path}: option not understood by the {layout} reader ({err})") from err
    return reader(path, **kwargs)


def read_sequence(path: str | os.PathLike, layout: str | None = None, **kwargs: Any) -> Iterator[Frame]:
    """Stream the frames of ``path`` one by one (layout detected unless given)."""
    return iter(open_sequence(path, layout, **kwargs))


def write_frames(fmt: str, frames: Iterable[Frame], out_dir: str | os.PathLike, **kwargs: Any) -> Path:
    """Write ``frames`` in layout ``fmt`` under ``out_dir``; returns the path :func:`read_sequence` reads back.

    ``kitti`` returns the drive folder ``out_dir/<date>/<date>_drive_<NNNN>_sync``; the others ``out_dir``.
    """
    if fmt not in _WRITERS:
        raise InputError(f"cannot write layout {fmt!r}; use one of {', '.join(WRITABLE_LAYOUTS)}")
    return Path(_WRITERS[fmt](frames, Path(out_dir), **kwargs))
