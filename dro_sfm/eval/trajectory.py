"""Trajectory metrics (APE/ATE, RPE) computed with ``evo``, behind a numpy-only interface.

Inputs are camera-to-world poses ``T_world_from_cam`` [N,4,4]; other modules never see evo types.
Alignment modes follow evo's command-line options: ``"none"``, ``"se3"`` (``-a``, rigid Umeyama),
``"sim3"`` (``-as``, Umeyama with scale, needed for monocular estimates) and ``"scale"`` (``-s``).
The estimate is aligned to the reference: ``p ← s·R·p + t`` for positions, ``R_i ← R·R_i`` for rotations.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal, get_args

import numpy as np
from evo.core import geometry as evo_geometry
from evo.core import metrics as evo_metrics
from evo.core import sync as evo_sync
from evo.core.filters import FilterException
from evo.core.lie_algebra import is_so3
from evo.core.trajectory import PosePath3D

from dro_sfm.errors import ConfigError, InputError

logger = logging.getLogger(__name__)

AlignMode = Literal["none", "se3", "sim3", "scale"]
PoseRelationName = Literal["translation", "rotation_deg", "rotation_rad", "full"]

_RELATIONS: dict[str, tuple[evo_metrics.PoseRelation, str]] = {
    "translation": (evo_metrics.PoseRelation.translation_part, "m"),
    "rotation_deg": (evo_metrics.PoseRelation.rotation_angle_deg, "deg"),
    "rotation_rad": (evo_metrics.PoseRelation.rotation_angle_rad, "rad"),
    "full": (evo_metrics.PoseRelation.full_transformation, ""),
}
STAT_NAMES: tuple[str, ...] = ("rmse", "mean", "median", "std", "min", "max", "sse")
#: Largest |RᵀR − I| entry accepted in an input rotation. Dataset poses are stored as rounded text (7-Scenes,
#: TUM quaternions) and can miss orthonormality by ~1e-4, which evo refuses (its SO(3) test allows ~1e-6); such
#: rotations are replaced by the nearest rotation before evo sees them. Further off is a wrong input.
ROTATION_TOLERANCE = 1e-2


def _check_trajectory(T: np.ndarray, what: str) -> np.ndarray:
    """Validate camera-to-world poses [N,4,4] (float64)."""
    T = np.asarray(T, dtype=np.float64)
    if T.ndim != 3 or T.shape[1:] != (4, 4) or T.shape[0] == 0:
        raise InputError(f"{what} must be a non-empty stack of 4x4 poses [N,4,4]; got shape {T.shape}")
    if not np.all(np.isfinite(T)):
        raise InputError(f"{what} contains NaN or infinite values")
    if not np.allclose(T[:, 3, :], [0.0, 0.0, 0.0, 1.0]):
        raise InputError(f"{what}: the last row of every pose must be [0, 0, 0, 1]")
    return T


def _nearest_rotation(R: np.ndarray) -> np.ndarray:
    """The rotation [3,3] closest to R [3,3] in the Frobenius norm (SVD projection, det +1)."""
    U, _, Vt = np.linalg.svd(R)
    return U @ np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt))]) @ Vt


def _evo_ready(T: np.ndarray, what: str) -> np.ndarray:
    """Poses [N,4,4] whose rotations pass evo's SO(3) test: the ones that fail only by rounding are projected.

    Poses evo already accepts are passed through unchanged, so results on clean inputs are exactly evo's.
    """
    out = T
    for i in range(T.shape[0]):
        R = T[i, :3, :3]
        if is_so3(R):
            continue
        deviation = float(np.abs(R.T @ R - np.eye(3)).max())
        if deviation > ROTATION_TOLERANCE or np.linalg.det(R) <= 0.0:
            raise InputError(f"{what}: pose {i} has no valid rotation (|RᵀR − I| = {deviation:.3g}, "
                             f"det {np.linalg.det(R):.3g})")
        if out is T:
            out = T.copy()
        out[i, :3, :3] = _nearest_rotation(R)
    return out


def _check_pair(T_ref: np.ndarray, T_est: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    T_ref = _check_trajectory(T_ref, "reference trajectory")
    T_est = _check_trajectory(T_est, "estimated trajectory")
    if T_ref.shape[0] != T_est.shape[0]:
        raise InputError(
            f"reference has {T_ref.shape[0]} poses and estimate {T_est.shape[0]}; associate them first "
            "(associate_by_timestamps) so that pose i of both is the same instant"
        )
    return T_ref, T_est


def _path(T: np.ndarray, what: str = "trajectory") -> PosePath3D:
    return PosePath3D(poses_se3=list(_evo_ready(T, what)))


@dataclass(frozen=True)
class Alignment:
    """Similarity that maps the estimate into the reference frame: p ← scale·R·p + t."""

    mode: AlignMode
    rotation: np.ndarray
    translation: np.ndarray
    scale: float

    @property
    def matrix(self) -> np.ndarray:
        """The Sim(3) matrix [4,4] [[s·R, t], [0, 1]]."""
        S = np.eye(4)
        S[:3, :3] = self.scale * self.rotation
        S[:3, 3] = self.translation
        return S

    def apply(self, T_world_from_cam: np.ndarray) -> np.ndarray:
        """Aligned poses [N,4,4]: positions s·R·p + t, rotations R·R_i (rotations stay orthonormal)."""
        T = np.array(T_world_from_cam, dtype=np.float64, copy=True)
        T[:, :3, 3] = self.scale * T[:, :3, 3] @ self.rotation.T + self.translation
        T[:, :3, :3] = self.rotation @ T[:, :3, :3]
        return T

    def to_dict(self) -> dict[str, object]:
        """JSON-ready record."""
        return {
            "mode": self.mode,
            "rotation": self.rotation.tolist(),
            "translation": self.translation.tolist(),
            "scale": self.scale,
        }


IDENTITY_ALIGNMENT = Alignment("none", np.eye(3), np.zeros(3), 1.0)


def align_trajectory(
    T_ref: np.ndarray, T_est: np.ndarray, mode: AlignMode = "se3", n_align: int | None = None
) -> tuple[Alignment, np.ndarray]:
    """Umeyama alignment (evo) of estimate [N,4,4] to reference [N,4,4]; returns it and the aligned estimate.

    ``n_align`` uses only the first n poses to estimate the alignment (evo's ``--n_to_align``).
    """
    T_ref, T_est = _check_pair(T_ref, T_est)
    if mode not in get_args(AlignMode):
        raise ConfigError(f"unknown alignment {mode!r}; use one of {', '.join(get_args(AlignMode))}")
    if mode == "none":
        return IDENTITY_ALIGNMENT, T_est.copy()
    n = -1 if n_align is None else int(n_align)
    if n == 0 or n < -1 or n > T_ref.shape[0]:
        raise InputError(f"n_align={n_align} must be between 1 and the number of poses ({T_ref.shape[0]})")
    est = _path(T_est, "estimated trajectory")
    try:
        R, t, s = est.align(
            _path(T_ref, "reference trajectory"), correct_scale=mode == "sim3", correct_only_scale=mode == "scale", n=n
        )
    except evo_geometry.GeometryException as err:
        raise InputError(
            f"cannot align the trajectories ({err}); {mode} alignment needs at least 3 positions that are "
            "not all on one line"
        ) from err
    if mode == "scale":
        # evo applies only the scale in this mode although Umeyama also returned a rotation.
        alignment = Alignment(mode, np.eye(3), np.zeros(3), float(s))
    else:
        alignment = Alignment(
            mode, np.asarray(R, dtype=np.float64), np.asarray(t, dtype=np.float64), float(s)
        )
    return alignment, np.stack(est.poses_se3)


@dataclass(frozen=True)
class TrajectoryErrors:
    """Per-pose (APE) or per-pair (RPE) errors with evo's statistics and the aligned trajectories."""

    metric: Literal["ape", "rpe"]
    pose_relation: PoseRelationName
    unit: str
    alignment: Alignment
    errors: np.ndarray
    index: np.ndarray
    stats: dict[str, float]
    T_ref: np.ndarray = field(repr=False)
    T_est_aligned: np.ndarray = field(repr=False)
    timestamps: np.ndarray | None = field(default=None, repr=False)
    delta: int | None = None

    @property
    def name(self) -> str:
        """Label such as ``ape_translation_sim3`` or ``rpe_rotation_deg_d10_none``."""
        d = f"_d{self.delta}" if self.delta is not None else ""
        return f"{self.metric}_{self.pose_relation}{d}_{self.alignment.mode}"


def _stats(metric: evo_metrics.PE) -> dict[str, float]:
    all_stats = metric.get_all_statistics()
    return {k: float(all_stats[k]) for k in STAT_NAMES}


def _relation(pose_relation: str) -> tuple[evo_metrics.PoseRelation, str]:
    try:
        return _RELATIONS[pose_relation]
    except KeyError:
        raise ConfigError(
            f"unknown pose relation {pose_relation!r}; use one of {', '.join(_RELATIONS)}"
        ) from None


def absolute_trajectory_error(
    T_ref: np.ndarray,
    T_est: np.ndarray,
    align: AlignMode = "se3",
    pose_relation: PoseRelationName = "translation",
    n_align: int | None = None,
    timestamps: np.ndarray | None = None,
) -> TrajectoryErrors:
    """APE of estimate [N,4,4] against reference [N,4,4] after alignment; ATE = its translation RMSE."""
    relation, unit = _relation(pose_relation)
    alignment, T_aligned = align_trajectory(T_ref, T_est, align, n_align)
    T_ref = np.asarray(T_ref, dtype=np.float64)
    ape = evo_metrics.APE(relation)
    ape.process_data((_path(T_ref, "reference trajectory"), _path(T_aligned, "aligned estimate")))
    return TrajectoryErrors(
        metric="ape",
        pose_relation=pose_relation,
        unit=unit,
        alignment=alignment,
        errors=np.asarray(ape.error, dtype=np.float64),
        index=np.arange(T_ref.shape[0]),
        stats=_stats(ape),
        T_ref=T_ref,
        T_est_aligned=T_aligned,
        timestamps=None if timestamps is None else np.asarray(timestamps),
    )


def relative_trajectory_error(
    T_ref: np.ndarray,
    T_est: np.ndarray,
    delta: int = 1,
    pose_relation: PoseRelationName = "translation",
    align: AlignMode = "none",
    all_pairs: bool = False,
    timestamps: np.ndarray | None = None,
) -> TrajectoryErrors:
    """RPE over frame pairs δ apart of estimate [N,4,4] vs reference [N,4,4] (evo, delta unit = frames).

    As evo: pairs (0,δ), (δ,2δ), … by default, every (i, i+δ) with ``all_pairs``. ``index`` holds the
    second frame of each pair. Align with "sim3" (or "scale") when the estimate has an arbitrary scale.
    """
    relation, unit = _relation(pose_relation)
    if isinstance(delta, bool) or int(delta) != delta or delta < 1:
        raise ConfigError(f"RPE frame step delta must be a positive integer, got {delta!r}")
    alignment, T_aligned = align_trajectory(T_ref, T_est, align)
    T_ref = np.asarray(T_ref, dtype=np.float64)
    rpe = evo_metrics.RPE(relation, delta=int(delta), delta_unit=evo_metrics.Unit.frames, all_pairs=all_pairs)
    try:
        rpe.process_data((_path(T_ref, "reference trajectory"), _path(T_aligned, "aligned estimate")))
    except FilterException as err:
        raise InputError(
            f"RPE with delta={delta} frames found no frame pair in {T_ref.shape[0]} poses"
        ) from err
    return TrajectoryErrors(
        metric="rpe",
        pose_relation=pose_relation,
        unit=unit,
        alignment=alignment,
        errors=np.asarray(rpe.error, dtype=np.float64),
        index=np.asarray(rpe.delta_ids, dtype=np.int64),
        stats=_stats(rpe),
        T_ref=T_ref,
        T_est_aligned=T_aligned,
        timestamps=None if timestamps is None else np.asarray(timestamps),
        delta=int(delta),
    )


def associate_by_timestamps(
    stamps_ref: np.ndarray, stamps_est: np.ndarray, max_diff: float = 0.01, offset_est: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (into ref [N], into est [M]) of nearest timestamps within max_diff seconds (evo's rule).

    As evo does, every pose of the shorter trajectory looks for its closest partner in the longer one,
    so the result is the same as ``evo_ape tum ref est --t_max_diff max_diff --t_offset offset_est``.
    """
    stamps_ref = np.asarray(stamps_ref, dtype=np.float64).reshape(-1)
    stamps_est = np.asarray(stamps_est, dtype=np.float64).reshape(-1) + offset_est
    if stamps_ref.size == 0 or stamps_est.size == 0:
        raise InputError("cannot associate an empty trajectory")
    if not (np.all(np.isfinite(stamps_ref)) and np.all(np.isfinite(stamps_est))):
        raise InputError("timestamps contain NaN or infinite values")
    if stamps_est.size <= stamps_ref.size:
        idx_est, idx_ref = evo_sync.matching_time_indices(stamps_est, stamps_ref, max_diff)
    else:
        idx_ref, idx_est = evo_sync.matching_time_indices(stamps_ref, stamps_est, max_diff)
    if len(idx_ref) == 0:
        raise InputError(
            f"no timestamps of the estimate ({stamps_est[0]:.3f}..{stamps_est[-1]:.3f} s) lie within "
            f"{max_diff} s of the reference ({stamps_ref[0]:.3f}..{stamps_ref[-1]:.3f} s); check that both "
            "use the same clock, or pass a time offset / larger max_diff"
        )
    idx_ref, idx_est = np.asarray(idx_ref, dtype=np.int64), np.asarray(idx_est, dtype=np.int64)
    logger.info("associated %d of %d estimated poses with the reference", idx_est.size, stamps_est.size)
    return idx_ref, idx_est


def associate_trajectories(
    T_ref: np.ndarray,
    stamps_ref: np.ndarray,
    T_est: np.ndarray,
    stamps_est: np.ndarray,
    max_diff: float = 0.01,
    offset_est: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Matched (T_ref [K,4,4], T_est [K,4,4], stamps [K]) of two timestamped trajectories (stamps of est)."""
    T_ref = _check_trajectory(T_ref, "reference trajectory")
    T_est = _check_trajectory(T_est, "estimated trajectory")
    stamps_ref, stamps_est = (
        np.asarray(stamps_ref, dtype=np.float64),
        np.asarray(stamps_est, dtype=np.float64),
    )
    if stamps_ref.shape != (T_ref.shape[0],) or stamps_est.shape != (T_est.shape[0],):
        raise InputError(
            f"need one timestamp per pose: reference {stamps_ref.shape} for {T_ref.shape[0]} poses, "
            f"estimate {stamps_est.shape} for {T_est.shape[0]} poses"
        )
    idx_ref, idx_est = associate_by_timestamps(stamps_ref, stamps_est, max_diff, offset_est)
    return T_ref[idx_ref], T_est[idx_est], stamps_est[idx_est]


def path_length(T_world_from_cam: np.ndarray) -> float:
    """Length in metres of the camera path [N,4,4] (sum of distances between consecutive positions)."""
    T = _check_trajectory(T_world_from_cam, "trajectory")
    steps = np.diff(T[:, :3, 3], axis=0)
    return float(np.sum(np.linalg.norm(steps, axis=1))) if steps.size else 0.0
