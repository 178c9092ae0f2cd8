"""Trajectory readers/writers on the real files in ../shared/data/trajectories and on written files."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import require_shared
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

from dro_sfm.data.trajectory import (
    Trajectory,
    read_euroc_groundtruth,
    read_kitti_times,
    read_kitti_trajectory,
    read_trajectory,
    read_tum_trajectory,
    write_kitti_trajectory,
    write_tum_trajectory,
)
from dro_sfm.errors import InputError


def _traj_dir():
    return require_shared("data", "trajectories")


def _assert_valid(traj: Trajectory, count: int, timed: bool) -> None:
    assert len(traj) == count
    R = traj.poses[:, :3, :3]
    assert np.abs(R @ np.swapaxes(R, 1, 2) - np.eye(3)).max() < 1e-4
    assert np.allclose(np.linalg.det(R), 1.0, atol=1e-4)
    assert np.all(traj.poses[:, 3] == [0, 0, 0, 1])
    if timed:
        assert traj.timestamps is not None and len(traj.timestamps) == count
        assert np.all(np.diff(traj.timestamps) >= 0)
    else:
        assert traj.timestamps is None


@pytest.mark.shared
@pytest.mark.parametrize(
    ("name", "count", "timed"),
    [
        ("KITTI_00_gt.txt", 4541, False),
        ("KITTI_00_ORB.txt", 4541, False),
        ("freiburg1_xyz-groundtruth.txt", 3000, True),
        ("freiburg1_xyz-rgbdslam.txt", 788, True),
        ("fr2_desk_groundtruth.txt", 20957, True),
        ("fr2_desk_ORB.txt", 2893, True),
        ("V102_groundtruth.csv", 16702, True),
        ("V102.txt", 807, True),
    ],
)
def test_every_shared_trajectory_parses(name: str, count: int, timed: bool) -> None:
    _assert_valid(read_trajectory(_traj_dir() / name), count, timed)


@pytest.mark.shared
def test_kitti_odometry_known_values() -> None:
    d = _traj_dir()
    traj = read_kitti_trajectory(d / "KITTI_00_gt.txt", d / "KITTI_00_gt_times.txt")
    # Second line of poses/00.txt, read off the file.
    assert np.allclose(traj.poses[1, :3, 3], [-4.690294e-02, -2.839928e-02, 8.586941e-01])
    assert traj.poses[1, 0, 1] == pytest.approx(5.272628e-04)
    assert traj.timestamps[1] == pytest.approx(1.037359e-01)
    assert len(read_kitti_times(d / "KITTI_00_gt_times.txt")) == 4541
    # Path length quoted in SOURCE.md: 3724 m.
    steps = np.linalg.norm(np.diff(traj.positions, axis=0), axis=1)
    assert steps.sum() == pytest.approx(3724, abs=1.0)


@pytest.mark.shared
@pytest.mark.parametrize(
    ("name", "stamp", "t", "q_xyzw"),
    [
        ("freiburg1_xyz-groundtruth.txt", 1305031098.6659, [1.3563, 0.6305, 1.6380],
         [0.6132, 0.5962, -0.3311, -0.3986]),
        ("fr2_desk_groundtruth.txt", 1311868163.8697, [-0.1357, -1.4217, 1.4764],
         [0.6453, -0.5498, 0.3363, -0.4101]),
    ],
)
def test_tum_known_first_pose(name: str, stamp: float, t: list, q_xyzw: list) -> None:
    traj = read_tum_trajectory(_traj_dir() / name)
    assert traj.timestamps[0] == pytest.approx(stamp, abs=1e-6)
    assert np.allclose(traj.poses[0, :3, 3], t)
    # scipy takes (x, y, z, w): an independent check of the TUM column order.
    assert np.allclose(traj.poses[0, :3, :3], Rotation.from_quat(q_xyzw).as_matrix(), atol=1e-6)


@pytest.mark.shared
def test_euroc_known_first_pose() -> None:
    traj = read_euroc_groundtruth(_traj_dir() / "V102_groundtruth.csv")
    assert traj.timestamps[0] == pytest.approx(1403715524.907143168, abs=1e-6)
    # float64 seconds near 1.4e9 resolve 2.4e-7 s; the file says 4999936 ns.
    assert traj.timestamps[1] - traj.timestamps[0] == pytest.approx(0.004999936, abs=5e-7)
    assert np.allclose(traj.poses[0, :3, 3], [0.515356, 1.996773, 0.971104])
    q_wxyz = [0.161996, 0.789985, -0.205376, 0.554528]
    expected = Rotation.from_quat(q_wxyz[1:] + q_wxyz[:1]).as_matrix()
    assert np.allclose(traj.poses[0, :3, :3], expected, atol=1e-5)


@pytest.mark.shared
def test_real_files_round_trip(tmp_path) -> None:
    d = _traj_dir()
    tum = read_tum_trajectory(d / "freiburg1_xyz-groundtruth.txt")
    write_tum_trajectory(tmp_path / "gt.txt", tum)
    back = read_tum_trajectory(tmp_path / "gt.txt")
    assert np.allclose(back.timestamps, tum.timestamps, atol=1e-6)
    assert np.allclose(back.poses, tum.poses, atol=1e-8)
    kitti = read_kitti_trajectory(d / "KITTI_00_gt.txt")
    write_kitti_trajectory(tmp_path / "00.txt", kitti)
    assert np.allclose(read_kitti_trajectory(tmp_path / "00.txt").poses, kitti.poses, atol=1e-8)


def _random_pose(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    T = np.eye(4)
    T[:3, :3] = Rotation.random(random_state=seed).as_matrix()
    T[:3, 3] = rng.uniform(-100, 100, 3)
    return T


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(0, 2**31 - 1), min_size=1, max_size=6), st.floats(0, 2e9))
def test_written_trajectories_read_back(tmp_path_factory, seeds, t0) -> None:
    tmp = tmp_path_factory.mktemp("traj")
    poses = np.stack([_random_pose(s) for s in seeds])
    traj = Trajectory(poses, t0 + np.arange(len(seeds)) * 0.1)
    back = read_tum_trajectory(write_tum_trajectory(tmp / "t.txt", traj))
    assert np.allclose(back.poses, poses, atol=1e-8)
    back = read_kitti_trajectory(write_kitti_trajectory(tmp / "k.txt", traj, tmp / "times.txt"), tmp / "times.txt")
    assert np.allclose(back.poses, poses, atol=1e-7)


@pytest.mark.parametrize(
    ("text", "reader", "message"),
    [
        ("0 1 0 0 0 1 0 0 0 0 1\n", read_kitti_trajectory, r"bad\.txt:1: expected 12 numbers"),
        ("1 0 0 0 0 1 0 0 0 0 1 0\n2 0 0 0 0 2 0 0 0 0 2 0\n", read_kitti_trajectory, r"bad\.txt:2.*not rigid"),
        ("# header\n1.0 0 0 0 0 0 0 1\n0.5 0 0 0 0 0 0 1\n", read_tum_trajectory, r"bad\.txt:3: timestamp"),
        ("1.0 0 0 0 0 0 0 2\n", read_tum_trajectory, r"bad\.txt:1: quaternion norm"),
        ("1.0 0 0 zero 0 0 0 1\n", read_tum_trajectory, r"bad\.txt:1: not a number"),
        ("1.5,0,0,0,1,0,0,0\n", read_euroc_groundtruth, r"bad\.txt:1: the first column must be an integer"),
        ("# only a comment\n", read_trajectory, "contains no poses"),
    ],
)
def test_bad_files_name_the_file_and_line(tmp_path, text, reader, message) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_text(text)
    with pytest.raises(InputError, match=message):
        reader(bad)


def test_missing_file_and_missing_timestamps_are_reported(tmp_path) -> None:
    with pytest.raises(InputError, match="not found"):
        read_trajectory(tmp_path / "missing.txt")
    with pytest.raises(InputError, match="needs timestamps"):
        write_tum_trajectory(tmp_path / "x.txt", Trajectory(np.eye(4)[None]))
