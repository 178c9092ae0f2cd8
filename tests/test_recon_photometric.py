"""Photometric pose refinement (dro_sfm/recon/photometric.py): noise estimation, gating, and what it does to
trajectories in the pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from dro_sfm.data.synthetic import render_sequence
from dro_sfm.errors import ConfigError
from dro_sfm.geometry.pose import invert_rigid
from dro_sfm.recon.photometric import PhotometricOptions, PhotometricRefiner
from dro_sfm.recon.pipeline import FrameSlot, GroundTruthPredictor, ReconstructOptions, WindowPrediction, reconstruct
from dro_sfm.recon.trajectory import PairEdge, rotation_angle_rad

H, W = 96, 128


@pytest.fixture(scope="module")
def indoor():
    return list(render_sequence("indoor", 12, H, W, seed=11))


def _options(**kw) -> ReconstructOptions:
    base = dict(height=H, width=W, min_motion=0.0, overwrite=True, fusion="none")
    base.update(kw)
    return ReconstructOptions(**base)


def _perturb(T: np.ndarray, rot_deg: float, rng: np.random.Generator, dir_deg: float = 0.0) -> np.ndarray:
    """T [4,4] with a rotation error of rot_deg about a random axis and its translation turned by dir_deg."""
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    out = T.copy()
    out[:3, :3] = Rotation.from_rotvec(np.radians(rot_deg) * axis).as_matrix() @ T[:3, :3]
    turn = rng.normal(size=3)
    turn /= np.linalg.norm(turn)
    out[:3, 3] = Rotation.from_rotvec(np.radians(dir_deg) * turn).as_matrix() @ T[:3, 3]
    return out


class _SelfConsistentlyWrong(GroundTruthPredictor):
    """Exact depth; each pair's relative pose off by 1.5° of rotation and 60° of translation direction, the same
    error whichever frame is the target: windows agree with each other, as the network's do indoors."""

    name = "biased"

    def __call__(self, target: FrameSlot, refs) -> WindowPrediction:
        exact = super().__call__(target, refs)
        T = []
        for ref, T_ref_from_tgt in zip(refs, exact.T_ref_from_tgt):
            a, b = sorted((target.index, ref.index))
            T_b_from_a = T_ref_from_tgt if target.index == a else invert_rigid(T_ref_from_tgt)
            wrong = _perturb(T_b_from_a, 1.5, np.random.default_rng(1000 * a + b), dir_deg=60.0)
            T.append(wrong if target.index == a else invert_rigid(wrong))
        return WindowPrediction(exact.depth, np.stack(T))


def test_refinement_repairs_consistently_wrong_network_poses(indoor, tmp_path: Path) -> None:
    plain = reconstruct(indoor, tmp_path / "plain", _options(pose_refine="none"), predictor=_SelfConsistentlyWrong(),
                        progress=False)
    refined = reconstruct(indoor, tmp_path / "refined", _options(), predictor=_SelfConsistentlyWrong(),
                          progress=False)
    assert plain.metrics["ate_percent_of_path"] > 5.0  # the perturbation matters
    assert refined.metrics["ate_percent_of_path"] < 0.3 * plain.metrics["ate_percent_of_path"]
    # the refined run also reports the network's own trajectory, which is the plain run's
    assert refined.metrics["ate_percent_of_path_before_refine"] == pytest.approx(
        plain.metrics["ate_percent_of_path"], rel=1e-9)
    assert "ate_percent_of_path_before_refine" not in plain.metrics
    photometric = json.loads((tmp_path / "refined" / "run.json").read_text())["results"]["trajectory"]["photometric"]
    assert photometric["applied"] and photometric["pairs_kept"] >= 20
    # The network's measured noise reflects its real error (1.5°), not its windows' mutual agreement (exact).
    assert 0.5 < photometric["network_rot_deg"] < 3.0
    assert photometric["photometric_rot_deg"] < 0.5 * photometric["network_rot_deg"]


def test_exact_poses_stay_close_and_none_turns_it_off(indoor, tmp_path: Path) -> None:
    exact = reconstruct(indoor, tmp_path / "exact", _options(pose_refine="none"), predictor=GroundTruthPredictor(),
                        progress=False)
    refined = reconstruct(indoor, tmp_path / "refined", _options(), predictor=GroundTruthPredictor(), progress=False)
    assert exact.metrics["ate_rmse_m"] < 1e-6
    assert refined.metrics["ate_percent_of_path"] < 1.0
    run = json.loads((tmp_path / "exact" / "run.json").read_text())
    assert run["results"]["trajectory"]["pose_refine"] == "none" and run["results"]["trajectory"]["photometric"] is None


def _noisy_chain(n: int, rng: np.random.Generator) -> np.ndarray:
    """A smooth camera path [n,4,4]: 3 cm steps with small turns."""
    poses = [np.eye(4)]
    for _ in range(n - 1):
        step = np.eye(4)
        step[:3, :3] = Rotation.from_rotvec(rng.normal(scale=0.02, size=3)).as_matrix()
        step[:3, 3] = [0.03, 0.0, 0.01] + rng.normal(scale=0.003, size=3)
        poses.append(poses[-1] @ step)
    return np.stack(poses)


def test_noise_levels_recover_each_sources_noise() -> None:
    """Edges with known per-axis noise: cycle consistency measures the photometric one, the disagreement with
    it the network's (three-cornered hat)."""
    rng = np.random.default_rng(0)
    poses = _noisy_chain(400, rng)
    sigma_photo, sigma_net = np.radians(0.1), np.radians(1.0)

    def relative(a: int, b: int) -> np.ndarray:
        return invert_rigid(poses[b]) @ poses[a]

    def noisy(T: np.ndarray, sigma: float) -> np.ndarray:
        out = T.copy()
        out[:3, :3] = Rotation.from_rotvec(rng.normal(scale=sigma, size=3)).as_matrix() @ T[:3, :3]
        out[:3, 3] += rng.normal(scale=sigma * 0.1, size=3)
        return out

    refiner = PhotometricRefiner()
    for gap in (1, 2, 4):
        for a in range(len(poses) - gap):
            refiner.edges.append(_edge(a, a + gap, noisy(relative(a, a + gap), sigma_photo)))
    network = [PairEdge(a, a + 1, noisy(relative(a, a + 1), sigma_net), 1.0, 2) for a in range(len(poses) - 1)]
    noise = refiner.noise_levels(network)
    assert noise is not None
    assert noise.photometric_rot == pytest.approx(sigma_photo, rel=0.25)
    assert noise.network_rot == pytest.approx(sigma_net, rel=0.25)
    assert noise.photometric_trans == pytest.approx(sigma_photo * 0.1, rel=0.25)
    assert noise.network_trans == pytest.approx(sigma_net * 0.1, rel=0.25)


def _edge(a: int, b: int, T: np.ndarray):
    from dro_sfm.recon.photometric import PhotometricEdge

    return PhotometricEdge(a, b, T, np.eye(6) * 1e4)


def test_too_few_pairs_keep_the_network_trajectory() -> None:
    poses = _noisy_chain(3, np.random.default_rng(1))
    network = [PairEdge(a, a + 1, invert_rigid(poses[a + 1]) @ poses[a], 1.0, 2) for a in range(2)]
    out, noise = PhotometricRefiner().fuse(poses, network)
    assert noise is None and np.array_equal(out, poses)


def test_pairs_are_aligned_at_the_configured_gaps_only(indoor) -> None:
    """Each keyframe meets the ones 1, 2 and 4 before it, once; from exact depth and poses the kept alignments
    stay on the truth."""
    n = len(indoor)
    T0_inv = invert_rigid(indoor[0].T_world_from_cam)
    refiner = PhotometricRefiner()
    for i, f in enumerate(indoor):
        refiner.add_frame(i, f.image, f.depth, f.K, T0_inv @ f.T_world_from_cam)
    assert refiner.attempted == (n - 1) + (n - 2) + (n - 4)
    assert refiner.rejected + len(refiner.edges) == refiner.attempted
    assert sorted({e.b - e.a for e in refiner.edges}) == [1, 2, 4]
    for e in refiner.edges:
        truth = invert_rigid(indoor[e.b].T_world_from_cam) @ indoor[e.a].T_world_from_cam
        assert np.degrees(rotation_angle_rad(truth[:3, :3].T @ e.T_b_from_a[:3, :3])) < 0.5


def test_frames_without_depth_or_with_another_camera_are_not_aligned(indoor) -> None:
    options = PhotometricOptions(gaps=(1, 2))
    other_camera = PhotometricRefiner(options)
    for i, f in enumerate(indoor[:4]):
        K = f.K.copy()
        if i == 1:
            K[0, 0] *= 1.1
        other_camera.add_frame(i, f.image, f.depth, K, np.eye(4))
    assert other_camera.attempted == 2  # (0, 2) and (2, 3); every pair with frame 1 has two cameras

    no_depth = PhotometricRefiner(options)
    for i, f in enumerate(indoor[:3]):
        no_depth.add_frame(i, f.image, np.zeros_like(f.depth) if i == 0 else f.depth, f.K, np.eye(4))
    assert no_depth.attempted == 1  # (1, 2): frame 0 has nothing to warp


def test_alignments_far_from_the_network_are_rejected(indoor) -> None:
    """A gate of 0° keeps only alignments that do not move: from a start 3° off the truth, none survive."""
    refiner = PhotometricRefiner(PhotometricOptions(gaps=(1,), max_rotation_deg=0.0))
    rng = np.random.default_rng(3)
    T0_inv = invert_rigid(indoor[0].T_world_from_cam)
    for i, f in enumerate(indoor[:5]):
        refiner.add_frame(i, f.image, f.depth, f.K, _perturb(T0_inv @ f.T_world_from_cam, 3.0, rng))
    assert refiner.attempted == 4 and refiner.rejected == 4 and not refiner.edges


def test_bad_pose_refine_option_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="pose_refine"):
        ReconstructOptions(pose_refine="bundle").validate()
