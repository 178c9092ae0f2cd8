"""Run-directory outputs on a synthetic scene with known geometry: a back wall, a floor and a box, rendered
(depth and texture) by ray casting from known poses. Every export is checked with numbers."""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from dro_sfm.errors import ConfigError, InputError, OutputError
from dro_sfm.geometry.pose import invert_rigid, pose_from_quat_trans
from dro_sfm.recon.export import (
    ColmapObservations,
    RunWriter,
    colmap_intrinsics,
    export_run,
    kitti_lines,
    nerfstudio_transforms,
    observe_points,
    run_fusion_options,
    tum_lines,
    write_colmap_text,
)
from dro_sfm.recon.fusion import (
    FusionOptions,
    TsdfFusion,
    VoxelCloud,
    count_tsdf_blocks,
    fuse_run,
    pack_keys,
    resolve,
    scan_depth_stats,
    valid_mask,
)
from dro_sfm.recon.run_dir import CameraRecord, RunCameras, RunRecord, load_cameras, read_frame

WALL_Z = 4.1  # fronto-parallel wall (off the 0.25 m checker grid so its colour is stable)
FLOOR_Y = 1.05  # floor (y points down)
BOX_MIN, BOX_MAX = np.array([-0.2, 0.45, 2.2]), np.array([0.5, 1.05, 2.8])  # resting on the floor
W, H, F = 128, 96, 100.0


@dataclass
class SyntheticScene:
    """Posed RGB-D frames of the wall/floor/box scene; images [N,H,W,3], depths [N,H,W], poses [N,4,4]."""

    images: np.ndarray
    depths: np.ndarray
    K: np.ndarray
    poses: np.ndarray

    @staticmethod
    def distance_to_surfaces(points: np.ndarray) -> np.ndarray:
        """Unsigned distance [N] from world points [N,3] to the nearest true surface (wall, floor, box)."""
        d_wall = np.abs(points[:, 2] - WALL_Z)
        d_floor = np.abs(points[:, 1] - FLOOR_Y)
        q = np.abs(points - (BOX_MIN + BOX_MAX) / 2) - (BOX_MAX - BOX_MIN) / 2
        outside = np.linalg.norm(np.maximum(q, 0), axis=1)
        d_box = np.abs(outside + np.minimum(q.max(axis=1), 0))
        return np.minimum(np.minimum(d_wall, d_floor), d_box)


def _texture(points: np.ndarray, geometry: np.ndarray) -> np.ndarray:
    """Procedural colour [N,3] uint8: a 0.25 m checkerboard, tinted per surface, with a smooth gradient."""
    checker = (np.floor(points / 0.25).astype(np.int64).sum(axis=1) % 2).astype(np.float64)
    tint = np.array([[0.55, 0.65, 1.0], [0.6, 1.0, 0.55], [1.0, 0.45, 0.35]])[geometry]
    shade = 0.3 + 0.55 * checker + 0.15 * np.clip((points[:, 0] + 2.0) / 4.0, 0.0, 1.0)
    return np.round(np.clip(tint * shade[:, None], 0, 1) * 255).astype(np.uint8)


def make_scene(n_frames: int = 5) -> SyntheticScene:
    """Ray-cast ``n_frames`` views from cameras moving sideways and yawing slightly towards the box."""
    import open3d as o3d

    rc = o3d.t.geometry.RaycastingScene()
    wall = o3d.geometry.TriangleMesh.create_box(12.0, 12.0, 0.01).translate((-6.0, -6.0, WALL_Z))
    floor = o3d.geometry.TriangleMesh.create_box(12.0, 0.01, 12.0).translate((-6.0, FLOOR_Y, -6.0))
    box = o3d.geometry.TriangleMesh.create_box(*(BOX_MAX - BOX_MIN)).translate(BOX_MIN)
    for mesh in (wall, floor, box):
        rc.add_triangles(o3d.t.geometry.TriangleMesh.from_legacy(mesh))
    K = np.array([[F, 0, (W - 1) / 2 + 1.5], [0, F, (H - 1) / 2 - 1.0], [0, 0, 1]])
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    rays_cam = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1).reshape(-1, 3)
    images, depths, poses = [], [], []
    for i in range(n_frames):
        s = i / max(n_frames - 1, 1) - 0.5
        yaw = -0.15 * s
        T = np.eye(4)
        T[:3, :3] = np.array([[np.cos(yaw), 0, np.sin(yaw)], [0, 1, 0], [-np.sin(yaw), 0, np.cos(yaw)]])
        T[:3, 3] = [0.8 * s, -0.1 * abs(s), 0.2 * s]
        dirs = rays_cam @ T[:3, :3].T
        rays = np.concatenate([np.broadcast_to(T[:3, 3], dirs.shape), dirs], axis=1).astype(np.float32)
        hit = rc.cast_rays(o3d.core.Tensor(rays))
        z = hit["t_hit"].numpy().astype(np.float64)  # direction has camera z = 1, so t is the z-depth
        gid = hit["geometry_ids"].numpy().astype(np.int64)
        ok = np.isfinite(z)
        pts = T[:3, 3] + dirs * np.where(ok, z, 0)[:, None]
        rgb = np.zeros((H * W, 3), np.uint8)
        rgb[ok] = _texture(pts[ok], gid[ok])
        images.append(rgb.reshape(H, W, 3))
        depths.append(np.where(ok, z, 0).reshape(H, W).astype(np.float32))
        poses.append(T)
    return SyntheticScene(np.stack(images), np.stack(depths), K, np.stack(poses))


def write_run(out: Path, scene: SyntheticScene, poses: np.ndarray | None = None, **finalize_kw) -> dict:
    """Stream the scene through RunWriter (with given pose estimates) and finalize with the true poses."""
    writer = RunWriter(out)
    given = scene.poses if poses is None else poses
    for i in range(len(scene.images)):
        conf = np.ones((H, W), np.float32)
        conf[:, :4] = 0.1  # a low-confidence band that must not reach the cloud or mesh
        writer.add_frame(i, scene.images[i], scene.depths[i], conf, scene.K, given[i], timestamp=100.0 + 0.5 * i)
    return writer.finalize(poses=list(scene.poses), cost_curve=np.array([[4.0, 2.0, 1.2, 1.0]] * 3)).to_dict()


@pytest.fixture(scope="module")
def scene() -> SyntheticScene:
    return make_scene()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, scene) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("run")
    # The writer sees perturbed poses first; finalize gets the "refined" (true) ones, which must win.
    noisy = scene.poses.copy()
    noisy[:, :3, 3] += 0.3
    report = write_run(out, scene, noisy)
    return out, report


def _project(K: np.ndarray, T_cam_from_world: np.ndarray, X: np.ndarray) -> np.ndarray:
    c = T_cam_from_world[:3, :3] @ X + T_cam_from_world[:3, 3]
    return (K @ (c / c[2]))[:2]


def _known_point(scene: SyntheticScene, i: int, u: int, v: int) -> np.ndarray:
    """World point seen at integer pixel (u, v) of frame i, from the true depth."""
    z = scene.depths[i, v, u]
    c = np.array([(u - scene.K[0, 2]) / F * z, (v - scene.K[1, 2]) / F * z, z])
    return scene.poses[i][:3, :3] @ c + scene.poses[i][:3, 3]


def test_layout_and_per_frame_files(run_dir, scene):
    out, report = run_dir
    for sub in ("images", "depth", "depth_vis", "confidence"):
        assert len(list((out / sub).glob("*.png"))) == len(scene.images), sub
    np.testing.assert_array_equal(np.asarray(Image.open(out / "images/000002.png")), scene.images[2])
    np.testing.assert_array_equal(np.load(out / "depth/000002.npy"), scene.depths[2])
    cams = json.loads((out / "cameras.json").read_text())
    assert cams["depth_png_scale"] == pytest.approx(0.001)  # max depth ~5 m: millimetres
    png = np.asarray(Image.open(out / "depth/000002.png"))
    assert png.dtype == np.uint16
    np.testing.assert_allclose(png * cams["depth_png_scale"], scene.depths[2], atol=0.0006)
    vis = np.asarray(Image.open(out / "depth_vis/000002.png"))
    assert vis.shape == (H, W, 3) and vis.std() > 10
    conf = np.load(out / "confidence/000001.npy")
    assert conf.dtype == np.float32 and conf.min() >= 0 and conf.max() <= 1
    assert (out / "summary.png").stat().st_size > 10_000
    assert set(report["paths"]) >= {"pointcloud", "mesh", "colmap", "nerfstudio", "summary", "poses_tum"}


def test_point_cloud_lies_on_the_surfaces(run_dir, scene):
    import open3d as o3d

    out, report = run_dir
    pcd = o3d.io.read_point_cloud(str(out / "pointcloud.ply"))
    pts = np.asarray(pcd.points)
    assert len(pts) == report["counts"]["points"] > 1000
    voxel = report["fusion"]["cloud_voxel_size"]
    dist = scene.distance_to_surfaces(pts)
    # Voxel means of points on a plane stay on it; at box edges they can be up to ~voxel/2 off.
    assert np.median(dist) < 0.01 and np.percentile(dist, 99) < voxel
    assert pcd.has_colors()
    # Voxel down-sampling: no two points share a voxel.
    keys = np.floor(pts / voxel).astype(np.int64)
    assert len(np.unique(keys, axis=0)) == len(pts)


def test_confidence_filter_removes_points(tmp_path, scene):
    strict = RunWriter(tmp_path / "strict", options=FusionOptions(conf_threshold=0.5, voxel_size=0.05))
    loose = RunWriter(tmp_path / "loose", options=FusionOptions(conf_threshold=0.0, voxel_size=0.05))
    conf = np.ones((H, W), np.float32)
    conf[:, : W // 2] = 0.2
    for w in (strict, loose):
        w.add_frame(0, scene.images[0], scene.depths[0], conf, scene.K, scene.poses[0])
    n_strict = strict.finalize(targets=["ply"]).counts["points"]
    n_loose = loose.finalize(targets=["ply"]).counts["points"]
    assert 0.3 * n_loose < n_strict < 0.7 * n_loose
    # A re-export uses the options the run was written with, unless told otherwise.
    again = export_run(tmp_path / "loose", ["ply"])
    assert again.fusion["conf_threshold"] == 0.0 and again.fusion["voxel_size"] == 0.05
    assert again.counts["points"] == n_loose
    override = run_fusion_options(load_cameras(tmp_path / "loose"), conf_threshold=0.5)
    assert override.voxel_size == 0.05
    assert export_run(tmp_path / "loose", ["ply"], override).counts["points"] == n_strict


def test_mesh_is_near_the_surfaces(run_dir, scene):
    import open3d as o3d

    out, report = run_dir
    mesh = o3d.io.read_triangle_mesh(str(out / "mesh.ply"))
    assert len(mesh.triangles) > 500 and mesh.has_vertex_colors()
    dist = scene.distance_to_surfaces(np.asarray(mesh.vertices))
    voxel = report["fusion"]["voxel_size"]
    assert np.median(dist) < 0.25 * voxel and np.percentile(dist, 95) < voxel


def test_tum_and_kitti_poses_reproject(run_dir, scene):
    out, _ = run_dir
    tum = np.loadtxt(out / "poses_tum.txt", comments="#")
    kitti = np.loadtxt(out / "poses_kitti.txt")
    assert tum.shape == (5, 8) and kitti.shape == (5, 12)
    np.testing.assert_allclose(tum[:, 0], 100.0 + 0.5 * np.arange(5))
    for i, (u, v) in enumerate([(10, 20), (100, 80), (64, 50), (30, 70), (120, 5)]):
        X = _known_point(scene, i, u, v)
        T_tum = pose_from_quat_trans(tum[i, [7, 4, 5, 6]], tum[i, 1:4])  # qw qx qy qz
        T_kitti = np.vstack([kitti[i].reshape(3, 4), [0, 0, 0, 1]])
        for T in (T_tum, T_kitti):
            np.testing.assert_allclose(_project(scene.K, invert_rigid(T), X), [u, v], atol=1e-3)


def test_colmap_model_loads_and_reprojects(run_dir, scene):
    import pycolmap

    out, report = run_dir
    rec = pycolmap.Reconstruction(str(out / "colmap"))
    assert rec.num_images() == 5 and rec.num_cameras() == 1
    assert rec.num_points3D() == report["counts"]["points"]
    assert rec.compute_num_observations() == report["counts"]["colmap_observations"] > 1000
    # Nearly every point is observed (its own frames see it at its depth).
    assert sum(p.track.length() == 0 for p in rec.points3D.values()) < 0.05 * rec.num_points3D()
    cam = rec.cameras[1]
    assert cam.model.name == "PINHOLE" and (cam.width, cam.height) == (W, H)
    for image_id, img in rec.images.items():
        i = int(img.name.split(".")[0])
        assert image_id == i + 1
        # COLMAP: x_cam = R(q) X + t, pixel centres at +0.5.
        Rt = img.cam_from_world().matrix()
        K_colmap = cam.calibration_matrix()
        u, v = 40 + 10 * i, 30 + 5 * i
        X = _known_point(scene, i, u, v)
        np.testing.assert_allclose(_project(K_colmap, np.vstack([Rt, [0, 0, 0, 1]]), X), [u + 0.5, v + 0.5],
                                   atol=1e-3)
        # Every 2-D observation is the projection of its 3-D point.
        for p2d in img.points2D[:50]:
            P = rec.points3D[p2d.point3D_id].xyz
            np.testing.assert_allclose(_project(K_colmap, np.vstack([Rt, [0, 0, 0, 1]]), P), p2d.xy, atol=2e-3)


def test_nerfstudio_transforms_reproject(run_dir, scene):
    out, _ = run_dir
    doc = json.loads((out / "transforms.json").read_text())
    assert (doc["w"], doc["h"]) == (W, H) and doc["ply_file_path"] == "pointcloud.ply"
    assert doc["depth_unit_scale_factor"] == pytest.approx(0.001)
    for i, fr in enumerate(doc["frames"]):
        assert (out / fr["file_path"]).exists() and (out / fr["depth_file_path"]).exists()
        c2w_gl = np.array(fr["transform_matrix"])
        u, v = 90 - 7 * i, 60
        X = _known_point(scene, i, u, v)
        # nerfstudio camera: x right, y up, looking down -z; pixel centres at +0.5.
        c = invert_rigid(c2w_gl) @ np.append(X, 1.0)
        assert c[2] < 0
        px = doc["fl_x"] * c[0] / -c[2] + doc["cx"]
        py = doc["fl_y"] * -c[1] / -c[2] + doc["cy"]
        np.testing.assert_allclose([px, py], [u + 0.5, v + 0.5], atol=1e-3)


def test_refined_poses_replace_the_streamed_ones(run_dir, scene):
    out, _ = run_dir
    cams = load_cameras(out)
    np.testing.assert_allclose(cams.poses(), scene.poses, atol=1e-12)


def _read_colmap_tracks(model_dir: Path) -> tuple[dict[int, list[tuple[float, float, int]]],
                                                   dict[int, list[tuple[int, int]]], dict[int, list[float]]]:
    """Plain parse of a COLMAP text model: POINTS2D per image id, TRACK per point id, and X Y Z R G B ERROR."""
    img_lines = [ln for ln in (model_dir / "images.txt").read_text().split("\n")[:-1] if not ln.startswith("#")]
    assert len(img_lines) % 2 == 0
    images = {}
    for head, obs in zip(img_lines[::2], img_lines[1::2]):
        v = obs.split(" ") if obs else []  # single spaces, as COLMAP's reader expects
        images[int(head.split(" ")[0])] = [(float(v[k]), float(v[k + 1]), int(v[k + 2])) for k in range(0, len(v), 3)]
    tracks, heads = {}, {}
    for ln in (model_dir / "points3D.txt").read_text().split("\n")[:-1]:
        if ln.startswith("#"):
            continue
        v = ln.split(" ")
        heads[int(v[0])] = [float(x) for x in v[1:8]]
        tracks[int(v[0])] = [(int(v[k]), int(v[k + 1])) for k in range(8, len(v), 2)]
    return images, tracks, heads


def _assert_tracks_consistent(images: dict, tracks: dict) -> None:
    """Every track element names an observation of that point, and every observation is in its point's track."""
    listed = {(img, idx): pid for pid, track in tracks.items() for img, idx in track}
    assert len(listed) == sum(len(t) for t in tracks.values())  # no (image, idx) twice
    observed = {(img, idx): pid for img, obs in images.items() for idx, (_, _, pid) in enumerate(obs)}
    assert listed == observed


def _write_views(out: Path, scene: SyntheticScene, order: list[int]) -> dict:
    """A run of the scene's views in ``order`` (views may repeat) with only the COLMAP export."""
    writer = RunWriter(out)
    for i, view in enumerate(order):
        writer.add_frame(i, scene.images[view], scene.depths[view], None, scene.K, scene.poses[view])
    return writer.finalize(targets=["colmap"]).to_dict()


def test_colmap_observations_do_not_grow_with_the_frame_count(tmp_path):
    """10 views, then the same 10 views 10 times over: same cloud, the observations stay within the budget of
    twice the points (a per-image floor would give 100 frames ~10x the observations of 10)."""
    import pycolmap

    scene = make_scene(10)
    reports = {n: _write_views(tmp_path / f"n{n}", scene, [i % 10 for i in range(n)]) for n in (10, 100)}
    points = reports[10]["counts"]["points"]
    assert reports[100]["counts"]["points"] == points > 1000
    obs = {n: r["counts"]["colmap_observations"] for n, r in reports.items()}
    assert 1.5 * points < obs[10] <= 2 * points and obs[100] <= 2 * points
    assert obs[100] <= 1.05 * obs[10]
    for n in (10, 100):
        model = tmp_path / f"n{n}" / "colmap"
        images, tracks, _ = _read_colmap_tracks(model)
        assert len(images) == n and len(tracks) == points
        assert sum(len(v) for v in images.values()) == obs[n]
        _assert_tracks_consistent(images, tracks)
        # Spread over the frames, no image gets more than its share of the budget.
        assert max(len(v) for v in images.values()) <= -(-2 * points // n)
        # The frames take the least-observed points first: nearly every point is tracked, typically twice.
        lengths = np.array([len(t) for t in tracks.values()])
        assert np.mean(lengths == 0) < 0.05 and np.median(lengths) == 2
        rec = pycolmap.Reconstruction(str(model))
        assert rec.num_images() == n and rec.compute_num_observations() == obs[n]


def test_observation_budget_is_spread_over_the_frames(run_dir):
    out, _ = run_dir
    cameras = load_cameras(out)
    fused = fuse_run(out, cameras, run_fusion_options(cameras), mesh=False)
    obs = observe_points(out, cameras, fused.points, fused.params, max_observations=1000)
    assert [len(i) for i in obs.point_index] == [200] * 5 and obs.count == 1000
    assert all(len(np.unique(i)) == len(i) for i in obs.point_index)
    assert observe_points(out, cameras, fused.points, fused.params, max_observations=0).count == 0
    capped = observe_points(out, cameras, fused.points, fused.params, max_per_image=50)
    assert [len(i) for i in capped.point_index] == [50] * 5


def test_colmap_text_chunks_match_a_plain_formatting(tmp_path, monkeypatch):
    """The chunked numpy formatting writes what plain Python formatting would, across chunk boundaries, with
    empty images, untracked points, negative and large coordinates."""
    from dro_sfm.recon import export as export_module

    rng = np.random.default_rng(4)
    n_points, n_frames = 300, 6
    points = rng.normal(0, 50.0, (n_points, 3))
    points[0] = [0.0, -1e-9, 123.456]
    colors = rng.uniform(0, 1, (n_points, 3))
    K = np.array([[300.0, 0, 160.0], [0, 310.0, 120.0], [0, 0, 1]])
    frames = [CameraRecord(i, f"{i:06d}", K, pose_from_quat_trans(np.array([1.0, 0, 0, 0]), rng.normal(size=3)),
                           float(i)) for i in range(n_frames)]
    cameras = RunCameras(width=320, height=240, frames=frames)
    point_index = [np.sort(rng.choice(n_points, k, replace=False)) for k in (0, 250, 7, 1, 120, 0)]
    xy = [rng.uniform(0, 320, (len(i), 2)) for i in point_index]
    observations = ColmapObservations(xy=xy, point_index=point_index)
    monkeypatch.setattr(export_module, "_OBS_CHUNK", 16)
    monkeypatch.setattr(export_module, "_POINT_CHUNK", 7)
    write_colmap_text(tmp_path, cameras, points, colors, observations)
    images, tracks, heads = _read_colmap_tracks(tmp_path)
    assert list(images) == list(range(1, n_frames + 1)) and list(tracks) == list(range(1, n_points + 1))
    for i, (pix, idx) in enumerate(zip(xy, point_index)):
        got = np.array(images[i + 1]).reshape(-1, 3)
        np.testing.assert_allclose(got[:, :2], pix, atol=5e-4 + 1e-9)
        np.testing.assert_array_equal(got[:, 2], idx + 1)
    expected_tracks = {j + 1: [] for j in range(n_points)}
    for i, idx in enumerate(point_index):
        for k, p in enumerate(idx):
            expected_tracks[p + 1].append((i + 1, k))
    assert tracks == expected_tracks
    head = np.array([heads[j + 1] for j in range(n_points)])
    # 9 significant digits of the largest coordinate, like %.9g there.
    np.testing.assert_allclose(head[:, :3], points, rtol=0, atol=np.abs(points).max() * 1e-8)
    np.testing.assert_array_equal(head[:, 3:6], np.round(colors * 255))
    assert np.all(head[:, 6] == 0)
    assert not re.search(r"(^| )-0\.0+( |$)", (tmp_path / "points3D.txt").read_text(), re.M)  # no "-0.000"
    write_colmap_text(tmp_path / "no_tracks", cameras, points, colors, None)
    images, tracks, _ = _read_colmap_tracks(tmp_path / "no_tracks")
    assert len(images) == n_frames and not any(images.values())
    assert len(tracks) == n_points and not any(tracks.values())


def test_export_redoes_outputs_from_the_run_dir(run_dir, tmp_path):
    import shutil

    import pycolmap

    src, report = run_dir
    copy = tmp_path / "copy"
    shutil.copytree(src, copy)
    for name in ("pointcloud.ply", "mesh.ply", "transforms.json"):
        (copy / name).unlink()
    shutil.rmtree(copy / "colmap")
    new = export_run(copy, ["ply,mesh", "colmap", "nerfstudio"])
    assert new.counts["points"] == report["counts"]["points"]
    assert new.counts["mesh_triangles"] == report["counts"]["mesh_triangles"]
    assert pycolmap.Reconstruction(str(copy / "colmap")).num_images() == 5
    assert json.loads((copy / "transforms.json").read_text()) == json.loads((src / "transforms.json").read_text())
    with pytest.raises(ConfigError, match="unknown export target"):
        export_run(copy, ["obj"])


def test_cli_export(run_dir, tmp_path):
    import shutil

    from click.testing import CliRunner

    from dro_sfm.cli import main

    src, _ = run_dir
    copy = tmp_path / "copy"
    shutil.copytree(src, copy)
    (copy / "pointcloud.ply").unlink()
    result = CliRunner().invoke(main, ["export", str(copy), "--to", "ply", "--voxel-size", "0.1"])
    assert result.exit_code == 0, result.output
    assert (copy / "pointcloud.ply").exists() and "pointcloud" in result.output
    result = CliRunner().invoke(main, ["export", str(tmp_path / "nothing"), "--to", "ply"])
    assert result.exit_code == 1 and "does not exist" in result.output


def test_outdoor_depth_uses_kitti_png_scale(tmp_path, scene):
    writer = RunWriter(tmp_path / "far", options=FusionOptions(voxel_size=0.5))
    depth = scene.depths[0] * 30.0  # up to ~150 m
    writer.add_frame(0, scene.images[0], depth, None, scene.K, scene.poses[0])
    writer.finalize(targets=["ply"])
    cams = json.loads((tmp_path / "far/cameras.json").read_text())
    assert cams["depth_png_scale"] == pytest.approx(1 / 256) and cams["has_confidence"] is False
    png = np.asarray(Image.open(tmp_path / "far/depth/000000.png")).astype(np.float64)
    np.testing.assert_allclose(png / 256.0, depth, atol=1 / 512 + 1e-6)


def test_voxel_cloud_equals_one_shot_downsampling():
    rng = np.random.default_rng(1)
    pts = rng.uniform(-1, 1, (3000, 3))
    cols = rng.uniform(0, 1, (3000, 3))
    acc = VoxelCloud(0.25)
    for chunk in np.array_split(np.arange(3000), 7):
        acc.add(pts[chunk], cols[chunk])
    keys = np.floor(pts / 0.25).astype(np.int64)
    uniq, inv = np.unique(keys, axis=0, return_inverse=True)
    inv = inv.reshape(-1)
    mean = np.stack([np.bincount(inv, pts[:, c]) for c in range(3)], 1) / np.bincount(inv)[:, None]
    assert len(acc) == len(uniq)
    order = np.lexsort(mean.T)
    np.testing.assert_allclose(acc.points()[np.lexsort(acc.points().T)], mean[order], atol=1e-12)
    assert acc.counts().sum() == 3000


def _fuse_tsdf(root: Path, tsdf: TsdfFusion, conf_threshold: float) -> None:
    """Integrate every frame of a run directory the way ``fuse_run`` does."""
    cameras = load_cameras(root)
    for rec in cameras.frames:
        frame = read_frame(root, cameras, rec)
        mask = valid_mask(frame.depth, frame.confidence, conf_threshold, tsdf.depth_max)
        tsdf.integrate(np.where(mask, frame.depth, 0.0).astype(np.float32), frame.image, rec.K, rec.T_world_from_cam)


def test_presized_compact_tsdf_gives_the_mesh_of_a_growing_one(run_dir):
    out, _ = run_dir
    cameras = load_cameras(out)
    options = run_fusion_options(cameras)
    params = resolve(options, scan_depth_stats(out, cameras, options.conf_threshold), len(cameras.frames))
    total, largest = count_tsdf_blocks(out, cameras, params)
    assert 0 < largest <= total
    # The old way: float32 attributes, a small map that doubles as blocks arrive.
    growing = TsdfFusion(params.voxel_size, params.depth_max, params.trunc_voxels, block_count=16)
    sized = TsdfFusion(params.voxel_size, params.depth_max, params.trunc_voxels, block_count=total + largest,
                       max_frames=len(cameras.frames))
    assert sized.compact and not growing.compact
    for tsdf in (growing, sized):
        _fuse_tsdf(out, tsdf, params.conf_threshold)
    assert growing.capacity > 16  # it did rehash
    assert sized.capacity == total + largest  # it never did
    assert growing.blocks == sized.blocks == total  # the count pass predicts the grid exactly
    a, b = (t.extract_mesh(params.mesh_weight_threshold) for t in (growing, sized))
    assert len(a.triangles) == len(b.triangles) > 1000
    va, vb = np.asarray(a.vertices), np.asarray(b.vertices)
    oa, ob = np.lexsort(va.T), np.lexsort(vb.T)
    np.testing.assert_array_equal(va[oa], vb[ob])  # uint16 weights count frames exactly: same TSDF
    np.testing.assert_allclose(np.asarray(a.vertex_normals)[oa], np.asarray(b.vertex_normals)[ob], atol=1e-6)
    ca, cb = np.asarray(a.vertex_colors)[oa], np.asarray(b.vertex_colors)[ob]
    assert cb.min() >= 0.0 and cb.max() <= 1.0 and cb.max() > 0.5
    np.testing.assert_allclose(ca, cb, atol=1e-4)  # colour means kept in 1/65025 steps


def test_fuse_run_sizes_the_tsdf_once(run_dir, caplog):
    out, _ = run_dir
    cameras = load_cameras(out)
    with caplog.at_level(logging.INFO, logger="dro_sfm.recon.fusion"):
        fused = fuse_run(out, cameras, run_fusion_options(cameras), cloud=False)
    assert any("hash map sized for" in r.getMessage() for r in caplog.records)
    assert not any("grew" in r.getMessage() for r in caplog.records)
    assert len(fused.mesh.triangles) > 1000 and len(fused.points) == 0


def test_compact_tsdf_refuses_to_wrap_its_weights(monkeypatch, scene):
    import dro_sfm.recon.fusion as fusion

    monkeypatch.setattr(fusion, "_UINT16_MAX_FRAMES", 3)
    assert not TsdfFusion(0.05, 5.0, max_frames=3).compact and not TsdfFusion(0.05, 5.0).compact
    tsdf = TsdfFusion(0.05, 5.0, max_frames=2)
    assert tsdf.compact
    for i in range(2):
        tsdf.integrate(scene.depths[i], scene.images[i], scene.K, scene.poses[i])
    with pytest.raises(ConfigError, match="uint16"):
        tsdf.integrate(scene.depths[2], scene.images[2], scene.K, scene.poses[2])
    with pytest.raises(ConfigError):
        TsdfFusion(0.05, 5.0, block_count=0)


def test_pack_keys_is_injective_within_range():
    rng = np.random.default_rng(3)
    grid = np.concatenate([rng.integers(-(1 << 20) + 1, 1 << 20, (5000, 3)),
                           [[-(1 << 20) + 1, 0, 0], [0, (1 << 20) - 1, 0], [0, 0, -1]]])
    keys = pack_keys(grid)
    assert keys is not None and np.unique(keys).size == np.unique(grid, axis=0).shape[0]
    assert pack_keys(np.array([[1 << 20, 0, 0]])) is None


def test_bad_output_dirs(tmp_path, scene):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(OutputError, match="is a file"):
        RunWriter(a_file)
    with pytest.raises(OutputError, match="parent path is a file"):
        RunWriter(a_file / "run")
    with pytest.raises(OutputError):
        RunWriter("/proc/dro_sfm_cannot_write_here")  # not writable even for root
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        with pytest.raises(OutputError, match="not writable"):
            RunWriter(ro)
    done = tmp_path / "done"
    w = RunWriter(done)
    w.add_frame(0, scene.images[0], scene.depths[0], None, scene.K, scene.poses[0])
    w.finalize(targets=["poses"])
    with pytest.raises(OutputError, match="already contains a dro-sfm run"):
        RunWriter(done)
    RunWriter(done, overwrite=True)
    assert not list((done / "depth").glob("*.npy"))


def test_bad_frames_are_input_errors(tmp_path, scene):
    w = RunWriter(tmp_path / "r")
    with pytest.raises(InputError, match="depth shape"):
        w.add_frame(0, scene.images[0], scene.depths[0][:10], None, scene.K, scene.poses[0])
    bad_pose = scene.poses[0].copy()
    bad_pose[:3, :3] *= 2
    with pytest.raises(InputError, match="not rigid"):
        w.add_frame(0, scene.images[0], scene.depths[0], None, scene.K, bad_pose)
    w.add_frame(0, scene.images[0], scene.depths[0], None, scene.K, scene.poses[0])
    with pytest.raises(InputError, match="added twice"):
        w.add_frame(0, scene.images[0], scene.depths[0], None, scene.K, scene.poses[0])
    with pytest.raises(OutputError, match="no frames"):
        RunWriter(tmp_path / "empty").finalize()


def test_run_record_writes_run_json(tmp_path):
    rec = RunRecord(inputs={"images": "seq/"}, options={"iters": 4})
    with rec.stage("depth"):
        pass
    with rec.stage("depth"):
        pass
    rec.results["n"] = np.int64(3)
    doc = json.loads(rec.write(tmp_path).read_text())
    assert doc["inputs"] == {"images": "seq/"} and doc["results"] == {"n": 3}
    assert set(doc["timings_seconds"]) == {"depth"} and "numpy" in doc["versions"]


@settings(max_examples=40, deadline=None)
@given(q=arrays(np.float64, 4, elements=st.floats(-1, 1)), t=arrays(np.float64, 3, elements=st.floats(-50, 50)),
       ray=arrays(np.float64, 2, elements=st.floats(-0.8, 0.8)), z=st.floats(0.2, 80.0))
def test_pose_formats_agree_on_projections(q, t, ray, z):
    """TUM, KITTI, COLMAP and nerfstudio encodings of one pose all map a world point to the same pixel."""
    assume(np.linalg.norm(q) > 0.1)
    T = pose_from_quat_trans(q / np.linalg.norm(q), t)
    K = np.array([[300.0, 0, 160.0], [0, 310.0, 120.0], [0, 0, 1]])
    X = T[:3, :3] @ np.array([ray[0] * z, ray[1] * z, z]) + T[:3, 3]
    uv = K[:2, :2] @ ray + K[:2, 2]
    tum = np.array(tum_lines([0.0], T[None]).splitlines()[-1].split(), dtype=np.float64)
    kitti = np.array(kitti_lines(T[None]).split(), dtype=np.float64)
    cams = RunCameras(width=320, height=240, frames=[CameraRecord(0, "000000", K, T, 0.0)])
    fx, fy, cx, cy = colmap_intrinsics(K)
    ns = nerfstudio_transforms(cams, depth_png=False, ply_file=None)
    T_tum = pose_from_quat_trans(tum[[7, 4, 5, 6]], tum[1:4])
    T_kitti = np.vstack([kitti.reshape(3, 4), [0, 0, 0, 1]])
    for T_fmt in (T_tum, T_kitti):
        np.testing.assert_allclose(_project(K, invert_rigid(T_fmt), X), uv, atol=1e-5 * (1 + np.abs(t).max()))
    c = invert_rigid(np.array(ns["frames"][0]["transform_matrix"])) @ np.append(X, 1.0)  # OpenGL camera
    np.testing.assert_allclose([ns["fl_x"] * c[0] / -c[2] + ns["cx"], ns["fl_y"] * -c[1] / -c[2] + ns["cy"]],
                               uv + 0.5, atol=1e-6 * (1 + np.abs(t).max()))
    np.testing.assert_allclose([fx, fy, cx, cy], [300, 310, 160.5, 120.5])
