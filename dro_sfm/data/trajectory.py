"""Trajectory files: TUM (``t tx ty tz qx qy qz qw``), KITTI odometry (3x4 row-major), EuRoC ground-truth csv.

A trajectory is a list of body-to-world poses ``T_world_from_body`` with optional timestamps in seconds.
Every pose read is validated with :func:`dro_sfm.geometry.pose.check_rigid`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dro_sfm.data.atomic import atomic_write_text
from dro_sfm.errors import InputError
from dro_sfm.geometry.pose import check_rigid, pose_from_quat_trans, quat_trans_from_pose

logger = logging.getLogger(__name__)

# Quaternions in public files are rounded to 4-9 digits; a norm further from 1 than this means the columns
# are not (qx qy qz qw) or the file is not a trajectory at all.
_QUAT_NORM_TOL = 1e-2


@dataclass
class Trajectory:
    """Poses ``[N,4,4]`` float64 body-to-world and optional timestamps ``[N]`` float64 seconds."""

    poses: np.ndarray
    timestamps: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.poses = np.asarray(self.poses, dtype=np.float64).reshape(-1, 4, 4)
        if self.timestamps is not None:
            self.timestamps = np.asarray(self.timestamps, dtype=np.float64).reshape(-1)
            if len(self.timestamps) != len(self.poses):
                raise InputError(
                    f"trajectory has {len(self.poses)} poses but {len(self.timestamps)} timestamps; "
                    "they must be the same length"
                )

    def __len__(self) -> int:
        return int(self.poses.shape[0])

    @property
    def positions(self) -> np.ndarray:
        """Body positions in the world [N,3]."""
        return self.poses[:, :3, 3].copy()


def _data_lines(path: Path) -> list[tuple[int, list[str]]]:
    """(1-based line number, tokens) of the non-empty, non-comment lines of a text file."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError as err:
        raise InputError(f"{path}: trajectory file not found") from err
    except OSError as err:
        raise InputError(f"{path}: cannot read trajectory file ({err.strerror})") from err
    out = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or stripped.startswith("%"):
            continue
        out.append((number, stripped.replace(",", " ").split()))
    if not out:
        raise InputError(f"{path}: trajectory file contains no poses")
    return out


def _floats(tokens: list[str], path: Path, number: int, expected: int, what: str) -> np.ndarray:
    """The first ``expected`` tokens as float64 [expected], or an InputError naming the line."""
    if len(tokens) < expected:
        raise InputError(f"{path}:{number}: expected {expected} numbers ({what}), found {len(tokens)}")
    try:
        return np.array([float(tok) for tok in tokens[:expected]], dtype=np.float64)
    except ValueError as err:
        raise InputError(f"{path}:{number}: not a number in a {what} line: {' '.join(tokens)}") from err


def validate_poses(poses: np.ndarray, source: str, line_numbers: list[int] | None = None) -> np.ndarray:
    """Check every pose [N,4,4] is rigid; raises InputError naming ``source`` and the offending line."""
    R = poses[:, :3, :3]
    orth_err = np.abs(R @ np.swapaxes(R, 1, 2) - np.eye(3)).max(axis=(1, 2))
    det_err = np.abs(np.linalg.det(R) - 1.0)
    bottom_err = np.abs(poses[:, 3] - np.array([0.0, 0.0, 0.0, 1.0])).max(axis=1)
    finite = np.isfinite(poses).all(axis=(1, 2))
    # The vectorised test only pre-screens; check_rigid gives the authoritative verdict and message.
    suspicious = np.flatnonzero(~finite | (orth_err > 5e-4) | (det_err > 5e-4) | (bottom_err > 5e-4))
    for i in suspicious:
        where = f"{source}:{line_numbers[i]}" if line_numbers is not None else f"{source} (pose {i})"
        check_rigid(poses[i], where)
    return poses


def _check_monotonic(timestamps: np.ndarray, path: Path, line_numbers: list[int]) -> None:
    """Timestamps must never decrease; repeated ones (seen in real estimate files) are only reported."""
    steps = np.diff(timestamps)
    bad = np.flatnonzero(steps < 0)
    if len(bad):
        i = int(bad[0]) + 1
        raise InputError(
            f"{path}:{line_numbers[i]}: timestamp {float(timestamps[i])!r} is before the previous one "
            f"({float(timestamps[i - 1])!r}); trajectory timestamps must be in increasing order"
        )
    repeated = np.flatnonzero(steps == 0)
    if len(repeated):
        logger.warning(
            "%s: %d repeated timestamps (first at line %d); the poses are kept",
            path, len(repeated), line_numbers[int(repeated[0]) + 1],
        )


def _pose_from_quat(values: np.ndarray, q_wxyz: np.ndarray, path: Path, number: int) -> np.ndarray:
    norm = float(np.linalg.norm(q_wxyz))
    if not np.isfinite(norm) or abs(norm - 1.0) > _QUAT_NORM_TOL:
        raise InputError(
            f"{path}:{number}: quaternion norm is {norm:.4g}, not 1; check the column order "
            "(TUM: tx ty tz qx qy qz qw, EuRoC: px py pz qw qx qy qz)"
        )
    return pose_from_quat_trans(q_wxyz, values)


def _read_stamped_poses(path: Path, parse_line: Callable[[list[str], int], tuple[float, np.ndarray]]) -> Trajectory:
    """A timestamped trajectory whose data lines ``parse_line(tokens, line_number)`` turns into (seconds, [4,4])."""
    rows = _data_lines(path)
    stamps = np.empty(len(rows))
    poses = np.empty((len(rows), 4, 4))
    for i, (number, tokens) in enumerate(rows):
        stamps[i], poses[i] = parse_line(tokens, number)
    numbers = [number for number, _ in rows]
    _check_monotonic(stamps, path, numbers)
    return Trajectory(validate_poses(poses, str(path), numbers), stamps)


def read_tum_trajectory(path: str | os.PathLike) -> Trajectory:
    """Read a TUM trajectory file (``timestamp tx ty tz qx qy qz qw`` per line, ``#`` comments)."""
    path = Path(path)

    def parse_line(tokens: list[str], number: int) -> tuple[float, np.ndarray]:
        v = _floats(tokens, path, number, 8, "timestamp tx ty tz qx qy qz qw")
        return v[0], _pose_from_quat(v[1:4], np.array([v[7], v[4], v[5], v[6]]), path, number)

    return _read_stamped_poses(path, parse_line)


def write_tum_trajectory(path: str | os.PathLike, trajectory: Trajectory, header: str | None = None) -> Path:
    """Write a TUM trajectory file; timestamps are required (seconds, written with 6 decimals like TUM)."""
    path = Path(path)
    if trajectory.timestamps is None:
        raise InputError(f"{path}: a TUM trajectory needs timestamps; give the Trajectory timestamps in seconds")
    lines = [f"# {line}" for line in (header or "").splitlines()]
    lines.append("# timestamp tx ty tz qx qy qz qw")
    for stamp, T in zip(trajectory.timestamps, trajectory.poses):
        q, t = quat_trans_from_pose(T)
        lines.append(
            f"{stamp:.6f} {t[0]:.9f} {t[1]:.9f} {t[2]:.9f} {q[1]:.12f} {q[2]:.12f} {q[3]:.12f} {q[0]:.12f}"
        )
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def read_kitti_times(path: str | os.PathLike) -> np.ndarray:
    """Timestamps [N] in seconds from a KITTI odometry ``times.txt`` (one number per line)."""
    path = Path(path)
    rows = _data_lines(path)
    stamps = np.array([_floats(tok, path, n, 1, "time")[0] for n, tok in rows])
    _check_monotonic(stamps, path, [n for n, _ in rows])
    return stamps


def read_kitti_trajectory(path: str | os.PathLike, times_path: str | os.PathLike | None = None) -> Trajectory:
    """Read a KITTI odometry pose file: 12 numbers per line, the top 3x4 of ``T_world_from_cam`` row-major."""
    path = Path(path)
    rows = _data_lines(path)
    poses = np.tile(np.eye(4), (len(rows), 1, 1))
    for i, (number, tokens) in enumerate(rows):
        if len(tokens) != 12:
            raise InputError(
                f"{path}:{number}: expected 12 numbers (a 3x4 row-major pose), found {len(tokens)}"
            )
        poses[i, :3, :] = _floats(tokens, path, number, 12, "3x4 pose").reshape(3, 4)
    stamps = read_kitti_times(times_path) if times_path is not None else None
    if stamps is not None and len(stamps) != len(poses):
        raise InputError(f"{times_path}: {len(stamps)} times for {len(poses)} poses in {path}")
    return Trajectory(validate_poses(poses, str(path), [n for n, _ in rows]), stamps)


def write_kitti_trajectory(
    path: str | os.PathLike, trajectory: Trajectory, times_path: str | os.PathLike | None = None
) -> Path:
    """Write a KITTI odometry pose file (and ``times.txt`` when ``times_path`` is given)."""
    path = Path(path)
    lines = [" ".join(f"{x:.9e}" for x in T[:3, :].reshape(-1)) for T in trajectory.poses]
    atomic_write_text(path, "\n".join(lines) + "\n")
    if times_path is not None:
        if trajectory.timestamps is None:
            raise InputError(f"{times_path}: cannot write times, the trajectory has no timestamps")
        atomic_write_text(times_path, "".join(f"{t:.6e}\n" for t in trajectory.timestamps))
    return path


def read_euroc_groundtruth(path: str | os.PathLike) -> Trajectory:
    """Read EuRoC ``state_groundtruth_estimate0/data.csv``: ``t[ns], px, py, pz, qw, qx, qy, qz, ...``."""
    path = Path(path)

    def parse_line(tokens: list[str], number: int) -> tuple[float, np.ndarray]:
        if not tokens[0].isdigit():
            raise InputError(f"{path}:{number}: the first column must be an integer timestamp in nanoseconds")
        v = _floats(tokens, path, number, 8, "timestamp px py pz qw qx qy qz")
        # Integer nanoseconds are split before converting so the seconds keep full float64 precision.
        ns = int(tokens[0])
        return ns // 1_000_000_000 + (ns % 1_000_000_000) * 1e-9, _pose_from_quat(v[1:4], v[4:8], path, number)

    return _read_stamped_poses(path, parse_line)


def read_trajectory(path: str | os.PathLike, fmt: str | None = None) -> Trajectory:
    """Read a trajectory in ``fmt`` (``tum``, ``kitti``, ``euroc``), or guess it from the file's columns."""
    path = Path(path)
    if fmt is None:
        rows = _data_lines(path)
        ncols = len(rows[0][1])
        if path.suffix.lower() == ".csv" or ncols >= 17:
            fmt = "euroc"
        elif ncols == 12:
            fmt = "kitti"
        elif ncols == 8:
            fmt = "tum"
        else:
            raise InputError(
                f"{path}: cannot tell the trajectory format from {ncols} columns; expected 8 (TUM), "
                "12 (KITTI odometry) or an EuRoC csv"
            )
    readers = {"tum": read_tum_trajectory, "kitti": read_kitti_trajectory, "euroc": read_euroc_groundtruth}
    if fmt not in readers:
        raise InputError(f"{path}: unknown trajectory format {fmt!r}; use one of {sorted(readers)}")
    return readers[fmt](path)
