"""Synthetic engine: determinism, exact z-depth, photometric consistency, motion ranges, nuisances, CLI."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from dro_sfm.data.synthetic import (
    NuisanceConfig,
    SceneConfig,
    TrajectoryConfig,
    camera_trajectory,
    default_intrinsics,
    make_scene,
    render_sequence,
    sample_triplet,
)
from dro_sfm.data.synthetic.nuisances import depth_edges
from dro_sfm.data.synthetic.textures import GENERATORS, MaterialBank
from dro_sfm.data.synthetic.trajectories import rotation_angle
from dro_sfm.errors import ConfigError, InputError
from dro_sfm.geometry.pose import invert_rigid
from dro_sfm.geometry.warp import warp_to_target

H, W = 60, 80


@pytest.fixture(scope="module")
def indoor_seq():
    return render_sequence("indoor", 12, H, W, seed=3)


@pytest.fixture(scope="module")
def outdoor_seq():
    return render_sequence("outdoor", 8, H, 2 * W, seed=4)


@pytest.fixture(scope="module", params=["indoor", "outdoor"])
def seq(request, indoor_seq, outdoor_seq):
    return indoor_seq if request.param == "indoor" else outdoor_seq


def _frames(seq, indices):
    return [seq[i] for i in indices]


# ------------------------------------------------------------------------------------------ records
def test_frame_record_types(seq):
    f = seq[0]
    assert f.image.dtype == np.uint8 and f.image.shape == (seq.height, seq.width, 3)
    assert f.depth.dtype == np.float32 and f.depth.shape == (seq.height, seq.width)
    assert f.K.shape == (3, 3) and f.T_world_from_cam.shape == (4, 4)
    R = f.T_world_from_cam[:3, :3]
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-9)
    assert np.linalg.det(R) == pytest.approx(1.0)
    assert f.image.std() > 10, "images should be textured, not flat"


def test_indoor_rooms_are_closed(indoor_seq):
    for f in _frames(indoor_seq, [0, 5, 11]):
        assert (f.depth > 0).all()


def test_outdoor_sky_has_zero_depth_and_sky_colour(outdoor_seq):
    f = outdoor_seq[0]
    sky = f.depth == 0
    assert 0.01 < sky.mean() < 0.6
    # sky is above the horizon: in the upper half of the image
    rows = np.nonzero(sky)[0]
    assert np.median(rows) < f.height / 2
    assert f.image[sky].mean() > 80


# ---------------------------------------------------------------------------------------- determinism
def test_deterministic_per_seed():
    a = render_sequence("indoor", 3, 32, 40, seed=11)
    b = render_sequence("indoor", 3, 32, 40, seed=11)
    c = render_sequence("indoor", 3, 32, 40, seed=12)
    for i in range(3):
        fa, fb = a[i], b[i]
        np.testing.assert_array_equal(fa.image, fb.image)
        np.testing.assert_array_equal(fa.depth, fb.depth)
        np.testing.assert_array_equal(fa.T_world_from_cam, fb.T_world_from_cam)
    assert not np.array_equal(a[0].image, c[0].image)
    assert not np.allclose(a.poses, c.poses)


def test_triplet_deterministic_and_ordered():
    t1 = sample_triplet("indoor", 5, 32, 40)
    t2 = sample_triplet("indoor", 5, 32, 40)
    assert len(t1) == 3
    for a, b in zip(t1, t2):
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.T_world_from_cam, b.T_world_from_cam)
    assert [f.extras["index"] for f in t1] == [1, 0, 2]
    # the target is the middle frame: equally adjacent to both references
    for ref in t1[1:]:
        step = np.linalg.norm(ref.T_world_from_cam[:3, 3] - t1[0].T_world_from_cam[:3, 3])
        assert 0.01 - 1e-9 <= step <= 0.10 + 1e-9


def test_scene_pickles_for_worker_processes(indoor_seq):
    scene = pickle.loads(pickle.dumps(indoor_seq.scene))
    f = scene.render(indoor_seq.K, indoor_seq.poses[2], H, W)
    np.testing.assert_array_equal(f.image, indoor_seq[2].image)


# --------------------------------------------------------------------------------------------- depth
def _world_points(frame) -> np.ndarray:
    """World points [N,3] of the valid depth pixels of a frame (back-projection with K and pose)."""
    v, u = np.nonzero(frame.depth > 0)
    z = frame.depth[v, u].astype(np.float64)
    rays = np.linalg.inv(frame.K) @ np.stack([u, v, np.ones_like(u)]).astype(np.float64)
    X_cam = rays * z
    T = frame.T_world_from_cam
    return (T[:3, :3] @ X_cam + T[:3, 3:]).T


def _off_plane(scene, o: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Distance [N] of points [N,3] from the plane of the triangle hit by the ray from ``o`` through them."""
    hits = scene.cast(np.broadcast_to(o, pts.shape), pts - o)
    c = scene.soup.corners[hits.triangle].astype(np.float64)
    n = np.cross(c[:, 1] - c[:, 0], c[:, 2] - c[:, 0])
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    return np.abs(((pts - c[:, 0]) * n).sum(1))


def test_depth_is_z_depth_on_surfaces(seq):
    f = seq[1]
    pts = _world_points(f)
    z = f.depth[f.depth > 0].astype(np.float64)
    o = f.T_world_from_cam[:3, 3]
    # exact check in float64 against the plane of the hit triangle
    assert np.all(_off_plane(seq.scene, o, pts) < 1e-5 * z + 1e-6)
    # independent check with Open3D's closest-point query (itself inexact on huge sliver triangles)
    assert np.median(seq.scene.distance_to_surface(pts) / z) < 1e-6
    # Interpreting the same numbers as ray lengths puts off-axis points clearly off the surfaces.
    v, u = np.nonzero(f.depth > 0)
    rays = np.linalg.inv(f.K) @ np.stack([u, v, np.ones_like(u)]).astype(np.float64)
    off_axis = np.linalg.norm(rays, axis=0) > 1.05
    T = f.T_world_from_cam
    wrong = (T[:3, :3] @ (rays / np.linalg.norm(rays, axis=0) * z) + T[:3, 3:]).T[off_axis]
    assert np.median(_off_plane(seq.scene, o, wrong)) > 0.01


def _warp_error(tgt, src) -> tuple[float, float]:
    """Mean |colour| error on [0,1] over co-visible pixels when warping src into tgt, and that pixel share."""
    K = torch.from_numpy(tgt.K).float()[None]
    T_src_from_tgt = torch.from_numpy(invert_rigid(src.T_world_from_cam) @ tgt.T_world_from_cam).float()[None]
    depth_tgt = torch.from_numpy(tgt.depth)[None, None]
    src_img = torch.from_numpy(src.image).permute(2, 0, 1)[None].float() / 255.0
    warped = warp_to_target(src_img, depth_tgt, K, T_src_from_tgt)[0].permute(1, 2, 0).numpy()
    # co-visibility: the target point projects inside the source and is not occluded there
    X_tgt = _world_points(tgt)
    T_src = invert_rigid(src.T_world_from_cam)
    X_src = T_src[:3, :3] @ X_tgt.T + T_src[:3, 3:]
    p = src.K @ X_src
    us, vs, zs = p[0] / p[2], p[1] / p[2], X_src[2]
    inside = (zs > 0.05) & (us >= 0) & (us <= src.width - 1) & (vs >= 0) & (vs <= src.height - 1)
    ui = np.clip(np.rint(us), 0, src.width - 1).astype(int)
    vi = np.clip(np.rint(vs), 0, src.height - 1).astype(int)
    edges = depth_edges(src.depth, 0.03)
    visible = inside & (np.abs(src.depth[vi, ui] - zs) < 0.01 * zs + 0.01) & ~edges[vi, ui]
    vt, ut = np.nonzero(tgt.depth > 0)
    vt, ut = vt[visible], ut[visible]
    err = np.abs(warped[vt, ut] - tgt.image[vt, ut].astype(np.float32) / 255.0).mean()
    return float(err), float(visible.mean())


@pytest.mark.parametrize("kind", ["indoor", "outdoor"])
def test_ground_truth_warp_is_photometrically_consistent(kind):
    seq = render_sequence(kind, 4, 120, 160 if kind == "indoor" else 320, seed=7)
    tgt = seq[1]
    errors = []
    for j in (0, 3):
        err, covisible = _warp_error(tgt, seq[j])
        assert covisible > 0.3
        assert err < 0.03, (kind, j, err)
        errors.append(err)
    # a wrong pose must be clearly worse: the check has teeth
    wrong = seq[0]
    wrong.T_world_from_cam = wrong.T_world_from_cam.copy()
    wrong.T_world_from_cam[:3, 3] += wrong.T_world_from_cam[:3, 0] * (0.1 if kind == "indoor" else 0.5)
    assert _warp_error(tgt, wrong)[0] > max(2 * max(errors), 0.02)


# -------------------------------------------------------------------------------------------- motion
def test_indoor_motion_within_ranges_and_room():
    cfg = TrajectoryConfig()
    scene = make_scene("indoor", 8)
    poses = camera_trajectory(scene, 1000, np.random.default_rng(0), cfg)
    steps = np.linalg.norm(np.diff(poses[:, :3, 3], axis=0), axis=1)
    angles = np.degrees([rotation_angle(a[:3, :3].T @ b[:3, :3]) for a, b in zip(poses[:-1], poses[1:])])
    assert steps.min() >= 0.01 - 1e-9 and steps.max() <= 0.10 + 1e-9
    assert angles.min() >= 0.5 - 1e-6 and angles.max() <= 5.0 + 1e-6
    # the ranges are actually used, not collapsed to one value
    assert steps.max() - steps.min() > 0.05 and angles.max() - angles.min() > 2.5
    lay = scene.layout
    pos = poses[:, :3, 3]
    assert np.all(pos >= lay.free_min - 1e-9) and np.all(pos <= lay.free_max + 1e-9)
    assert np.all(pos[:, :2] >= cfg.wall_margin_m - 1e-9)
    assert np.all(pos[:, :2] <= lay.room_size[:2] - cfg.wall_margin_m + 1e-9)
    # never inside or touching furniture, lamps or walls
    assert scene.distance_to_surface(pos).min() > 0.05
    pitch = np.degrees(np.arcsin(poses[:, 2, 2]))  # optical axis (column 2) z component
    assert cfg.pitch_range_deg[0] - 5.0 <= pitch.min() and pitch.max() <= cfg.pitch_range_deg[1] + 5.0
    roll = np.degrees(np.arcsin(poses[:, 2, 0]))
    assert np.abs(roll).max() <= cfg.max_roll_deg + 5.0
    # smooth: consecutive steps change gradually
    assert np.abs(np.diff(steps)).max() < 0.02


def test_motion_scale_scales_ranges():
    cfg = TrajectoryConfig().scaled(0.5)
    assert cfg.translation_range_m == (0.005, 0.05)
    assert cfg.rotation_range_deg == (0.25, 2.5)
    assert cfg.forward_range_m == (0.25, 0.75)
    with pytest.raises(ConfigError):
        TrajectoryConfig().scaled(0.0)
    with pytest.raises(ConfigError):
        TrajectoryConfig(translation_range_m=(0.2, 0.1))


def test_driving_motion():
    cfg = TrajectoryConfig()
    scene = make_scene("outdoor", 2, SceneConfig(street_length_m=320.0))
    poses = camera_trajectory(scene, 200, np.random.default_rng(1), cfg)
    steps = np.linalg.norm(np.diff(poses[:, :3, 3], axis=0), axis=1)
    assert steps.min() >= 0.5 - 1e-9 and steps.max() <= 1.5 + 1e-9
    np.testing.assert_allclose(poses[:, 2, 3], 1.65)
    forward = poses[:, :3, 2]
    yaw = np.unwrap(np.arctan2(forward[:, 1], forward[:, 0]))
    assert np.degrees(np.abs(np.diff(yaw))).max() <= cfg.max_yaw_step_deg + 0.05
    assert np.degrees(np.abs(yaw)).max() < 10.0
    assert np.all(forward[:, 0] > 0.98)  # driving forward along the street
    lay = scene.layout
    assert np.abs(poses[:, 1, 3] - lay.lane_center_y).max() <= lay.lane_half_width_m + 0.3
    # camera axes: x right (-y world when driving along +x), y down
    assert poses[0, 1, 0] < -0.95 and poses[0, 2, 1] < -0.95


def test_long_indoor_sequence_streams_in_one_room():
    seq = render_sequence("indoor", 1000, 24, 32, seed=1)
    assert len(seq) == 1000
    first, last = seq[0], seq[999]
    assert first.extras["scene_seed"] == last.extras["scene_seed"]
    assert (last.depth > 0).all()
    assert last.name == "000999"


def test_default_intrinsics():
    K = default_intrinsics("outdoor", 375, 1242)
    np.testing.assert_allclose(K[0, 0], 721.5377, rtol=1e-6)
    np.testing.assert_allclose(K[:2, 2], [609.5593, 172.854], rtol=1e-6)
    K = default_intrinsics("indoor", 240, 320)
    assert K[0, 0] == K[1, 1] == pytest.approx(262.5)
    with pytest.raises(ConfigError):
        default_intrinsics("underwater", 10, 10)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------ nuisances
def test_photometric_nuisances_change_images_only(indoor_seq):
    cfg = NuisanceConfig(
        exposure_range=(0.6, 0.8), noise_sigma=0.02, blur_sigma_px=1.5, vignetting=0.3, gamma_range=(0.8, 1.2)
    )
    noisy = render_sequence("indoor", 12, H, W, seed=3, nuisance=cfg)
    for i in (0, 7):
        a, b = indoor_seq[i], noisy[i]
        assert np.abs(a.image.astype(int) - b.image.astype(int)).mean() > 3
        np.testing.assert_array_equal(a.depth, b.depth)
        np.testing.assert_array_equal(a.T_world_from_cam, b.T_world_from_cam)
        np.testing.assert_array_equal(a.K, b.K)
    np.testing.assert_array_equal(noisy[7].image, noisy[7].image)  # per-frame noise is reproducible


def test_depth_holes_only_invalidate(indoor_seq):
    cfg = NuisanceConfig(depth_hole_blobs=4, depth_edge_dropout=1.0)
    holey = render_sequence("indoor", 12, H, W, seed=3, nuisance=cfg)
    a, b = indoor_seq[4], holey[4]
    changed = a.depth != b.depth
    assert changed.mean() > 0.01
    assert np.all(b.depth[changed] == 0)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.T_world_from_cam, b.T_world_from_cam)
    assert np.all(b.depth[depth_edges(a.depth, cfg.depth_edge_threshold)] == 0)


def test_nuisances_off_by_default():
    assert not NuisanceConfig().enabled
    assert NuisanceConfig.realistic().enabled


def test_render_needs_rng_for_nuisances(indoor_seq):
    with pytest.raises(InputError):
        indoor_seq.scene.render(
            indoor_seq.K, indoor_seq.poses[0], 8, 8, nuisance=NuisanceConfig(noise_sigma=0.1)
        )


# ------------------------------------------------------------------------------------------- textures
@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_textures_tile_seamlessly(name):
    tex = GENERATORS[name](np.random.default_rng(0), 64)
    assert tex.shape == (64, 64, 3) and tex.min() >= 0 and tex.max() <= 1
    assert tex.std() > 0.01
    # the wrap-around seam is no stronger than the strongest step between neighbouring columns/rows inside
    for axis in (0, 1):
        inner = np.abs(np.diff(tex, axis=axis)).mean(axis=(1 - axis, 2)).max()
        seam = np.abs(np.take(tex, 0, axis=axis) - np.take(tex, -1, axis=axis)).mean()
        assert seam <= 1.25 * inner + 0.01


def test_texture_lookup_is_fixed_to_surface_coordinates():
    rng = np.random.default_rng(0)
    bank = MaterialBank.from_textures([GENERATORS["bricks"](rng, 32)], [0.01], ["bricks"])
    uv = np.array([[0.055, 0.055 + 0.32], [0.125, 0.125 + 0.32]], np.float32)  # one period apart
    out = bank.sample(np.zeros(2, np.int32), uv, np.full(2, 0.001, np.float32))
    np.testing.assert_allclose(out[0], out[1], atol=1e-5)
    # distant (large-footprint) samples come from coarse mip levels: far less variance, same mean
    pts = np.random.default_rng(1).uniform(0, 1, (2, 4000)).astype(np.float32)
    ids = np.zeros(4000, np.int32)
    near = bank.sample(ids, pts, np.full(4000, 0.001, np.float32))
    far = bank.sample(ids, pts, np.full(4000, 0.2, np.float32))
    assert far.std(0).mean() < 0.5 * near.std(0).mean()
    np.testing.assert_allclose(far.mean(0), near.mean(0), atol=0.03)


def test_invalid_configs_are_rejected():
    with pytest.raises(ConfigError):
        SceneConfig(texture_size=100)
    with pytest.raises(ConfigError):
        NuisanceConfig(depth_edge_dropout=1.5)
    with pytest.raises(ConfigError):
        render_sequence("indoor", 10, 32, 32, trajectory_config=TrajectoryConfig(wall_margin_m=5.0))


# ------------------------------------------------------------------------------------------------ CLI
def test_synth_cli_writes_folder(tmp_path):
    from dro_sfm.cli import main
    from dro_sfm.data.formats import read_sequence

    out = tmp_path / "seq"
    result = CliRunner().invoke(
        main,
        [
            "synth",
            "--scene",
            "indoor",
            "--frames",
            "3",
            "--height",
            "32",
            "--width",
            "40",
            "--seed",
            "2",
            "--format",
            "folder",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.glob("*.png")) == ["000000.png", "000001.png", "000002.png"]
    frames = list(read_sequence(out, "folder"))
    assert len(frames) == 3
    expected = render_sequence("indoor", 3, 32, 40, seed=2)
    np.testing.assert_array_equal(frames[1].image, expected[1].image)
    np.testing.assert_allclose(frames[0].K, expected.K, rtol=1e-6)
