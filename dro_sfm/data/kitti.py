"""KITTI raw: calibration, OXTS poses, Velodyne depth, split lists, and a writer of the same layout.

Layout (one date folder holds the calibration shared by its drives)::

    <root>/<date>/calib_cam_to_cam.txt, calib_velo_to_cam.txt, calib_imu_to_velo.txt
    <root>/<date>/<date>_drive_<NNNN>_sync/image_0{0,1,2,3}/data/<10 digits>.png, timestamps.txt
                                          /oxts/data/<10 digits>.txt, timestamps.txt, dataformat.txt
                                          /velodyne_points/data/<10 digits>.bin (float32 x y z reflectance)
                                          /proj_depth/velodyne/image_0X/<10 digits>.npz   (packnet-sfm cache)
                                          /proj_depth/groundtruth/image_0X/<10 digits>.png (uint16, metres·256)

Frames of camera ``X`` get ``K = P_rect_0X[:, :3]`` and camera-to-world poses from the OXTS packets chained
through ``T_camX_from_imu = T_camX_from_rect0 · R_rect_00 · T_cam0_from_velo · T_velo_from_imu``, where
``T_camX_from_rect0`` is the translation ``K⁻¹ · P_rect_0X[:, 3]`` (the stereo baseline held in P_rect).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from dro_sfm.data.atomic import atomic_path, atomic_write_text
from dro_sfm.data.images import (
    depth_to_uint16,
    natural_sorted,
    read_rgb,
    read_uint16_png,
    require_same_intrinsics,
    save_rgb,
    save_uint16_png,
)
from dro_sfm.data.types import Frame
from dro_sfm.errors import InputError
from dro_sfm.geometry.pose import check_rigid, invert_rigid

logger = logging.getLogger(__name__)

EARTH_RADIUS_M = 6378137.0
OXTS_FIELDS = (
    "lat", "lon", "alt", "roll", "pitch", "yaw", "vn", "ve", "vf", "vl", "vu", "ax", "ay", "az", "af", "al",
    "au", "wx", "wy", "wz", "wf", "wl", "wu", "pos_accuracy", "vel_accuracy", "navstat", "numsats",
    "posmode", "velmode", "orimode",
)
GROUNDTRUTH_DEPTH_SCALE = 256.0
DEPTH_SOURCES = ("auto", "groundtruth", "velodyne", "proj_depth", "none")
_FRAME_DIGITS = 10
_CALIB_FILES = ("calib_cam_to_cam.txt", "calib_velo_to_cam.txt", "calib_imu_to_velo.txt")


# --------------------------------------------------------------------------------------------- calibration
def _rigid(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """4x4 [4,4] from a rotation [3,3] and translation [3]."""
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = t
    return T


def nearest_rigid(T: np.ndarray) -> np.ndarray:
    """The rigid transform [4,4] whose rotation is closest (Frobenius) to the 3x3 block of T [4,4]."""
    U, _, Vt = np.linalg.svd(T[:3, :3])
    R = U @ Vt
    if np.linalg.det(R) < 0:
        R = U @ np.diag([1.0, 1.0, -1.0]) @ Vt
    return _rigid(R, T[:3, 3])


def read_calib_file(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """``key: numbers`` lines of a KITTI calibration file as float64 arrays (text values are skipped)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError as err:
        raise InputError(
            f"{path}: missing calibration file; KITTI raw drives need calib_cam_to_cam.txt, "
            "calib_velo_to_cam.txt and calib_imu_to_velo.txt in the date folder above the drive"
        ) from err
    out: dict[str, np.ndarray] = {}
    for line in text.splitlines():
        if ":" not in line:
            continue
        key, _, value = line.partition(":")
        try:
            out[key.strip()] = np.array([float(v) for v in value.split()], dtype=np.float64)
        except ValueError:
            continue  # calib_time and other text entries
    return out


def _entry(values: dict[str, np.ndarray], key: str, size: int, path: Path) -> np.ndarray:
    if key not in values:
        raise InputError(f"{path}: calibration entry '{key}' is missing")
    if values[key].size != size:
        raise InputError(f"{path}: calibration entry '{key}' has {values[key].size} numbers, expected {size}")
    return values[key]


@dataclass
class KittiCalib:
    """KITTI raw calibration of one date: rectified projections and the camera/Velodyne/IMU rig."""

    P_rect: dict[int, np.ndarray]
    R_rect_00: np.ndarray
    image_size: dict[int, tuple[int, int]]
    T_cam0_from_velo: np.ndarray | None = None
    T_velo_from_imu: np.ndarray | None = None
    source: Path | None = None
    calib_time: str = ""
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    def _require(self, camera: int) -> None:
        if camera not in self.P_rect:
            raise InputError(f"{self.source}: no P_rect_{camera:02d} for camera {camera} in calib_cam_to_cam.txt")

    def K(self, camera: int) -> np.ndarray:
        """Intrinsics [3,3] of rectified camera ``camera``."""
        self._require(camera)
        return self.P_rect[camera][:, :3].copy()

    def T_cam_from_rect0(self, camera: int) -> np.ndarray:
        """Translation [4,4] from the rectified cam-0 frame to camera ``camera`` (the P_rect baseline)."""
        self._require(camera)
        P = self.P_rect[camera]
        T = np.eye(4)
        T[:3, 3] = np.linalg.solve(P[:, :3], P[:, 3])
        return T

    def T_cam_from_velo(self, camera: int) -> np.ndarray:
        """Velodyne-to-camera [4,4]; ``K · T[:3]`` equals monodepth2's ``P_rect · R_rect · T_velo2cam``."""
        if self.T_cam0_from_velo is None:
            raise InputError(f"{self._date_dir()}/calib_velo_to_cam.txt: missing calibration file")
        R_rect = _rigid(self.R_rect_00, np.zeros(3))
        return self.T_cam_from_rect0(camera) @ R_rect @ self.T_cam0_from_velo

    def T_cam_from_imu(self, camera: int) -> np.ndarray:
        """IMU(OXTS)-to-camera [4,4] through the Velodyne, made exactly rigid.

        The files round rotations to 7 digits (orthonormal only to ~1e-7); poses use the nearest rotation
        so that inverses are exact, while :func:`project_velodyne` keeps the file values as monodepth2 does.
        """
        if self.T_velo_from_imu is None:
            raise InputError(f"{self._date_dir()}/calib_imu_to_velo.txt: missing calibration file")
        return nearest_rigid(self.T_cam_from_velo(camera) @ self.T_velo_from_imu)

    def _date_dir(self) -> Path:
        return self.source if self.source is not None else Path("<calibration>")


def read_kitti_calib(date_dir: str | os.PathLike) -> KittiCalib:
    """Read the three calibration files of a KITTI date folder (Velodyne/IMU ones may be absent)."""
    date_dir = Path(date_dir)
    cam_path = date_dir / "calib_cam_to_cam.txt"
    cam = read_calib_file(cam_path)
    P_rect: dict[int, np.ndarray] = {}
    sizes: dict[int, tuple[int, int]] = {}
    for c in range(4):
        if f"P_rect_{c:02d}" in cam:
            P_rect[c] = _entry(cam, f"P_rect_{c:02d}", 12, cam_path).reshape(3, 4)
            if f"S_rect_{c:02d}" in cam:
                w, h = _entry(cam, f"S_rect_{c:02d}", 2, cam_path)
                sizes[c] = (int(round(w)), int(round(h)))
    if not P_rect:
        raise InputError(f"{cam_path}: no P_rect_0X entries; this is not a KITTI raw calib_cam_to_cam.txt")
    R_rect = _entry(cam, "R_rect_00", 9, cam_path).reshape(3, 3)
    check_rigid(_rigid(R_rect, np.zeros(3)), f"{cam_path} (R_rect_00)")
    calib_time = ""
    for line in cam_path.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith("calib_time:"):
            calib_time = line.partition(":")[2].strip()
    T_velo = T_imu = None
    velo_path, imu_path = date_dir / "calib_velo_to_cam.txt", date_dir / "calib_imu_to_velo.txt"
    if velo_path.is_file():
        v = read_calib_file(velo_path)
        T_velo = _rigid(_entry(v, "R", 9, velo_path).reshape(3, 3), _entry(v, "T", 3, velo_path))
        check_rigid(T_velo, str(velo_path))
    if imu_path.is_file():
        m = read_calib_file(imu_path)
        T_imu = _rigid(_entry(m, "R", 9, imu_path).reshape(3, 3), _entry(m, "T", 3, imu_path))
        check_rigid(T_imu, str(imu_path))
    return KittiCalib(P_rect, R_rect, sizes, T_velo, T_imu, source=date_dir, calib_time=calib_time, extra=cam)


def nominal_kitti_calib(K: np.ndarray, width: int, height: int) -> KittiCalib:
    """A KITTI-like rig for writing frames: rectified cameras sharing K with the usual stereo offsets.

    Camera x offsets from cam 0 are 0, -0.54, +0.06 and -0.48 m (KITTI's rig); the Velodyne sits 0.27 m
    behind and 0.08 m above cam 0 with axes x forward, y left, z up; the IMU 0.81 m behind the Velodyne.
    """
    K = np.asarray(K, dtype=np.float64)
    offsets = {0: 0.0, 1: -0.54, 2: 0.06, 3: -0.48}
    P_rect = {c: K @ np.hstack([np.eye(3), [[b], [0.0], [0.0]]]) for c, b in offsets.items()}
    R_velo = np.array([[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])
    return KittiCalib(
        P_rect=P_rect,
        R_rect_00=np.eye(3),
        image_size={c: (int(width), int(height)) for c in offsets},
        T_cam0_from_velo=_rigid(R_velo, np.array([0.0, -0.08, -0.27])),
        T_velo_from_imu=_rigid(np.eye(3), np.array([-0.81, 0.32, -0.80])),
    )


def _fmt(values: np.ndarray) -> str:
    # repr gives the shortest decimal text that parses back to the same double.
    return " ".join(repr(float(v)) for v in np.asarray(values, dtype=np.float64).reshape(-1))


def write_kitti_calib(date_dir: str | os.PathLike, calib: KittiCalib) -> None:
    """Write calib_cam_to_cam.txt, calib_velo_to_cam.txt and calib_imu_to_velo.txt for ``calib``."""
    date_dir = Path(date_dir)
    stamp = calib.calib_time or "01-Jan-1970 00:00:00"
    lines = [f"calib_time: {stamp}", "corner_dist: 0.0"]
    for c, P in sorted(calib.P_rect.items()):
        w, h = calib.image_size.get(c, calib.image_size.get(min(calib.image_size), (0, 0)))
        K = P[:, :3]
        t = np.linalg.solve(K, P[:, 3])
        # The unrectified entries describe an ideal rig (no distortion) so that tools reading them agree.
        lines += [
            f"S_{c:02d}: {_fmt([w, h])}",
            f"K_{c:02d}: {_fmt(K)}",
            f"D_{c:02d}: {_fmt(np.zeros(5))}",
            f"R_{c:02d}: {_fmt(np.eye(3))}",
            f"T_{c:02d}: {_fmt(t)}",
            f"S_rect_{c:02d}: {_fmt([w, h])}",
            f"R_rect_{c:02d}: {_fmt(calib.R_rect_00 if c == 0 else np.eye(3))}",
            f"P_rect_{c:02d}: {_fmt(P)}",
        ]
    atomic_write_text(date_dir / "calib_cam_to_cam.txt", "\n".join(lines) + "\n")
    if calib.T_cam0_from_velo is not None:
        T = calib.T_cam0_from_velo
        text = f"calib_time: {stamp}\nR: {_fmt(T[:3, :3])}\nT: {_fmt(T[:3, 3])}\ndelta_f: 0.0 0.0\ndelta_c: 0.0 0.0\n"
        atomic_write_text(date_dir / "calib_velo_to_cam.txt", text)
    if calib.T_velo_from_imu is not None:
        T = calib.T_velo_from_imu
        atomic_write_text(
            date_dir / "calib_imu_to_velo.txt", f"calib_time: {stamp}\nR: {_fmt(T[:3, :3])}\nT: {_fmt(T[:3, 3])}\n"
        )


# --------------------------------------------------------------------------------------------------- OXTS
def mercator_scale(lat_deg: float) -> float:
    """Mercator scale ``cos(lat)`` of the reference latitude (the drive's first packet)."""
    return float(np.cos(np.radians(lat_deg)))


def _rot_zyx(roll: float, pitch: float, yaw: float) -> np.ndarray:
    """R [3,3] = Rz(yaw)·Ry(pitch)·Rx(roll), the OXTS convention."""
    cr, sr, cp, sp, cy, sy = np.cos(roll), np.sin(roll), np.cos(pitch), np.sin(pitch), np.cos(yaw), np.sin(yaw)
    Rx = np.array([[1, 0, 0], [0, cr, -sr], [0, sr, cr]])
    Ry = np.array([[cp, 0, sp], [0, 1, 0], [-sp, 0, cp]])
    Rz = np.array([[cy, -sy, 0], [sy, cy, 0], [0, 0, 1]])
    return Rz @ Ry @ Rx


def oxts_to_pose(packet: np.ndarray, scale: float) -> np.ndarray:
    """IMU-to-world [4,4] of an OXTS packet [>=6] (KITTI devkit convertOxtsToPose, without normalisation).

    World: x east, y north (Mercator metres at ``scale``), z up (altitude).
    """
    lat, lon, alt, roll, pitch, yaw = (float(v) for v in packet[:6])
    tx = scale * np.radians(lon) * EARTH_RADIUS_M
    ty = scale * EARTH_RADIUS_M * np.log(np.tan(np.radians(90.0 + lat) / 2.0))
    return _rigid(_rot_zyx(roll, pitch, yaw), np.array([tx, ty, alt]))


def pose_to_oxts(T_world_from_imu: np.ndarray, scale: float) -> np.ndarray:
    """Inverse of :func:`oxts_to_pose`: (lat, lon, alt, roll, pitch, yaw) [6] of an IMU-to-world pose."""
    R, t = T_world_from_imu[:3, :3], T_world_from_imu[:3, 3]
    lon = np.degrees(t[0] / (scale * EARTH_RADIUS_M))
    lat = 2.0 * np.degrees(np.arctan(np.exp(t[1] / (scale * EARTH_RADIUS_M)))) - 90.0
    cos_pitch = float(np.hypot(R[0, 0], R[1, 0]))
    pitch = float(np.arctan2(-R[2, 0], cos_pitch))
    if cos_pitch > 1e-9:
        roll = float(np.arctan2(R[2, 1], R[2, 2]))
        yaw = float(np.arctan2(R[1, 0], R[0, 0]))
    else:  # gimbal lock: only yaw - roll (or yaw + roll) is defined, put it all in yaw
        roll = 0.0
        yaw = float(np.arctan2(-R[0, 1], R[1, 1]))
    return np.array([lat, lon, t[2], roll, pitch, yaw])


def read_oxts_packet(path: str | os.PathLike) -> np.ndarray:
    """One OXTS text file as its 30 values [30] float64."""
    path = Path(path)
    try:
        tokens = path.read_text(encoding="utf-8").split()
    except FileNotFoundError as err:
        raise InputError(f"{path}: OXTS file missing; every frame of a drive needs oxts/data/<frame>.txt") from err
    try:
        values = np.array([float(t) for t in tokens])
    except ValueError as err:
        raise InputError(f"{path}: OXTS file contains text where numbers are expected") from err
    if values.size != len(OXTS_FIELDS):
        raise InputError(f"{path}: OXTS packet has {values.size} values, expected {len(OXTS_FIELDS)}")
    if not np.all(np.isfinite(values[:6])):
        raise InputError(f"{path}: OXTS position/orientation is not finite")
    return values


def parse_kitti_timestamp(text: str) -> float:
    """Seconds since the epoch of ``YYYY-MM-DD HH:MM:SS.fffffffff`` (read as UTC; KITTI stores local time)."""
    text = text.strip()
    whole, _, frac = text.partition(".")
    base = _dt.datetime.strptime(whole, "%Y-%m-%d %H:%M:%S").replace(tzinfo=_dt.UTC).timestamp()
    return base + (float("0." + frac) if frac else 0.0)


def format_kitti_timestamp(seconds: float) -> str:
    """Inverse of :func:`parse_kitti_timestamp` with nanosecond digits."""
    whole = int(np.floor(seconds))
    nanos = int(round((seconds - whole) * 1e9))
    if nanos >= 1_000_000_000:
        whole, nanos = whole + 1, nanos - 1_000_000_000
    stamp = _dt.datetime.fromtimestamp(whole, tz=_dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
    return f"{stamp}.{nanos:09d}"


def read_kitti_timestamps(path: str | os.PathLike) -> list[float]:
    """All timestamps [N] (seconds) of a KITTI ``timestamps.txt``."""
    path = Path(path)
    try:
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        return [parse_kitti_timestamp(line) for line in lines]
    except FileNotFoundError as err:
        raise InputError(f"{path}: timestamps file not found") from err
    except ValueError as err:
        raise InputError(f"{path}: not a KITTI timestamps file ({err})") from err


# ---------------------------------------------------------------------------------------- Velodyne depth
def read_velodyne_bin(path: str | os.PathLike) -> np.ndarray:
    """A Velodyne scan as points [N,4] float32 (x, y, z, reflectance) in the Velodyne frame."""
    path = Path(path)
    try:
        raw = np.fromfile(path, dtype=np.float32)
    except FileNotFoundError as err:
        raise InputError(f"{path}: Velodyne scan not found") from err
    if raw.size % 4:
        raise InputError(f"{path}: size is not a multiple of 16 bytes; not a KITTI Velodyne .bin (truncated?)")
    return raw.reshape(-1, 4)


def write_velodyne_bin(path: str | os.PathLike, points: np.ndarray) -> Path:
    """Write points [N,4] as float32 x, y, z, reflectance."""
    path = Path(path)
    with atomic_path(path) as tmp:
        np.ascontiguousarray(points, dtype=np.float32).reshape(-1, 4).tofile(tmp)
    return path


def project_velodyne(points: np.ndarray, calib: KittiCalib, camera: int, height: int, width: int) -> np.ndarray:
    """Sparse depth [H,W] float32 of Velodyne points [N,>=3], exactly as monodepth2's ``generate_depth_map``.

    Steps: keep points with Velodyne ``x >= 0`` (in front of the sensor); project with
    ``P_rect_0X · R_rect_00 · T_velo2cam``; depth is the projected third coordinate (camera z);
    pixel ``(col, row) = (round(u) - 1, round(v) - 1)`` with numpy's round-half-to-even (the "-1" is the
    MATLAB-devkit heritage every Eigen-split evaluation uses); drop pixels outside the image; where several
    points land on one pixel keep the smallest depth; finally set negative depths to 0.
    """
    pts = np.asarray(points, dtype=np.float64)[:, :3]
    pts = pts[pts[:, 0] >= 0]
    T = calib.T_cam_from_velo(camera)
    cam = pts @ T[:3, :3].T + T[:3, 3]
    z = cam[:, 2]
    nonzero = z != 0  # monodepth2 divides by z; a zero gives inf/nan pixels that fail the bounds test
    cam, z = cam[nonzero], z[nonzero]
    uvw = cam @ calib.K(camera).T
    col = np.round(uvw[:, 0] / z) - 1
    row = np.round(uvw[:, 1] / z) - 1
    inside = (col >= 0) & (row >= 0) & (col < width) & (row < height)
    col, row, z = col[inside].astype(np.int64), row[inside].astype(np.int64), z[inside]
    depth = np.zeros((height, width), dtype=np.float64)
    if z.size:
        flat = row * width + col
        order = np.lexsort((z, flat))  # by pixel, then by depth: the first of each pixel is the closest
        flat_sorted = flat[order]
        first = np.ones(flat_sorted.size, dtype=bool)
        first[1:] = flat_sorted[1:] != flat_sorted[:-1]
        depth.reshape(-1)[flat_sorted[first]] = z[order][first]
    depth[depth < 0] = 0.0
    return depth.astype(np.float32)


def synthesize_velodyne_scan(
    depth: np.ndarray,
    calib: KittiCalib,
    camera: int,
    image: np.ndarray | None = None,
    beams: int = 64,
) -> np.ndarray:
    """A 64-beam-like Velodyne scan [N,4] float32 from a depth map [H,W] (metres, 0 = invalid).

    ``beams`` image rows are picked at elevation angles evenly spaced over the camera's vertical field of
    view; every valid pixel of those rows becomes one point, back-projected from ``(col + 1, row + 1)``
    (the inverse of :func:`project_velodyne`'s "-1" rounding, so the scan projects back onto the same
    pixels with the same depth) and moved into the Velodyne frame. Points the reader would discard
    (Velodyne ``x < 0``) are left out. Reflectance is the pixel's luminance in [0,1] (0 without an image).
    """
    height, width = depth.shape
    K = calib.K(camera)
    fy, cy = K[1, 1], K[1, 2]
    elevations = np.linspace(np.arctan((0 - cy) / fy), np.arctan((height - 1 - cy) / fy), beams)
    rows = np.unique(np.clip(np.round(cy + fy * np.tan(elevations)), 0, height - 1).astype(np.int64))
    sub = depth[rows]
    r_idx, cols = np.nonzero(np.isfinite(sub) & (sub > 0))
    rows_sel = rows[r_idx]
    d = sub[r_idx, cols].astype(np.float64)
    pix = np.stack([cols + 1.0, rows_sel + 1.0, np.ones_like(d)], axis=0)
    cam = (np.linalg.solve(K, pix) * d).T
    T_velo_from_cam = invert_rigid(calib.T_cam_from_velo(camera))
    velo = cam @ T_velo_from_cam[:3, :3].T + T_velo_from_cam[:3, 3]
    if image is not None:
        rgb = image[rows_sel, cols].astype(np.float64)
        reflectance = (0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2]) / 255.0
    else:
        reflectance = np.zeros(len(d))
    points = np.column_stack([velo, reflectance]).astype(np.float32)
    return points[points[:, 0] >= 0]


def read_proj_depth_npz(path: str | os.PathLike, kind: str = "velodyne") -> np.ndarray:
    """Depth [H,W] float32 from a packnet-sfm ``proj_depth`` npz (key ``<kind>_depth``, e.g. ``velodyne_depth``)."""
    path = Path(path)
    try:
        with np.load(path) as data:
            key = f"{kind}_depth"
            if key not in data.files:
                if len(data.files) != 1:
                    raise InputError(f"{path}: no '{key}' array (found {data.files})")
                key = data.files[0]
            depth = np.asarray(data[key], dtype=np.float32)
    except FileNotFoundError as err:
        raise InputError(f"{path}: depth file not found") from err
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: cannot read depth npz ({err}); the file is corrupt") from err
    return np.squeeze(depth)


def read_groundtruth_png(path: str | os.PathLike) -> np.ndarray:
    """KITTI improved ground-truth depth [H,W] float32 (uint16 PNG divided by 256, 0 = invalid)."""
    raw = read_uint16_png(path)
    return raw.astype(np.float32) / np.float32(GROUNDTRUTH_DEPTH_SCALE)


# -------------------------------------------------------------------------------------------------- reader
class KittiDrive:
    """One KITTI raw drive seen through one camera: frames are decoded lazily while iterating.

    ``camera``: 0-3 (``image_0X``); by default camera 2 if the drive has it, else the first one present.

    ``world``: ``"first_camera"`` puts the world at the chosen camera of the drive's first OXTS packet
    (like packnet-sfm / DRO); ``"oxts"`` keeps the OXTS Mercator axes (x east, y north, z up) with the
    origin at the first packet's IMU position (like pykitti). The Mercator scale always comes from the
    first packet of the drive, so any subset of frames gets the same poses.
    ``depth``: ``"groundtruth"`` (proj_depth/groundtruth png), ``"velodyne"`` (projected .bin scans),
    ``"proj_depth"`` (packnet npz), ``"none"``, or ``"auto"`` = the first of those three that exists.
    """

    def __init__(
        self,
        drive_dir: str | os.PathLike,
        camera: int | None = None,
        depth: str = "auto",
        world: str = "first_camera",
        frames: Sequence[int] | None = None,
    ) -> None:
        self.drive_dir = Path(drive_dir)
        if not self.drive_dir.is_dir():
            raise InputError(f"{self.drive_dir}: KITTI drive folder not found")
        if camera is None:  # the left colour camera when present, as the Eigen split uses
            present = [c for c in (2, 3, 0, 1) if (self.drive_dir / f"image_{c:02d}" / "data").is_dir()]
            camera = present[0] if present else 2
        if camera not in (0, 1, 2, 3):
            raise InputError(f"camera must be 0, 1, 2 or 3 (image_0X), got {camera}")
        if depth not in DEPTH_SOURCES:
            raise InputError(f"depth must be one of {DEPTH_SOURCES}, got {depth!r}")
        if world not in ("first_camera", "oxts"):
            raise InputError(f"world must be 'first_camera' or 'oxts', got {world!r}")
        self.camera, self.world = camera, world
        self.image_dir = self.drive_dir / f"image_{camera:02d}" / "data"
        if not self.image_dir.is_dir():
            raise InputError(f"{self.image_dir}: missing; not a KITTI raw drive folder with camera {camera}")
        files = {int(p.stem): p for p in natural_sorted(self.image_dir.glob("*.png")) if p.stem.isdigit()}
        if not files:
            raise InputError(f"{self.image_dir}: no <frame>.png images")
        if frames is None:
            self.frame_indices = sorted(files)
        else:
            missing = [i for i in frames if i not in files]
            if missing:
                raise InputError(f"{self.image_dir}: no image for frame(s) {missing[:5]}")
            self.frame_indices = list(frames)
        self._image_files = files
        self.calib = read_kitti_calib(self.drive_dir.parent)
        self.K = self.calib.K(camera)
        self.name = f"{self.drive_dir.parent.name}/{self.drive_dir.name}"
        self.depth_source = self._resolve_depth(depth)
        self._timestamps = self._read_timestamps()
        self.poses = self._read_poses()

    # -- helpers
    def _depth_path(self, source: str, index: int) -> Path:
        stem = f"{index:0{_FRAME_DIGITS}d}"
        if source == "groundtruth":
            return self.drive_dir / "proj_depth" / "groundtruth" / f"image_{self.camera:02d}" / f"{stem}.png"
        if source == "proj_depth":
            return self.drive_dir / "proj_depth" / "velodyne" / f"image_{self.camera:02d}" / f"{stem}.npz"
        return self.drive_dir / "velodyne_points" / "data" / f"{stem}.bin"

    def _resolve_depth(self, depth: str) -> str:
        if depth != "auto":
            return depth
        for source in ("groundtruth", "velodyne", "proj_depth"):
            if self._depth_path(source, 0).parent.is_dir():
                return source
        return "none"

    def _read_timestamps(self) -> dict[int, float]:
        path = self.image_dir.parent / "timestamps.txt"
        if not path.is_file():
            return {}
        return dict(enumerate(read_kitti_timestamps(path)))

    def _read_poses(self) -> dict[int, np.ndarray]:
        """Camera-to-world [4,4] per frame index from the OXTS packets, or {} when the drive has none."""
        oxts_dir = self.drive_dir / "oxts" / "data"
        if not oxts_dir.is_dir():
            logger.info("%s: no oxts/data folder, frames will have no poses", self.drive_dir)
            return {}
        packets = natural_sorted(oxts_dir.glob("*.txt"))
        if not packets:
            raise InputError(f"{oxts_dir}: OXTS folder is empty")
        first = read_oxts_packet(packets[0])
        scale = mercator_scale(first[0])
        T_world0_from_imu = oxts_to_pose(first, scale)
        T_imu_from_cam = invert_rigid(self.calib.T_cam_from_imu(self.camera))
        if self.world == "first_camera":
            T_ref_from_world = invert_rigid(T_world0_from_imu @ T_imu_from_cam)
        else:
            T_ref_from_world = np.eye(4)
            T_ref_from_world[:3, 3] = -T_world0_from_imu[:3, 3]
        poses = {}
        for index in self.frame_indices:
            path = oxts_dir / f"{index:0{_FRAME_DIGITS}d}.txt"
            T = T_ref_from_world @ oxts_to_pose(read_oxts_packet(path), scale) @ T_imu_from_cam
            poses[index] = check_rigid(T, str(path))
        return poses

    def read_depth(self, index: int, height: int, width: int) -> np.ndarray | None:
        """Depth [H,W] float32 of frame ``index`` from the drive's depth source, or None when absent."""
        if self.depth_source == "none":
            return None
        path = self._depth_path(self.depth_source, index)
        if not path.is_file():
            logger.debug("%s: no %s depth for this frame", path, self.depth_source)
            return None
        if self.depth_source == "groundtruth":
            depth = read_groundtruth_png(path)
        elif self.depth_source == "proj_depth":
            depth = read_proj_depth_npz(path, "velodyne")
        else:
            return project_velodyne(read_velodyne_bin(path), self.calib, self.camera, height, width)
        if depth.shape != (height, width):
            raise InputError(
                f"{path}: depth is {depth.shape[1]}x{depth.shape[0]} but the image is {width}x{height}; "
                "depth and colour must have the same size"
            )
        return depth

    # -- public
    def __len__(self) -> int:
        return len(self.frame_indices)

    def __iter__(self) -> Iterator[Frame]:
        for index in self.frame_indices:
            yield self.read_frame(index)

    def read_frame(self, index: int) -> Frame:
        """Frame ``index`` (KITTI frame number) with image, K, depth and pose."""
        path = self._image_files.get(index)
        if path is None:
            raise InputError(f"{self.image_dir}: no image for frame {index}")
        image = read_rgb(path)
        height, width = image.shape[:2]
        expected = self.calib.image_size.get(self.camera)
        if expected is not None and expected != (width, height):
            raise InputError(
                f"{path}: image is {width}x{height} but calib_cam_to_cam.txt says S_rect_{self.camera:02d} = "
                f"{expected[0]}x{expected[1]}; the intrinsics would not match (use the original images)"
            )
        return Frame(
            image=image,
            K=self.K.copy(),
            depth=self.read_depth(index, height, width),
            T_world_from_cam=self.poses[index].copy() if index in self.poses else None,
            timestamp=self._timestamps.get(index),
            name=f"{self.name}/image_{self.camera:02d}/{index:0{_FRAME_DIGITS}d}",
            extras={"drive": self.name, "camera": self.camera, "frame_index": index,
                    "depth_source": self.depth_source, "path": str(path)},
        )


def read_kitti_drive(drive_dir: str | os.PathLike, **kwargs) -> Iterator[Frame]:
    """Stream the frames of a KITTI raw drive (see :class:`KittiDrive` for the options)."""
    return iter(KittiDrive(drive_dir, **kwargs))


# ---------------------------------------------------------------------------------------------------- splits
@dataclass(frozen=True)
class KittiSplitEntry:
    """One line of a KITTI split: drive ``<date>/<date>_drive_<NNNN>_sync``, frame number and camera."""

    drive: str
    frame_index: int
    camera: int

    @property
    def date(self) -> str:
        return self.drive.split("/")[0]

    def image_path(self, root: str | os.PathLike) -> Path:
        """Path of the image under a KITTI raw ``root``."""
        return Path(root) / self.drive / f"image_{self.camera:02d}" / "data" / f"{self.frame_index:010d}.png"


_SPLIT_DRIVE = re.compile(r"(\d{4}_\d{2}_\d{2})/(\d{4}_\d{2}_\d{2}_drive_\d{4}_sync)")
_SPLIT_IMAGE = re.compile(
    r"(\d{4}_\d{2}_\d{2})/(\d{4}_\d{2}_\d{2}_drive_\d{4}_sync)/image_0([0-3])/data/(\d+)\.(?:png|jpg)$"
)
_SIDES = {"l": 2, "r": 3, "2": 2, "3": 3, "0": 0, "1": 1}


def parse_kitti_split_line(line: str, source: str = "<split>") -> KittiSplitEntry:
    """Parse ``<date>/<drive> <frame> <l|r>`` (monodepth2) or ``<date>/<drive>/image_0X/data/<frame>.png``.

    A path may carry any prefix before the date folder; further columns of the path form (the right
    image or a Velodyne file in stereo / packnet lists) are ignored.
    """
    tokens = line.split()
    if not tokens:
        raise InputError(f"{source}: empty split line")
    image = _SPLIT_IMAGE.search(tokens[0])
    if image:
        date, drive, cam, frame = image.groups()
        return KittiSplitEntry(f"{date}/{drive}", int(frame), int(cam))
    drive = _SPLIT_DRIVE.fullmatch(tokens[0].strip("/"))
    if drive and len(tokens) >= 2 and tokens[1].isdigit():
        side = tokens[2].lower() if len(tokens) >= 3 else "l"
        if side not in _SIDES:
            raise InputError(f"{source}: camera side must be l or r, got {tokens[2]!r}")
        return KittiSplitEntry(f"{drive.group(1)}/{drive.group(2)}", int(tokens[1]), _SIDES[side])
    raise InputError(
        f"{source}: not a KITTI split line: {line.strip()!r}; expected '<date>/<drive> <frame> <l|r>' "
        "or '<date>/<drive>/image_0X/data/<frame>.png'"
    )


def read_kitti_split(path: str | os.PathLike) -> list[KittiSplitEntry]:
    """All entries [N] of a KITTI split file of either public form."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError as err:
        raise InputError(f"{path}: split file not found") from err
    entries = [
        parse_kitti_split_line(line, f"{path}:{n}")
        for n, line in enumerate(lines, start=1)
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if not entries:
        raise InputError(f"{path}: split file lists no frames")
    return entries


# -------------------------------------------------------------------------------------------------- writer
_OXTS_UNITS = {
    "lat": "latitude (deg)", "lon": "longitude (deg)", "alt": "altitude (m)",
    "roll": "roll (rad), 0 = level, positive = left side up", "pitch": "pitch (rad), positive = front down",
    "yaw": "heading (rad), 0 = east, positive = counter-clockwise",
    "vn": "velocity north (m/s)", "ve": "velocity east (m/s)", "vf": "forward velocity (m/s)",
    "vl": "leftward velocity (m/s)", "vu": "upward velocity (m/s)",
    "ax": "acceleration x (m/s^2)", "ay": "acceleration y (m/s^2)", "az": "acceleration z (m/s^2)",
    "af": "forward acceleration (m/s^2)", "al": "leftward acceleration (m/s^2)", "au": "upward acceleration (m/s^2)",
    "wx": "angular rate x (rad/s)", "wy": "angular rate y (rad/s)", "wz": "angular rate z (rad/s)",
    "wf": "angular rate forward (rad/s)", "wl": "angular rate leftward (rad/s)", "wu": "angular rate upward (rad/s)",
    "pos_accuracy": "position accuracy (m)", "vel_accuracy": "velocity accuracy (m/s)",
    "navstat": "navigation status", "numsats": "satellites tracked", "posmode": "position mode",
    "velmode": "velocity mode", "orimode": "orientation mode",
}
_OXTS_FORMAT = "\n".join(f"{name}: {_OXTS_UNITS[name]}" for name in OXTS_FIELDS)


def _oxts_packets(
    T_world_from_imu: list[np.ndarray], times: np.ndarray, origin: tuple[float, float, float]
) -> list[np.ndarray]:
    """OXTS packets [30] per IMU pose: the first IMU is put level, heading east, at ``origin`` (lat, lon, alt).

    Pose fields are exact; velocities come from central differences of the positions; accelerations,
    angular rates and accuracies are written as 0, and the status fields as a good INS fix.
    """
    lat0, lon0, alt0 = origin
    scale = mercator_scale(lat0)
    T_merc_origin = oxts_to_pose(np.array([lat0, lon0, alt0, 0.0, 0.0, 0.0]), scale)
    T_merc_from_world = T_merc_origin @ invert_rigid(T_world_from_imu[0])
    poses = [T_merc_from_world @ T for T in T_world_from_imu]
    positions = np.array([T[:3, 3] for T in poses])
    if len(poses) > 1:
        velocity = np.gradient(positions, times, axis=0)
    else:
        velocity = np.zeros((1, 3))
    packets = []
    for T, v in zip(poses, velocity):
        lat, lon, alt, roll, pitch, yaw = pose_to_oxts(T, scale)
        vf = np.cos(yaw) * v[0] + np.sin(yaw) * v[1]
        vl = -np.sin(yaw) * v[0] + np.cos(yaw) * v[1]
        packet = np.zeros(len(OXTS_FIELDS))
        packet[:11] = [lat, lon, alt, roll, pitch, yaw, v[1], v[0], vf, vl, v[2]]
        packet[25:] = [4, 10, 5, 5, 6]  # navstat: INS good; satellites; RTK position/velocity/orientation
        packets.append(packet)
    return packets


def write_kitti_drive(
    frames: Iterable[Frame],
    out_root: str | os.PathLike,
    date: str | None = None,
    drive_number: int = 1,
    camera: int = 2,
    calib: KittiCalib | None = None,
    origin: tuple[float, float, float] = (49.0, 8.4, 110.0),
    frame_rate: float = 10.0,
    velodyne: bool = True,
    proj_depth: bool = True,
    groundtruth: bool = True,
    beams: int = 64,
) -> Path:
    """Write frames as a KITTI raw drive under ``out_root/<date>/``; returns the drive folder.

    Every frame needs a pose (stored as OXTS) and the same K (stored as ``P_rect_0X``). ``calib`` gives
    the rig (default :func:`nominal_kitti_calib` built around the frames' K). Frames with depth also get
    a synthetic 64-beam Velodyne scan (:func:`synthesize_velodyne_scan`), its projection as a packnet
    npz, and the full depth as an improved-ground-truth PNG (uint16, metres·256).
    """
    out_root = Path(out_root)
    it = iter(frames)
    first = next(it, None)
    if first is None:
        raise InputError(f"{out_root}: no frames to write")
    times0 = first.timestamp if first.timestamp is not None else 0.0
    if date is None:
        date = _dt.datetime.fromtimestamp(int(np.floor(times0)), tz=_dt.UTC).strftime("%Y_%m_%d")
    if not re.fullmatch(r"\d{4}_\d{2}_\d{2}", date):
        raise InputError(f"date must look like YYYY_MM_DD, got {date!r}")
    height, width = first.height, first.width
    K = np.asarray(first.K, dtype=np.float64)
    if calib is None:
        calib = nominal_kitti_calib(K, width, height)
    elif not np.allclose(calib.K(camera), K, rtol=1e-9, atol=1e-9):
        raise InputError(f"the given calib's P_rect_{camera:02d} intrinsics differ from the frames' K")
    calib = dataclasses.replace(calib, image_size={c: (width, height) for c in calib.P_rect})
    date_dir = out_root / date
    drive_dir = date_dir / f"{date}_drive_{drive_number:04d}_sync"
    write_kitti_calib(date_dir, calib)
    T_cam_from_imu = calib.T_cam_from_imu(camera)
    cam_dir = f"image_{camera:02d}"

    imu_poses: list[np.ndarray] = []
    times: list[float] = []
    for index, frame in enumerate(tqdm(_chain(first, it), desc=f"writing {drive_dir.name}", unit="frame")):
        label = frame.label(index)
        if frame.T_world_from_cam is None:
            raise InputError(
                f"{label}: has no pose; the KITTI layout stores poses as OXTS, so every frame needs one"
            )
        if (frame.height, frame.width) != (height, width):
            raise InputError(
                f"{label}: size {frame.width}x{frame.height} differs from the first frame's {width}x{height}"
            )
        require_same_intrinsics(frame.K, K, label, "KITTI stores one K per camera")
        T = check_rigid(frame.T_world_from_cam, label)
        imu_poses.append(T @ T_cam_from_imu)
        stamp = frame.timestamp if frame.timestamp is not None else times0 + index / frame_rate
        if times and stamp <= times[-1]:
            raise InputError(f"{label}: timestamp {stamp} is not after the previous frame's ({times[-1]})")
        times.append(stamp)
        stem = f"{index:0{_FRAME_DIGITS}d}"
        save_rgb(drive_dir / cam_dir / "data" / f"{stem}.png", frame.image)
        if frame.depth is None:
            continue
        depth = np.asarray(frame.depth, dtype=np.float32)
        if depth.shape != (height, width):
            raise InputError(f"{label}: depth is {depth.shape[::-1]} but the image is {width}x{height}")
        if groundtruth:
            save_uint16_png(
                drive_dir / "proj_depth" / "groundtruth" / cam_dir / f"{stem}.png",
                depth_to_uint16(depth, GROUNDTRUTH_DEPTH_SCALE, label),
            )
        if velodyne or proj_depth:
            scan = synthesize_velodyne_scan(depth, calib, camera, frame.image, beams)
            if velodyne:
                write_velodyne_bin(drive_dir / "velodyne_points" / "data" / f"{stem}.bin", scan)
            if proj_depth:
                with atomic_path(drive_dir / "proj_depth" / "velodyne" / cam_dir / f"{stem}.npz") as tmp:
                    with open(tmp, "wb") as fh:
                        np.savez_compressed(fh, velodyne_depth=project_velodyne(scan, calib, camera, height, width))

    stamps = "".join(format_kitti_timestamp(t) + "\n" for t in times)
    for sub in (cam_dir, "oxts") + (("velodyne_points",) if velodyne else ()):
        atomic_write_text(drive_dir / sub / "timestamps.txt", stamps)
    for index, packet in enumerate(_oxts_packets(imu_poses, np.asarray(times), origin)):
        text = " ".join(repr(float(v)) if i < 25 else str(int(v)) for i, v in enumerate(packet))
        atomic_write_text(drive_dir / "oxts" / "data" / f"{index:0{_FRAME_DIGITS}d}.txt", text + "\n")
    atomic_write_text(drive_dir / "oxts" / "dataformat.txt", _OXTS_FORMAT + "\n")
    return drive_dir


def _chain(first: Frame, rest: Iterator[Frame]) -> Iterator[Frame]:
    yield first
    yield from rest
