"""Two-view pose errors: the BA-Net/DeepV2D protocol of the official ScanNet evaluation (spec §16) and
plain relative-pose errors for general use.

All transforms are 4x4 ``T_a_from_b`` matrices (``X_a = R X_b + t``); batch dimensions ``[...]`` are
allowed everywhere. Translations are in metres.

Zero-length translations: the direction angle of a zero vector is undefined, so the direction error is
NaN whenever either translation has zero length (no warning is emitted; callers average with
``np.nanmean`` and report how many pairs were left out). The scale-fitted translation error stays
defined: for a zero predicted translation every scale fits equally well and the error is ``100·‖t_gt‖``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from dro_sfm.errors import InputError
from dro_sfm.geometry.pose import invert_rigid


def _check_transforms(T: np.ndarray, what: str) -> np.ndarray:
    """Validate a stack of transforms [...,4,4] (float64)."""
    T = np.asarray(T, dtype=np.float64)
    if T.ndim < 2 or T.shape[-2:] != (4, 4):
        raise InputError(f"{what} must be 4x4 transforms [...,4,4]; got shape {T.shape}")
    if not np.all(np.isfinite(T)):
        raise InputError(f"{what} contains NaN or infinite values")
    return T


def _norm(v: np.ndarray) -> np.ndarray:
    return np.sqrt(np.sum(v * v, axis=-1))


def rotation_error_deg(R_gt: np.ndarray, R_pred: np.ndarray) -> np.ndarray:
    """BA-Net rotation error [...] in degrees: arccos((trace(R_gtᵀ R_pred) − 1)/2) of rotations [...,3,3].

    The official code clips the cosine at 1 only; clipping at −1 too keeps 180° rotations finite.
    """
    cos = (np.trace(np.swapaxes(R_gt, -1, -2) @ R_pred, axis1=-2, axis2=-1) - 1.0) / 2.0
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def rotation_angle_deg(R: np.ndarray) -> np.ndarray:
    """Rotation angle [...] in degrees of rotations [...,3,3], accurate also near 0° and 180°."""
    # atan2(|sin|, cos) keeps full precision for small angles where arccos(cos) loses half the digits.
    sin_vec = np.stack(
        [R[..., 2, 1] - R[..., 1, 2], R[..., 0, 2] - R[..., 2, 0], R[..., 1, 0] - R[..., 0, 1]], -1
    )
    sin = 0.5 * _norm(sin_vec)
    cos = 0.5 * (np.trace(R, axis1=-2, axis2=-1) - 1.0)
    return np.degrees(np.arctan2(sin, cos))


def translation_direction_error_deg(t_gt: np.ndarray, t_pred: np.ndarray) -> np.ndarray:
    """Angle [...] in degrees between translations [...,3]; NaN where either has zero length."""
    n_gt, n_pred = _norm(t_gt), _norm(t_pred)
    denom = n_gt * n_pred
    ok = denom > 0
    cos = np.divide(np.sum(t_gt * t_pred, axis=-1), denom, out=np.zeros_like(denom), where=ok)
    return np.where(ok, np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))), np.nan)


def translation_error_cm_scaled(t_gt: np.ndarray, t_pred: np.ndarray) -> np.ndarray:
    """BA-Net translation error [...] in cm: 100·‖t_gt − a·t_pred‖, a least-squares, for inputs [...,3]."""
    tt = np.sum(t_pred * t_pred, axis=-1)
    ok = tt > 0
    a = np.divide(np.sum(t_gt * t_pred, axis=-1), tt, out=np.zeros_like(tt), where=ok)
    return 100.0 * _norm(t_gt - a[..., None] * t_pred)


@dataclass(frozen=True)
class BANetPoseErrors:
    """BA-Net/DeepV2D errors of N pairs [N]: rotation (deg), translation direction (deg), translation (cm)."""

    rot_deg: np.ndarray
    tdir_deg: np.ndarray
    t_cm: np.ndarray

    def mean(self) -> dict[str, float]:
        """Mean of each error over pairs; NaN directions (zero translations) are left out."""
        return {
            "rot_deg": float(np.mean(self.rot_deg)),
            "tdir_deg": float(np.nanmean(self.tdir_deg))
            if np.any(np.isfinite(self.tdir_deg))
            else float("nan"),
            "t_cm": float(np.mean(self.t_cm)),
        }

    def as_arrays(self) -> Mapping[str, np.ndarray]:
        """Errors keyed by name, each [N]."""
        return {"rot_deg": self.rot_deg, "tdir_deg": self.tdir_deg, "t_cm": self.t_cm}


def banet_pose_errors(T_gt_ref_from_tgt: np.ndarray, T_pred_ref_from_tgt: np.ndarray) -> BANetPoseErrors:
    """BA-Net/DeepV2D errors of predicted vs ground-truth target→reference transforms [N,4,4] (or [4,4])."""
    T_gt = _check_transforms(T_gt_ref_from_tgt, "ground-truth poses")
    T_pred = _check_transforms(T_pred_ref_from_tgt, "predicted poses")
    if T_gt.shape != T_pred.shape:
        raise InputError(f"pose shapes differ: ground truth {T_gt.shape}, prediction {T_pred.shape}")
    T_gt, T_pred = T_gt.reshape(-1, 4, 4), T_pred.reshape(-1, 4, 4)
    R_gt, t_gt = T_gt[:, :3, :3], T_gt[:, :3, 3]
    R_pred, t_pred = T_pred[:, :3, :3], T_pred[:, :3, 3]
    return BANetPoseErrors(
        rot_deg=rotation_error_deg(R_gt, R_pred),
        tdir_deg=translation_direction_error_deg(t_gt, t_pred),
        t_cm=translation_error_cm_scaled(t_gt, t_pred),
    )


@dataclass(frozen=True)
class RelativePoseErrors:
    """Errors of N relative poses: rotation angle (deg), translation (m, no scale fit), direction (deg)."""

    rot_deg: np.ndarray
    trans: np.ndarray
    tdir_deg: np.ndarray

    def as_arrays(self) -> Mapping[str, np.ndarray]:
        """Errors keyed by name, each [N]."""
        return {"rot_deg": self.rot_deg, "trans": self.trans, "tdir_deg": self.tdir_deg}


def relative_pose_errors(T_gt_a_from_b: np.ndarray, T_pred_a_from_b: np.ndarray) -> RelativePoseErrors:
    """Errors of predicted vs ground-truth relative transforms [N,4,4] (or [4,4]).

    Rotation error is the angle of ``R_gtᵀ R_pred``; translation error is ``‖t_gt − t_pred‖`` in the
    transforms' units (use ``banet_pose_errors`` for the scale-fitted version of monocular estimates).
    """
    T_gt = _check_transforms(T_gt_a_from_b, "ground-truth poses").reshape(-1, 4, 4)
    T_pred = _check_transforms(T_pred_a_from_b, "predicted poses").reshape(-1, 4, 4)
    if T_gt.shape != T_pred.shape:
        raise InputError(f"pose counts differ: {T_gt.shape[0]} ground truth, {T_pred.shape[0]} predicted")
    R_err = np.swapaxes(T_gt[:, :3, :3], -1, -2) @ T_pred[:, :3, :3]
    t_gt, t_pred = T_gt[:, :3, 3], T_pred[:, :3, 3]
    return RelativePoseErrors(
        rot_deg=rotation_angle_deg(R_err),
        trans=_norm(t_gt - t_pred),
        tdir_deg=translation_direction_error_deg(t_gt, t_pred),
    )


def relative_poses_along(T_world_from_cam: np.ndarray, delta: int = 1) -> np.ndarray:
    """Transforms T_{i+δ}_from_i [N−δ,4,4] between frames δ apart of a camera-to-world trajectory [N,4,4]."""
    T = _check_transforms(T_world_from_cam, "trajectory")
    if T.ndim != 3:
        raise InputError(f"trajectory must be [N,4,4]; got shape {T.shape}")
    if delta < 1 or delta >= T.shape[0]:
        raise InputError(f"frame step delta={delta} must be in [1, {T.shape[0] - 1}] for {T.shape[0]} poses")
    return invert_rigid(T[delta:]) @ T[:-delta]


def sequence_relative_pose_errors(
    T_world_from_cam_gt: np.ndarray, T_world_from_cam_pred: np.ndarray, delta: int = 1
) -> RelativePoseErrors:
    """Relative-pose errors [N−δ] of all frame pairs (i, i+δ) of two aligned-in-time trajectories [N,4,4]."""
    T_gt = _check_transforms(T_world_from_cam_gt, "ground-truth trajectory")
    T_pred = _check_transforms(T_world_from_cam_pred, "predicted trajectory")
    if T_gt.shape != T_pred.shape:
        raise InputError(f"trajectory shapes differ: ground truth {T_gt.shape}, prediction {T_pred.shape}")
    return relative_pose_errors(relative_poses_along(T_gt, delta), relative_poses_along(T_pred, delta))
