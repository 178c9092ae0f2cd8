"""Depth and two-view pose metrics against hand-computed values (spec §16)."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

from dro_sfm.errors import ConfigError, InputError
from dro_sfm.eval import depth_metrics as dm
from dro_sfm.eval import pose_metrics as pm
from dro_sfm.eval import report

PLAIN = dm.DepthProtocol("plain", 0.1, 100.0, None, "median_of_ratios")
L = math.log(1.25)


# --------------------------------------------------------------------------- depth metrics


def test_metrics_hand_computed() -> None:
    gt = np.array([[2.0, 4.0], [5.0, 10.0]])
    pred = np.array([[2.0, 5.0], [4.0, 8.0]])
    r = dm.evaluate_depth_image(gt, pred, PLAIN, median_scaled=False)
    # d = gt - pred = [0, -1, 1, 2]; log(gt/pred) = [0, -L, L, L] with L = log 1.25.
    expected = {
        "abs_rel": (0 + 1 / 4 + 1 / 5 + 2 / 10) / 4,  # 0.1625
        "sq_rel": (0 + 1 / 4 + 1 / 5 + 4 / 10) / 4,  # 0.2125
        "rmse": math.sqrt(6 / 4),
        "rmse_log": L * math.sqrt(3) / 2,
        "a1": 0.25,  # ratios [1, 1.25, 1.25, 1.25]: the threshold is strict
        "a2": 1.0,
        "a3": 1.0,
        "silog": L * math.sqrt(11) / 4,  # sqrt(3L²/4 − (L/4)²)
        "l1_inv": (0 + 0.05 + 0.05 + 0.025) / 4,
    }
    assert r.variant == "plain"
    assert r.n_valid == 4 and r.scale == 1.0
    assert list(r.metrics) == list(dm.METRIC_NAMES)
    for k, v in expected.items():
        assert r.metrics[k] == pytest.approx(v, rel=1e-12, abs=1e-15), k


def test_valid_range_is_open_and_skips_invalid_gt() -> None:
    protocol = dm.DepthProtocol("r", 1.0, 10.0, None, "median_of_ratios")
    gt = np.array([[0.0, 1.0, 2.0], [10.0, np.nan, 5.0]])
    mask = dm.valid_mask(gt, protocol)
    np.testing.assert_array_equal(mask, [[False, False, True], [False, False, True]])
    r = dm.evaluate_depth_image(gt, np.full((2, 3), 4.0), protocol, median_scaled=False)
    assert r.n_valid == 2
    assert r.metrics["abs_rel"] == pytest.approx((2 / 2 + 1 / 5) / 2)


def test_prediction_clamped_to_range_after_scaling_and_torch_input() -> None:
    protocol = dm.DepthProtocol("r", 0.5, 6.0, None, "median_of_ratios")
    gt = torch.tensor([[1.0, 5.0]])
    pred = torch.tensor([[0.1, 50.0]])  # clamps to [0.5, 6.0]
    r = dm.evaluate_depth_image(gt, pred, protocol, median_scaled=False)
    assert r.metrics["abs_rel"] == pytest.approx((0.5 / 1 + 1 / 5) / 2)


def test_scaling_modes_differ_as_expected() -> None:
    protocol_r = dm.DepthProtocol("ratios", 0.1, 10.0, None, "median_of_ratios")
    protocol_m = dm.DepthProtocol("medians", 0.1, 10.0, None, "ratio_of_medians")
    gt = np.array([[1.0, 2.0], [4.0, 8.0]])
    pred = np.array([[1.0, 1.0], [1.0, 4.0]])
    # gt/pred = [1, 2, 4, 2] -> median 2; median(gt)/median(pred) = 3 / 1 = 3.
    r = dm.evaluate_depth_image(gt, pred, protocol_r, median_scaled=True)
    m = dm.evaluate_depth_image(gt, pred, protocol_m, median_scaled=True)
    assert r.scale == 2.0 and m.scale == 3.0
    assert r.variant == "ratios_gt" and m.variant == "medians_gt"
    # scaled by 2: [2, 2, 2, 8]
    assert r.metrics["abs_rel"] == pytest.approx((1 / 1 + 0 + 2 / 4 + 0) / 4)
    # scaled by 3: [3, 3, 3, 12] and 12 is clamped to max_depth 10
    assert m.metrics["abs_rel"] == pytest.approx((2 / 1 + 1 / 2 + 1 / 4 + 2 / 8) / 4)
    # without median scaling both protocols agree
    r0 = dm.evaluate_depth_image(gt, pred, protocol_r, median_scaled=False)
    m0 = dm.evaluate_depth_image(gt, pred, protocol_m, median_scaled=False)
    assert r0.metrics == m0.metrics and r0.scale == 1.0


def test_median_conventions_follow_reference_implementations() -> None:
    x = np.array([4.0, 1.0, 3.0, 2.0])
    assert dm.lower_median(x) == float(torch.median(torch.tensor(x))) == 2.0
    gt, pred = np.array([1.0, 2.0, 3.0, 4.0]), np.ones(4)
    assert dm.median_scale_factor(gt, pred, "median_of_ratios") == 2.0  # torch.median: lower middle
    assert dm.median_scale_factor(gt, pred, "ratio_of_medians") == 2.5  # np.median: mean of middles
    assert dm.median_scale_factor(gt[:3], pred[:3], "median_of_ratios") == 2.0


def test_median_scaling_removes_global_scale() -> None:
    rng = np.random.default_rng(0)
    gt = rng.uniform(1.0, 20.0, size=(12, 16))
    r = dm.evaluate_depth_image(gt, gt / 3.7, dm.get_protocol("dro_kitti"), median_scaled=True)
    assert r.scale == pytest.approx(3.7)
    assert r.metrics["abs_rel"] == pytest.approx(0.0, abs=1e-12)
    assert r.metrics["a1"] == 1.0


def test_resize_is_bilinear_align_corners_and_clamped() -> None:
    pred = torch.tensor([[[[1.0, 2.0], [3.0, 0.0]]]])
    out = dm.resize_depth_to(pred, (3, 3))[0, 0]
    expected = torch.tensor([[1.0, 1.5, 2.0], [2.0, 1.5, 1.0], [3.0, 1.5, 0.0]], dtype=torch.float64)
    expected[2, 2] = 1e-6  # clamped at >= 1e-6
    torch.testing.assert_close(out, expected)
    r = dm.evaluate_depth_image(np.full((3, 3), 2.0), np.array([[2.0, 2.0], [2.0, 2.0]]), PLAIN, False)
    assert r.n_valid == 9 and r.metrics["rmse"] == pytest.approx(0.0)


@pytest.mark.parametrize(
    ("size", "crop", "bounds"),
    [
        ((375, 1242), "garg", (153, 371, 44, 1197)),
        ((480, 640), "garg", (195, 476, 23, 616)),
        ((480, 640), "eigen_nyu", (20, 459, 24, 615)),
    ],
)
def test_crop_bounds(size: tuple[int, int], crop: str, bounds: tuple[int, int, int, int]) -> None:
    assert dm.crop_bounds(*size, crop) == bounds
    mask = dm.crop_mask(*size, crop)
    r0, r1, c0, c1 = bounds
    assert mask.sum() == (r1 - r0) * (c1 - c0)
    assert mask[r0, c0] and mask[r1 - 1, c1 - 1]
    assert not mask[r0 - 1, c0] and not mask[r1, c0] and not mask[r0, c0 - 1] and not mask[r0, c1]


def test_eigen_nyu_rejects_other_sizes_and_no_crop_keeps_all() -> None:
    with pytest.raises(InputError, match="480x640"):
        dm.crop_bounds(375, 1242, "eigen_nyu")
    assert dm.crop_mask(4, 5, None).all()


def test_crop_limits_evaluated_pixels() -> None:
    gt = np.full((375, 1242), 10.0)
    pred = np.full((375, 1242), 10.0)
    crop = dm.crop_mask(375, 1242, "garg")
    pred[~crop] = 70.0  # wrong only outside the crop
    r = dm.evaluate_depth_image(gt, pred, dm.get_protocol("dro_kitti"), median_scaled=False)
    assert r.n_valid == (371 - 153) * (1197 - 44)
    assert r.metrics["abs_rel"] == 0.0
    no_crop = dm.DepthProtocol("no_crop", 0.2, 80.0, None, "median_of_ratios")
    r_nocrop = dm.evaluate_depth_image(gt, pred, no_crop, median_scaled=False)
    assert r_nocrop.n_valid == 375 * 1242
    assert r_nocrop.metrics["abs_rel"] == pytest.approx(6.0 * (1 - r.n_valid / (375 * 1242)))


def test_presets_and_protocol_validation() -> None:
    p = dm.PROTOCOLS
    assert (p["dro_kitti"].min_depth, p["dro_kitti"].max_depth, p["dro_kitti"].crop) == (0.2, 80.0, "garg")
    assert (p["monodepth2_kitti"].min_depth, p["monodepth2_kitti"].scaling) == (1e-3, "ratio_of_medians")
    assert (p["dro_scannet"].min_depth, p["dro_scannet"].max_depth, p["dro_scannet"].crop) == (0.2, 10.0, None)
    assert (p["deepv2d_scannet"].min_depth, p["deepv2d_scannet"].max_depth) == (0.1, 10.0)
    with pytest.raises(ConfigError, match="dro_kitti"):
        dm.get_protocol("kitti")
    with pytest.raises(ConfigError):
        dm.DepthProtocol("bad", 5.0, 1.0, None, "median_of_ratios")
    with pytest.raises(ConfigError):
        dm.DepthProtocol("bad", 0.1, 1.0, "kb", "median_of_ratios")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        dm.DepthProtocol("bad", 0.1, 1.0, None, "mean")  # type: ignore[arg-type]


def test_variant_names_and_official_keys() -> None:
    prot = dm.get_protocol("dro_kitti")
    names = [dm.variant_name(prot, pp, gt) for pp, gt in [(False, False), (True, False), (False, True), (True, True)]]
    assert names == ["dro_kitti", "dro_kitti_pp", "dro_kitti_gt", "dro_kitti_pp_gt"]
    assert dm.metric_key("abs_rel", True, True) == "abs_rel_pp_gt"
    with pytest.raises(ConfigError):
        dm.metric_key("abs", False, False)


def test_evaluate_variants_batch_and_empty_images() -> None:
    prot = dm.get_protocol("dro_scannet")
    gt = np.stack([np.full((4, 6), 2.0), np.zeros((4, 6))])[:, None]  # second image has no GT
    pred = torch.full((2, 1, 2, 3), 1.0)
    pred_pp = torch.full((2, 1, 2, 3), 2.0)
    two = dm.evaluate_depth_variants(gt, pred, prot, frame_ids=["a", "b"])
    assert list(two) == ["dro_scannet", "dro_scannet_gt"]
    four = dm.evaluate_depth_variants(gt, pred, prot, pred_depth_pp=pred_pp, frame_ids=["a", "b"])
    assert list(four) == ["dro_scannet", "dro_scannet_pp", "dro_scannet_gt", "dro_scannet_pp_gt"]
    raw = four["dro_scannet"]
    assert raw[0].metrics["abs_rel"] == pytest.approx(0.5) and raw[0].frame_id == "a"
    assert raw[1].n_valid == 0 and math.isnan(raw[1].metrics["abs_rel"])
    assert four["dro_scannet_pp"][0].metrics["abs_rel"] == 0.0
    assert four["dro_scannet_gt"][0].scale == 2.0
    mean = dm.mean_depth_metrics(raw)
    assert mean["abs_rel"] == pytest.approx(0.5)  # the empty image is left out, not counted as zero
    summary = dm.summarize_variant(raw, prot, False, False)
    assert summary.n_images == 1
    with pytest.raises(InputError):
        dm.summarize_variant(raw, prot, True, False)


def test_invalid_inputs_raise() -> None:
    with pytest.raises(InputError, match="NaN"):
        dm.evaluate_depth_image(np.ones((2, 2)), np.array([[1.0, np.nan], [1.0, 1.0]]), PLAIN, False)
    with pytest.raises(InputError):
        dm.evaluate_depth_batch(np.ones((2, 1, 2, 2)), np.ones((3, 1, 2, 2)), PLAIN, False)
    with pytest.raises(InputError):
        dm.evaluate_depth_image(np.ones((2, 2)), np.ones((1, 2, 2, 2)), PLAIN, False)


# --------------------------------------------------------------------------- flip post-processing


def test_pp_blend_mask_at_known_x() -> None:
    m = dm.pp_blend_mask(41, torch.float64)  # x = j / 40
    assert m[0] == 1.0 and m[2] == 1.0  # x = 0.05: 1 − clamp(0) = 1
    assert m[3] == pytest.approx(0.5)  # x = 0.075: 1 − 20·0.025
    assert m[4] == pytest.approx(0.0)  # x = 0.1
    assert torch.all(m[4:] == 0.0)


def test_post_process_blend() -> None:
    inv = torch.full((1, 1, 2, 41), 1.0, dtype=torch.float64)
    inv_of_flipped = torch.full((1, 1, 2, 41), 3.0, dtype=torch.float64)
    out = dm.post_process_inv_depth(inv, inv_of_flipped)[0, 0, 0]
    # Left border: flipped-back prediction only; right border: original only; middle: mean.
    expected = torch.full((41,), 2.0, dtype=torch.float64)
    expected[:3], expected[3] = 3.0, 0.5 * 3.0 + 0.5 * 2.0
    expected[38:], expected[37] = 1.0, 0.5 * 1.0 + 0.5 * 2.0
    torch.testing.assert_close(out, expected)


def test_post_process_flips_the_flipped_prediction_back() -> None:
    W = 41
    ramp = torch.arange(W, dtype=torch.float64).view(1, 1, 1, W).expand(2, 1, 3, W)
    inv = 100.0 + ramp  # original prediction
    inv_of_flipped = torch.flip(200.0 + ramp, dims=[-1])  # back in original coordinates: 200 + ramp
    out = dm.post_process_inv_depth(inv, inv_of_flipped)
    torch.testing.assert_close(out[..., 20], 0.5 * (inv[..., 20] + 200.0 + ramp[..., 20]))
    torch.testing.assert_close(out[..., 0], 200.0 + ramp[..., 0])
    torch.testing.assert_close(out[..., -1], inv[..., -1])
    with pytest.raises(InputError):
        dm.post_process_inv_depth(inv, inv[..., :-1])


def test_flip_intrinsics() -> None:
    K = torch.tensor([[500.0, 0.0, 310.0], [0.0, 480.0, 240.0], [0.0, 0.0, 1.0]])
    Kf = dm.flip_intrinsics(K, 640)
    assert Kf[0, 0] == -500.0 and Kf[0, 2] == 330.0 and Kf[1, 1] == 480.0 and K[0, 0] == 500.0
    # A point projects to u in the original and W − u in the flipped image.
    X = torch.tensor([0.3, -0.2, 2.0])
    u, uf = (K @ X)[0] / X[2], (Kf @ X)[0] / X[2]
    assert float(uf) == pytest.approx(640.0 - float(u))


# --------------------------------------------------------------------------- pose metrics


def _pose(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, t
    return T


def test_banet_pose_errors_constructed() -> None:
    R_gt = Rotation.from_euler("z", 10, degrees=True).as_matrix()
    R_pred = R_gt @ Rotation.from_euler("x", 3, degrees=True).as_matrix()
    T_gt = _pose(R_gt, np.array([1.0, 0.0, 0.0]))
    T_pred = _pose(R_pred, np.array([2.0, 2.0, 0.0]))
    e = pm.banet_pose_errors(T_gt, T_pred)
    assert e.rot_deg[0] == pytest.approx(3.0, abs=1e-6)
    assert e.tdir_deg[0] == pytest.approx(45.0)
    # a = (t1·t2)/(t2·t2) = 2/8; t1 − a·t2 = [0.5, −0.5, 0] -> 0.7071 m
    assert e.t_cm[0] == pytest.approx(100.0 * math.sqrt(0.5))
    # batched, and the scale fit makes the error invariant to the predicted translation's scale
    e2 = pm.banet_pose_errors(np.stack([T_gt, T_gt]), np.stack([T_pred, _pose(R_pred, np.array([-7.0, -7.0, 0]))]))
    np.testing.assert_allclose(e2.t_cm, [e.t_cm[0], e.t_cm[0]])
    assert e2.tdir_deg[1] == pytest.approx(135.0)
    assert e2.mean()["rot_deg"] == pytest.approx(3.0, abs=1e-6)


def test_zero_translation_is_nan_direction_without_warning() -> None:
    T_gt = _pose(np.eye(3), np.array([0.0, 0.3, 0.4]))
    T_zero = _pose(np.eye(3), np.zeros(3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        e = pm.banet_pose_errors(np.stack([T_gt, T_zero, T_gt]), np.stack([T_zero, T_gt, T_gt]))
    assert math.isnan(e.tdir_deg[0]) and math.isnan(e.tdir_deg[1]) and e.tdir_deg[2] == pytest.approx(0.0)
    np.testing.assert_allclose(e.t_cm, [50.0, 0.0, 0.0], atol=1e-12)  # zero prediction: 100·‖t_gt‖
    assert e.mean()["tdir_deg"] == pytest.approx(0.0)
    d = report.pose_errors_to_dict(e)
    assert d["n_undefined_direction"] == 2 and d["per_pair"][0]["tdir_deg"] is None
    json.dumps(d, allow_nan=False)


def test_half_turn_stays_finite() -> None:
    R = Rotation.from_euler("y", 180, degrees=True).as_matrix()
    e = pm.banet_pose_errors(_pose(np.eye(3), np.ones(3)), _pose(R, np.ones(3)))
    assert e.rot_deg[0] == pytest.approx(180.0, abs=1e-5)
    assert pm.rotation_angle_deg(R) == pytest.approx(180.0)


@settings(max_examples=60, deadline=None)
@given(
    axis=st.tuples(*[st.floats(-1, 1, allow_nan=False)] * 3).filter(lambda a: np.linalg.norm(a) > 1e-3),
    angle=st.floats(0.0, 179.9),
    base=st.tuples(*[st.floats(-3.1, 3.1)] * 3),
)
def test_rotation_error_equals_constructed_angle(axis: tuple, angle: float, base: tuple) -> None:
    R_base = Rotation.from_rotvec(np.array(base)).as_matrix()
    R_delta = Rotation.from_rotvec(np.deg2rad(angle) * np.array(axis) / np.linalg.norm(axis)).as_matrix()
    # Right-multiplied error: angle(R_baseᵀ · R_base · R_delta) = angle.
    assert float(pm.rotation_angle_deg(R_base.T @ (R_base @ R_delta))) == pytest.approx(angle, abs=1e-7)
    assert float(pm.rotation_error_deg(R_base, R_base @ R_delta)) == pytest.approx(angle, abs=2e-5)


def test_rotation_angle_precise_for_tiny_angles() -> None:
    R = Rotation.from_rotvec([1e-7, 0.0, 0.0]).as_matrix()
    assert float(pm.rotation_angle_deg(R)) == pytest.approx(math.degrees(1e-7), rel=1e-6)


def test_relative_pose_errors_along_a_sequence() -> None:
    rng = np.random.default_rng(3)
    N = 6
    T_gt = np.stack([_pose(Rotation.from_rotvec(rng.normal(0, 0.3, 3)).as_matrix(), rng.normal(0, 2, 3))
                     for _ in range(N)])
    # An identical trajectory gives zero error for every pair (i, i+2).
    zero = pm.sequence_relative_pose_errors(T_gt, T_gt.copy(), delta=2)
    assert zero.rot_deg.shape == (N - 2,)
    np.testing.assert_allclose(zero.rot_deg, 0.0, atol=1e-6)
    np.testing.assert_allclose(zero.trans, 0.0, atol=1e-12)
    # Perturb only the last camera's position by 0.1 m along world x: only pairs ending there change.
    T_pred = T_gt.copy()
    T_pred[-1, :3, 3] += [0.1, 0.0, 0.0]
    e = pm.sequence_relative_pose_errors(T_gt, T_pred, delta=1)
    np.testing.assert_allclose(e.trans[:-1], 0.0, atol=1e-12)
    assert e.trans[-1] == pytest.approx(0.1)
    np.testing.assert_allclose(e.rot_deg, 0.0, atol=1e-6)
    with pytest.raises(InputError):
        pm.relative_poses_along(T_gt, delta=N)


# --------------------------------------------------------------------------- report


def _summaries() -> list[dm.DepthVariantSummary]:
    prot = dm.get_protocol("dro_kitti")
    rng = np.random.default_rng(1)
    gt = rng.uniform(1.0, 50.0, size=(3, 1, 40, 60))
    pred = gt * rng.uniform(0.8, 1.2, size=gt.shape)
    res = dm.evaluate_depth_variants(gt, pred, prot, pred_depth_pp=pred * 0.5, frame_ids=["f0", "f1", "f2"])
    return [dm.summarize_variant(v, prot, name.startswith("dro_kitti_pp"), name.endswith("_gt"))
            for name, v in res.items()]


def test_markdown_table_columns_and_variants() -> None:
    summaries = _summaries()
    table = report.depth_markdown_table(summaries)
    lines = table.strip().splitlines()
    header = next(line for line in lines if line.startswith("| variant"))
    assert header == "| variant | images | abs_rel | sq_rel | rmse | rmse_log | a1 | a2 | a3 |"
    assert "`dro_kitti`: valid GT in (0.2, 80) m, crop garg" in lines[0]
    rows = [line.split("|")[1].strip() for line in lines if line.startswith("| dro_kitti")]
    assert rows == ["dro_kitti", "dro_kitti_pp", "dro_kitti_gt", "dro_kitti_pp_gt"]
    first = next(line for line in lines if line.startswith("| dro_kitti |"))
    assert f"{summaries[0].mean['abs_rel']:.4f}" in first
    extra = report.depth_markdown_table(summaries, extra_columns=True)
    assert "| a3 | silog | l1_inv |" in extra


def test_depth_report_files(tmp_path) -> None:
    summaries = _summaries()
    paths = report.save_depth_report(summaries, tmp_path / "out")
    data = json.loads(paths["json"].read_text())
    entry = data["depth"]["dro_kitti_pp_gt"]
    assert entry["protocol"]["name"] == "dro_kitti" and entry["post_processed"] and entry["median_scaled"]
    assert entry["n_images"] == 3 and len(entry["per_frame"]) == 3
    assert entry["per_frame"][1]["frame_id"] == "f1"
    assert entry["mean"]["abs_rel"] == pytest.approx(summaries[3].mean["abs_rel"])
    for p in paths.values():
        assert p.exists() and p.stat().st_size > 0
    assert paths["dro_kitti_hist"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in (tmp_path / "out").iterdir() if ".tmp" in p.name]
