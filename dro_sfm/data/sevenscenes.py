"""Microsoft 7-Scenes sequences (``seq-XX`` folders) and a writer of the same layout.

Layout::

    <seq>/frame-XXXXXX.color.png (or .jpg)   colour, 640x480
    <seq>/frame-XXXXXX.depth.png             uint16 millimetres; 0 or 65535 = invalid
    <seq>/frame-XXXXXX.pose.txt              4x4 camera-to-world
    <seq>/camera-intrinsics.txt              optional 3x3 K (tsdf-fusion convention); else 585/585/320/240

The depth comes from the Kinect depth camera and is not registered to the colour image; frames pair
them as stored, as every 7-Scenes user does.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from dro_sfm.data.images import (
    as_intrinsics,
    depth_from_uint16,
    natural_sorted,
    read_intrinsics_txt,
    read_rgb,
    read_uint16_png,
    require_same_intrinsics,
    save_frame_depth_png,
    save_rgb,
)
from dro_sfm.data.scannet import read_matrix_txt, write_matrix_txt
from dro_sfm.data.types import Frame
from dro_sfm.errors import InputError
from dro_sfm.geometry.pose import check_rigid

logger = logging.getLogger(__name__)

DEPTH_SCALE = 1000.0
INVALID_DEPTH_CODES = (0, 65535)
# The nominal intrinsics the 7-Scenes authors give for the colour and depth cameras.
DEFAULT_INTRINSICS = (585.0, 585.0, 320.0, 240.0)
INTRINSICS_FILE = "camera-intrinsics.txt"
_COLOR = re.compile(r"frame-(\d+)\.color\.(png|jpg|jpeg)$", re.IGNORECASE)


def list_sevenscenes_frames(seq_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """(frame number, colour file) pairs [N] of a 7-Scenes folder in frame order."""
    seq_dir = Path(seq_dir)
    out = []
    for p in natural_sorted(seq_dir.iterdir()):
        match = _COLOR.fullmatch(p.name)
        if match:
            out.append((int(match.group(1)), p))
    return out


class SevenScenesSequence:
    """A 7-Scenes sequence folder as a lazy stream of RGB-D frames with poses."""

    def __init__(
        self,
        seq_dir: str | os.PathLike,
        intrinsics: np.ndarray | Sequence[float] | None = None,
        step: int = 1,
        frames: Sequence[int] | None = None,
    ) -> None:
        self.seq_dir = Path(seq_dir)
        if not self.seq_dir.is_dir():
            raise InputError(f"{self.seq_dir}: 7-Scenes sequence folder not found")
        listed = list_sevenscenes_frames(self.seq_dir)
        if not listed:
            raise InputError(f"{self.seq_dir}: no frame-XXXXXX.color.png files; not a 7-Scenes sequence")
        by_id = dict(listed)
        if frames is not None:
            missing = [i for i in frames if i not in by_id]
            if missing:
                raise InputError(f"{self.seq_dir}: no colour image for frame(s) {missing[:5]}")
            listed = [(i, by_id[i]) for i in frames]
        self.frames = listed[::step]
        if intrinsics is not None:
            self.K, self.intrinsics_source = as_intrinsics(intrinsics), "argument"
        elif (self.seq_dir / INTRINSICS_FILE).is_file():
            self.K, self.intrinsics_source = read_intrinsics_txt(self.seq_dir / INTRINSICS_FILE), INTRINSICS_FILE
        else:
            logger.info("%s: no %s, using the nominal 7-Scenes intrinsics %s", self.seq_dir, INTRINSICS_FILE,
                        DEFAULT_INTRINSICS)
            self.K, self.intrinsics_source = as_intrinsics(DEFAULT_INTRINSICS), "7scenes-default"

    def __len__(self) -> int:
        return len(self.frames)

    def __iter__(self) -> Iterator[Frame]:
        for fid, path in self.frames:
            yield self.read_frame(fid, path)

    def read_frame(self, fid: int, color_path: Path) -> Frame:
        """Frame ``fid`` with colour, metric depth and camera-to-world pose."""
        image = read_rgb(color_path)
        stem = f"frame-{_COLOR.fullmatch(color_path.name).group(1)}"
        depth_path = self.seq_dir / f"{stem}.depth.png"
        depth = None
        if depth_path.is_file():
            depth = depth_from_uint16(read_uint16_png(depth_path), DEPTH_SCALE, INVALID_DEPTH_CODES)
            if depth.shape != image.shape[:2]:
                raise InputError(
                    f"{depth_path}: depth is {depth.shape[1]}x{depth.shape[0]} but {color_path.name} is "
                    f"{image.shape[1]}x{image.shape[0]}; 7-Scenes depth and colour must have the same size"
                )
        pose_path = self.seq_dir / f"{stem}.pose.txt"
        if not pose_path.is_file():
            raise InputError(f"{pose_path}: pose file missing; every 7-Scenes frame has one")
        T = check_rigid(read_matrix_txt(pose_path), str(pose_path))
        return Frame(
            image=image,
            K=self.K.copy(),
            depth=depth,
            T_world_from_cam=T,
            name=stem,
            extras={"frame_id": fid, "path": str(color_path), "intrinsics_source": self.intrinsics_source},
        )


def read_sevenscenes_sequence(seq_dir: str | os.PathLike, **kwargs) -> Iterator[Frame]:
    """Stream a 7-Scenes sequence (see :class:`SevenScenesSequence`)."""
    return iter(SevenScenesSequence(seq_dir, **kwargs))


def write_sevenscenes_sequence(
    frames: Iterable[Frame], out_dir: str | os.PathLike, image_ext: str = ".png", start: int = 0
) -> Path:
    """Write frames as ``frame-XXXXXX.{color,depth,pose}`` files plus ``camera-intrinsics.txt``.

    Every frame needs a pose; depth is optional (uint16 millimetres, 0 = invalid).
    """
    out_dir = Path(out_dir)
    if image_ext.lower() not in (".png", ".jpg"):
        raise InputError(f"image_ext must be .png or .jpg, got {image_ext!r}")
    K0 = None
    for index, frame in enumerate(tqdm(frames, desc=f"writing {out_dir.name}", unit="frame")):
        label = frame.label(index)
        if K0 is None:
            K0 = np.asarray(frame.K, dtype=np.float64)
            write_matrix_txt(out_dir / INTRINSICS_FILE, K0)
        else:
            require_same_intrinsics(frame.K, K0, label, "7-Scenes stores one K")
        if frame.T_world_from_cam is None:
            raise InputError(f"{label}: has no pose; every 7-Scenes frame needs frame-XXXXXX.pose.txt")
        stem = f"frame-{start + index:06d}"
        save_rgb(out_dir / f"{stem}.color{image_ext}", frame.image)
        if frame.depth is not None:
            save_frame_depth_png(out_dir / f"{stem}.depth.png", frame, DEPTH_SCALE, label)
        write_matrix_txt(out_dir / f"{stem}.pose.txt", check_rigid(frame.T_world_from_cam, label))
    if K0 is None:
        raise InputError(f"{out_dir}: no frames to write")
    return out_dir
