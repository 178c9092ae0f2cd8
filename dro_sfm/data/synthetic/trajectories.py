"""Camera trajectories: hand-held motion inside a room and driving along a street.

Both return camera-to-world poses [N,4,4] (camera x right, y down, z forward; world z up). The size of
every inter-frame motion is drawn from the configured range with a smooth random process, then imposed
exactly: the translation between consecutive frames has exactly that length and the relative rotation
exactly that angle, so curricula can rely on the ranges.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage, special

from dro_sfm.data.synthetic.config import TrajectoryConfig
from dro_sfm.data.synthetic.layout import SceneLayout
from dro_sfm.errors import ConfigError

UP = np.array([0.0, 0.0, 1.0])

# Camera looking along world +x, level: columns are the camera axes (right, down, forward) in world.
R_WORLD_FROM_LEVEL_CAM = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


def so3_exp(omega: np.ndarray) -> np.ndarray:
    """Rotation [3,3] of angle |omega| about omega [3] (Rodrigues)."""
    angle = float(np.linalg.norm(omega))
    if angle < 1e-12:
        return np.eye(3)
    k = omega / angle
    Kx = np.array([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    return np.eye(3) + np.sin(angle) * Kx + (1.0 - np.cos(angle)) * (Kx @ Kx)


def rotation_angle(R: np.ndarray) -> float:
    """Angle (radians) of a rotation [3,3]."""
    return float(np.arccos(np.clip((np.trace(R) - 1.0) / 2.0, -1.0, 1.0)))


def camera_rotation(yaw: float, pitch: float = 0.0, roll: float = 0.0) -> np.ndarray:
    """Camera-to-world rotation [3,3]: heading ``yaw`` about world up (0 = +x), then pitch up, then roll."""
    cy, sy = np.cos(yaw), np.sin(yaw)
    Rz = np.array([[cy, -sy, 0.0], [sy, cy, 0.0], [0.0, 0.0, 1.0]])
    # Positive rotation about camera x tilts the optical axis up (y points down).
    cp, sp = np.cos(pitch), np.sin(pitch)
    Rx = np.array([[1.0, 0.0, 0.0], [0.0, cp, -sp], [0.0, sp, cp]])
    cr, sr = np.cos(roll), np.sin(roll)
    Rroll = np.array([[cr, -sr, 0.0], [sr, cr, 0.0], [0.0, 0.0, 1.0]])
    return Rz @ R_WORLD_FROM_LEVEL_CAM @ Rx @ Rroll


def pose(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """4x4 rigid transform from rotation [3,3] and translation [3]."""
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = t
    return T


def smooth_noise(rng: np.random.Generator, n: int, channels: int, correlation: float) -> np.ndarray:
    """Smooth Gaussian noise [n, channels] with unit marginal std and ~``correlation`` frames of memory."""
    pad = int(4 * correlation) + 1
    white = rng.standard_normal((n + 2 * pad, channels))
    smooth = ndimage.gaussian_filter1d(white, sigma=correlation, axis=0, mode="nearest")[pad : pad + n]
    delta = np.zeros(2 * pad + 1)
    delta[pad] = 1.0
    gain = np.sqrt(np.sum(ndimage.gaussian_filter1d(delta, sigma=correlation, mode="constant") ** 2))
    return smooth / gain


def smooth_in_range(rng: np.random.Generator, n: int, lo: float, hi: float, correlation: float) -> np.ndarray:
    """Smooth values [n] uniformly distributed in [lo, hi] (Gaussian copula of ``smooth_noise``)."""
    u = special.ndtr(smooth_noise(rng, n, 1, correlation)[:, 0])
    return lo + (hi - lo) * u


def handheld_box(layout: SceneLayout, cfg: TrajectoryConfig) -> tuple[np.ndarray, np.ndarray]:
    """The box [3],[3] a hand-held camera may occupy: the scene's free space within the config's margins."""
    if layout.free_min is None or layout.free_max is None or layout.room_size is None:
        raise ConfigError("hand-held trajectories need an indoor scene (a room with free space)")
    size = layout.room_size
    lo = np.maximum(layout.free_min, [cfg.wall_margin_m, cfg.wall_margin_m, cfg.height_range_m[0]])
    hi = np.minimum(
        layout.free_max, [size[0] - cfg.wall_margin_m, size[1] - cfg.wall_margin_m, cfg.height_range_m[1]]
    )
    if np.any(hi - lo < 0.05):
        raise ConfigError(
            f"no room for the camera: free box {layout.free_min.round(2)}..{layout.free_max.round(2)} and "
            f"wall_margin_m={cfg.wall_margin_m}, height_range_m={cfg.height_range_m} leave nothing; "
            "reduce the margin or widen the height range"
        )
    return lo, hi


def handheld_trajectory(
    layout: SceneLayout, n_frames: int, rng: np.random.Generator, cfg: TrajectoryConfig
) -> np.ndarray:
    """Smooth hand-held motion inside the room's free box; poses [N,4,4]."""
    lo, hi = handheld_box(layout, cfg)
    corr = cfg.smoothness_frames
    steps = smooth_in_range(rng, n_frames, *cfg.translation_range_m, corr)
    angles = np.radians(smooth_in_range(rng, n_frames, *cfg.rotation_range_deg, corr))
    move_dir = smooth_noise(rng, n_frames, 3, corr) * np.array([1.0, 1.0, 0.4])
    turn_dir = smooth_noise(rng, n_frames, 3, corr) * np.array([1.0, 0.7, 0.25])  # yaw, pitch, roll weights
    pitch_range = (np.radians(cfg.pitch_range_deg[0]), np.radians(cfg.pitch_range_deg[1]))
    max_roll = np.radians(cfg.max_roll_deg)

    p = lo + (hi - lo) * rng.uniform(0.2, 0.8, 3)
    start_pitch = rng.uniform(0.5 * cfg.pitch_range_deg[0], 0.5 * cfg.pitch_range_deg[1])
    R = camera_rotation(rng.uniform(0, 2 * np.pi), np.radians(start_pitch), np.radians(rng.normal(0, 2)))
    poses = np.empty((n_frames, 4, 4))
    poses[0] = pose(R, p)
    for i in range(1, n_frames):
        p = _translate(p, move_dir[i], steps[i], lo, hi)
        turn = turn_dir[i] + np.array([_look_into_room(p, R, layout.room_size), 0.0, 0.0])
        R = _rotate(R, turn, angles[i], pitch_range, max_roll)
        poses[i] = pose(R, p)
    return poses


def _view_distance(p: np.ndarray, yaw: float, room: np.ndarray) -> float:
    """Horizontal distance from ``p`` to the room walls along heading ``yaw``."""
    direction = np.array([np.cos(yaw), np.sin(yaw)])
    with np.errstate(divide="ignore"):
        far = np.where(direction > 0, (room[:2] - p[:2]) / direction, -p[:2] / direction)
    return float(np.min(np.where(np.abs(direction) > 1e-9, far, np.inf)))


def _look_into_room(p: np.ndarray, R: np.ndarray, room: np.ndarray) -> float:
    """Yaw-rate bias turning a camera that stares at a nearby wall towards the open room (scanning habit)."""
    forward = R[:, 2]
    yaw = float(np.arctan2(forward[1], forward[0]))
    if _view_distance(p, yaw, room) > 2.0:
        return 0.0
    return 1.5 * float(np.sign(_view_distance(p, yaw + 0.4, room) - _view_distance(p, yaw - 0.4, room)))


def _translate(p: np.ndarray, noise: np.ndarray, step: float, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Move ``p`` by exactly ``step`` metres, drifting with ``noise`` and steering away from the box faces."""
    soft = 0.25 * (hi - lo)
    steer = np.clip((lo + soft - p) / soft, 0, None) - np.clip((p - (hi - soft)) / soft, 0, None)
    direction = noise + 2.0 * steer
    norm = np.linalg.norm(direction)
    direction = direction / norm if norm > 1e-9 else np.array([1.0, 0.0, 0.0])
    delta = direction * step
    outside = (p + delta < lo) | (p + delta > hi)
    delta[outside] *= -1.0  # bounce: keeps the step length and (the box being >> step) stays inside
    return np.clip(p + delta, lo, hi)


def _rotate(
    R: np.ndarray, noise: np.ndarray, angle: float, pitch_range: tuple[float, float], max_roll: float
) -> np.ndarray:
    """Rotate camera ``R`` by exactly ``angle``: yaw about world up, pitch and roll, kept within limits."""
    a, b, c = noise
    pitch = np.arcsin(np.clip(R[:, 2] @ UP, -1, 1))  # optical axis above the horizon
    roll = np.arcsin(np.clip(R[:, 0] @ UP, -1, 1))  # right axis above the horizon
    lo, hi = pitch_range
    # Positive rotation about camera x raises the optical axis; about camera z lowers the right axis.
    b += 0.5 * (0.5 * (lo + hi) - pitch) / (hi - lo)  # drift back towards the middle of the range
    if pitch > 0.6 * hi:
        b = -(abs(b) + (pitch - 0.6 * hi) / hi * 3.0)
    elif pitch < 0.6 * lo:
        b = abs(b) + (pitch - 0.6 * lo) / lo * 3.0
    if abs(roll) > 0.5 * max_roll:
        c = np.sign(roll) * (abs(c) + (abs(roll) - 0.5 * max_roll) / max_roll * 3.0)
    omega = a * (R.T @ UP) + b * np.array([1.0, 0.0, 0.0]) + c * np.array([0.0, 0.0, 1.0])
    norm = np.linalg.norm(omega)
    omega = omega / norm if norm > 1e-9 else R.T @ UP
    R_new = R @ so3_exp(omega * angle)
    u, _, vt = np.linalg.svd(R_new)  # re-orthonormalise against drift over thousands of frames
    return u @ vt


def driving_trajectory(
    layout: SceneLayout,
    n_frames: int,
    rng: np.random.Generator,
    cfg: TrajectoryConfig,
    start_x: float | None = None,
) -> np.ndarray:
    """Forward driving in the ego lane with small smooth heading changes; poses [N,4,4] at camera height."""
    steps = smooth_in_range(rng, n_frames, *cfg.forward_range_m, cfg.smoothness_frames)
    steps[0] = 0.0
    if start_x is None:
        start_x = layout.x_start
    if start_x + steps.sum() > layout.x_end + 1e-6:
        raise ConfigError(
            f"a {n_frames}-frame drive needs up to {n_frames * cfg.forward_range_m[1]:.0f} m of street but "
            f"the scene has {layout.x_end - start_x:.0f} m after the start; raise SceneConfig.street_length_m"
        )
    max_yaw = np.radians(cfg.max_yaw_step_deg)
    wander = smooth_noise(rng, n_frames, 1, cfg.smoothness_frames)[:, 0]
    jitter = np.radians(smooth_noise(rng, n_frames, 2, 2.0)) * np.array([0.3, 0.2])  # pitch, roll: road bumps
    x, y = start_x, layout.lane_center_y + rng.uniform(-0.5, 0.5) * layout.lane_half_width_m
    heading = rng.uniform(-0.5, 0.5) * max_yaw
    poses = np.empty((n_frames, 4, 4))
    for i in range(n_frames):
        if i > 0:
            offset = y - layout.lane_center_y
            # steer back to the lane centre, look-ahead ~ 12 m, plus a random wander of the driver
            target = np.clip(-offset / 12.0 + 0.03 * wander[i], -0.1, 0.1)
            turn = np.clip(0.3 * (target - heading), -max_yaw, max_yaw)
            heading += turn
            x += steps[i] * np.cos(heading)
            y += steps[i] * np.sin(heading)
        R = camera_rotation(heading, jitter[i, 0], jitter[i, 1])
        poses[i] = pose(R, np.array([x, y, cfg.camera_height_m]))
    return poses
