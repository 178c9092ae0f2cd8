"""The pycolmap baseline: a real KITTI pair against OXTS poses, a rendered sequence against its exact
trajectory, reported registration failures, and input checks."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import require_shared

from dro_sfm.data.images import read_rgb
from dro_sfm.data.kitti import KittiDrive
from dro_sfm.data.synthetic import render_sequence
from dro_sfm.errors import InputError
from dro_sfm.eval.colmap_baseline import ColmapOptions, quiet_colmap_logging, run_colmap
from dro_sfm.eval.pose_metrics import banet_pose_errors
from dro_sfm.eval.trajectory import absolute_trajectory_error, path_length
from dro_sfm.geometry.pose import invert_rigid

# One thread: the mapper's thread scheduling varies from run to run, which the fixed RANSAC seed does not
# remove; with two threads it once registered only 2 of the rendered sequence's 6 frames (session 16).
OPTIONS = ColmapOptions(num_threads=1)


@pytest.fixture(autouse=True, scope="module")
def _quiet() -> None:
    quiet_colmap_logging()


@pytest.mark.shared
def test_kitti_pair_registers_with_accurate_relative_pose() -> None:
    drive_dir = require_shared("data", "kitti_tiny", "2011_09_26", "2011_09_26_drive_0023_sync")
    drive = KittiDrive(drive_dir, camera=2, depth="none")
    images = [read_rgb(drive_dir / "image_02" / "data" / f"{i:010d}.png") for i in (2, 3)]
    result = run_colmap(images, drive.K, names=["target", "ref0"], options=OPTIONS)
    assert result.registered == [True, True] and result.unregistered == [] and result.n_points3d > 50
    T_pred = result.relative_pose("ref0", "target")
    T_gt = invert_rigid(drive.poses[3]) @ drive.poses[2]
    errors = banet_pose_errors(T_gt, T_pred)
    # OXTS is itself accurate to a few centimetres; COLMAP on a 0.9 m forward step does about as well.
    assert errors.rot_deg[0] < 0.3 and errors.tdir_deg[0] < 3.0 and errors.t_cm[0] < 5.0
    assert result.to_dict()["n_registered"] == 2


def test_rendered_sequence_trajectory_after_sim3() -> None:
    frames = list(render_sequence("outdoor", 6, 120, 400, seed=2))
    result = run_colmap([f.image for f in frames], frames[0].K, options=OPTIONS)
    names = [n for n, ok in zip(result.names, result.registered) if ok]
    assert len(names) >= 4, result.to_dict()
    idx = [result.names.index(n) for n in names]
    T_gt = np.stack([frames[i].T_world_from_cam for i in idx])
    T_est = np.stack([result.pose(n) for n in names])
    ate = absolute_trajectory_error(T_gt, T_est, align="sim3")
    assert ate.stats["rmse"] < 0.05 * path_length(T_gt)


def test_textureless_images_are_reported_unregistered() -> None:
    flat = [np.full((60, 80, 3), 128, np.uint8) for _ in range(3)]
    result = run_colmap(flat, np.array([[60.0, 0, 40], [0, 60.0, 30], [0, 0, 1]]), names=["a", "b", "c"],
                        options=OPTIONS)
    assert result.n_registered == 0 and result.unregistered == ["a", "b", "c"]
    assert result.pose("a") is None and result.relative_pose("b", "a") is None
    assert "no initial image pair" in result.message


def test_input_checks() -> None:
    K = np.eye(3)
    image = np.zeros((20, 20, 3), np.uint8)
    with pytest.raises(InputError, match="at least two"):
        run_colmap([image], K)
    with pytest.raises(InputError, match="one image size"):
        run_colmap([image, np.zeros((10, 20, 3), np.uint8)], K)
    with pytest.raises(InputError, match="unique name"):
        run_colmap([image, image], K, names=["x", "x"])
    with pytest.raises(InputError, match="positive focal"):
        run_colmap([image, image], -K)
