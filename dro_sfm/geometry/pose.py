"""SE(3) poses: the official Euler-vector parameterisation, quaternions, inversion, composition.

Convention used throughout dro-sfm: ``T_a_from_b`` maps a point in frame ``b`` to frame ``a``
(``X_a = R X_b + t``). The network's pose vector ``[tx, ty, tz, rx, ry, rz]`` is ``T_ref_from_tgt``
with ``R = Rx(rx) @ Ry(ry) @ Rz(rz)`` (spec §7).
"""

from __future__ import annotations

import numpy as np
import torch
from pyquaternion import Quaternion

from dro_sfm.errors import InputError


def euler_vec_to_matrix(vec: torch.Tensor) -> torch.Tensor:
    """Pose vectors [...,6] (t, Euler xyz) to 4x4 matrices [...,4,4], R = Rx·Ry·Rz as the official code."""
    t = vec[..., :3]
    x, y, z = vec[..., 3], vec[..., 4], vec[..., 5]
    one, zero = torch.ones_like(x), torch.zeros_like(x)
    cx, sx, cy, sy, cz, sz = x.cos(), x.sin(), y.cos(), y.sin(), z.cos(), z.sin()
    Rx = torch.stack([one, zero, zero, zero, cx, -sx, zero, sx, cx], dim=-1).unflatten(-1, (3, 3))
    Ry = torch.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], dim=-1).unflatten(-1, (3, 3))
    Rz = torch.stack([cz, -sz, zero, sz, cz, zero, zero, zero, one], dim=-1).unflatten(-1, (3, 3))
    R = (Rx @ Ry) @ Rz
    top = torch.cat([R, t.unsqueeze(-1)], dim=-1)
    bottom = torch.zeros_like(top[..., :1, :])
    bottom[..., 0, 3] = 1.0
    return torch.cat([top, bottom], dim=-2)


def matrix_to_euler_vec(T: torch.Tensor) -> torch.Tensor:
    """4x4 matrices [...,4,4] to pose vectors [...,6]; inverse of ``euler_vec_to_matrix`` for |ry| < pi/2."""
    R = T[..., :3, :3]
    # R = Rx Ry Rz gives R[0,2] = sin(y), R[1,2] = -sx cy, R[2,2] = cx cy, R[0,1] = -cy sz, R[0,0] = cy cz.
    y = torch.asin(R[..., 0, 2].clamp(-1.0, 1.0))
    x = torch.atan2(-R[..., 1, 2], R[..., 2, 2])
    z = torch.atan2(-R[..., 0, 1], R[..., 0, 0])
    return torch.cat([T[..., :3, 3], torch.stack([x, y, z], dim=-1)], dim=-1)


def invert_rigid(T: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """Inverse of rigid transforms [...,4,4] using R^T (exact for rotations, cheaper than a general inverse)."""
    if isinstance(T, np.ndarray):
        R, t = T[..., :3, :3], T[..., :3, 3:]
        Rt = np.swapaxes(R, -1, -2)
        out = np.zeros_like(T)
        out[..., :3, :3] = Rt
        out[..., :3, 3:] = -Rt @ t
        out[..., 3, 3] = 1.0
        return out
    R, t = T[..., :3, :3], T[..., :3, 3:]
    Rt = R.transpose(-1, -2)
    top = torch.cat([Rt, -Rt @ t], dim=-1)
    return torch.cat([top, T[..., 3:, :]], dim=-2)


def relative_pose(T_world_from_a: np.ndarray, T_world_from_b: np.ndarray) -> np.ndarray:
    """``T_b_from_a`` [4,4] from two camera-to-world poses (the datasets' ``pose_context`` convention)."""
    return invert_rigid(T_world_from_b) @ T_world_from_a


def pose_from_quat_trans(q_wxyz: np.ndarray, t: np.ndarray) -> np.ndarray:
    """4x4 pose [4,4] from a unit quaternion (w, x, y, z) [4] and a translation [3]."""
    T = np.eye(4)
    T[:3, :3] = Quaternion(np.asarray(q_wxyz, dtype=np.float64)).normalised.rotation_matrix
    T[:3, 3] = np.asarray(t, dtype=np.float64)
    return T


def quat_trans_from_pose(T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit quaternion (w, x, y, z) [4] with w >= 0 and translation [3] of a 4x4 pose."""
    q = Quaternion(matrix=np.asarray(T[:3, :3], dtype=np.float64), atol=1e-6, rtol=1e-6).normalised
    wxyz = np.array([q.w, q.x, q.y, q.z])
    if wxyz[0] < 0:
        wxyz = -wxyz
    return wxyz, np.asarray(T[:3, 3], dtype=np.float64).copy()


def check_rigid(T: np.ndarray, source: str, atol: float = 1e-3) -> np.ndarray:
    """Validate a 4x4 rigid transform read from ``source``; returns it as float64 or raises InputError."""
    T = np.asarray(T, dtype=np.float64)
    if T.shape != (4, 4):
        raise InputError(f"{source}: expected a 4x4 pose matrix, got shape {T.shape}")
    if not np.all(np.isfinite(T)):
        raise InputError(f"{source}: pose matrix contains NaN or infinite values")
    R = T[:3, :3]
    if not np.allclose(R @ R.T, np.eye(3), atol=atol) or abs(np.linalg.det(R) - 1.0) > atol:
        raise InputError(f"{source}: pose is not rigid (rotation part is not orthonormal with det +1)")
    if not np.allclose(T[3], [0, 0, 0, 1], atol=atol):
        raise InputError(f"{source}: pose matrix bottom row must be [0 0 0 1], got {T[3].tolist()}")
    return T


def rotation_angle_deg(R: np.ndarray) -> float:
    """Rotation angle in degrees of a 3x3 rotation matrix."""
    c = (np.trace(R) - 1.0) / 2.0
    return float(np.degrees(np.arccos(np.clip(c, -1.0, 1.0))))
