"""ScanNet scenes as exported by ScanNet's SensReader, the BA-Net/DeepV2D test-pair list, and a writer.

Layout::

    <scene>/color/<N>.jpg            colour (1296x968 in ScanNet)
    <scene>/depth/<N>.png            uint16 millimetres, 0 = invalid (640x480 in ScanNet)
    <scene>/pose/<N>.txt             4x4 camera-to-world (``-inf`` everywhere when tracking was lost)
    <scene>/intrinsic/intrinsic_color.txt, intrinsic_depth.txt   4x4, the top-left 3x3 is K

Colour and depth may differ in size and intrinsics. Frames are produced at one output size (by default
the depth size): the colour image is resized and its K scaled, and the depth map is resampled into the
output camera through ``K_depth · K_out⁻¹`` (nearest neighbour; the depth and colour cameras are taken to
share a centre, as ScanNet's identity ``extrinsic_*.txt`` say).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from dro_sfm.data.atomic import atomic_write_text
from dro_sfm.data.images import (
    as_intrinsics,
    depth_from_uint16,
    image_size,
    natural_sorted,
    read_rgb,
    read_uint16_png,
    require_same_intrinsics,
    save_frame_depth_png,
    save_rgb,
)
from dro_sfm.data.types import Frame
from dro_sfm.errors import InputError
from dro_sfm.geometry.camera import scale_intrinsics_resize
from dro_sfm.geometry.pose import check_rigid

logger = logging.getLogger(__name__)

DEPTH_SCALE = 1000.0
_COLOR_EXTS = (".jpg", ".jpeg", ".png")


def read_matrix_txt(path: str | os.PathLike, rows: int = 4, cols: int = 4) -> np.ndarray:
    """A whitespace-separated ``rows`` x ``cols`` matrix [rows,cols] float64 from a text file."""
    path = Path(path)
    try:
        tokens = path.read_text(encoding="utf-8").split()
    except FileNotFoundError as err:
        raise InputError(f"{path}: file not found") from err
    try:
        values = np.array([float(t) for t in tokens], dtype=np.float64)
    except ValueError as err:
        raise InputError(f"{path}: expected {rows}x{cols} numbers, found text") from err
    if values.size != rows * cols:
        raise InputError(f"{path}: expected a {rows}x{cols} matrix ({rows * cols} numbers), found {values.size}")
    return values.reshape(rows, cols)


def read_scannet_intrinsics(path: str | os.PathLike) -> np.ndarray:
    """K [3,3] from a ScanNet ``intrinsic_*.txt`` (4x4; a 3x3 file is accepted too)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(
            f"{path}: missing calibration file; export the scene with ScanNet's SensReader "
            "(it writes intrinsic/intrinsic_color.txt and intrinsic_depth.txt)"
        )
    try:
        tokens = path.read_text(encoding="utf-8").split()
        values = [float(t) for t in tokens]
    except ValueError as err:
        raise InputError(f"{path}: intrinsics file must contain only numbers") from err
    return as_intrinsics(values, str(path))


def write_matrix_txt(path: str | os.PathLike, M: np.ndarray) -> Path:
    """Write a matrix row by row, full double precision."""
    text = "\n".join(" ".join(repr(float(v)) for v in row) for row in np.asarray(M, dtype=np.float64))
    atomic_write_text(path, text + "\n")
    return Path(path)


def resample_depth(
    depth: np.ndarray, K_depth: np.ndarray, K_out: np.ndarray, out_hw: tuple[int, int]
) -> np.ndarray:
    """Depth [H,W] of a camera ``K_depth`` re-rendered [h,w] for a co-centred camera ``K_out`` (nearest)."""
    h, w = out_hw
    if depth.shape == (h, w) and np.allclose(K_depth, K_out, rtol=1e-12, atol=1e-9):
        return depth.astype(np.float32, copy=True)
    u, v = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    pix = np.stack([u.ravel(), v.ravel(), np.ones(u.size)])
    src = K_depth @ np.linalg.solve(K_out, pix)
    col = np.round(src[0] / src[2]).astype(np.int64)
    row = np.round(src[1] / src[2]).astype(np.int64)
    inside = (col >= 0) & (row >= 0) & (col < depth.shape[1]) & (row < depth.shape[0])
    out = np.zeros(h * w, dtype=np.float32)
    out[inside] = depth[row[inside], col[inside]]
    return out.reshape(h, w)


def _frame_id(stem: str) -> int | None:
    """Frame number of ``346`` or ``frame-000346.color``; None for other names."""
    match = re.fullmatch(r"(?:frame-)?(\d+)(?:\.color|\.depth)?", stem)
    return int(match.group(1)) if match else None


class ScanNetScene:
    """An exported ScanNet scene as a lazy stream of frames.

    ``size``: ``"depth"`` (default, the depth map's size), ``"color"`` (the colour image's size) or a
    ``(width, height)`` tuple.
    """

    def __init__(
        self,
        scene_dir: str | os.PathLike,
        size: str | tuple[int, int] = "depth",
        step: int = 1,
        frames: Sequence[int] | None = None,
    ) -> None:
        self.scene_dir = Path(scene_dir)
        self.color_dir = self.scene_dir / "color"
        self.depth_dir = self.scene_dir / "depth"
        self.pose_dir = self.scene_dir / "pose"
        if not self.color_dir.is_dir():
            raise InputError(f"{self.color_dir}: missing; not an exported ScanNet scene (color/, depth/, pose/)")
        files = {}
        for p in natural_sorted(self.color_dir.iterdir()):
            fid = _frame_id(p.stem)
            if p.suffix.lower() in _COLOR_EXTS and fid is not None:
                files[fid] = p
        if not files:
            raise InputError(f"{self.color_dir}: no <N>.jpg colour frames")
        self._color_files = files
        ids = sorted(files)
        if frames is not None:
            missing = [i for i in frames if i not in files]
            if missing:
                raise InputError(f"{self.color_dir}: no colour image for frame(s) {missing[:5]}")
            ids = list(frames)
        self.frame_ids = ids[::step]
        intr = self.scene_dir / "intrinsic"
        self.K_color = read_scannet_intrinsics(intr / "intrinsic_color.txt")
        self.color_size = image_size(files[ids[0]])
        self.has_depth = self.depth_dir.is_dir()
        self.K_depth = read_scannet_intrinsics(intr / "intrinsic_depth.txt") if self.has_depth else None
        self.depth_size = self._first_depth_size() if self.has_depth else None
        if size == "depth":
            out = self.depth_size or self.color_size
        elif size == "color":
            out = self.color_size
        elif isinstance(size, tuple | list) and len(size) == 2:
            out = (int(size[0]), int(size[1]))
        else:
            raise InputError(f"size must be 'depth', 'color' or (width, height), got {size!r}")
        self.size = out
        sx, sy = out[0] / self.color_size[0], out[1] / self.color_size[1]
        self.K = scale_intrinsics_resize(self.K_color, sx, sy)

    def _first_depth_size(self) -> tuple[int, int] | None:
        for fid in self.frame_ids:
            path = self.depth_dir / f"{fid}.png"
            if path.is_file():
                return image_size(path)
        return None

    def __len__(self) -> int:
        return len(self.frame_ids)

    def __iter__(self) -> Iterator[Frame]:
        for fid in self.frame_ids:
            yield self.read_frame(fid)

    def read_pose(self, fid: int) -> np.ndarray | None:
        """Camera-to-world [4,4] of frame ``fid``; None when ScanNet marks it invalid (-inf) or has no poses."""
        if not self.pose_dir.is_dir():
            return None
        path = self.pose_dir / f"{fid}.txt"
        if not path.is_file():
            raise InputError(f"{path}: pose file missing (pose/ has no entry for frame {fid})")
        T = read_matrix_txt(path)
        if not np.all(np.isfinite(T)):
            logger.warning("%s: invalid pose (tracking lost in ScanNet); the frame has no pose", path)
            return None
        return check_rigid(T, str(path))

    def read_depth(self, fid: int) -> np.ndarray | None:
        """Depth [h,w] float32 in metres at the output size, or None when the frame has no depth file."""
        if not self.has_depth:
            return None
        path = self.depth_dir / f"{fid}.png"
        if not path.is_file():
            return None
        depth = depth_from_uint16(read_uint16_png(path), DEPTH_SCALE)
        if (depth.shape[1], depth.shape[0]) != self.depth_size:
            raise InputError(
                f"{path}: depth is {depth.shape[1]}x{depth.shape[0]} but the scene's depth maps are "
                f"{self.depth_size[0]}x{self.depth_size[1]}; every depth map of a scene must have one size"
            )
        return resample_depth(depth, self.K_depth, self.K, (self.size[1], self.size[0]))

    def read_frame(self, fid: int) -> Frame:
        """Frame ``fid`` at the output size."""
        path = self._color_files[fid]
        image = read_rgb(path)
        if (image.shape[1], image.shape[0]) != self.color_size:
            raise InputError(
                f"{path}: colour image is {image.shape[1]}x{image.shape[0]} but the scene's are "
                f"{self.color_size[0]}x{self.color_size[1]}"
            )
        if self.size != self.color_size:
            image = np.asarray(Image.fromarray(image).resize(self.size, Image.Resampling.BILINEAR))
        return Frame(
            image=image,
            K=self.K.copy(),
            depth=self.read_depth(fid),
            T_world_from_cam=self.read_pose(fid),
            name=f"{self.scene_dir.name}/{fid}",
            extras={"scene": self.scene_dir.name, "frame_id": fid, "path": str(path)},
        )


def read_scannet_scene(scene_dir: str | os.PathLike, **kwargs) -> Iterator[Frame]:
    """Stream the frames of an exported ScanNet scene (see :class:`ScanNetScene`)."""
    return iter(ScanNetScene(scene_dir, **kwargs))


def write_scannet_scene(
    frames: Iterable[Frame], out_dir: str | os.PathLike, image_ext: str = ".jpg", jpeg_quality: int = 95
) -> Path:
    """Write frames in the exported ScanNet layout (colour, uint16-mm depth, poses, intrinsics).

    Depth is stored at the colour size, so both intrinsics files hold the frames' K. Frames without a
    pose get ScanNet's ``-inf`` matrix; frames without depth get no depth file.
    """
    out_dir = Path(out_dir)
    if image_ext.lower() not in _COLOR_EXTS:
        raise InputError(f"image_ext must be one of {_COLOR_EXTS}, got {image_ext!r}")
    K0: np.ndarray | None = None
    count = 0
    for fid, frame in enumerate(tqdm(frames, desc=f"writing {out_dir.name}", unit="frame")):
        label = frame.label(fid)
        if K0 is None:
            K0 = np.asarray(frame.K, dtype=np.float64)
            K4 = np.eye(4)
            K4[:3, :3] = K0
            for name in ("intrinsic_color.txt", "intrinsic_depth.txt"):
                write_matrix_txt(out_dir / "intrinsic" / name, K4)
            for name in ("extrinsic_color.txt", "extrinsic_depth.txt"):
                write_matrix_txt(out_dir / "intrinsic" / name, np.eye(4))
        else:
            require_same_intrinsics(frame.K, K0, label, "a ScanNet scene has one K")
        save_rgb(out_dir / "color" / f"{fid}{image_ext}", frame.image, quality=jpeg_quality)
        if frame.depth is not None:
            save_frame_depth_png(out_dir / "depth" / f"{fid}.png", frame, DEPTH_SCALE, label)
        if frame.T_world_from_cam is None:
            T = np.full((4, 4), -np.inf)
        else:
            T = check_rigid(frame.T_world_from_cam, label)
        write_matrix_txt(out_dir / "pose" / f"{fid}.txt", T)
        count += 1
    if count == 0:
        raise InputError(f"{out_dir}: no frames to write")
    return out_dir


# ------------------------------------------------------------------------------------- BA-Net test pairs
@dataclass(frozen=True)
class ScanNetPair:
    """One BA-Net/DeepV2D test pair: scene, two frame numbers, and their paths relative to the scans root."""

    scene: str
    frame_a: int
    frame_b: int
    rgb: tuple[str, str]
    depth: tuple[str, str]


_SCENE_PATH = re.compile(r"(scene\d{4}_\d{2})/(.+)$")


def _strip_prefix(line: str, source: str) -> tuple[str, str, int]:
    """(scene, path from the scene folder on, frame number) of a foreign absolute path."""
    match = _SCENE_PATH.search(line.strip())
    if not match:
        raise InputError(f"{source}: no 'sceneXXXX_XX/' in {line.strip()!r}; not a ScanNet test-pair line")
    scene, rest = match.groups()
    fid = _frame_id(Path(rest).stem)
    if fid is None:
        raise InputError(f"{source}: cannot read a frame number from {rest!r}")
    return scene, f"{scene}/{rest}", fid


def read_scannet_test_pairs(path: str | os.PathLike) -> list[ScanNetPair]:
    """The test pairs [N] of a list in blocks of four lines (rgb1, rgb2, depth1, depth2), prefixes stripped."""
    path = Path(path)
    try:
        lines = [(n, line) for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)]
    except FileNotFoundError as err:
        raise InputError(f"{path}: test-pair list not found") from err
    lines = [(n, line) for n, line in lines if line.strip()]
    if not lines or len(lines) % 4:
        raise InputError(
            f"{path}: {len(lines)} non-empty lines; a test-pair list has blocks of 4 (rgb1, rgb2, depth1, depth2)"
        )
    pairs = []
    for b in range(0, len(lines), 4):
        parts = [_strip_prefix(line, f"{path}:{n}") for n, line in lines[b:b + 4]]
        scenes = {p[0] for p in parts}
        if len(scenes) != 1:
            raise InputError(f"{path}:{lines[b][0]}: the 4 lines of a pair name different scenes {sorted(scenes)}")
        (scene, rgb1, a), (_, rgb2, b_id), (_, d1, da), (_, d2, db) = parts
        if (a, b_id) != (da, db):
            raise InputError(f"{path}:{lines[b][0]}: rgb frames {a},{b_id} do not match depth frames {da},{db}")
        pairs.append(ScanNetPair(scene, a, b_id, (rgb1, rgb2), (d1, d2)))
    return pairs
