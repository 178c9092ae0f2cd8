"""KITTI raw: the real kitti_tiny drive, the monodepth2 projection rule, split lists, writer round trips."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from conftest import require_shared
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from scipy.spatial.transform import Rotation

from dro_sfm.data.kitti import (
    KittiCalib,
    KittiDrive,
    mercator_scale,
    oxts_to_pose,
    parse_kitti_split_line,
    pose_to_oxts,
    project_velodyne,
    read_kitti_calib,
    read_kitti_split,
    read_velodyne_bin,
    synthesize_velodyne_scan,
    write_kitti_drive,
)
from dro_sfm.data.types import Frame
from dro_sfm.errors import InputError
from dro_sfm.geometry.pose import invert_rigid

DRIVE = ("data", "kitti_tiny", "2011_09_26", "2011_09_26_drive_0023_sync")


# ------------------------------------------------------------------------------------------ real sample
@pytest.mark.shared
def test_real_drive_matches_source_md() -> None:
    drive_dir = require_shared(*DRIVE)
    drive = KittiDrive(drive_dir, camera=2)
    assert len(drive) == 7 and drive.depth_source == "proj_depth"
    # SOURCE.md: fx = 721.5377 (P_rect_02), also the PR's cam.txt.
    assert drive.K[0, 0] == pytest.approx(721.5377)
    assert np.allclose(drive.K, np.loadtxt(drive_dir / "image_02" / "cam.txt"), atol=1e-6)
    frames = list(drive)
    steps = []
    for i, frame in enumerate(frames):
        assert frame.image.shape == (375, 1242, 3) and frame.image.dtype == np.uint8
        valid = frame.depth[frame.depth > 0]
        assert 17_000 < valid.size < 21_000  # "about 19k valid px"
        assert valid.min() > 4.0 and valid.max() < 81.0  # "6-80 m"
        if i:
            steps.append(np.linalg.norm(frame.T_world_from_cam[:3, 3] - frames[i - 1].T_world_from_cam[:3, 3]))
    # SOURCE.md: OXTS-derived steps are 0.89-0.99 m per frame.
    assert 0.885 < min(steps) and max(steps) < 0.995
    assert np.allclose(frames[0].T_world_from_cam, np.eye(4), atol=1e-8)  # Mercator metres are ~4e6
    # The car drives forward: camera z is the direction of motion.
    direction = frames[-1].T_world_from_cam[:3, 3] / np.linalg.norm(frames[-1].T_world_from_cam[:3, 3])
    assert direction[2] > 0.99
    assert frames[1].timestamp - frames[0].timestamp == pytest.approx(0.103764, abs=1e-5)


@pytest.mark.shared
def test_real_calibration_chain() -> None:
    date_dir = require_shared(*DRIVE[:3])
    calib = read_kitti_calib(date_dir)
    for cam in (2, 3):
        # K·T_cam_from_velo[:3] is monodepth2's P_velo2im = P_rect · R_rect · velo2cam.
        R_rect = np.eye(4)
        R_rect[:3, :3] = calib.R_rect_00
        P_velo2im = calib.P_rect[cam] @ R_rect @ calib.T_cam0_from_velo
        assert np.allclose(calib.K(cam) @ calib.T_cam_from_velo(cam)[:3], P_velo2im, atol=1e-9)
    # Cameras 2 and 3 are 0.54 m apart along x (the KITTI stereo baseline).
    T_3_from_2 = calib.T_cam_from_velo(3) @ invert_rigid(calib.T_cam_from_velo(2))
    assert abs(T_3_from_2[0, 3]) == pytest.approx(0.532, abs=0.01)
    assert calib.image_size[2] == (1242, 375)


@pytest.mark.shared
def test_real_world_modes_agree_on_relative_motion() -> None:
    drive_dir = require_shared(*DRIVE)
    a = KittiDrive(drive_dir, world="first_camera", depth="none").poses
    b = KittiDrive(drive_dir, world="oxts", depth="none", frames=[3, 6]).poses
    rel_a = invert_rigid(a[3]) @ a[6]
    rel_b = invert_rigid(b[3]) @ b[6]
    assert np.allclose(rel_a, rel_b, atol=1e-9)
    # In the OXTS world z is up: the car stays level within a few decimetres over 5 m.
    assert abs(b[6][2, 3] - b[3][2, 3]) < 0.3


# ------------------------------------------------------------------------------------------ projection
def _monodepth2_reference(points: np.ndarray, calib: KittiCalib, cam: int, h: int, w: int) -> np.ndarray:
    """Line-by-line restatement of monodepth2's generate_depth_map (loop over duplicate pixels)."""
    R_rect = np.eye(4)
    R_rect[:3, :3] = calib.R_rect_00
    P = calib.P_rect[cam] @ R_rect @ calib.T_cam0_from_velo
    velo = np.hstack([points[:, :3], np.ones((len(points), 1))])
    velo = velo[velo[:, 0] >= 0]
    im = (P @ velo.T).T
    im[:, :2] = im[:, :2] / im[:, 2:3]
    im[:, 0] = np.round(im[:, 0]) - 1
    im[:, 1] = np.round(im[:, 1]) - 1
    ok = (im[:, 0] >= 0) & (im[:, 1] >= 0) & (im[:, 0] < w) & (im[:, 1] < h)
    im = im[ok]
    depth = np.zeros((h, w))
    depth[im[:, 1].astype(int), im[:, 0].astype(int)] = im[:, 2]
    inds = im[:, 1].astype(int) * w + im[:, 0].astype(int)
    for dd in [k for k, c in Counter(inds.tolist()).items() if c > 1]:
        pts = np.where(inds == dd)[0]
        depth[int(im[pts[0], 1]), int(im[pts[0], 0])] = im[pts, 2].min()
    depth[depth < 0] = 0
    return depth


def _test_calib(K: np.ndarray, w: int, h: int) -> KittiCalib:
    """A rig with every link non-trivial: rectifying rotation, P_rect offsets in x, y, z, tilted sensors."""
    rot = lambda v: Rotation.from_rotvec(v).as_matrix()  # noqa: E731
    R_velo = rot([0.01, -0.02, 0.015]) @ np.array([[0.0, -1, 0], [0, 0, -1], [1, 0, 0]])
    T_velo = np.eye(4)
    T_velo[:3, :3], T_velo[:3, 3] = R_velo, [0.004, -0.076, -0.27]
    T_imu = np.eye(4)
    T_imu[:3, :3], T_imu[:3, 3] = rot([0.002, 0.01, -0.005]), [-0.81, 0.32, -0.8]
    P = {c: K @ np.hstack([np.eye(3), np.array([[b], [0.0003 * c], [0.0027 * (c > 1)]])])
         for c, b in {0: 0.0, 1: -0.537, 2: 0.0622, 3: -0.4706}.items()}
    return KittiCalib(P, rot([0.004, -0.003, 0.015]), {c: (w, h) for c in P}, T_velo, T_imu)


def test_projection_matches_monodepth2_rule() -> None:
    rng = np.random.default_rng(0)
    h, w = 60, 80
    K = np.array([[50.0, 0, 39.5], [0, 50.0, 29.5], [0, 0, 1]])
    calib = _test_calib(K, w, h)
    pts = np.column_stack([rng.uniform(-5, 40, 3000), rng.uniform(-20, 20, 3000), rng.uniform(-3, 2, 3000),
                           rng.uniform(0, 1, 3000)]).astype(np.float32)
    # Several points on one ray: the closest must win; a point just in front of the Velodyne but behind
    # the camera (negative camera z) must not leave a negative depth.
    ray = pts[0, :3] / np.linalg.norm(pts[0, :3])
    pts = np.vstack([pts, np.column_stack([np.outer([3.0, 7.0, 9.0], ray), np.zeros(3)]),
                     [[0.05, 0.0, 0.0, 0.0]]]).astype(np.float32)
    ours = project_velodyne(pts, calib, 2, h, w)
    ref = _monodepth2_reference(pts.astype(np.float64), calib, 2, h, w)
    assert np.allclose(ours, ref, atol=1e-5)
    assert (ours > 0).sum() > 500 and ours.min() == 0.0


# ------------------------------------------------------------------------------------------------ splits
@pytest.mark.shared
def test_split_files_of_both_forms() -> None:
    splits = require_shared("data", "splits", "kitti")
    eigen = read_kitti_split(splits / "eigen" / "test_files.txt")
    deepv2d = read_kitti_split(splits / "deepv2d_test_files_eigen.txt")
    assert len(eigen) == 697 and eigen == deepv2d  # SOURCE.md: the same 697 frames
    assert eigen[0].drive == "2011_09_26/2011_09_26_drive_0002_sync"
    assert (eigen[0].frame_index, eigen[0].camera, eigen[0].date) == (69, 2, "2011_09_26")
    bench = read_kitti_split(splits / "eigen_benchmark" / "test_files.txt")
    assert len(bench) == 652 and bench[0] == eigen[0]
    val = read_kitti_split(splits / "eigen_zhou" / "val_files.txt")
    assert len(val) == 4424 and val[0].camera == 3 and val[0].frame_index == 82
    assert {e.camera for e in val} == {2, 3}
    tiny = read_kitti_split(require_shared("data", "kitti_tiny", "kitti_tiny.txt"))
    assert [e.frame_index for e in tiny] == [1, 2, 3, 4, 5]
    assert tiny[0].image_path("/kitti").as_posix() == (
        "/kitti/2011_09_26/2011_09_26_drive_0023_sync/image_02/data/0000000001.png"
    )


def test_split_line_errors(tmp_path) -> None:
    entry = parse_kitti_split_line("/abs/prefix/2011_10_03/2011_10_03_drive_0034_sync/image_03/data/0000000012.png")
    assert (entry.drive, entry.frame_index, entry.camera) == ("2011_10_03/2011_10_03_drive_0034_sync", 12, 3)
    with pytest.raises(InputError, match="camera side"):
        parse_kitti_split_line("2011_09_26/2011_09_26_drive_0002_sync 69 x")
    bad = tmp_path / "split.txt"
    bad.write_text("2011_09_26/2011_09_26_drive_0002_sync 69 l\nnot a split line\n")
    with pytest.raises(InputError, match=r"split\.txt:2: not a KITTI split line"):
        read_kitti_split(bad)


# ---------------------------------------------------------------------------------------------- writer
def _frames(n: int = 4, h: int = 120, w: int = 160, seed: int = 0) -> list[Frame]:
    rng = np.random.default_rng(seed)
    K = np.array([[95.0, 0, 79.3], [0, 94.0, 58.7], [0, 0, 1]])
    yy, xx = np.mgrid[0:h, 0:w]
    frames = []
    T = np.eye(4)
    T[:3, :3] = Rotation.from_rotvec(rng.normal(0, 0.3, 3)).as_matrix()
    T[:3, 3] = rng.uniform(-50, 50, 3)
    for i in range(n):
        step = np.eye(4)
        step[:3, :3] = Rotation.from_rotvec(rng.normal(0, 0.02, 3)).as_matrix()
        step[:3, 3] = [rng.normal(0, 0.05), rng.normal(0, 0.02), 0.9]
        T = T @ step
        depth = (4.0 + 30.0 * (yy / h) ** 2 + 3.0 * np.sin(xx / 9.0 + i)).astype(np.float32)
        depth[rng.uniform(size=depth.shape) < 0.1] = 0.0
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        frames.append(Frame(image, K.copy(), depth, T.copy(), timestamp=1.3e9 + 0.1037 * i, name=f"f{i}"))
    return frames


def test_writer_round_trip(tmp_path) -> None:
    frames = _frames()
    h, w = frames[0].height, frames[0].width
    calib = _test_calib(frames[0].K, w, h)
    drive_dir = write_kitti_drive(frames, tmp_path, drive_number=7, calib=calib)
    assert drive_dir.name.endswith("_drive_0007_sync") and (drive_dir / "velodyne_points" / "data").is_dir()
    back_calib = read_kitti_calib(drive_dir.parent)
    for cam in range(4):
        assert np.allclose(back_calib.T_cam_from_imu(cam), calib.T_cam_from_imu(cam), atol=1e-12)
    T0_inv = invert_rigid(frames[0].T_world_from_cam)
    for source in ("velodyne", "proj_depth", "groundtruth"):
        back = list(KittiDrive(drive_dir, depth=source))
        assert len(back) == len(frames)
        for src, got in zip(frames, back):
            assert np.array_equal(got.image, src.image)
            assert np.allclose(got.K, src.K, atol=1e-12)
            assert got.timestamp == pytest.approx(src.timestamp, abs=1e-6)
            assert np.allclose(got.T_world_from_cam, T0_inv @ src.T_world_from_cam, atol=1e-6)
            has = got.depth > 0
            if source == "groundtruth":
                assert np.array_equal(has, src.depth > 0)
                assert np.abs(got.depth - src.depth)[has].max() <= 0.5 / 256 + 1e-6
            else:
                # A sparse scan of 64 rows: where a point exists it carries the source depth exactly.
                assert 60 <= len(np.unique(np.nonzero(has)[0])) <= 64
                assert has.sum() > 0.8 * (src.depth[np.unique(np.nonzero(has)[0])] > 0).sum()
                assert np.allclose(got.depth[has], src.depth[has], rtol=1e-5)
    scan = read_velodyne_bin(drive_dir / "velodyne_points" / "data" / "0000000000.bin")
    assert scan.dtype == np.float32 and scan.shape[1] == 4 and np.all(scan[:, 0] > 0)
    assert 0.0 <= scan[:, 3].min() and scan[:, 3].max() <= 1.0


def test_writer_oxts_world_and_nominal_rig(tmp_path) -> None:
    frames = _frames(n=3, seed=1)
    drive_dir = write_kitti_drive(frames, tmp_path)  # nominal rig around the frames' K
    assert drive_dir.parent.name == "2011_03_13"  # date of the frames' timestamps (UTC)
    drive = KittiDrive(drive_dir, world="oxts", depth="none")
    T_cam_from_imu = drive.calib.T_cam_from_imu(2)
    T_ref = invert_rigid(frames[0].T_world_from_cam @ T_cam_from_imu)  # world of the first IMU
    for src, got in zip(frames, drive):
        assert got.depth is None
        assert np.allclose(got.T_world_from_cam, T_ref @ src.T_world_from_cam, atol=1e-6)


@settings(max_examples=60, deadline=None)
@given(
    st.floats(-np.pi, np.pi), st.floats(-np.pi / 2, np.pi / 2), st.floats(-np.pi, np.pi),
    st.floats(-5e4, 5e4), st.floats(-5e4, 5e4), st.floats(-100, 3000), st.floats(-80, 80),
)
def test_oxts_pose_conversion_inverts(roll, pitch, yaw, x, y, z, lat0) -> None:
    scale = mercator_scale(lat0)
    T = np.eye(4)
    T[:3, :3] = Rotation.from_euler("ZYX", [yaw, pitch, roll]).as_matrix()
    T[:3, 3] = [x, y, z]
    back = oxts_to_pose(pose_to_oxts(T, scale), scale)
    assert np.allclose(back, T, atol=1e-7)


# ---------------------------------------------------------------------------------------------- errors
def test_bad_input_errors(tmp_path) -> None:
    frames = _frames(n=2)
    drive_dir = write_kitti_drive(frames, tmp_path / "ok")
    # Depth/colour size mismatch in a proj_depth npz.
    npz = drive_dir / "proj_depth" / "velodyne" / "image_02" / "0000000001.npz"
    np.savez(npz, velodyne_depth=np.zeros((10, 10), np.float32))
    with pytest.raises(InputError, match=r"0000000001\.npz: depth is 10x10 but the image is 160x120"):
        list(KittiDrive(drive_dir, depth="proj_depth"))
    # Unreadable image.
    (drive_dir / "image_02" / "data" / "0000000001.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(InputError, match=r"0000000001\.png: cannot decode image"):
        list(KittiDrive(drive_dir, depth="none"))
    # Missing OXTS packet for a frame.
    (drive_dir / "oxts" / "data" / "0000000001.txt").unlink()
    with pytest.raises(InputError, match=r"0000000001\.txt: OXTS file missing"):
        KittiDrive(drive_dir)
    # Non-rigid Velodyne calibration.
    velo = drive_dir.parent / "calib_velo_to_cam.txt"
    velo.write_text("R: 2 0 0 0 1 0 0 0 1\nT: 0 0 0\n")
    with pytest.raises(InputError, match=r"calib_velo_to_cam\.txt: pose is not rigid"):
        read_kitti_calib(drive_dir.parent)
    # Missing calibration.
    (drive_dir.parent / "calib_cam_to_cam.txt").unlink()
    with pytest.raises(InputError, match=r"calib_cam_to_cam\.txt: missing calibration file"):
        KittiDrive(drive_dir)
    # Image size that contradicts S_rect.
    other = write_kitti_drive(_frames(n=1), tmp_path / "size")
    Image.new("RGB", (20, 10)).save(other / "image_02" / "data" / "0000000000.png")
    with pytest.raises(InputError, match="S_rect_02"):
        list(KittiDrive(other))
    # Writer: a frame without pose, and changing intrinsics.
    no_pose = _frames(n=2)
    no_pose[1].T_world_from_cam = None
    with pytest.raises(InputError, match=r"frame 1 \(f1\): has no pose"):
        write_kitti_drive(no_pose, tmp_path / "w1")
    bad_k = _frames(n=2)
    bad_k[1].K = bad_k[1].K * 1.01
    with pytest.raises(InputError, match="intrinsics differ"):
        write_kitti_drive(bad_k, tmp_path / "w2")
    with pytest.raises(InputError, match="not found"):
        KittiDrive(tmp_path / "nowhere")
    repeated = _frames(n=2)
    repeated[1].timestamp = repeated[0].timestamp
    with pytest.raises(InputError, match="is not after the previous frame's"):
        write_kitti_drive(repeated, tmp_path / "w3")


def test_right_camera_is_found(tmp_path) -> None:
    drive_dir = write_kitti_drive(_frames(n=2), tmp_path, camera=3, velodyne=False, groundtruth=False)
    drive = KittiDrive(drive_dir)
    assert drive.camera == 3 and drive.depth_source == "proj_depth"
    assert np.allclose(next(iter(drive)).T_world_from_cam, np.eye(4), atol=1e-8)


def test_synthesized_scan_uses_64_rows() -> None:
    frame = _frames(n=1, h=300, w=200)[0]
    calib = _test_calib(frame.K, 200, 300)
    scan = synthesize_velodyne_scan(frame.depth, calib, 2, frame.image)
    depth = project_velodyne(scan, calib, 2, 300, 200)
    rows = np.unique(np.nonzero(depth)[0])
    assert len(rows) == 64
    # Elevation-uniform rows are denser near the image centre than near the top and bottom edges.
    gaps = np.diff(rows)
    assert gaps[len(gaps) // 2] < gaps[0] and gaps[len(gaps) // 2] < gaps[-1]
