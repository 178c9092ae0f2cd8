"""Reserved evaluation seeds and the scorecard used by model cards."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dro_sfm.models.config import small_config
from dro_sfm.models.dro import DroNet
from dro_sfm.models.predict import DroModel, ModelInfo
from dro_sfm.train.config import TrainConfig
from dro_sfm.train.datasets import RESERVED_SEED_START, SyntheticDataset, training_seed
from dro_sfm.train.scorecard import prediction_errors, reserved_dataset, rows_to_markdown, score


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(0, 10**12))
def test_training_never_draws_reserved_seeds(base_seed: int, index: int) -> None:
    assert 0 <= training_seed(base_seed, index) < RESERVED_SEED_START


def test_training_and_reserved_datasets_are_disjoint() -> None:
    train = SyntheticDataset(TrainConfig())
    held_out = reserved_dataset("indoor", 64, 96)
    train_seeds = {train.scene_seed(i) for i in range(0, 5000, 7)}
    held_seeds = {held_out.scene_seed(i) for i in range(0, 5000, 7)}
    assert min(held_seeds) >= RESERVED_SEED_START
    assert not train_seeds & held_seeds


def test_score_reports_model_and_baselines() -> None:
    torch.manual_seed(0)
    model = DroModel(DroNet(small_config(stages=1, steps_per_stage=2)), ModelInfo(image_shape=(64, 96)))
    rows = score(model, kinds=("indoor",), n_samples=1, height=64, width=96, iterations=(0, 2), progress=False)
    names = [r.predictor for r in rows]
    assert names[:2] == ["dro-0", "dro-2"]
    assert "constant depth + zero motion" in names and "constant motion (training mean)" in names
    by_name = {r.predictor: r for r in rows}
    for r in rows:
        assert r.n == 1 and (np.isfinite(r.rot_deg) or r.predictor == "true shape at the training median")
    shape_only = by_name["true shape at the training median"]
    assert shape_only.abs_rel_median_scaled == pytest.approx(0.0, abs=1e-6)
    # its metric error is the sample's scale offset from the training median, nothing else
    assert shape_only.abs_rel == pytest.approx(abs(shape_only.depth_scale - 1.0), rel=1e-4)
    assert by_name["constant depth + zero motion"].translation_scale == 0.0
    assert by_name["constant motion (training mean)"].translation_scale > 0
    assert np.isfinite(by_name["dro-2"].depth_scale) and by_name["dro-2"].depth_scale > 0
    assert "| indoor | dro-2 |" in rows_to_markdown(rows)


def test_scale_ratios_measure_metric_bias() -> None:
    """Depth twice too far reads 2; a translation half as long reads 0.5 whatever its direction."""
    from dro_sfm.train.scorecard import _depth_scale, _translation_scale

    gt = np.random.default_rng(0).uniform(1.0, 5.0, (16, 16))
    assert _depth_scale(2.0 * gt, gt) == pytest.approx(2.0)
    T_gt = np.stack([np.eye(4)] * 2)
    T_gt[:, :3, 3] = [[0.1, 0.0, 0.0], [0.0, 0.0, -0.2]]
    T_pred = np.stack([np.eye(4)] * 2)
    T_pred[:, :3, 3] = [[0.0, 0.05, 0.0], [0.0, -0.1, 0.0]]
    assert _translation_scale(T_pred, T_gt) == pytest.approx(0.5)


def test_score_runs_the_network_at_the_models_processing_shape() -> None:
    """Samples rendered at 64x96 reach a 32x48 model at 32x48 (its own shape), and at an explicit shape when given."""
    torch.manual_seed(0)
    model = DroModel(DroNet(small_config(stages=1, steps_per_stage=1)), ModelInfo(image_shape=(32, 48)))
    seen: list[tuple[int, int]] = []
    original = model.net.forward_full

    def spy(target, refs, K, *args, **kwargs):
        seen.append(tuple(target.shape[-2:]))
        return original(target, refs, K, *args, **kwargs)

    model.net.forward_full = spy
    kw = dict(kinds=("indoor",), n_samples=1, height=64, width=96, iterations=(1,), progress=False, baselines=False)
    rows = score(model, **kw)
    assert seen == [(32, 48)] and np.isfinite(rows[0].abs_rel)
    seen.clear()
    score(model, process_shape=(64, 96), **kw)
    assert seen == [(64, 96)]


def test_image_motion_separates_translation_parallax_from_rotation() -> None:
    from dro_sfm.geometry.pose import euler_vec_to_matrix
    from dro_sfm.train.scorecard import image_motion_px

    depth = np.full((24, 32), 4.0)  # a fronto-parallel wall 4 m away
    K = np.array([[100.0, 0, 15.5], [0, 100.0, 11.5], [0, 0, 1]])
    sideways = euler_vec_to_matrix(torch.tensor([[0.08, 0, 0, 0, 0, 0]], dtype=torch.float64))[0].numpy()
    parallax, rot = image_motion_px(depth, K, sideways)
    assert parallax == pytest.approx(100.0 * 0.08 / 4.0) and rot == pytest.approx(0.0, abs=1e-9)
    yaw = euler_vec_to_matrix(torch.tensor([[0, 0, 0, 0, 0.01, 0]], dtype=torch.float64))[0].numpy()
    parallax, rot = image_motion_px(depth, K, yaw)
    assert parallax == pytest.approx(0.0, abs=1e-9) and rot == pytest.approx(100.0 * 0.01, rel=0.02)


def test_validation_samples_never_overlap_the_cards_samples() -> None:
    """Checkpoints are chosen on reserved scenes that no model card (up to 10 000 samples) reports."""
    from dro_sfm.train.scorecard import VALIDATION_FIRST_SAMPLE

    ds = reserved_dataset("indoor", 64, 96)
    card_seeds = {ds.scene_seed(i) for i in range(0, 10_000, 4)}
    val_seeds = {ds.scene_seed(VALIDATION_FIRST_SAMPLE + i) for i in range(0, 1_000, 4)}
    assert not card_seeds & val_seeds


def test_training_wall_time_sums_each_process_even_when_a_resume_repeats_steps(tmp_path) -> None:
    """Two processes: 0-100 s over steps 0-400, then a resume from step 300 running 50 s. Merging by step would
    interleave the two elapsed series; read per event file the total is 150 s."""
    import time

    from torch.utils.tensorboard import SummaryWriter

    from dro_sfm.train.model_card import training_wall_time

    first = SummaryWriter(str(tmp_path))
    for step, elapsed in ((0, 0.0), (200, 50.0), (400, 100.0)):
        first.add_scalar("time/elapsed_s", elapsed, step)
    first.close()
    time.sleep(1.1)  # event file names carry the second they were opened
    second = SummaryWriter(str(tmp_path))
    for step, elapsed in ((320, 10.0), (360, 30.0), (400, 50.0)):
        second.add_scalar("time/elapsed_s", elapsed, step)
    second.close()
    assert len(list(tmp_path.glob("events.*"))) == 2
    assert training_wall_time(tmp_path) == 150.0
    assert training_wall_time(tmp_path / "missing") is None


def test_prediction_errors_of_a_sample_without_translation_leave_the_direction_undefined_quietly() -> None:
    """A reference at the target's position has no translation direction: NaN, and no numpy warning."""
    import warnings

    depth = np.full((8, 8), 2.0)
    T_gt = np.stack([np.eye(4), np.eye(4)])
    T_pred = T_gt.copy()
    T_pred[0, :3, 3] = [0.1, 0.0, 0.0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        errors = prediction_errors(depth, depth, T_pred, T_gt)
    assert np.isnan(errors["tdir_deg"]) and errors["rot_deg"] == pytest.approx(0.0, abs=1e-6)
    assert errors["abs_rel"] == pytest.approx(0.0)
