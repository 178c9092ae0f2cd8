"""Supervised pose terms: the spec's reprojection term, the direct pose term beside it, and the rotation factor."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from dro_sfm.geometry.pose import euler_vec_to_matrix
from dro_sfm.losses.supervised import pose_parameter_term, pose_term, sequence_weights
from dro_sfm.models.config import EncoderWidths, small_config
from dro_sfm.models.dro import DroNet
from dro_sfm.train.config import TrainConfig
from dro_sfm.train.datasets import collate
from dro_sfm.train.launch import apply_overrides
from dro_sfm.train.trainer import Trainer

H, W = 128, 160
pytestmark = pytest.mark.usefixtures("one_torch_thread")




def _scene(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A room-like depth map [1,1,H,W] (1-5 m), intrinsics [1,3,3] and a motion T_ref_from_tgt [1,4,4]."""
    g = torch.Generator().manual_seed(seed)
    coarse = 1.0 + 4.0 * torch.rand(1, 1, 4, 5, generator=g)
    depth = torch.nn.functional.interpolate(coarse, size=(H, W), mode="bilinear", align_corners=True)
    K = torch.tensor([[[120.0, 0.0, 79.5], [0.0, 120.0, 63.5], [0.0, 0.0, 1.0]]])
    # 2.5 deg yaw and 3 cm sideways and forward: a hand-held indoor step.
    T = euler_vec_to_matrix(torch.tensor([[0.03, 0.0, 0.03, 0.0, math.radians(2.5), 0.0]]))
    return depth, K, T


def _translation_only(translation: torch.Tensor) -> torch.Tensor:
    """[1,3] -> [1,4,4] with identity rotation (differentiable in the translation)."""
    return euler_vec_to_matrix(torch.cat([translation, torch.zeros_like(translation)], -1))


def test_pose_parameter_term_is_zero_at_the_truth_with_finite_gradients() -> None:
    _, _, T = _scene()
    vec = torch.tensor([[0.03, 0.0, 0.03, 0.0, math.radians(2.5), 0.0]], requires_grad=True)
    term = pose_parameter_term([[euler_vec_to_matrix(vec)]], [T])
    term.backward()
    assert term.item() < 1e-5
    assert torch.isfinite(vec.grad).all()


def test_pose_parameter_term_measures_rotation_and_translation_errors() -> None:
    _, _, T = _scene()
    R_off = euler_vec_to_matrix(torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0, 0.01]]))
    t_off = _translation_only(torch.tensor([[0.0, 0.02, 0.0]]))
    rot_only = pose_parameter_term([[R_off @ T]], [T]).item()
    trans_only = pose_parameter_term([[t_off @ T]], [T]).item()
    # chordal distance ||R - R'||_F = 2 sqrt(2) sin(theta / 2) for a 0.01 rad error; plain metres for translation
    assert rot_only == pytest.approx(2 * math.sqrt(2) * math.sin(0.005), rel=0.05)
    assert trans_only == pytest.approx(0.02, rel=1e-3)


def test_relative_translation_counts_a_short_step_like_a_long_one() -> None:
    # the same 50 % error on a 4 cm indoor step and on a 1.2 m street step: equal when relative, 30x apart in metres
    def rel_and_abs(step_m: float) -> tuple[float, float]:
        T = _translation_only(torch.tensor([[step_m, 0.0, 0.0]]))
        pred = _translation_only(torch.tensor([[1.5 * step_m, 0.0, 0.0]]))
        rel = pose_parameter_term([[pred]], [T], translation="relative", translation_weight=0.1).item()
        return rel, pose_parameter_term([[pred]], [T]).item()

    (rel_in, abs_in), (rel_out, abs_out) = rel_and_abs(0.04), rel_and_abs(1.2)
    assert rel_in == pytest.approx(0.1 * 0.5 * 0.04 / 0.041, rel=1e-3)
    assert rel_out == pytest.approx(0.1 * 0.5, rel=1e-2)
    assert abs_out / abs_in == pytest.approx(30.0, rel=1e-3)


def test_pose_parameter_term_weights_predictions_like_the_spec() -> None:
    _, _, T = _scene()
    wrong = _translation_only(torch.tensor([[0.1, 0.0, 0.0]])) @ T
    # the first of two predictions wrong, then the last: gamma^1 vs gamma^0 of the same error
    first = pose_parameter_term([[wrong], [T]], [T]).item()
    last = pose_parameter_term([[T], [wrong]], [T]).item()
    w = sequence_weights(2)
    assert first == pytest.approx(0.1 * w[0] / sum(w), rel=1e-3)
    assert last == pytest.approx(0.1 * w[1] / sum(w), rel=1e-3)


def test_translation_alone_fits_most_of_the_reprojection_term_but_not_the_pose_term() -> None:
    """Why the direct pose term exists: a small rotation's image motion is mostly reproducible by translation."""
    depth, K, T = _scene()
    t = torch.zeros(1, 3, requires_grad=True)
    opt = torch.optim.Adam([t], lr=0.01)
    for _ in range(300):
        loss = pose_term([[_translation_only(t)]], [T], depth, K, 0.2, 80.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    zero = pose_term([[torch.eye(4).unsqueeze(0)]], [T], depth, K, 0.2, 80.0).item()
    fitted = loss.item()
    # measured over seeds 0-2: the fit removes 76-83 % of the zero-motion error with a sideways translation of
    # 16-18 cm (the true one is 3 cm); a pose term that sees rotation keeps the whole rotation error
    assert fitted < 0.4 * zero, (fitted, zero)
    assert abs(t[0, 0].item()) > 2 * 0.03, t
    chordal = torch.linalg.matrix_norm(T[0, :3, :3] - torch.eye(3)).item()
    assert pose_parameter_term([[_translation_only(t.detach())]], [T]).item() >= chordal


def test_rotation_factor_scales_only_the_rotation_outputs() -> None:
    widths = EncoderWidths(stem=8, layer2=8, layer3=16, fusion=8)
    dims = dict(hidden_dim=16, context_dim=8, feature_dim=16, head_dim=16, motion_dim=8, encoder=widths)
    official = DroNet(small_config(**dims))
    raised = DroNet(small_config(pose_rotation_scale=0.1, **dims))
    raised.load_state_dict(official.state_dict())
    x = torch.randn(2, 32, 6, 8)
    for a, b in [(official.pose_head, raised.pose_head),
                 (official.update_block_pose.pose_head, raised.update_block_pose.pose_head)]:
        xa = x[:, : a.conv1_pose.in_channels]
        pa, pb = a(xa), b(xa)
        torch.testing.assert_close(pb[:, :3], pa[:, :3])
        torch.testing.assert_close(pb[:, 3:], 10 * pa[:, 3:])
    assert small_config().pose_rotation_scale == 0.01  # the official factor unless a config raises it


def test_trainer_adds_the_weighted_pose_term(tmp_path: Path) -> None:
    base = ["data.kind=synthetic", "data.height=64", "data.width=96", "data.augment=false",
            "model.overrides={stages: 1, steps_per_stage: 2, hidden_dim: 16, context_dim: 8, feature_dim: 16, "
            "head_dim: 16, motion_dim: 8, encoder: {stem: 8, layer2: 8, layer3: 16, fusion: 8}}",
            f"out_dir={tmp_path / 'run'}"]
    totals = {}
    for weight in (0.0, 2.0):
        torch.manual_seed(0)
        trainer = Trainer(apply_overrides(TrainConfig(), base + [f"loss.pose_param_weight={weight}"]))
        batch = collate([trainer.dataset[0], trainer.dataset[1]])
        loss, terms, _ = trainer.compute_loss(batch)
        totals[weight] = (loss.item(), terms)
    (plain, plain_terms), (weighted, terms) = totals[0.0], totals[2.0]
    assert "pose_param" not in plain_terms and terms["pose_param"] > 0
    assert weighted == pytest.approx(plain + 2.0 * terms["pose_param"], rel=1e-5)
