"""TUM RGB-D sequences: ``rgb.txt``/``depth.txt`` lists, ``groundtruth.txt``, timestamp association, a writer.

Layout::

    <seq>/rgb/<timestamp>.png       colour
    <seq>/depth/<timestamp>.png     uint16, metres·5000, 0 = invalid (registered to the colour camera)
    <seq>/rgb.txt, depth.txt        "timestamp filename" per line, '#' comments
    <seq>/groundtruth.txt           "timestamp tx ty tz qx qy qz qw" (camera-to-world)
    <seq>/calibration.txt           optional, "fx fy cx cy" (written by dro-sfm, not part of TUM)

Colour frames are paired with depth and poses by the TUM ``associate.py`` rule: among all pairs closer
than ``max_difference`` seconds, the closest are taken first and each timestamp is used at most once.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from dro_sfm.data.atomic import atomic_write_text
from dro_sfm.data.images import (
    as_intrinsics,
    depth_from_uint16,
    read_intrinsics_txt,
    read_rgb,
    read_uint16_png,
    require_same_intrinsics,
    save_frame_depth_png,
    save_rgb,
    write_intrinsics_txt,
)
from dro_sfm.data.trajectory import Trajectory, read_tum_trajectory, write_tum_trajectory
from dro_sfm.data.types import Frame
from dro_sfm.errors import InputError
from dro_sfm.geometry.pose import check_rigid

logger = logging.getLogger(__name__)

DEPTH_SCALE = 5000.0
# Calibrated colour intrinsics (fx, fy, cx, cy) published for the three Kinects of the benchmark.
TUM_INTRINSICS = {
    "freiburg1": (517.3, 516.5, 318.6, 255.3),
    "freiburg2": (520.9, 521.0, 325.1, 249.7),
    "freiburg3": (535.4, 539.2, 320.1, 247.6),
}
_SENSOR_NAME = re.compile(r"(?:freiburg|fr)([123])(?![0-9])", re.IGNORECASE)


def read_tum_list(path: str | os.PathLike) -> list[tuple[float, str]]:
    """(timestamp, relative file) pairs [N] of a TUM ``rgb.txt`` / ``depth.txt``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise InputError(f"{path}: file list not found") from err
    out = []
    for number, line in enumerate(text.splitlines(), start=1):
        tokens = line.split()
        if not tokens or tokens[0].startswith("#"):
            continue
        if len(tokens) < 2:
            raise InputError(f"{path}:{number}: expected 'timestamp filename', got {line.strip()!r}")
        try:
            out.append((float(tokens[0]), tokens[1]))
        except ValueError as err:
            raise InputError(f"{path}:{number}: timestamp {tokens[0]!r} is not a number") from err
    return out


def associate(
    first: Sequence[float], second: Sequence[float], max_difference: float = 0.02, offset: float = 0.0
) -> list[tuple[int, int]]:
    """Index pairs (i, j) [M] matching ``first[i]`` with ``second[j] + offset`` as TUM's associate.py does.

    Candidates are all pairs closer than ``max_difference``; they are taken in order of increasing
    difference, each index at most once; the result is sorted by ``first``.
    """
    a = np.asarray(first, dtype=np.float64)
    b = np.asarray(second, dtype=np.float64) + offset
    if a.size == 0 or b.size == 0:
        return []
    order_b = np.argsort(b, kind="stable")
    b_sorted = b[order_b]
    lo = np.searchsorted(b_sorted, a - max_difference, side="left")
    hi = np.searchsorted(b_sorted, a + max_difference, side="right")
    cand_i, cand_j, cand_d = [], [], []
    for i in range(a.size):
        js = order_b[lo[i]:hi[i]]
        d = np.abs(a[i] - b[js])
        keep = d < max_difference
        cand_i.append(np.full(int(keep.sum()), i))
        cand_j.append(js[keep])
        cand_d.append(d[keep])
    ci, cj, cd = np.concatenate(cand_i), np.concatenate(cand_j), np.concatenate(cand_d)
    # associate.py sorts (difference, a, b) tuples; lexsort's last key is the primary one.
    order = np.lexsort((b[cj], a[ci], cd))
    used_a, used_b = np.zeros(a.size, bool), np.zeros(b.size, bool)
    matches = []
    for k in order:
        i, j = int(ci[k]), int(cj[k])
        if not used_a[i] and not used_b[j]:
            used_a[i] = used_b[j] = True
            matches.append((i, j))
    matches.sort(key=lambda m: (a[m[0]], m[0]))
    return matches


def tum_intrinsics_for(seq_dir: str | os.PathLike) -> np.ndarray | None:
    """K [3,3] of the freiburg1/2/3 sensor named in the folder's name (``rgbd_dataset_freiburg1_xyz``), or None."""
    match = _SENSOR_NAME.search(Path(seq_dir).resolve().name)
    return as_intrinsics(TUM_INTRINSICS[f"freiburg{match.group(1)}"]) if match else None


class TumSequence:
    """A TUM RGB-D sequence as a lazy stream of associated frames.

    Intrinsics: ``intrinsics`` (K or fx fy cx cy) if given, else ``calibration.txt``, else the freiburg1/2/3
    values chosen from the folder name. Colour frames without a depth match (when ``depth.txt`` exists) or
    without a pose match (when ``groundtruth.txt`` exists) are left out, as the TUM tools do.
    """

    def __init__(
        self,
        seq_dir: str | os.PathLike,
        intrinsics: np.ndarray | Sequence[float] | None = None,
        max_difference: float = 0.02,
        step: int = 1,
        use_depth: bool = True,
    ) -> None:
        self.seq_dir = Path(seq_dir)
        rgb_list = self.seq_dir / "rgb.txt"
        if not rgb_list.is_file():
            raise InputError(f"{rgb_list}: missing; not a TUM RGB-D sequence folder")
        self.K, self.intrinsics_source = self._intrinsics(intrinsics)
        rgb = read_tum_list(rgb_list)
        if not rgb:
            raise InputError(f"{rgb_list}: lists no images")
        depth_list = self.seq_dir / "depth.txt"
        depth = read_tum_list(depth_list) if use_depth and depth_list.is_file() else None
        gt_path = self.seq_dir / "groundtruth.txt"
        self.groundtruth: Trajectory | None = read_tum_trajectory(gt_path) if gt_path.is_file() else None

        keep = list(range(len(rgb)))
        depth_of: dict[int, str] = {}
        if depth is not None:
            pairs = associate([t for t, _ in rgb], [t for t, _ in depth], max_difference)
            depth_of = {i: depth[j][1] for i, j in pairs}
            keep = [i for i in keep if i in depth_of]
        pose_of: dict[int, np.ndarray] = {}
        if self.groundtruth is not None:
            pairs = associate([rgb[i][0] for i in keep], self.groundtruth.timestamps, max_difference)
            pose_of = {keep[i]: self.groundtruth.poses[j] for i, j in pairs}
            keep = [i for i in keep if i in pose_of]
        dropped = len(rgb) - len(keep)
        if dropped:
            logger.info("%s: %d of %d colour frames have no depth/pose within %.3f s and are skipped",
                        self.seq_dir, dropped, len(rgb), max_difference)
        if not keep:
            raise InputError(
                f"{self.seq_dir}: no colour frame has depth and pose within {max_difference} s; "
                "check the timestamps or raise max_difference"
            )
        self.entries = [(rgb[i][0], rgb[i][1], depth_of.get(i), pose_of.get(i)) for i in keep][::step]

    def _intrinsics(self, intrinsics: np.ndarray | Sequence[float] | None) -> tuple[np.ndarray, str]:
        if intrinsics is not None:
            return as_intrinsics(intrinsics), "argument"
        calib = self.seq_dir / "calibration.txt"
        if calib.is_file():
            return read_intrinsics_txt(calib), str(calib)
        K = tum_intrinsics_for(self.seq_dir)
        if K is not None:
            return K, "tum-sensor"
        raise InputError(
            f"{self.seq_dir}: cannot tell the camera: the folder name does not contain freiburg1/2/3 "
            "and there is no calibration.txt (fx fy cx cy); pass intrinsics"
        )

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[Frame]:
        for stamp, rgb_file, depth_file, pose in self.entries:
            image_path = self.seq_dir / rgb_file
            image = read_rgb(image_path)
            depth = None
            if depth_file is not None:
                depth_path = self.seq_dir / depth_file
                depth = depth_from_uint16(read_uint16_png(depth_path), DEPTH_SCALE)
                if depth.shape != image.shape[:2]:
                    raise InputError(
                        f"{depth_path}: depth is {depth.shape[1]}x{depth.shape[0]} but {image_path.name} is "
                        f"{image.shape[1]}x{image.shape[0]}; TUM depth is registered to colour, sizes must match"
                    )
            yield Frame(
                image=image,
                K=self.K.copy(),
                depth=depth,
                T_world_from_cam=None if pose is None else pose.copy(),
                timestamp=stamp,
                name=Path(rgb_file).stem,
                extras={"path": str(image_path), "intrinsics_source": self.intrinsics_source},
            )


def read_tum_sequence(seq_dir: str | os.PathLike, **kwargs) -> Iterator[Frame]:
    """Stream the associated frames of a TUM RGB-D sequence (see :class:`TumSequence`)."""
    return iter(TumSequence(seq_dir, **kwargs))


def write_tum_sequence(frames: Iterable[Frame], out_dir: str | os.PathLike, frame_rate: float = 30.0) -> Path:
    """Write frames as a TUM RGB-D sequence plus ``calibration.txt``; returns ``out_dir``.

    Frames without a timestamp get ``index / frame_rate``; colour and depth share the timestamp, so they
    associate exactly. Depth beyond 13.1 m (the uint16/5000 range) is written as invalid.
    """
    out_dir = Path(out_dir)
    header = "# color images\n# file: 'dro-sfm'\n# timestamp filename\n"
    rgb_lines, depth_lines = [header], [header.replace("color", "depth")]
    stamps, poses = [], []
    K0 = None
    last = -np.inf
    for index, frame in enumerate(tqdm(frames, desc=f"writing {out_dir.name}", unit="frame")):
        label = frame.label(index)
        if K0 is None:
            K0 = np.asarray(frame.K, dtype=np.float64)
            write_intrinsics_txt(out_dir / "calibration.txt", K0)
        else:
            require_same_intrinsics(frame.K, K0, label, "a TUM sequence has one camera")
        stamp = frame.timestamp if frame.timestamp is not None else index / frame_rate
        name = f"{stamp:.6f}"
        if float(name) <= last:
            raise InputError(f"{label}: timestamp {stamp} is not after the previous frame's (at 1 µs resolution)")
        last = float(name)
        save_rgb(out_dir / "rgb" / f"{name}.png", frame.image)
        rgb_lines.append(f"{name} rgb/{name}.png\n")
        if frame.depth is not None:
            save_frame_depth_png(out_dir / "depth" / f"{name}.png", frame, DEPTH_SCALE, label)
            depth_lines.append(f"{name} depth/{name}.png\n")
        if frame.T_world_from_cam is not None:
            stamps.append(float(name))
            poses.append(check_rigid(frame.T_world_from_cam, label))
    if K0 is None:
        raise InputError(f"{out_dir}: no frames to write")
    atomic_write_text(out_dir / "rgb.txt", "".join(rgb_lines))
    if len(depth_lines) > 1:
        atomic_write_text(out_dir / "depth.txt", "".join(depth_lines))
    if poses:
        write_tum_trajectory(out_dir / "groundtruth.txt", Trajectory(np.stack(poses), np.array(stamps)),
                             header="ground truth trajectory\nfile: 'dro-sfm'")
    return out_dir
