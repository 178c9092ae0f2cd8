"""The sequence pipeline's parts: windows, keyframe selection, confidence, pose chaining and the pose graph,
intrinsics, feature reuse, bounded memory and --resume."""

from __future__ import annotations

import json
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage
from scipy.spatial.transform import Rotation

from dro_sfm.data.synthetic import render_sequence
from dro_sfm.errors import ConfigError, InputError
from dro_sfm.geometry.pose import invert_rigid
from dro_sfm.recon.confidence import (
    UNKNOWN,
    Neighbour,
    combine_confidence,
    consistency_confidence,
    cost_confidence,
)
from dro_sfm.recon.intrinsics import parse_intrinsics_option, scale_intrinsics, validate_intrinsics
from dro_sfm.recon.pipeline import (
    DroPredictor,
    GroundTruthPredictor,
    ReconstructOptions,
    WindowPrediction,
    reconstruct,
)
from dro_sfm.recon.trajectory import TrajectoryBuilder, average_poses, optimize_pose_graph
from dro_sfm.recon.windows import (
    FrameSlot,
    KeyframeSelector,
    SlidingWindow,
    grey_half,
    mean_displacement_px,
    window_indices,
)

H, W = 48, 64


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def frames():
    """12 rendered indoor frames (48x64) with exact depth and poses."""
    return list(render_sequence("indoor", 12, H, W, seed=5))


def _options(**kw) -> ReconstructOptions:
    base = dict(height=H, width=W, min_motion=0.0, overwrite=True, fusion="points")
    base.update(kw)
    return ReconstructOptions(**base)


def _random_pose(rng: np.random.Generator, rot: float = 0.1, trans: float = 0.2) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = Rotation.from_rotvec(rng.normal(size=3) * rot).as_matrix()
    T[:3, 3] = rng.normal(size=3) * trans
    return T


def _trajectory(rng: np.random.Generator, n: int) -> np.ndarray:
    poses = [np.eye(4)]
    for _ in range(n - 1):
        poses.append(poses[-1] @ _random_pose(rng, 0.05, 0.1))
    return np.stack(poses)


# --- windows ------------------------------------------------------------------------------------------------


@given(n_refs=st.sampled_from([2, 4, 6]), last=st.integers(1, 30), data=st.data())
def test_windows_cover_the_sequence(n_refs: int, last: int, data) -> None:
    target = data.draw(st.integers(0, last))
    ids = window_indices(target, n_refs, last, final=True)
    n = min(n_refs, last)
    assert ids == list(range(ids[0], ids[0] + n + 1))  # consecutive, n references
    assert target in ids and ids[0] >= 0 and ids[-1] <= last
    if target > 0:  # consecutive frames see each other: the chain always has two estimates
        assert target - 1 in ids
        assert target in window_indices(target - 1, n_refs, last, final=True)
    # A window computed while frames were still arriving is the one the final sequence gives.
    for newest in range(target, last + 1):
        early = window_indices(target, n_refs, newest, final=False)
        if early is not None:
            assert early == ids


def test_sliding_window_evicts_oldest_and_records_peak() -> None:
    window = SlidingWindow(3)
    slots = [FrameSlot(i, f"{i}", float(i), "", np.zeros((2, 2, 3), np.uint8), np.eye(3)) for i in range(5)]
    evicted = [window.push(s) for s in slots]
    assert [e.index if e else None for e in evicted] == [None, None, None, 0, 1]
    assert [s.index for s in window] == [2, 3, 4] and window.peak == 3
    with pytest.raises(ValueError):
        window.push(slots[0])


# --- keyframe selection -------------------------------------------------------------------------------------


def test_displacement_estimate_matches_known_shifts(frames) -> None:
    image = render_sequence("indoor", 1, 120, 160, seed=1)[0].image
    grey = grey_half(image)
    for shift in (0.0, 1.0, 2.0, 3.0):
        moved = ndimage.shift(image.astype(np.float64), (shift * 0.6, shift * 0.8, 0), order=1, mode="nearest")
        est = mean_displacement_px(grey, grey_half(np.clip(moved, 0, 255).astype(np.uint8)))
        assert est == pytest.approx(shift, abs=0.15 + 0.25 * shift), shift


def test_keyframe_selector_skips_still_frames(frames) -> None:
    selector = KeyframeSelector(1.0)
    kept = [selector.accept(img)[0] for img in (frames[0].image, frames[0].image, frames[0].image, frames[3].image)]
    assert kept == [True, False, False, True] and selector.skipped == 2
    assert all(KeyframeSelector(0.0).accept(frames[0].image)[0] for _ in range(3))


# --- confidence ---------------------------------------------------------------------------------------------


def test_cost_confidence_is_relative_to_the_median() -> None:
    cost = np.array([[1.0, 1.0, 1.0], [3.0, 0.0, 100.0]])
    conf = cost_confidence(cost)
    assert conf[0, 0] == pytest.approx(0.9)  # median cost
    assert conf[1, 0] == pytest.approx(0.5)  # three times the median
    assert conf[1, 1] == 1.0 and conf[1, 2] < 0.01
    assert np.all(cost_confidence(np.zeros((2, 2))) == 1.0)


def test_consistency_confidence_checks_depth_in_the_neighbour(frames) -> None:
    tgt, nb = frames[4], frames[5]
    K = tgt.K
    T_nb_from_tgt = invert_rigid(nb.T_world_from_cam) @ tgt.T_world_from_cam
    exact = consistency_confidence(tgt.depth, K, [Neighbour(nb.depth, T_nb_from_tgt)])
    checked = exact != UNKNOWN
    assert checked.mean() > 0.5
    assert np.median(exact[checked]) > 0.95
    # A depth 20 % too short puts points in front of the neighbour's surface: a contradiction.
    short = consistency_confidence(0.8 * tgt.depth, K, [Neighbour(nb.depth, T_nb_from_tgt)])
    assert np.median(short[short != UNKNOWN]) < 0.01
    # 20 % too far puts them behind it: maybe occluded, so unknown rather than wrong.
    far = consistency_confidence(1.2 * tgt.depth, K, [Neighbour(nb.depth, T_nb_from_tgt)])
    assert np.mean(far == UNKNOWN) > 0.9
    both = combine_confidence(tgt.depth, np.full(tgt.depth.shape, 0.81), exact)
    assert np.all(both[tgt.depth <= 0] == 0)
    assert np.median(both[checked & (tgt.depth > 0)]) == pytest.approx(0.9, abs=0.03)


# --- trajectory ---------------------------------------------------------------------------------------------


@settings(deadline=None, max_examples=25)
@given(seed=st.integers(0, 10_000))
def test_chaining_perfect_estimates_reproduces_the_trajectory(seed: int) -> None:
    rng = np.random.default_rng(seed)
    gt = _trajectory(rng, 8)
    gt = np.linalg.inv(gt[0]) @ gt  # the run's world frame is the first camera
    builder = TrajectoryBuilder()
    for t in range(8):
        refs = window_indices(t, 2, 7, final=True)
        refs.remove(t)
        T = np.stack([invert_rigid(gt[r]) @ gt[t] for r in refs])
        builder.add_window(t, refs, T, 0.5 + rng.random())
    np.testing.assert_allclose(builder.chained_poses(8), gt, atol=1e-9)
    np.testing.assert_allclose(builder.optimize(8), gt, atol=1e-7)


def test_average_of_forward_and_inverted_backward_estimates() -> None:
    rng = np.random.default_rng(1)
    T = _random_pose(rng)
    noise_a, noise_b = _random_pose(rng, 0.02, 0.01), _random_pose(rng, 0.02, 0.01)
    mean = average_poses(np.stack([T @ noise_a, T @ noise_b]), np.array([1.0, 1.0]))
    angle = np.linalg.norm(Rotation.from_matrix(mean[:3, :3].T @ T[:3, :3]).as_rotvec())
    worst = max(np.linalg.norm(Rotation.from_matrix(n[:3, :3]).as_rotvec()) for n in (noise_a, noise_b))
    assert angle < worst
    np.testing.assert_allclose(average_poses(np.stack([T, T, T]), np.array([1.0, 2.0, 0.5])), T, atol=1e-12)
    np.testing.assert_allclose(average_poses(np.stack([T, np.eye(4)]), np.array([1.0, 0.0])), T, atol=1e-12)


def _noisy_builder(gt: np.ndarray, rng: np.random.Generator, n_refs: int, noise: float) -> TrajectoryBuilder:
    n = len(gt)
    builder = TrajectoryBuilder()
    for t in range(n):
        refs = window_indices(t, n_refs, n - 1, final=True)
        refs.remove(t)
        T = np.stack([invert_rigid(gt[r]) @ gt[t] @ _random_pose(rng, noise, noise) for r in refs])
        builder.add_window(t, refs, T, 1.0)
    return builder


def test_pose_graph_reduces_drift_of_noisy_estimates() -> None:
    from dro_sfm.eval.trajectory import absolute_trajectory_error

    chained, optimized = [], []
    for seed in range(4):
        rng = np.random.default_rng(seed)
        gt = _trajectory(rng, 40)
        builder = _noisy_builder(gt, rng, 4, 0.01)
        chained.append(absolute_trajectory_error(gt, builder.chained_poses(40), align="se3").stats["rmse"])
        optimized.append(absolute_trajectory_error(gt, builder.optimize(40), align="se3").stats["rmse"])
    assert np.mean(optimized) < 0.9 * np.mean(chained), (chained, optimized)


def test_segmented_pose_graph_matches_a_single_solve() -> None:
    rng = np.random.default_rng(3)
    gt = _trajectory(rng, 45)
    builder = _noisy_builder(gt, rng, 4, 0.01)
    poses = builder.chained_poses(45)
    edges = builder.edges()
    sigma_r, sigma_t = builder.noise_scales(poses)
    whole = optimize_pose_graph(poses, edges, sigma_r, sigma_t, segment=1000, overlap=20)
    pieces = optimize_pose_graph(poses, edges, sigma_r, sigma_t, segment=15, overlap=5)
    step = np.median(np.linalg.norm(np.diff(gt[:, :3, 3], axis=0), axis=1))
    assert np.max(np.linalg.norm(whole[:, :3, 3] - pieces[:, :3, 3], axis=1)) < 0.5 * step
    exact = optimize_pose_graph(gt, _noisy_builder(gt, rng, 4, 0.0).edges(), 1e-3, 1e-3, segment=15, overlap=5)
    np.testing.assert_allclose(exact, gt, atol=1e-7)


# --- intrinsics ---------------------------------------------------------------------------------------------


def test_intrinsics_option_and_validation(tmp_path: Path) -> None:
    K = parse_intrinsics_option("500,510,319.5,239.5").K
    assert K[0, 0] == 500 and K[1, 1] == 510 and K[1, 2] == 239.5
    f = tmp_path / "K.txt"
    f.write_text("400 0 100\n0 400 80\n0 0 1\n")
    parsed = parse_intrinsics_option(str(f))
    assert parsed.source == f"file:{f}" and parsed.K[0, 2] == 100
    for bad in ("500,510,319.5", "a,b,c,d", "-5,5,1,1", str(tmp_path / "missing.txt")):
        with pytest.raises(InputError):
            parse_intrinsics_option(bad)
    validate_intrinsics(K, 640, 480, "test")
    with pytest.raises(InputError, match="principal point"):
        validate_intrinsics(K, 64, 48, "test")  # intrinsics of a 10x larger image
    with pytest.raises(InputError, match="positive"):
        validate_intrinsics(np.diag([0.0, 5.0, 1.0]), 64, 48, "test")


@given(sx=st.floats(0.2, 3.0), sy=st.floats(0.2, 3.0), u=st.floats(0, 63), v=st.floats(0, 47))
def test_scaled_intrinsics_keep_rays(sx: float, sy: float, u: float, v: float) -> None:
    """A pixel's ray is the same before and after resizing: point u maps to (u + 0.5)·s − 0.5."""
    K = np.array([[60.0, 0, 31.5], [0, 58.0, 23.5], [0, 0, 1]])
    K2 = scale_intrinsics(K, (48, 64), (48 * sy, 64 * sx))
    ray = np.linalg.solve(K, [u, v, 1.0])
    ray2 = np.linalg.solve(K2, [(u + 0.5) * sx - 0.5, (v + 0.5) * sy - 0.5, 1.0])
    np.testing.assert_allclose(ray, ray2, atol=1e-9)


# --- the engine: bounded memory, feature reuse, resume ------------------------------------------------------


class _CountingPredictor(GroundTruthPredictor):
    """Ground truth, counting calls and how many frame slots are alive at each call."""

    def __init__(self, fail_after: int | None = None):
        self.calls: list[int] = []
        self.alive: list[int] = []
        self._slots: list[weakref.ref[FrameSlot]] = []
        self.fail_after = fail_after

    def encode(self, slot: FrameSlot) -> None:
        self._slots.append(weakref.ref(slot))
        return None

    def __call__(self, target, refs) -> WindowPrediction:
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise KeyboardInterrupt  # the user pressing Ctrl-C mid-run
        self.calls.append(target.index)
        self.alive.append(sum(ref() is not None for ref in self._slots))
        return super().__call__(target, refs)


@pytest.mark.parametrize("refs", [2, 4])
def test_memory_is_bounded_by_the_window(frames, tmp_path: Path, refs: int) -> None:
    predictor = _CountingPredictor()
    result = reconstruct(frames, tmp_path / "run", _options(refs=refs, fusion="none"), predictor=predictor,
                         progress=False)
    assert predictor.calls == list(range(len(frames)))  # every keyframe is a target exactly once
    assert result.peak_window_frames == refs + 1 == result.window_capacity
    # Instrumented: frame slots (image, features, depth) alive anywhere never exceed the window.
    assert max(predictor.alive) <= refs + 1, predictor.alive
    assert result.metrics["ate_rmse_m"] < 1e-9


def test_features_are_computed_once_and_reuse_is_exact(frames, tmp_path: Path) -> None:
    from dro_sfm.models.config import small_config
    from dro_sfm.models.dro import DroNet
    from dro_sfm.models.predict import DroModel, ModelInfo

    torch.manual_seed(0)
    net = DroNet(small_config(stages=1, steps_per_stage=1)).eval()
    model = DroModel(net, ModelInfo(name="tiny-untrained", image_shape=(H, W)))
    encoded: list[int] = []
    original = net.encode
    net.encode = lambda images: (encoded.append(images.shape[0]), original(images))[1]  # type: ignore[method-assign]
    seq = frames[:5]
    reuse = reconstruct(seq, tmp_path / "reuse", _options(fusion="none"), predictor=DroPredictor(model),
                        progress=False)
    assert sum(encoded) == len(seq)  # each frame's features once, used by up to three windows
    fresh = reconstruct(seq, tmp_path / "fresh", _options(fusion="none"),
                        predictor=DroPredictor(model, reuse_features=False), progress=False)
    assert sum(encoded) == len(seq)
    np.testing.assert_allclose(reuse.poses, fresh.poses, atol=1e-5)
    for i in range(len(seq)):
        a = np.load(tmp_path / "reuse" / "depth" / f"{i:06d}.npy")
        b = np.load(tmp_path / "fresh" / "depth" / f"{i:06d}.npy")
        np.testing.assert_allclose(a, b, rtol=1e-4)


def test_resume_continues_an_interrupted_run(frames, tmp_path: Path) -> None:
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        reconstruct(frames, out, _options(), predictor=_CountingPredictor(fail_after=6), progress=False)
    written = sorted(p.stem for p in (out / "windows").glob("0*.json"))
    assert written == [f"{i:06d}" for i in range(6)] and not (out / "cameras.json").exists()
    with pytest.raises(Exception, match="already contains"):
        reconstruct(frames, out, _options(overwrite=False), predictor=GroundTruthPredictor(), progress=False)
    with pytest.raises(ConfigError, match="refs"):
        reconstruct(frames, out, _options(overwrite=False, resume=True, refs=4), predictor=GroundTruthPredictor(),
                    progress=False)
    again = _CountingPredictor()
    resumed = reconstruct(frames, out, _options(overwrite=False, resume=True), predictor=again, progress=False)
    assert again.calls == list(range(6, len(frames))) and resumed.n_resumed == 6
    assert resumed.n_keyframes == len(frames) and resumed.metrics["ate_rmse_m"] < 1e-9
    full = reconstruct(frames, tmp_path / "full", _options(), predictor=GroundTruthPredictor(), progress=False)
    np.testing.assert_allclose(resumed.poses, full.poses, atol=1e-9)
    cams = json.loads((out / "cameras.json").read_text())
    assert len(cams["frames"]) == len(frames)
