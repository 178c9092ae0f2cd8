"""Geometry: property tests (hypothesis) for poses and cameras, plus unit checks of the conventions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dro_sfm.errors import InputError
from dro_sfm.geometry.camera import (
    backproject,
    camera_rays,
    inverse_intrinsics,
    project_points_pixels,
    project_to_grid,
    scale_intrinsics_feature,
    scale_intrinsics_resize,
    transform_points,
)
from dro_sfm.geometry.pose import (
    check_rigid,
    euler_vec_to_matrix,
    invert_rigid,
    matrix_to_euler_vec,
    pose_from_quat_trans,
    quat_trans_from_pose,
    relative_pose,
)
from dro_sfm.geometry.warp import depth2inv, inv2depth, warp_to_target

angles = st.floats(-1.4, 1.4)
trans = st.floats(-5.0, 5.0)
pose_vecs = st.tuples(trans, trans, trans, angles, angles, angles)


def _vec(v) -> torch.Tensor:
    return torch.tensor([v], dtype=torch.float64)


def _K(fx=100.0, fy=110.0, cx=40.0, cy=30.0) -> torch.Tensor:
    return torch.tensor([[[fx, 0, cx], [0, fy, cy], [0, 0, 1]]], dtype=torch.float64)


@settings(max_examples=60, deadline=None)
@given(pose_vecs)
def test_euler_round_trip(v) -> None:
    vec = _vec(v)
    np.testing.assert_allclose(matrix_to_euler_vec(euler_vec_to_matrix(vec)).numpy(), vec.numpy(), atol=1e-9)


@settings(max_examples=60, deadline=None)
@given(pose_vecs)
def test_rotation_is_orthonormal_and_order_is_xyz(v) -> None:
    T = euler_vec_to_matrix(_vec(v))[0].numpy()
    R = T[:3, :3]
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
    assert abs(np.linalg.det(R) - 1) < 1e-12
    x, y, z = v[3:]
    Rx = np.array([[1, 0, 0], [0, np.cos(x), -np.sin(x)], [0, np.sin(x), np.cos(x)]])
    Ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    Rz = np.array([[np.cos(z), -np.sin(z), 0], [np.sin(z), np.cos(z), 0], [0, 0, 1]])
    np.testing.assert_allclose(R, Rx @ Ry @ Rz, atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(pose_vecs, pose_vecs)
def test_composition_and_inverse_laws(a, b) -> None:
    A, B = euler_vec_to_matrix(_vec(a))[0], euler_vec_to_matrix(_vec(b))[0]
    np.testing.assert_allclose((A @ invert_rigid(A)).numpy(), np.eye(4), atol=1e-10)
    np.testing.assert_allclose(invert_rigid(A @ B).numpy(), (invert_rigid(B) @ invert_rigid(A)).numpy(), atol=1e-10)
    np.testing.assert_allclose(invert_rigid(A.numpy()), invert_rigid(A).numpy(), atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(pose_vecs)
def test_quaternion_round_trip(v) -> None:
    T = euler_vec_to_matrix(_vec(v))[0].numpy()
    q, t = quat_trans_from_pose(T)
    assert q[0] >= 0 and abs(np.linalg.norm(q) - 1) < 1e-9
    np.testing.assert_allclose(pose_from_quat_trans(q, t), T, atol=1e-9)


@settings(max_examples=40, deadline=None)
@given(st.floats(0.5, 50.0), st.floats(20, 400), st.floats(20, 400), st.floats(5, 60), st.floats(5, 40))
def test_projection_of_backprojection_is_identity(depth_value, fx, fy, cx, cy) -> None:
    K = _K(fx, fy, cx, cy)
    depth = torch.full((1, 1, 6, 8), depth_value, dtype=torch.float64)
    depth[0, 0, 2, 3] = depth_value * 2.5  # not only constant depth
    X = backproject(depth, K)
    pix, z = project_points_pixels(X, K)
    v, u = torch.meshgrid(torch.arange(6.0), torch.arange(8.0), indexing="ij")
    np.testing.assert_allclose(pix[0, 0].numpy(), u.numpy().astype(np.float64), atol=1e-9)
    np.testing.assert_allclose(pix[0, 1].numpy(), v.numpy().astype(np.float64), atol=1e-9)
    np.testing.assert_allclose(z.numpy(), depth.numpy(), rtol=1e-12)


@settings(max_examples=40, deadline=None)
@given(pose_vecs)
def test_relative_pose_convention(v) -> None:
    """T_b_from_a = inv(T_world_from_b) @ T_world_from_a maps a-camera points into b's frame."""
    T_wa = euler_vec_to_matrix(_vec(v))[0].numpy()
    T_wb = euler_vec_to_matrix(_vec([0.3, -0.2, 1.0, 0.1, -0.05, 0.2]))[0].numpy()
    X_a = np.array([0.5, -0.3, 4.0, 1.0])
    X_w = T_wa @ X_a
    np.testing.assert_allclose(relative_pose(T_wa, T_wb) @ X_a, invert_rigid(T_wb) @ X_w, atol=1e-9)


def test_feature_scaling_uses_half_pixel_rule() -> None:
    K = _K(100, 120, 47.5, 31.5).float()
    K8 = scale_intrinsics_feature(K, 1 / 8)
    assert K8[0, 0, 0] == pytest.approx(12.5)
    assert K8[0, 0, 2] == pytest.approx((47.5 + 0.5) / 8 - 0.5)  # = 5.5: pixel centres stay aligned
    assert K8[0, 1, 2] == pytest.approx((31.5 + 0.5) / 8 - 0.5)
    assert torch.equal(scale_intrinsics_feature(K, 1.0), K)
    resized = scale_intrinsics_resize(K[0].numpy(), 0.5, 0.25)
    np.testing.assert_allclose(resized[0], [50, 0, 23.75])
    np.testing.assert_allclose(resized[1], [0, 30, 7.875])


def test_inverse_intrinsics_is_elementwise() -> None:
    K = _K()
    np.testing.assert_allclose((inverse_intrinsics(K) @ K).numpy()[0], np.eye(3), atol=1e-12)
    rays = camera_rays(K, 4, 5)
    assert rays.shape == (1, 3, 4, 5)
    assert torch.all(rays[:, 2] == 1)


def test_project_to_grid_normalises_by_size_minus_one() -> None:
    K = _K(10, 10, 0, 0)
    X = torch.tensor([[[[0.0, 7.0]], [[0.0, 5.0]], [[1.0, 1.0]]]], dtype=torch.float64)  # [1,3,1,2]
    grid = project_to_grid(X, K, torch.eye(4, dtype=torch.float64)[None], (101, 71))
    np.testing.assert_allclose(grid[0, 0, 0].numpy(), [-1, -1])
    np.testing.assert_allclose(grid[0, 0, 1].numpy(), [2 * 70 / 70 - 1, 2 * 50 / 100 - 1])


def test_warp_with_true_pose_reproduces_target() -> None:
    """A fronto-parallel textured plane seen from two poses: warping with the truth recovers the target."""
    K = _K(60, 60, 31.5, 23.5)
    H, W = 48, 64
    T_ref_from_tgt = euler_vec_to_matrix(_vec([0.2, 0.05, 0.0, 0.0, 0.03, 0.0]))
    depth = torch.full((1, 1, H, W), 4.0, dtype=torch.float64)

    def texture(X: torch.Tensor) -> torch.Tensor:
        """Colour [1,1,H,W] of plane points X [1,3,H,W] (a smooth pattern on the plane)."""
        return (torch.sin(3 * X[:, :1]) * torch.cos(2 * X[:, 1:2]) + 1) / 2

    X_tgt = backproject(depth, K)
    target = texture(X_tgt)
    # The reference image sees the same plane: render by intersecting its rays with z_tgt = 4.
    T_tgt_from_ref = invert_rigid(T_ref_from_tgt)
    rays_ref = camera_rays(K, H, W)
    o = T_tgt_from_ref[:, :3, 3].view(1, 3, 1, 1)
    d = transform_points(T_tgt_from_ref, rays_ref) - o
    s = (4.0 - o[:, 2:3]) / d[:, 2:3]
    ref = texture(o + s * d)
    warped = warp_to_target(ref, depth, K, T_ref_from_tgt)
    inner = (slice(None), slice(None), slice(4, -4), slice(8, -8))
    assert (warped - target)[inner].abs().max() < 0.02
    wrong = warp_to_target(ref, depth, K, torch.eye(4, dtype=torch.float64)[None])
    assert (wrong - target)[inner].abs().mean() > 5 * (warped - target)[inner].abs().mean()


def test_inverse_depth_conversions() -> None:
    x = torch.tensor([0.0, -0.0, 1e-7, -2.0, 0.5])
    np.testing.assert_allclose(inv2depth(x).numpy(), [0, 0, 1e6, 0, 2], rtol=1e-6)
    np.testing.assert_allclose(depth2inv(torch.tensor([0.0, 4.0])).numpy(), [0, 0.25])


def test_check_rigid_rejects_bad_matrices() -> None:
    assert check_rigid(np.eye(4), "ok").shape == (4, 4)
    bad = np.eye(4)
    bad[0, 0] = 2
    with pytest.raises(InputError, match="not rigid"):
        check_rigid(bad, "pose.txt")
    with pytest.raises(InputError, match="4x4"):
        check_rigid(np.eye(3), "pose.txt")
    nan = np.eye(4)
    nan[0, 3] = np.nan
    with pytest.raises(InputError, match="NaN"):
        check_rigid(nan, "pose.txt")
