"""The fast path's optimisations are actually taken when enabled, and not when switched off."""

from __future__ import annotations

import pytest
import torch

from dro_sfm.models.config import small_config
from dro_sfm.models.dro import DroNet
from dro_sfm.models.update import SepConvGRU

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _inputs(B: int = 1, H: int = 32, W: int = 48):
    g = torch.Generator().manual_seed(0)
    K = torch.tensor([[[0.9 * W, 0, W / 2], [0, 0.9 * W, H / 2], [0, 0, 1]]]).expand(B, 3, 3)
    return torch.rand(B, 3, H, W, generator=g), [torch.rand(B, 3, H, W, generator=g) for _ in range(2)], K


def _spy_gru(monkeypatch) -> dict[str, list]:
    """Record which GRU entry point ran and the memory layout of the state it received."""
    calls: dict[str, list] = {"with_context": [], "plain": []}
    with_context, plain = SepConvGRU.forward_with_context, SepConvGRU._forward_fused

    def spy_with_context(self, h, feat, responses):
        out = with_context(self, h, feat, responses)
        calls["with_context"].append(out.is_contiguous(memory_format=torch.channels_last))
        return out

    def spy_plain(self, h, x):
        out = plain(self, h, x)
        calls["plain"].append(out.is_contiguous(memory_format=torch.channels_last))
        return out

    monkeypatch.setattr(SepConvGRU, "forward_with_context", spy_with_context)
    monkeypatch.setattr(SepConvGRU, "_forward_fused", spy_plain)
    return calls


@pytest.mark.parametrize("disable", [(), ("context_precompute",), ("channels_last",)])
def test_context_precompute_and_channels_last_are_used_as_switched(monkeypatch, disable) -> None:
    torch.manual_seed(0)
    net = DroNet(small_config().with_(fast=True)).eval()
    net.set_fast(True, disable=disable)
    calls = _spy_gru(monkeypatch)
    with torch.no_grad():
        net.forward_full(*_inputs(), stages=1, steps_per_stage=2)
    steps = 2 + 2  # two depth steps, two (batched) pose steps
    if "context_precompute" in disable:
        assert not calls["with_context"] and len(calls["plain"]) == steps
    else:
        assert len(calls["with_context"]) == steps and not calls["plain"]
    states = calls["with_context"] + calls["plain"]
    assert all(states) if "channels_last" not in disable else not any(states)


def test_training_forward_takes_the_literal_gru(monkeypatch) -> None:
    torch.manual_seed(0)
    net = DroNet(small_config().with_(fast=True)).train()
    calls = _spy_gru(monkeypatch)
    net.forward_full(*_inputs(B=2), stages=1, steps_per_stage=1)
    assert not calls["with_context"] and not calls["plain"]


@pytest.mark.parametrize("hw", [(1, 1), (3, 5), (6, 7), (7, 7), (8, 9), (30, 40)])
def test_pose_conv_precompute_equals_the_literal_conv_at_every_size(hw) -> None:
    """Border classes: sizes below, at and above the 7-tap kernel, rows and columns differing."""
    from dro_sfm.models.update import ProjectionInputPose

    torch.manual_seed(0)
    enc = ProjectionInputPose(cost_dim=4, hidden=16, motion_dim=8)
    pose = torch.randn(3, 6)
    with torch.no_grad():
        literal = enc.pose_conv1(pose, hw)
        enc.fast = True
        fast = enc.pose_conv1(pose, hw)
        again = enc.pose_conv1(pose * 2, hw)  # the cached coefficients serve a new pose
        enc.fast = False
        literal_again = enc.pose_conv1(pose * 2, hw)
    assert fast.shape == literal.shape == (3, 16, *hw)
    torch.testing.assert_close(fast, literal, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(again, literal_again, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("disable", [(), ("per_image_encoding",)])
def test_per_image_encoding_runs_the_encoders_one_image_at_a_time(monkeypatch, disable) -> None:
    torch.manual_seed(0)
    net = DroNet(small_config().with_(fast=True)).eval()
    net.set_fast(True, disable=disable)
    batch_sizes: list[int] = []
    for enc in (net.fnet, net.cnet_depth, net.cnet_pose):
        enc.register_forward_pre_hook(lambda _m, args: batch_sizes.append(args[0].shape[0]))
    with torch.no_grad():
        net.forward_full(*_inputs(B=1), stages=1, steps_per_stage=1)
    if disable:
        assert sorted(batch_sizes) == [1, 2, 3]  # cnet_depth on the target, cnet_pose on 2 pairs, fnet on 3
    else:
        assert batch_sizes == [1] * 6
